// The op's schema, defined once; the CPU and CUDA kernels register against it in their own files.
#include <torch/library.h>

#include <atomic>
#include <string>
#include <vector>

#include "settings.h"
#ifdef FUSEDBERT_WITH_CUDA
#include "cuda/gemm.h"
#endif

#ifndef FUSEDBERT_TORCH_VERSION
#error "setup.py defines FUSEDBERT_TORCH_VERSION (the torch this library is compiled against)"
#endif

#ifdef FUSEDBERT_WITH_CUDA
#define FUSEDBERT_CUDA_FLAG "1"
#else
#define FUSEDBERT_CUDA_FLAG "0"
#endif

// Read from the file's bytes by fusedbert/_ops.py and the handler *before* loading: a library built for
// another torch fails to load with undefined symbols, so the check cannot go through the op itself.
extern "C" __attribute__((used, visibility("default"))) const char fusedbert_build_marker[] =
    "FUSEDBERT_BUILD torch=" FUSEDBERT_TORCH_VERSION " cuda=" FUSEDBERT_CUDA_FLAG " END";

namespace fusedbert {
namespace {

std::atomic<bool> gemm_autotuning{false};
std::atomic<int64_t> token_capacity{0};

std::string build_info() {
  return "torch=" FUSEDBERT_TORCH_VERSION " cuda=" FUSEDBERT_CUDA_FLAG;
}

bool set_gemm_autotuning(bool enabled) {
  return gemm_autotuning.exchange(enabled);
}

int64_t set_capture_token_capacity(int64_t rows) {
  TORCH_CHECK(rows >= 0, "fusedbert::set_capture_token_capacity: rows must be >= 0; got ", rows);
  return token_capacity.exchange(rows);
}

std::vector<std::string> linear_bias_gelu_kernels() {
#ifdef FUSEDBERT_WITH_CUDA
  return cuda::bias_gelu_kernels();
#else
  return {};
#endif
}

std::vector<std::string> fp8_ffn_linear_kernels() {
#ifdef FUSEDBERT_WITH_CUDA
  return cuda::fp8_kernels();
#else
  return {};
#endif
}

}  // namespace

bool gemm_autotuning_enabled() {
  return gemm_autotuning.load();
}

int64_t capture_token_capacity() {
  return token_capacity.load();
}

}  // namespace fusedbert

TORCH_LIBRARY(fusedbert, m) {
  // hidden: [B, S, H] float32/float16/bfloat16; attention_mask: [B, S], nonzero = real token.
  // weights: 12 tensors per layer in the order of csrc/encoder_args.h. Returns [B, S, H] with
  // padding positions set to zero. fp8_ffn_scales ([num_layers, 6] float32, csrc/encoder_args.h), when
  // given, runs each FFN in FP8 (e4m3): both FFN weight matrices are then float8_e4m3fn codes, the FFN's
  // input and its GELU output are rounded to e4m3 by those scales, and the GEMMs accumulate in float32
  // (fusedbert/fp8.py has the math and how the scales are chosen). float16/bfloat16 models, erf GELU.
  m.def(
      "encoder(Tensor hidden, Tensor attention_mask, Tensor[] weights, int num_heads, float layer_norm_eps, "
      "str activation, bool remove_padding, Tensor? fp8_ffn_scales=None) -> Tensor");
  // BERT's embeddings in one pass: LayerNorm(word[input_ids] + token_type[token_type_ids] +
  // position[position_ids]) * weight + bias, summed and normalized in float32, rounded once (dropout is the
  // identity at inference). input_ids: [B, S]; token_type_ids, position_ids: [B, S] or [1, S]; all int32 or
  // int64. word_embeddings [V, E], token_type_embeddings [T, E], position_embeddings [P, E],
  // layer_norm_weight and layer_norm_bias [E], one float dtype. Returns [B, S, E]. An index out of its
  // table's range is an error on CPU and a device-side assertion on CUDA, as in torch.nn.Embedding.
  m.def(
      "embeddings(Tensor input_ids, Tensor token_type_ids, Tensor position_ids, Tensor word_embeddings, "
      "Tensor token_type_embeddings, Tensor position_embeddings, Tensor layer_norm_weight, Tensor layer_norm_bias, "
      "float layer_norm_eps) -> Tensor");
  // CUDA only, float16/bfloat16, head size 32/64/128: the encoder's attention over packed sequences
  // (csrc/cuda/kernels.h), exposed for tests and benchmarks. qkv: [rows, 3H]; cu_seqlens: [B + 1] int32,
  // non-decreasing from 0 to at most rows (trusted, as the encoder builds it: not read back to check).
  m.def("packed_attention(Tensor qkv, Tensor cu_seqlens, int max_seqlen, int num_heads) -> Tensor");
  // CUDA only: the FFN's first GEMM with bias and erf-GELU, out[T, N] = gelu(input[T, K] @ weight[N, K]^T + bias[N]),
  // by one named implementation of those linear_bias_gelu_kernels() lists (empty on a CPU-only build):
  // "cublaslt" (GEMM, then a bias + GELU kernel) and, on builds with CUTLASS, Hopper kernels with the bias
  // and GELU in their epilogue. The encoder times them per shape and takes the fastest; exposed for tests
  // and benchmarks.
  m.def("linear_bias_gelu(Tensor input, Tensor weight, Tensor bias, str kernel) -> Tensor");
  m.def("linear_bias_gelu_kernels() -> str[]", &fusedbert::linear_bias_gelu_kernels);
  // CUDA only, on Hopper builds with CUTLASS: one of the FP8 FFN's GEMMs (the encoder's fp8_ffn_scales mode)
  // by one named kernel of fp8_ffn_linear_kernels() (the CUTLASS tile configurations, then "skinny", the
  // small-batch kernel, up to 64 token rows), for tests and benchmarks; the encoder times them per shape.
  // input [T, K] and weight [N, K] are float8_e4m3fn codes, scales one layer's row of fp8_ffn_scales ([6]
  // float32, on input's device), dtype the model's (float16/bfloat16). stage "ffn1": bias [N] in dtype,
  // returns gelu's output as e4m3 codes [T, N]; "ffn2": no bias, returns [T, N] in dtype.
  m.def("fp8_ffn_linear(Tensor input, Tensor weight, Tensor? bias, Tensor scales, str stage, ScalarType dtype, "
        "str kernel) -> Tensor");
  m.def("fp8_ffn_linear_kernels() -> str[]", &fusedbert::fp8_ffn_linear_kernels);
  m.def("build_info() -> str", &fusedbert::build_info);
  // Returns the previous setting. Off by default: timing costs milliseconds per new shape, which a server
  // meeting many token counts should not pay; CUDA graph warm-up (fixed shapes) turns it on. No effect on CPU.
  m.def("set_gemm_autotuning(bool enabled) -> bool", &fusedbert::set_gemm_autotuning);
  // Returns the previous value. See csrc/settings.h; set around a capture by fusedbert/cuda_graphs.py.
  m.def("set_capture_token_capacity(int rows) -> int", &fusedbert::set_capture_token_capacity);
}
