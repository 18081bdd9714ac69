#include "skinny_gemm.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <cooperative_groups.h>
#include <cuda_fp8.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "activation.cuh"
#include "dependent_launch.cuh"

namespace fusedbert::cuda {
namespace {

// A CTA computes all M rows of 16 output columns (two MMA tiles of 16 x 8 side by side) over its split of
// K; its warps take consecutive runs of K within that split and sum their accumulators through shared
// memory. On Hopper a split-K grid (gridDim.y > 1) launches each tile's splits as one thread block cluster:
// the first CTA adds the others' sums out of their shared memory (distributed shared memory) and runs the
// epilogue. A reduction through global memory instead (partial tiles, a fence, an arrival counter the last
// CTA reads, re-read past L1) put all of that on the critical path of every split-K GEMM and needed its
// counters zeroed each forward. With clusters, bert-base at one sequence of 16 tokens went from 0.437 to
// 0.341 ms per forward (CUDA graphs, H200; docs/benchmarks.md).
//
// Operands: the model's float16 / bfloat16 (m16n8k16 MMAs), or the FP8 FFN's e4m3 codes (m16n8k32 MMAs,
// sm_89 on; E4m3 below), whose epilogue first scales the float32 sum by the two operands' steps.
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileCols = 16;
// K advances 16 bytes per lane and step: each of a row's 4 lanes loads 16 contiguous bytes (8 halves or 16
// codes). An MMA wants lane q's k positions {2q, 2q+1, 2q+8, 2q+9} of a 16-wide step (halves; codes: 4q..4q+3
// and 4q+16..4q+19 of a 32-wide one), two 32-bit words per row; the dot product does not care which k goes
// where as long as A and B agree, so lane q's 4 loaded words serve as its k positions in the step's two
// MMAs: one 16-byte load per row per step instead of four 4-byte ones.
template <typename operand_t>
constexpr int kChunk = 4 * 16 / sizeof(operand_t);
constexpr int kPrefetch = 4;  // steps whose weight loads a warp issues before their MMAs
constexpr int kMaxSplits = 8;  // the largest thread block cluster every sm_90 GPU runs

using E4m3 = __nv_fp8_e4m3;

template <typename operand_t>
constexpr bool kIsE4m3 = std::is_same_v<operand_t, E4m3>;

// The FP8 FFN's scalars in device memory (sm90_gemm.h's fp8_linear has the same): the sum is multiplied by
// *in_step * *weight_step, and FFN1's activation by *out_inverse before it is rounded to e4m3.
struct Fp8Steps {
  const float* in_step;
  const float* weight_step;
  const float* out_inverse;
};

template <typename operand_t>
__device__ __forceinline__ void mma(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (kIsE4m3<operand_t>) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 890
    asm volatile("mma.sync.aligned.m16n8k32.row.col.f32.e4m3.e4m3.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
#else
    __trap();  // skinny_fp8_linear_refusal keeps e4m3 off GPUs before sm_89
#endif
  } else if constexpr (std::is_same_v<operand_t, at::Half>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%0,%1,%2,%3};"
                 : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
}

__device__ __forceinline__ uint32_t word(const uint4& v, int i) {
  return i == 0 ? v.x : i == 1 ? v.y : i == 2 ? v.z : v.w;
}

// Weights are read once per call: keep them out of L1, where the activations (read by every CTA) live.
__device__ __forceinline__ uint4 load_streaming(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}

// e4m3 operands: None is FFN2 (the scaled sum, in the model's dtype) and BiasGeluErf FFN1 (e4m3 codes out).
template <typename scalar_t, typename operand_t, Epilogue kEpilogue>
__device__ __forceinline__ float finish(float x, const scalar_t* bias, int col, const Fp8Steps& steps) {
  if constexpr (kIsE4m3<operand_t>) x *= *steps.in_step * *steps.weight_step;
  if constexpr (kEpilogue == Epilogue::None) return x;
  x += static_cast<float>(bias[col]);
  if constexpr (kEpilogue == Epilogue::BiasRelu) return activate<scalar_t, Activation::Relu>(x);
  if constexpr (kEpilogue == Epilogue::BiasGeluTanh) return activate<scalar_t, Activation::GeluTanh>(x);
  if constexpr (kEpilogue == Epilogue::BiasGeluErf && kIsE4m3<operand_t>) return gelu_erf_fit(x) * *steps.out_inverse;
  if constexpr (kEpilogue == Epilogue::BiasGeluErf) return activate<scalar_t, Activation::GeluErf>(x);
  return x;
}

// What the kernel writes: e4m3 codes from the FP8 FFN1, the model's dtype otherwise.
template <typename scalar_t, typename operand_t, Epilogue kEpilogue>
using Output = std::conditional_t<kIsE4m3<operand_t> && kEpilogue != Epilogue::None, E4m3, scalar_t>;

template <typename out_t>
__device__ __forceinline__ out_t to_output(float x) {
  if constexpr (std::is_same_v<out_t, E4m3>) {
    out_t code;
    code.__x = __nv_cvt_float_to_fp8(x, __NV_SATFINITE, __NV_E4M3);  // as the CUTLASS FP8 epilogue rounds
    return code;
  } else {
    return static_cast<out_t>(x);
  }
}

// kMTiles: 16-row MMA tiles covering M (rows past M read as zeros and are not written). scalar_t: the
// model's dtype (bias, and the output unless it is FFN1's e4m3); operand_t: in's and weight's.
template <typename scalar_t, typename operand_t, int kMTiles, Epilogue kEpilogue>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(
    const operand_t* __restrict__ in, const operand_t* __restrict__ weight, const scalar_t* __restrict__ bias,
    Output<scalar_t, operand_t, kEpilogue>* __restrict__ out, Fp8Steps steps, int rows, int n, int k) {
  constexpr int kStep = kChunk<operand_t>;
  constexpr int kTileValues = kMTiles * 2 * 4 * 32;  // one warp's accumulators: the CTA's [16 kMTiles, 16] tile
  static_assert(kTileValues % kThreads == 0, "each thread finishes whole values of the tile");
  constexpr int kValuesPerThread = kTileValues / kThreads;
  __shared__ float warp_sums[kWarps][kTileValues];
  __shared__ float split_sums[kTileValues];  // this split's tile, read by the cluster's first CTA

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // group: the MMA's row of A and column of B; quad: its k lanes
  const int tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int col0 = tile * kTileCols;

  const int k_steps = k / kStep;
  const int per_split = (k_steps + splits - 1) / splits;
  const int split_begin = split * per_split, split_end = min(k_steps, split_begin + per_split);
  const int per_warp = (max(0, split_end - split_begin) + kWarps - 1) / kWarps;
  const int begin = split_begin + warp * per_warp, end = min(split_end, begin + per_warp);

  constexpr int kLaneElements = kStep / 4;  // 16 bytes
  const operand_t* w_row[2] = {weight + static_cast<int64_t>(col0 + group) * k + quad * kLaneElements,
                               weight + static_cast<int64_t>(col0 + 8 + group) * k + quad * kLaneElements};
  uint4 w[kPrefetch][2];
  auto load_weights = [&](int step0) {
#pragma unroll
    for (int p = 0; p < kPrefetch; ++p) {
      if (step0 + p < end) {
        w[p][0] = load_streaming(w_row[0] + (step0 + p) * kStep);
        w[p][1] = load_streaming(w_row[1] + (step0 + p) * kStep);
      }
    }
  };
  // The first weights are on their way while the kernel that writes `in` finishes (dependent_launch.cuh);
  // every global access past this wait may touch what that kernel reads or writes.
  load_weights(begin);
  allow_dependent_grids();
  wait_for_prior_grids();
  float acc[kMTiles][2][4] = {};
  for (int step0 = begin; step0 < end; step0 += kPrefetch) {
    if (step0 != begin) load_weights(step0);
#pragma unroll
    for (int p = 0; p < kPrefetch; ++p) {
      if (step0 + p >= end) break;
      const int kk = (step0 + p) * kStep + quad * kLaneElements;
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        const int r_lo = i * 16 + group, r_hi = r_lo + 8;
        const uint4 zero = make_uint4(0, 0, 0, 0);
        const uint4 lo = r_lo < rows ? *reinterpret_cast<const uint4*>(in + static_cast<int64_t>(r_lo) * k + kk) : zero;
        const uint4 hi = r_hi < rows ? *reinterpret_cast<const uint4*>(in + static_cast<int64_t>(r_hi) * k + kk) : zero;
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t a[4] = {word(lo, 2 * s), word(hi, 2 * s), word(lo, 2 * s + 1), word(hi, 2 * s + 1)};
          mma<operand_t>(acc[i][0], a, word(w[p][0], 2 * s), word(w[p][0], 2 * s + 1));
          mma<operand_t>(acc[i][1], a, word(w[p][1], 2 * s), word(w[p][1], 2 * s + 1));
        }
      }
    }
  }

