#include "skinny_gemm.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "activation.cuh"
#include "dependent_launch.cuh"

namespace fusedbert::cuda {
namespace {

// A CTA computes all M rows of 16 output columns (two m16n8k16 MMA tiles side by side) over its split of
// K; its warps take consecutive runs of K within that split and sum their accumulators through shared
// memory. A split-K grid (gridDim.y > 1) writes float32 partial tiles, and the CTA that arrives last at a
// tile adds them up and runs the epilogue.
constexpr int kWarps = 8;
constexpr int kThreads = kWarps * 32;
constexpr int kTileCols = 16;
// K advances 32 elements per step: each of a row's 4 lanes loads 8 contiguous elements (16 bytes). The MMA
// wants lane q's k positions {2q, 2q+1, 2q+8, 2q+9} of each 16-wide step; the dot product does not care
// which k goes where as long as A and B agree, so lane q's 8 loaded elements serve as its k positions in
// the step's two MMAs: one 16-byte load per row per step instead of four 4-byte ones.
constexpr int kChunk = 32;
constexpr int kPrefetch = 4;  // steps whose weight loads a warp issues before their MMAs

template <typename scalar_t>
__device__ __forceinline__ void mma_16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (std::is_same_v<scalar_t, at::Half>) {
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

template <typename scalar_t, Epilogue kEpilogue>
__device__ __forceinline__ float finish(float x, const scalar_t* bias, int col) {
  if constexpr (kEpilogue == Epilogue::None) return x;
  x += static_cast<float>(bias[col]);
  if constexpr (kEpilogue == Epilogue::BiasRelu) return activate<scalar_t, Activation::Relu>(x);
  if constexpr (kEpilogue == Epilogue::BiasGeluTanh) return activate<scalar_t, Activation::GeluTanh>(x);
  if constexpr (kEpilogue == Epilogue::BiasGeluErf) return activate<scalar_t, Activation::GeluErf>(x);
  return x;
}

// kMTiles: 16-row MMA tiles covering M (rows past M read as zeros and are not written).
template <typename scalar_t, int kMTiles, Epilogue kEpilogue>
__global__ void __launch_bounds__(kThreads) skinny_gemm_kernel(
    const scalar_t* __restrict__ in, const scalar_t* __restrict__ weight, const scalar_t* __restrict__ bias,
    scalar_t* __restrict__ out, float* __restrict__ partials, unsigned* __restrict__ arrivals, int rows, int n,
    int k) {
  constexpr int kTileValues = kMTiles * 2 * 4 * 32;  // one warp's accumulators: the CTA's [16 kMTiles, 16] tile
  static_assert(kTileValues % kThreads == 0, "each thread finishes whole values of the tile");
  constexpr int kValuesPerThread = kTileValues / kThreads;
  __shared__ float warp_sums[kWarps][kTileValues];
  __shared__ bool last_to_arrive;

  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int group = lane / 4, quad = lane % 4;  // group: the MMA's row of A and column of B; quad: its k lanes
  const int tile = blockIdx.x, split = blockIdx.y, splits = gridDim.y;
  const int col0 = tile * kTileCols;

  const int steps = k / kChunk;
  const int per_split = (steps + splits - 1) / splits;
  const int split_begin = split * per_split, split_end = min(steps, split_begin + per_split);
  const int per_warp = (max(0, split_end - split_begin) + kWarps - 1) / kWarps;
  const int begin = split_begin + warp * per_warp, end = min(split_end, begin + per_warp);

  const scalar_t* w_row[2] = {weight + static_cast<int64_t>(col0 + group) * k + quad * 8,
                              weight + static_cast<int64_t>(col0 + 8 + group) * k + quad * 8};
  uint4 w[kPrefetch][2];
  auto load_weights = [&](int step0) {
#pragma unroll
    for (int p = 0; p < kPrefetch; ++p) {
      if (step0 + p < end) {
        w[p][0] = load_streaming(w_row[0] + (step0 + p) * kChunk);
        w[p][1] = load_streaming(w_row[1] + (step0 + p) * kChunk);
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
      const int kk = (step0 + p) * kChunk + quad * 8;
#pragma unroll
      for (int i = 0; i < kMTiles; ++i) {
        const int r_lo = i * 16 + group, r_hi = r_lo + 8;
        const uint4 zero = make_uint4(0, 0, 0, 0);
        const uint4 lo = r_lo < rows ? *reinterpret_cast<const uint4*>(in + static_cast<int64_t>(r_lo) * k + kk) : zero;
        const uint4 hi = r_hi < rows ? *reinterpret_cast<const uint4*>(in + static_cast<int64_t>(r_hi) * k + kk) : zero;
#pragma unroll
        for (int s = 0; s < 2; ++s) {
          const uint32_t a[4] = {word(lo, 2 * s), word(hi, 2 * s), word(lo, 2 * s + 1), word(hi, 2 * s + 1)};
          mma_16816<scalar_t>(acc[i][0], a, word(w[p][0], 2 * s), word(w[p][0], 2 * s + 1));
          mma_16816<scalar_t>(acc[i][1], a, word(w[p][1], 2 * s), word(w[p][1], 2 * s + 1));
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
    // The threadFenceReduction pattern: publish this split's tile, count arrivals, and the last CTA to
    // arrive sums every split's tile (read past L1, which does not see other SMs' writes).
    float* const tiles = partials + static_cast<int64_t>(tile) * splits * kTileValues;
#pragma unroll
    for (int j = 0; j < kValuesPerThread; ++j) tiles[split * kTileValues + threadIdx.x + j * kThreads] = totals[j];
    __threadfence();
    __syncthreads();
    if (threadIdx.x == 0) last_to_arrive = atomicAdd(&arrivals[tile], 1u) == static_cast<unsigned>(splits - 1);
    __syncthreads();
    if (!last_to_arrive) return;
    __threadfence();
#pragma unroll
    for (int j = 0; j < kValuesPerThread; ++j) {
      float total = 0.0f;
      for (int s = 0; s < splits; ++s) total += __ldcg(tiles + s * kTileValues + threadIdx.x + j * kThreads);
      totals[j] = total;
    }
    if (threadIdx.x == 0) arrivals[tile] = 0;  // ready for the next GEMM: kernels on a stream do not overlap
  }

#pragma unroll
  for (int j = 0; j < kValuesPerThread; ++j) {
    const int e = threadIdx.x + j * kThreads;
    const int value_lane = e % 32, r = (e / 32) % 4, half = (e / 128) % 2, i = e / 256;
    const int row = i * 16 + value_lane / 4 + (r / 2) * 8;
    const int col = col0 + half * 8 + (value_lane % 4) * 2 + r % 2;
    if (row < rows) out[static_cast<int64_t>(row) * n + col] = static_cast<scalar_t>(finish<scalar_t, kEpilogue>(totals[j], bias, col));
  }
}

template <typename scalar_t, int kMTiles>
void launch_rows(Epilogue epilogue, dim3 grid, cudaStream_t stream, const scalar_t* in, const scalar_t* weight,
                 const scalar_t* bias, scalar_t* out, float* partials, unsigned* arrivals, int rows, int n, int k) {
  auto launch = [&](auto kernel) {
    // Launched to overlap the kernel before it where the GPU can (sm_90 on: see dependent_launch.cuh).
    cudaLaunchAttribute early_start;
    early_start.id = cudaLaunchAttributeProgrammaticStreamSerialization;
    early_start.val.programmaticStreamSerializationAllowed = 1;
    cudaLaunchConfig_t config = {};
    config.gridDim = grid;
    config.blockDim = dim3(kThreads);
    config.stream = stream;
    config.attrs = &early_start;
    config.numAttrs = at::cuda::getCurrentDeviceProperties()->major >= 9 ? 1 : 0;
    C10_CUDA_CHECK(cudaLaunchKernelEx(&config, kernel, in, weight, bias, out, partials, arrivals, rows, n, k));
  };
  switch (epilogue) {
    case Epilogue::None: launch(skinny_gemm_kernel<scalar_t, kMTiles, Epilogue::None>); break;
    case Epilogue::Bias: launch(skinny_gemm_kernel<scalar_t, kMTiles, Epilogue::Bias>); break;
    case Epilogue::BiasRelu: launch(skinny_gemm_kernel<scalar_t, kMTiles, Epilogue::BiasRelu>); break;
    case Epilogue::BiasGeluTanh: launch(skinny_gemm_kernel<scalar_t, kMTiles, Epilogue::BiasGeluTanh>); break;
    case Epilogue::BiasGeluErf: launch(skinny_gemm_kernel<scalar_t, kMTiles, Epilogue::BiasGeluErf>); break;
  }
}

template <typename scalar_t>
void launch(Epilogue epilogue, dim3 grid, cudaStream_t stream, const scalar_t* in, const scalar_t* weight,
            const scalar_t* bias, scalar_t* out, float* partials, unsigned* arrivals, int rows, int n, int k) {
  // Tiles of 16, 32 or 64 rows: a few more MMAs on zero rows cost less than more instantiations.
  if (rows <= 16) return launch_rows<scalar_t, 1>(epilogue, grid, stream, in, weight, bias, out, partials, arrivals, rows, n, k);
  if (rows <= 32) return launch_rows<scalar_t, 2>(epilogue, grid, stream, in, weight, bias, out, partials, arrivals, rows, n, k);
  launch_rows<scalar_t, 4>(epilogue, grid, stream, in, weight, bias, out, partials, arrivals, rows, n, k);
}

int64_t tile_values(int64_t rows) { return (rows <= 16 ? 1 : rows <= 32 ? 2 : 4) * 256; }

}  // namespace

const char* skinny_linear_refusal(at::ScalarType dtype, int64_t rows, int64_t n, int64_t k, int64_t alignment) {
  if (dtype != at::kHalf && dtype != at::kBFloat16) return "it computes float16/bfloat16 only";
  if (at::cuda::getCurrentDeviceProperties()->major < 8) return "it needs an sm_80 or later GPU";
  if (rows < 1 || rows > kSkinnyMaxRows) return "it takes 1 to 64 token rows";
  if (n % kTileCols != 0 || k % kChunk != 0) return "it needs N a multiple of 16 and K a multiple of 32";
  if (n / kTileCols > kSkinnyCounterBytes / static_cast<int64_t>(sizeof(unsigned))) return "N is too large";
  if (alignment < 16) return "it needs 16-byte aligned buffers";
  return nullptr;
}

void skinny_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                   Epilogue epilogue, const at::Tensor& workspace, int64_t scratch_bytes) {
  const int64_t rows = in.size(0), n = weight.size(0), k = weight.size(1);
  const int64_t tiles = n / kTileCols, steps = k / kChunk;
  // Split K until the grid covers the SMs, keeping at least one step per warp.
  const int64_t sms = at::cuda::getCurrentDeviceProperties()->multiProcessorCount;
  int64_t splits = std::clamp<int64_t>((sms + tiles - 1) / tiles, 1, std::max<int64_t>(1, steps / kWarps));
  splits = std::min<int64_t>(splits, scratch_bytes / (tiles * tile_values(rows) * static_cast<int64_t>(sizeof(float))));
  TORCH_CHECK(splits >= 1 && workspace.nbytes() >= static_cast<size_t>(scratch_bytes + kSkinnyCounterBytes),
              "fusedbert::encoder (CUDA): the small-batch GEMM's workspace is too small");
  const dim3 grid(static_cast<unsigned>(tiles), static_cast<unsigned>(splits));
  float* partials = static_cast<float*>(workspace.data_ptr());
  unsigned* arrivals = reinterpret_cast<unsigned*>(static_cast<char*>(workspace.data_ptr()) + scratch_bytes);
  const cudaStream_t stream = at::cuda::getCurrentCUDAStream();
  if (in.scalar_type() == at::kHalf) {
    launch(epilogue, grid, stream, in.const_data_ptr<at::Half>(), weight.const_data_ptr<at::Half>(),
           bias.defined() ? bias.const_data_ptr<at::Half>() : nullptr, out.data_ptr<at::Half>(), partials, arrivals,
           static_cast<int>(rows), static_cast<int>(n), static_cast<int>(k));
  } else {
    launch(epilogue, grid, stream, in.const_data_ptr<at::BFloat16>(), weight.const_data_ptr<at::BFloat16>(),
           bias.defined() ? bias.const_data_ptr<at::BFloat16>() : nullptr, out.data_ptr<at::BFloat16>(), partials,
           arrivals, static_cast<int>(rows), static_cast<int>(n), static_cast<int>(k));
  }
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

}  // namespace fusedbert::cuda
