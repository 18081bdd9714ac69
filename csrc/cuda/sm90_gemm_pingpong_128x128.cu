// sm90::linear_bias_gelu with ping-pong 128 x 128 tiles (see sm90_gemm.cuh). Empty unless setup.py found
// CUTLASS.
#ifdef FUSEDBERT_WITH_SM90_GEMM
#include "sm90_gemm.cuh"

namespace fusedbert::cuda::sm90::detail {

using Tile = cute::Shape<cute::_128, cute::_128, cute::_64>;
using Cluster = cute::Shape<cute::_2, cute::_1, cute::_1>;
// The epilogue stores 64 x 64 at a time, where CUTLASS's default is 64 x 32: on the H100, 0-7% faster at
// every workload of benchmarks.ffn_gemm (bert-base at 8,990 tokens 80.5 against 82.0 us, MiniLM 29.6
// against 31.7; ffn-gemm-epilogue-attempt-nvidia-h100-20261206.json). Clusters of one CTA instead of
// two were no faster (80.4 us).
using EpilogueTile = cute::Shape<cute::_64, cute::_64>;

template <typename Element>
using Gemm = BiasGeluGemm<Element, Tile, Cluster, cutlass::gemm::KernelTmaWarpSpecializedPingpong,
                          cutlass::epilogue::TmaWarpSpecialized, EpilogueTile>;

extern const TileConfig kPingpong128x128 = {"cutlass_sm90_pingpong_128x128", &Gemm<cutlass::half_t>::run,
                                            &Gemm<cutlass::bfloat16_t>::run};

}  // namespace fusedbert::cuda::sm90::detail
#endif