  // Value e of the tile: accumulator register r of tile (i, half) in lane `lane`, e = ((i*2 + half)*4 + r)*32 + lane.
#pragma unroll
  for (int i = 0; i < kMTiles; ++i)
#pragma unroll
    for (int half = 0; half < 2; ++half)
#pragma unroll
      for (int r = 0; r < 4; ++r) warp_sums[warp][((i * 2 + half) * 4 + r) * 32 + lane] = acc[i][half][r];
  __syncthreads();
  float totals[kValuesPerThread];
#pragma unroll
  for (int j = 0; j < kValuesPerThread; ++j) {
    const int e = threadIdx.x + j * kThreads;
    float total = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) total += warp_sums[w][e];
    totals[j] = total;
  }

  if (splits > 1) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
    // The cluster is this tile's splits (1 x splits CTAs), so a CTA's rank in it is its split. The first
    // adds the splits in order: the sum is the same on every run.
    const cooperative_groups::cluster_group cluster = cooperative_groups::this_cluster();
#pragma unroll
    for (int j = 0; j < kValuesPerThread; ++j) split_sums[threadIdx.x + j * kThreads] = totals[j];
    cluster.sync();
    if (split == 0) {
      for (int s = 1; s < splits; ++s) {
        const float* peer = cluster.map_shared_rank(split_sums, s);
#pragma unroll
        for (int j = 0; j < kValuesPerThread; ++j) totals[j] += peer[threadIdx.x + j * kThreads];
      }
    }
    cluster.sync();  // a CTA's shared memory must stay until the first has read it
    if (split != 0) return;
