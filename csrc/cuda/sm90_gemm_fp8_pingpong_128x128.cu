// sm90::fp8_linear with ping-pong 128 x 128 tiles, 128 deep (see sm90_gemm.cuh): on the H100 the fastest for
// bert-base's FFN GEMMs at 2,172 and 8,990 tokens, now that FFN1's GELU epilogue is short enough to hide behind
// the other warp group's MMAs. Empty unless setup.py found CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Configuration =
    Fp8Configuration<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_2, cute::_1, cute::_1>,
                     cutlass::gemm::KernelTmaWarpSpecializedPingpongFP8FastAccum, cutlass::epilogue::TmaWarpSpecialized,
                     void>;

extern const Fp8TileConfig kFp8Pingpong128x128 = Configuration::make("cutlass_sm90_fp8_pingpong_128x128");

}  // namespace fusedbert::cuda::sm90::detail
#endif
