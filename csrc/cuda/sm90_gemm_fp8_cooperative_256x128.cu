// sm90::fp8_linear with cooperative 256 x 128 tiles (256 features x 128 tokens), 128 deep (see sm90_gemm.cuh).
// Empty unless setup.py found CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Configuration =
    Fp8Configuration<cute::Shape<cute::_256, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                     cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum,
                     cutlass::epilogue::TmaWarpSpecializedCooperative, void>;

extern const Fp8TileConfig kFp8Cooperative256x128 = Configuration::make("cutlass_sm90_fp8_cooperative_256x128");

}  // namespace fusedbert::cuda::sm90::detail
#endif
