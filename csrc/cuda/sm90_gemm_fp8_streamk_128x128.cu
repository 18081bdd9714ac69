// sm90::fp8_linear with cooperative 128 x 128 tiles, 128 deep, scheduled stream-K (see sm90_gemm.cuh): the k
// loop split over SMs that whole tiles would leave idle, which pays for itself where the last wave of tiles
// would be short (on the H100: MiniLM's FFN2 at 8,990 tokens). Empty unless setup.py found CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Configuration =
    Fp8Configuration<cute::Shape<cute::_128, cute::_128, cute::_128>, cute::Shape<cute::_1, cute::_1, cute::_1>,
                     cutlass::gemm::KernelTmaWarpSpecializedCooperativeFP8FastAccum,
                     cutlass::epilogue::TmaWarpSpecializedCooperative, cutlass::gemm::StreamKScheduler>;

extern const Fp8TileConfig kFp8StreamK128x128 = Configuration::make("cutlass_sm90_fp8_streamk_128x128");

}  // namespace fusedbert::cuda::sm90::detail
#endif
