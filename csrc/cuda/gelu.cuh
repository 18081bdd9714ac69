// BERT's exact (erf) GELU for float16 / bfloat16 outputs and for the FP8 FFN's e4m3 codes, computed in
// float32 at a fraction of erff's cost. gelu_erf_fit is shared by the separate bias + GELU pass
// (kernels.cu), the small-batch GEMM (skinny_gemm.cu) and the CUTLASS FFN1 epilogues (sm90_gemm.cuh), so the
// GEMM tuner's choices compute the same function.
//
// Why: the activation bounds the FFN1 epilogue, and a ping-pong kernel hides its epilogue behind the other
// warp group's MMAs only while it is the shorter. On the H100 at 8,990 tokens of bert-base, 128 x 128 tiles:
// the previous form here (a polynomial in x^2, then x / (1 + 2^p): ex2, a reciprocal and a 14-op dependent
// chain) took 90 us in the float16 kernel and 77 in the FP8 one (42 with no activation at all); this form
// with a degree-7 polynomial 81 and 61, and the FP8 one with degree 5 (two FMAs fewer) 54. Degree 5 in the
// float16 kernel too, measured side by side in one process (benchmarks/ffn_gemm.py, H100): bert-base's FFN1
// 79.0 -> 76.1 us at 8,990 tokens and 25.4 -> 24.3 at 2,172; MiniLM's 31.1 -> 29.4 and 12.4 -> 11.8.
// erff, about 20 instructions with branches' worth of selects, was slower still.
//
// How: with s = |x| and t = Phi(-s), gelu(x) = max(x, 0) - s * t for either sign of x (x - x Phi(-x) above
// 0, x Phi(x) below). log2(Phi(-s)) is smooth on s >= 0, so a polynomial in s fits it on [0, 5]
// (scripts/fit_gelu.py); past 5 it keeps falling and t goes to 0. That is one FMA per degree, one ex2 and
// one FMA, no division, and neither sign cancels (t <= 1/2).
//
// Error against the exact GELU (fp64), float32 evaluation, tests/test_gelu_fit.py holding the bound: at most
// 0.14 of a float16 ulp for |x| < 4 (a bfloat16 ulp is 8 of those, an e4m3 step 128) and 1.4e-5 absolute
// anywhere. So a float16 output is the correctly rounded GELU or, rarely, its neighbour; the textbook
// 0.5 x (1 + erff(x / sqrt 2)) is off by up to 0.5 ulp where 1 + erf cancels (negative x). Going from degree
// 7 (0.006 ulp) to 5 moved the encoder's largest difference from fp32 Hugging Face at 128 sequences from
// 8.0e-3 to 8.5e-3 for bert-base and from 4.5e-3 to 4.6e-3 for MiniLM (tolerances 2.4e-2 and 1.5e-2). For
// e4m3 it moved 0.05% of FFN1's codes, where the FP8 GEMM's fast accumulation moves 1.4% (tests/test_fp8.py
// holds the kernels to that).
// Infinite inputs give NaN. float32 outputs keep erff: 1e-6 is not below their rounding.
#pragma once

#include <cuda_runtime.h>

namespace fusedbert::cuda {

// max(x, 0) - s * Phi(-s) with s = |x|, where log2(Phi(-s)) is the polynomial in s with coefficients
// `fit`, highest degree first (scripts/fit_gelu.py), evaluated by Horner's rule.
template <int kCoefficients>
__device__ __forceinline__ float gelu_from_log2_phi_fit(float x, const float (&fit)[kCoefficients]) {
  const float s = fabsf(x);
  float p = fit[0];
#pragma unroll
  for (int i = 1; i < kCoefficients; ++i) p = fmaf(p, s, fit[i]);
  float t;  // Phi(-s), flushed to 0 below float32's normal range
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(t) : "f"(p));
  return fmaf(-s, t, fmaxf(x, 0.0f));
}

__device__ __forceinline__ float gelu_erf_fit(float x) {
  constexpr float kFit[] = {-0.00033064294257201254f, 0.005925048608332872f, -0.04856766015291214f,
                            -0.46365347504615784f,    -1.1494300365447998f,  -1.0000978708267212f};
  return gelu_from_log2_phi_fit(x, kFit);
}

}  // namespace fusedbert::cuda
