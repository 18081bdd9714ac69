// The lists of sm90::linear_bias_gelu's and sm90::fp8_linear's tile configurations (sm90_gemm.h); the kernels
// are in sm90_gemm_*.cu.
#include "sm90_gemm.h"

namespace fusedbert::cuda::sm90 {
namespace {

#ifdef FUSEDBERT_WITH_SM90_GEMM
// The first is the default where a shape has not been timed (gemm.cpp).
const detail::TileConfig* const kConfigs[] = {&detail::kPingpong128x128, &detail::kCooperative128x256};
constexpr int kConfigCount = sizeof(kConfigs) / sizeof(kConfigs[0]);
// The first is the default where a shape has not been timed and the small-batch kernel does not apply
// (gemm.cpp): on the H100 the fastest of these for both FFN GEMMs at 128 tokens, and at most 18% behind the
// fastest at 2,172 and 8,990 (benchmarks/ffn_gemm.py).
const detail::Fp8TileConfig* const kFp8Configs[] = {&detail::kFp8Pingpong64x128, &detail::kFp8Pingpong128x128,
                                                    &detail::kFp8StreamK128x128, &detail::kFp8Cooperative256x128};
constexpr int kFp8ConfigCount = sizeof(kFp8Configs) / sizeof(kFp8Configs[0]);
#else
const detail::TileConfig* const* const kConfigs = nullptr;
constexpr int kConfigCount = 0;
const detail::Fp8TileConfig* const* const kFp8Configs = nullptr;
constexpr int kFp8ConfigCount = 0;
#endif

}  // namespace

int kernel_count() {
  return kConfigCount;
}

const char* kernel_name(int kernel) {
  return kernel >= 0 && kernel < kConfigCount ? kConfigs[kernel]->name : nullptr;
}

const char* linear_bias_gelu(int kernel, Element element, int64_t tokens, int64_t n, int64_t k, const void* in,
                             const void* weight, const void* bias, void* out, void* workspace,
                             size_t workspace_bytes, int sm_count, cudaStream_t stream) {
  if (kernel < 0 || kernel >= kConfigCount) return "no such sm_90 kernel in this build";
  const detail::TileConfig& config = *kConfigs[kernel];
  const detail::Launch launch = element == Element::Half ? config.half : config.bfloat16;
  return launch(tokens, n, k, in, weight, bias, out, workspace, workspace_bytes, sm_count, stream);
}

int fp8_kernel_count() {
  return kFp8ConfigCount;
}

const char* fp8_kernel_name(int kernel) {
  return kernel >= 0 && kernel < kFp8ConfigCount ? kFp8Configs[kernel]->name : nullptr;
}

const char* fp8_linear(int kernel, Fp8Stage stage, Element element, int64_t tokens, int64_t n, int64_t k,
                       const void* in, const void* weight, const void* bias, const float* in_step,
                       const float* weight_step, const float* out_inverse, void* out, void* workspace,
                       size_t workspace_bytes, int sm_count, cudaStream_t stream) {
  if (kernel < 0 || kernel >= kFp8ConfigCount) return "no such sm_90 FP8 kernel in this build";
  const detail::Fp8TileConfig& config = *kFp8Configs[kernel];
  const bool half = element == Element::Half;
  const detail::Fp8Launch launch = stage == Fp8Stage::Ffn1 ? (half ? config.ffn1_half : config.ffn1_bfloat16)
                                                           : (half ? config.ffn2_half : config.ffn2_bfloat16);
  return launch(tokens, n, k, in, weight, bias, in_step, weight_step, out_inverse, out, workspace, workspace_bytes,
                sm_count, stream);
}

}  // namespace fusedbert::cuda::sm90
