// The list of sm90::linear_bias_gelu's tile configurations (sm90_gemm.h); the kernels are in sm90_gemm_*.cu.
#include "sm90_gemm.h"

namespace fusedbert::cuda::sm90 {
namespace {

#ifdef FUSEDBERT_WITH_SM90_GEMM
// The first is the default where a shape has not been timed (gemm.cpp).
const detail::TileConfig* const kConfigs[] = {&detail::kPingpong128x128, &detail::kCooperative128x256};
constexpr int kConfigCount = sizeof(kConfigs) / sizeof(kConfigs[0]);
#else
const detail::TileConfig* const* const kConfigs = nullptr;
constexpr int kConfigCount = 0;
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

}  // namespace fusedbert::cuda::sm90
