// sm90::linear_bias_gelu with ping-pong 128 x 128 tiles (see sm90_gemm.cuh). Empty unless setup.py found
// CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Tile = cute::Shape<cute::_128, cute::_128, cute::_64>;
using Cluster = cute::Shape<cute::_2, cute::_1, cute::_1>;

template <typename Element>
using Gemm = BiasGeluGemm<Element, Tile, Cluster, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                          cutlass::epilogue::TmaWarpSpecialized>;

extern const TileConfig kPingpong128x128 = {"cutlass_sm90_pingpong_128x128", &Gemm<cutlass::half_t>::run,
                                            &Gemm<cutlass::bfloat16_t>::run};

}  // namespace fusedbert::cuda::sm90::detail
#endif
