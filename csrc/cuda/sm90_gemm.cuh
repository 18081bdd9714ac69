// The CUTLASS kernels behind sm90::linear_bias_gelu and sm90::fp8_linear (sm90_gemm.h): a template each,
// instantiated per tile configuration by sm90_gemm_<configuration>.cu (one file each, so the slow compiles
// run in parallel).
//
// The problem is posed as cuBLASLt's is in gemm.cpp: D[n, tokens] = weight[n, k] @ in[tokens, k]^T,
// column-major D being out[tokens, n] row-major, so both operands are K-major (what wgmma reads best, and
// the only layout its FP8 form takes) and the bias runs along D's rows.
#pragma once

#include "gelu.cuh"
#include "sm90_gemm.h"

#include <cute/tensor.hpp>
#include <cutlass/cutlass.h>
#include <cutlass/epilogue/collective/collective_builder.hpp>
#include <cutlass/epilogue/fusion/operations.hpp>
#include <cutlass/gemm/collective/collective_builder.hpp>
#include <cutlass/gemm/device/gemm_universal_adapter.h>
#include <cutlass/epilogue/thread/activation.h>
#include <cutlass/gemm/kernel/gemm_universal.hpp>

namespace fusedbert::cuda::sm90::detail {

// gelu.cuh's GELU as a CUTLASS epilogue activation, applied to float32 fragments.
struct GeluErfFit {
  template <typename T>
  struct Activation {
    CUTLASS_DEVICE T operator()(T const& x) const { return T(gelu_erf_fit(static_cast<float>(x))); }
  };

  template <int N>
  struct Activation<cutlass::Array<float, N>> {
    CUTLASS_DEVICE cutlass::Array<float, N> operator()(cutlass::Array<float, N> const& x) const {
      cutlass::Array<float, N> y;
      CUTLASS_PRAGMA_UNROLL
      for (int i = 0; i < N; ++i) y[i] = gelu_erf_fit(x[i]);
      return y;
    }
  };
};

// Arguments for out[tokens, n] = in[tokens, k] @ weight[n, k]^T posed as D[n, tokens] (see the top): both
// operands K-major, D column-major, no C. The epilogue's fusion arguments are left to the caller.
template <typename Gemm, typename ElementIn, typename ElementOut>
typename Gemm::Arguments token_major_arguments(int64_t tokens, int64_t n, int64_t k, const void* in,
                                               const void* weight, void* out, int sm_count) {
  using Kernel = typename Gemm::GemmKernel;
  const int m_rows = static_cast<int>(n), n_cols = static_cast<int>(tokens), depth = static_cast<int>(k);
  typename Kernel::StrideA stride_a = cute::make_stride(int64_t{depth}, cute::Int<1>{}, int64_t{0});
  typename Kernel::StrideB stride_b = cute::make_stride(int64_t{depth}, cute::Int<1>{}, int64_t{0});
  typename Kernel::StrideD stride_d = cute::make_stride(cute::Int<1>{}, int64_t{m_rows}, int64_t{0});
  cutlass::KernelHardwareInfo hardware;
  hardware.sm_count = sm_count;
  return {cutlass::gemm::GemmUniversalMode::kGemm,
          {m_rows, n_cols, depth, 1},
          {static_cast<const ElementIn*>(weight), stride_a, static_cast<const ElementIn*>(in), stride_b},
          {{}, nullptr, stride_d, static_cast<ElementOut*>(out), stride_d},
          hardware};
}

// Checks that CUTLASS can run `args` in the workspace given, then runs it on `stream`: nullptr, or what failed.
template <typename Gemm>
const char* launch(const typename Gemm::Arguments& args, void* workspace, size_t workspace_bytes,
                   cudaStream_t stream) {
  using Kernel = typename Gemm::GemmKernel;
  if (Gemm::can_implement(args) != cutlass::Status::kSuccess) return "CUTLASS cannot implement this shape";
  if (Gemm::get_workspace_size(args) > workspace_bytes) return "CUTLASS needs a larger workspace";
  // The shared-memory opt-in belongs to the current device's copy of the kernel, so it is set at every
  // launch (a host-side call, allowed while a stream is captured), as attention.cu does.
  constexpr int kSharedBytes = Kernel::SharedStorageSize;
  if constexpr (kSharedBytes >= (48 << 10)) {
    const cudaError_t status = cudaFuncSetAttribute(cutlass::device_kernel<Kernel>,
                                                    cudaFuncAttributeMaxDynamicSharedMemorySize, kSharedBytes);
    if (status != cudaSuccess) return cudaGetErrorString(status);
  }
  if (Kernel::initialize_workspace(args, workspace, stream) != cutlass::Status::kSuccess) {
    return "CUTLASS could not initialize its workspace";
  }
  typename Kernel::Params params = Kernel::to_underlying_arguments(args, workspace);
  if (Gemm::run(params, stream) != cutlass::Status::kSuccess) return cudaGetErrorString(cudaGetLastError());
  return nullptr;
}

// The CUTLASS kernel for out[tokens, n] = epilogue(in[tokens, k] @ weight[n, k]^T) posed as D[n, tokens]
// (token_major_arguments): both operands K-major, D column-major, no C operand, float32 accumulation.
// TileShape: rows of D (features) x columns (tokens) x depth per step. ClusterShape: CTAs along the rows that
// share each tile of tokens through TMA multicast. Persistent CTAs, one per SM.
//
// Warp-specialized: a producer warp streams tiles in by TMA for the consumer warp groups. Cooperative
// schedules (KernelTmaWarpSpecializedCooperative with epilogue TmaWarpSpecializedCooperative) have both
// consumer groups split each tile's MMAs and then its epilogue; ping-pong ones
// (KernelTmaWarpSpecializedPingpong with TmaWarpSpecialized) give each group its own tile, so one group's
// epilogue overlaps the other's MMAs. With erff the epilogue was too long to hide and ping-pong measured no
// faster (99 against 98 us for bert-base's FFN1 at 8,990 tokens on an H200); with gelu.cuh's GELU it mostly
// hides, and 128 x 128 ping-pong tiles take 83 us against 94 for 128 x 256 cooperative ones. What is left is
// the GELU's arithmetic: on an H100 at that shape the ping-pong kernel took 82.0 us, 71.3 with the bias
// alone, and cuBLAS's plain GEMM 76.0 (benchmarks/ffn_gemm.py; its K of 768 and wide output keep every
// kernel of this shape below FFN2's rate, 58 us for the same FLOPs).
//
// EpilogueTile: the piece of a tile the epilogue activates and stores at a time (CUTLASS's default for
// float16 output and ping-pong schedules is 64 x 32).
template <typename ElementIn, typename ElementOut, typename Fusion, typename TileShape, typename ClusterShape,
          typename KernelSchedule, typename EpilogueSchedule, typename TileScheduler = void,
          typename EpilogueTile = cutlass::epilogue::collective::EpilogueTileAuto>
struct TokenMajorGemm {
  using Accumulator = float;
  static constexpr int kInAlignment = 16 / sizeof(ElementIn);  // elements per 16-byte TMA access
  static constexpr int kOutAlignment = 16 / sizeof(ElementOut);