#else
    __trap();  // run() splits K on sm_90 and later only
#endif
  }

#pragma unroll
  for (int j = 0; j < kValuesPerThread; ++j) {
    const int e = threadIdx.x + j * kThreads;
    const int value_lane = e % 32, r = (e / 32) % 4, half = (e / 128) % 2, i = e / 256;
    const int row = i * 16 + value_lane / 4 + (r / 2) * 8;
    const int col = col0 + half * 8 + (value_lane % 4) * 2 + r % 2;
    if (row < rows) {
      out[static_cast<int64_t>(row) * n + col] = to_output<Output<scalar_t, operand_t, kEpilogue>>(
          finish<scalar_t, operand_t, kEpilogue>(totals[j], bias, col, steps));
    }
  }
}

template <typename scalar_t, typename operand_t, int kMTiles, Epilogue kEpilogue>
void launch_kernel(dim3 grid, cudaStream_t stream, const at::Tensor& out, const at::Tensor& in,
                   const at::Tensor& weight, const at::Tensor& bias, const Fp8Steps& steps) {
  cudaLaunchAttribute attributes[2];
  cudaLaunchConfig_t config = {};
  config.gridDim = grid;
  config.blockDim = dim3(kThreads);
  config.stream = stream;
  config.attrs = attributes;
  if (at::cuda::getCurrentDeviceProperties()->major >= 9) {
    // Launched to overlap the kernel before it (dependent_launch.cuh).
    attributes[config.numAttrs].id = cudaLaunchAttributeProgrammaticStreamSerialization;
    attributes[config.numAttrs++].val.programmaticStreamSerializationAllowed = 1;
  }
  if (grid.y > 1) {  // a tile's splits as one cluster
    attributes[config.numAttrs].id = cudaLaunchAttributeClusterDimension;
    attributes[config.numAttrs++].val.clusterDim = {1, grid.y, 1};
  }
  C10_CUDA_CHECK(cudaLaunchKernelEx(
      &config, skinny_gemm_kernel<scalar_t, operand_t, kMTiles, kEpilogue>,
      static_cast<const operand_t*>(in.const_data_ptr()), static_cast<const operand_t*>(weight.const_data_ptr()),
      bias.defined() ? static_cast<const scalar_t*>(bias.const_data_ptr()) : nullptr,
      static_cast<Output<scalar_t, operand_t, kEpilogue>*>(out.data_ptr()), steps, static_cast<int>(in.size(0)),
      static_cast<int>(weight.size(0)), static_cast<int>(weight.size(1))));
}

