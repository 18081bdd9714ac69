// BERT's exact (erf) GELU for float16 / bfloat16 outputs, computed in float32 at a fraction of erff's
// cost. Shared by the separate bias + GELU pass (kernels.cu) and the CUTLASS FFN epilogue (sm90_gemm.cuh),
// so the GEMM tuner's two choices compute the same function.
//
// Why: erff dominated the FFN1 epilogue. On an H200 at 8,990 tokens of bert-base the cooperative CUTLASS
// kernel took 75 us with the bias alone, 80 us with the tanh GELU and 102 us with erff; with this GELU 97
// (erff 103 in that run), and it made a ping-pong kernel, which hides the epilogue, the fastest (83 us). The
// separate pass after cuBLASLt gains alike (the whole FFN1 at 8,990 tokens: 109 us with erff, 100 with this).
//
// How: gelu(x) = x * Phi(x) = x / (1 + exp(-logit(Phi(x)))), and logit(Phi(x)) / x is even and smooth,
// so a degree-7 polynomial in x^2 fits it on [0, 5.5] (scripts/fit_gelu.py derives the coefficients,
// stored pre-multiplied by -log2(e) for ex2). That is 8 FMAs and two MUFU ops (ex2, rcp) where erff takes
// about 20 instructions with branches' worth of selects. Past |x| = 5.5 the argument is held at the
// bound: Phi(-5.5) = 1.9e-8, so the error there is under 1.9e-8 * |x|.
//
// Error against the exact GELU (fp64), float32 evaluation: at most 0.02 of a float16 ulp for |x| < 4 and
// 2.1e-6 absolute anywhere; the textbook 0.5 x (1 + erff(x / sqrt 2)) is off by up to 0.5 ulp where
// 1 + erf cancels (negative x). tests/test_gelu_fit.py holds these bounds. float32 outputs keep erff:
// 2e-6 is not below their rounding.
#pragma once

#include <cuda_runtime.h>

namespace fusedbert::cuda {

constexpr float kGeluFitBound = 5.5f;

__device__ __forceinline__ float gelu_erf_low_precision(float x) {
  const float xc = fminf(fmaxf(x, -kGeluFitBound), kGeluFitBound);
  const float u = xc * xc;
  // -log2(e) * logit(Phi(xc)) / xc as a polynomial in u = xc^2 (scripts/fit_gelu.py).
  float p = 8.37477587278812e-11f;
  p = fmaf(p, u, -9.619069096800104e-09f);
  p = fmaf(p, u, 4.6297196831801557e-07f);
  p = fmaf(p, u, -1.1897746844624635e-05f);
  p = fmaf(p, u, 0.00015784792776685208f);
  p = fmaf(p, u, 0.00012034041719743982f);
  p = fmaf(p, u, -0.10491535812616348f);
  p = fmaf(p, u, -2.302145004272461f);
  float e;  // exp(-logit(Phi(xc))), in [2^-26, 2^26] by the clamp: no overflow, no division by inf
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(e) : "f"(xc * p));
  return __fdividef(x, 1.0f + e);
}

}  // namespace fusedbert::cuda