  using Epilogue = typename cutlass::epilogue::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, TileShape, ClusterShape,
      EpilogueTile, Accumulator, Accumulator, void,
      cutlass::layout::ColumnMajor, kOutAlignment, ElementOut, cutlass::layout::ColumnMajor, kOutAlignment,
      EpilogueSchedule, Fusion>::CollectiveOp;
  using Mainloop = typename cutlass::gemm::collective::CollectiveBuilder<
      cutlass::arch::Sm90, cutlass::arch::OpClassTensorOp, ElementIn, cutlass::layout::RowMajor, kInAlignment,
      ElementIn, cutlass::layout::ColumnMajor, kInAlignment, Accumulator, TileShape, ClusterShape,
      cutlass::gemm::collective::StageCountAutoCarveout<static_cast<int>(sizeof(typename Epilogue::SharedStorage))>,
      KernelSchedule>::CollectiveOp;
  using Kernel =
      cutlass::gemm::kernel::GemmUniversal<cute::Shape<int, int, int, int>, Mainloop, Epilogue, TileScheduler>;
  using Gemm = cutlass::gemm::device::GemmUniversalAdapter<Kernel>;
};

template <typename Element, typename TileShape, typename ClusterShape, typename KernelSchedule,
          typename EpilogueSchedule, typename EpilogueTile = cutlass::epilogue::collective::EpilogueTileAuto>
struct BiasGeluGemm {
  // D = gelu_erf(acc + bias[row]) in float32 (gelu.cuh); no C operand (void) so nothing is read but the bias.
  using Fusion = cutlass::epilogue::fusion::LinCombPerRowBiasEltAct<GeluErfFit::Activation, Element, float,
                                                                     Element, Element, float>;
  using Gemm = typename TokenMajorGemm<Element, Element, Fusion, TileShape, ClusterShape, KernelSchedule,
                                       EpilogueSchedule, void, EpilogueTile>::Gemm;

