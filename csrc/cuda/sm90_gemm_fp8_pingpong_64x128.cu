// sm90::fp8_linear with ping-pong 64 x 128 tiles (64 features x 128 tokens), 128 deep (see sm90_gemm.cuh), the
// default: twice the tiles of 128 x 128 where the tokens are few, and no stream-K workspace to clear before each
// launch. Empty unless setup.py found CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Configuration =
    Fp8Configuration<cute::Shape<cute::_64, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                     cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum, cutlass::epilogue::TmaWarpSpecialized,
                     void>;

extern const Fp8TileConfig kFp8Pingpong64x128 = Configuration::make("cutlass_sm90_fp8_pingpong_64x128");

}  // namespace fusedbert::cuda::sm90::detail
#endif
