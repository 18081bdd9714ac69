// The FFN activations in float32, as every fused epilogue computes them: the bias + activation pass
// (kernels.cu) and the small-batch GEMM (skinny_gemm.cu), so the tuner's choices agree on the function.
#pragma once

#include <cuda_runtime.h>

#include <type_traits>

#include "../encoder_args.h"
#include "gelu.cuh"

namespace fusedbert::cuda {

template <typename scalar_t, Activation kAct>
__device__ __forceinline__ float activate(float x) {
  if constexpr (kAct == Activation::GeluErf && std::is_same_v<scalar_t, float>) {
    return 0.5f * x * (1.0f + erff(x * 0.70710678118654752f));
  } else if constexpr (kAct == Activation::GeluErf) {
    return gelu_erf_fit(x);  // as the CUTLASS epilogue computes it (gelu.cuh)
  } else if constexpr (kAct == Activation::GeluTanh) {
    return 0.5f * x * (1.0f + tanhf(0.7978845608028654f * (x + 0.044715f * x * x * x)));
  } else {
    return fmaxf(x, 0.0f);
  }
}

}  // namespace fusedbert::cuda