  static const char* run(int64_t tokens, int64_t n, int64_t k, const void* in, const void* weight, const void* bias,
                         void* out, void* workspace, size_t workspace_bytes, int sm_count, cudaStream_t stream) {
    typename Gemm::Arguments args =
        token_major_arguments<Gemm, Element, Element>(tokens, n, k, in, weight, out, sm_count);
    args.epilogue.thread.alpha = 1.0f;
    args.epilogue.thread.beta = 0.0f;
    args.epilogue.thread.bias_ptr = static_cast<const Element*>(bias);

    return launch<Gemm>(args, workspace, workspace_bytes, stream);
  }
};

// The FP8 FFN's GEMMs (sm90::fp8_linear): e4m3 operands, accumulated by the tensor cores across the whole
// k loop ("fast accumulation" schedules). CUTLASS's promoting mainloop, which adds the partial sums into
// float32 registers every few k-blocks, measured no faster than float16 on the H100 (1.62 against 1.67 ms
// for bert-base's FFNs at 8,990 tokens; fast accumulation 1.33 ms), and the digits it keeps are far below
// e4m3's own rounding (tests/test_fp8.py holds the result to the float32 reference either way). Epilogue:
//   D = scale_d * activation(acc * (*in_step) * (*weight_step) + bias[row])
// where scale_d (*out_inverse) applies only to an e4m3 D. The steps are read from device memory, so one
// launch serves every layer and a captured graph keeps no host copy of them.
template <typename ElementOut, typename ElementBias, template <class> class Activation, typename TileShape,
          typename ClusterShape, typename KernelSchedule, typename EpilogueSchedule, typename TileScheduler>
struct Fp8Gemm {
  using ElementIn = cutlass::float_e4m3_t;
  using Fusion = cutlass::epilogue::fusion::ScaledLinCombPerRowBiasEltAct<Activation, ElementOut, float,
                                                                           ElementBias, ElementOut, float>;
  using Gemm = typename TokenMajorGemm<ElementIn, ElementOut, Fusion, TileShape, ClusterShape, KernelSchedule,
                                       EpilogueSchedule, TileScheduler>::Gemm;

  static const char* run(int64_t tokens, int64_t n, int64_t k, const void* in, const void* weight, const void* bias,
                         const float* in_step, const float* weight_step, const float* out_inverse, void* out,
                         void* workspace, size_t workspace_bytes, int sm_count, cudaStream_t stream) {
    typename Gemm::Arguments args =
        token_major_arguments<Gemm, ElementIn, ElementOut>(tokens, n, k, in, weight, out, sm_count);
    auto& fusion = args.epilogue.thread;
    fusion.alpha = 1.0f;
    fusion.beta = 0.0f;
    fusion.scale_a_ptr = weight_step;  // A is the weight here, B the input
    fusion.scale_b_ptr = in_step;
    fusion.scale_d_ptr = out_inverse;
    fusion.bias_ptr = static_cast<const ElementBias*>(bias);  // nullptr: no bias
    return launch<Gemm>(args, workspace, workspace_bytes, stream);
  }
};

// Instantiates one tile configuration's four FP8 kernels (FFN1 with bias + GELU to e4m3, FFN2 to the
// model's dtype; float16 and bfloat16) as an Fp8TileConfig.
template <typename TileShape, typename ClusterShape, typename KernelSchedule, typename EpilogueSchedule,
          typename TileScheduler>
struct Fp8Configuration {
  template <typename Element>
  using Ffn1 = Fp8Gemm<cutlass::float_e4m3_t, Element, GeluErfFit::Activation, TileShape, ClusterShape,
                       KernelSchedule, EpilogueSchedule, TileScheduler>;
  template <typename Element>
  using Ffn2 = Fp8Gemm<Element, Element, cutlass::epilogue::thread::Identity, TileShape, ClusterShape, KernelSchedule,
                       EpilogueSchedule, TileScheduler>;

  static constexpr Fp8TileConfig make(const char* name) {
    return {name, &Ffn1<cutlass::half_t>::run, &Ffn1<cutlass::bfloat16_t>::run, &Ffn2<cutlass::half_t>::run,
            &Ffn2<cutlass::bfloat16_t>::run};
  }
};

}  // namespace fusedbert::cuda::sm90::detail
