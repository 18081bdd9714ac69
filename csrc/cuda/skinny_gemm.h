// GEMMs of a few token rows (a small batch's, up to kSkinnyMaxRows), where the time is that of reading the
// weights: out[M, N] = epilogue(in[M, K] @ weight[N, K]^T + bias), float16/bfloat16, sm_80 and later.
//
// Why: cuBLASLt's best kernels for M <= 64 took 4-5 us per bert-base GEMM on an H200 (QKV: 3.5 MB of
// weights, 0.7 TB/s), and the FFN's second GEMM added a split-K reduction kernel and FFN1 a separate erf-GELU
// pass: 9 launches and ~30 us per layer at one sequence of 16 tokens. This kernel spreads each weight
// matrix over every SM with warp-level MMAs and split-K (on sm_90 on: a tile's splits form a thread block
// cluster), and does bias, activation and the split-K sum in its own epilogue: one launch per GEMM, and no
// workspace. linear() times it against cuBLASLt per shape from 33 rows, and on Hopper takes it untimed below
// (gemm.cpp, kSkinnyUntimedRows).
#pragma once

#include <ATen/core/Tensor.h>

#include "gemm.h"

namespace fusedbert::cuda {

constexpr int64_t kSkinnyMaxRows = 64;

// Whether skinny_linear computes this GEMM; why not, when it does not (nullptr when it does).
const char* skinny_linear_refusal(at::ScalarType dtype, int64_t rows, int64_t n, int64_t k, int64_t alignment);

void skinny_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                   Epilogue epilogue);

// The same kernel for the FP8 FFN's GEMMs (gemm.h's fp8_linear; sm90::fp8_linear computes the same): in and
// weight e4m3 codes, their product scaled by *in_step * *weight_step in float32; Ffn1 then adds the bias
// and writes e4m3 codes of gelu.cuh's gelu_erf_fit times *out_inverse, Ffn2 writes model_dtype. Why: at 16
// tokens of bert-base on the H100 it takes 4.7 and 6.9 us (FFN1, FFN2), the CUTLASS FP8 kernels 7.5 and 9.0,
// which made FP8 slower than float16 at one sequence.
const char* skinny_fp8_linear_refusal(int64_t rows, int64_t n, int64_t k, int64_t alignment);
void skinny_fp8_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                       sm90::Fp8Stage stage, const float* in_step, const float* weight_step,
                       const float* out_inverse, at::ScalarType model_dtype);

}  // namespace fusedbert::cuda
