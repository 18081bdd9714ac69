// The FFN's first linear layer with its bias and BERT's exact (erf) GELU in the GEMM's epilogue, on
// Hopper (sm_90a) through CUTLASS's warp-specialized TMA kernels. cuBLASLt has no epilogue for the erf
// form (its GELU is the tanh approximation), and the separate bias + GELU pass it needs reads and
// writes the FFN's widest activation once more: 13% of a bert-base forward at 128 sequences.
//
// Free of ATen so the CUTLASS translation units stay small; gemm.cpp checks shapes, alignment and the
// device before calling, and times these kernels against cuBLASLt + bias_activation_ per shape.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

namespace fusedbert::cuda::sm90 {

enum class Element { Half, BFloat16 };

// Tile configurations built (none unless CUTLASS was found and sm_90a was among the targets), and each
// one's name.
int kernel_count();
const char* kernel_name(int kernel);

// out[tokens, n] = gelu_erf(in[tokens, k] @ weight[n, k]^T + bias[n]) by tile configuration `kernel`,
// accumulated and activated in float32 and rounded once. All row-major and contiguous, addresses
// 16-byte aligned, k and n multiples of 8. Launches on `stream`; returns nullptr, or what failed
// (CUTLASS could not implement the shape, the workspace is too small, the launch failed).
const char* linear_bias_gelu(int kernel, Element element, int64_t tokens, int64_t n, int64_t k, const void* in,
                             const void* weight, const void* bias, void* out, void* workspace,
                             size_t workspace_bytes, int sm_count, cudaStream_t stream);

// The FP8 FFN's GEMMs (fusedbert/fp8.py): in [tokens, k] and weight [n, k] e4m3 codes, accumulated in
// float32; in_step, weight_step and out_inverse point to float32 scalars in device memory.
enum class Fp8Stage {
  Ffn1,  // out[tokens, n] = e4m3(gelu_erf(in @ weight^T * in_step * weight_step + bias[n]) * out_inverse)
  Ffn2,  // out[tokens, n] = in @ weight^T * in_step * weight_step, in `element` (bias and out_inverse unused)
};

// Tile configurations of fp8_linear built, and each one's name.
int fp8_kernel_count();
const char* fp8_kernel_name(int kernel);

// `element` is the model's dtype: the bias's, and Ffn2's output's. Requirements and result as for
// linear_bias_gelu, with k and n multiples of 16.
const char* fp8_linear(int kernel, Fp8Stage stage, Element element, int64_t tokens, int64_t n, int64_t k,
                       const void* in, const void* weight, const void* bias, const float* in_step,
                       const float* weight_step, const float* out_inverse, void* out, void* workspace,
                       size_t workspace_bytes, int sm_count, cudaStream_t stream);

namespace detail {

using Launch = const char* (*)(int64_t tokens, int64_t n, int64_t k, const void* in, const void* weight,
                               const void* bias, void* out, void* workspace, size_t workspace_bytes, int sm_count,
                               cudaStream_t stream);

struct TileConfig {
  const char* name;
  Launch half;
  Launch bfloat16;
};

using Fp8Launch = const char* (*)(int64_t tokens, int64_t n, int64_t k, const void* in, const void* weight,
                                  const void* bias, const float* in_step, const float* weight_step,
                                  const float* out_inverse, void* out, void* workspace, size_t workspace_bytes,
                                  int sm_count, cudaStream_t stream);

struct Fp8TileConfig {
  const char* name;
  Fp8Launch ffn1_half;
  Fp8Launch ffn1_bfloat16;
  Fp8Launch ffn2_half;
  Fp8Launch ffn2_bfloat16;
};

// One per sm90_gemm_<configuration>.cu.
extern const TileConfig kPingpong128x128;
extern const TileConfig kCooperative128x256;
extern const Fp8TileConfig kFp8Pingpong128x128;
extern const Fp8TileConfig kFp8StreamK128x128;
extern const Fp8TileConfig kFp8Cooperative256x128;
extern const Fp8TileConfig kFp8Pingpong64x128;

}  // namespace detail
}  // namespace fusedbert::cuda::sm90