// The kernel for `epilogue`, as a function pointer of launch_kernel's signature.
template <typename scalar_t, typename operand_t, int kMTiles>
auto kernel_launcher(Epilogue epilogue) {
  if constexpr (kIsE4m3<operand_t>) {  // FFN2 or FFN1: skinny_fp8_linear passes no other
    return epilogue == Epilogue::None ? &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::None>
                                      : &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::BiasGeluErf>;
  } else {
    switch (epilogue) {
      case Epilogue::None: return &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::None>;
      case Epilogue::Bias: return &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::Bias>;
      case Epilogue::BiasRelu: return &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::BiasRelu>;
      case Epilogue::BiasGeluTanh: return &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::BiasGeluTanh>;
      case Epilogue::BiasGeluErf: break;
    }
    return &launch_kernel<scalar_t, operand_t, kMTiles, Epilogue::BiasGeluErf>;
  }
}

// Tiles of 16, 32 or 64 rows: a few more MMAs on zero rows cost less than more instantiations.
int m_tiles(int64_t rows) { return rows <= 16 ? 1 : rows <= 32 ? 2 : 4; }

// Splits K until the grid covers the SMs (on sm_90 and later, which have clusters), keeping at least one
// step per warp, and launches.
template <typename scalar_t, typename operand_t>
void run(Epilogue epilogue, const at::Tensor& out, const at::Tensor& in, const at::Tensor& weight,
         const at::Tensor& bias, const Fp8Steps& steps) {
  const int64_t rows = in.size(0), tiles = weight.size(0) / kTileCols, k_steps = weight.size(1) / kChunk<operand_t>;
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  const int64_t max_splits = device->major >= 9 ? std::min<int64_t>(kMaxSplits, k_steps / kWarps) : 1;
  const int64_t splits =
      std::clamp<int64_t>((device->multiProcessorCount + tiles - 1) / tiles, 1, std::max<int64_t>(1, max_splits));
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  const int tiles_of_rows = m_tiles(rows);
  const auto launch = tiles_of_rows == 1   ? kernel_launcher<scalar_t, operand_t, 1>(epilogue)
                      : tiles_of_rows == 2 ? kernel_launcher<scalar_t, operand_t, 2>(epilogue)
                                           : kernel_launcher<scalar_t, operand_t, 4>(epilogue);
  launch(grid, at::cuda::getCurrentCUDAStream(), out, in, weight, bias, steps);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

const char* shape_refusal(int64_t rows, int64_t n, int64_t k, int64_t k_multiple, int64_t alignment) {
  if (rows < 1 || rows > kSkinnyMaxRows) return "it takes 1 to 64 token rows";
  if (n % kTileCols != 0 || k % k_multiple != 0) {
    return k_multiple == 32 ? "it needs N a multiple of 16 and K a multiple of 32"
                            : "it needs N a multiple of 16 and K a multiple of 64";
  }
  if (alignment < 16) return "it needs 16-byte aligned buffers";
  return nullptr;
}

}  // namespace

const char* skinny_linear_refusal(at::ScalarType dtype, int64_t rows, int64_t n, int64_t k, int64_t alignment) {
  if (dtype != at::kHalf && dtype != at::kBFloat16) return "it computes float16/bfloat16 only";
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return "it needs an sm_80 or later GPU";
  return shape_refusal(rows, n, k, kChunk<at::Half>, alignment);
}

void skinny_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                   Epilogue epilogue) {
  if (in.scalar_type() == at::kHalf) {
    run<at::Half, at::Half>(epilogue, out, in, weight, bias, {});
  } else {
    run<at::BFloat16, at::BFloat16>(epilogue, out, in, weight, bias, {});
  }
}

const char* skinny_fp8_linear_refusal(int64_t rows, int64_t n, int64_t k, int64_t alignment) {
  const cudaDeviceProp* device = at::cuda::getCurrentDeviceProperties();
  if (device->major * 10 + device->minor < 89) return "it needs an sm_89 or later GPU";
  return shape_refusal(rows, n, k, kChunk<E4m3>, alignment);
}

void skinny_fp8_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                       sm90::Fp8Stage stage, const float* in_step, const float* weight_step,
                       const float* out_inverse, at::ScalarType model_dtype) {
  const Epilogue epilogue = stage == sm90::Fp8Stage::Ffn1 ? Epilogue::BiasGeluErf : Epilogue::None;
  const Fp8Steps steps{in_step, weight_step, out_inverse};
  if (model_dtype == at::kHalf) {
    run<at::Half, E4m3>(epilogue, out, in, weight, bias, steps);
  } else {
    run<at::BFloat16, E4m3>(epilogue, out, in, weight, bias, steps);
  }
}

}  // namespace fusedbert::cuda
