// sm90::linear_bias_gelu with cooperative 128 x 256 tiles (see sm90_gemm.cuh). Empty unless setup.py found
// CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Tile = cute::Shape<cute::_128, cute::_256, cute::_64>;
using Cluster = cute::Shape<cute::_2, cute::_1, cute::_1>;

template <typename Element>
using Gemm = BiasGeluGemm<Element, Tile, Cluster, cutlass::gemm::KernelTmaWarpSpecializedCooperative,
                          cutlass::epilogue::TmaWarpSpecializedCooperative>;

extern const TileConfig kCooperative128x256 = {"cutlass_sm90_128x256", &Gemm<cutlass::half_t>::run,
                                               &Gemm<cutlass::bfloat16_t>::run};

}  // namespace fusedbert::cuda::sm90::detail
#endif
