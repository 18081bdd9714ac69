// The op's schema, defined once; the CPU and CUDA kernels register against it in their own files.
#include <torch/library.h>

#include <string>

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

namespace {

std::string build_info() {
  return "torch=" FUSEDBERT_TORCH_VERSION " cuda=" FUSEDBERT_CUDA_FLAG;
}

}  // namespace

TORCH_LIBRARY(fusedbert, m) {
  // hidden: [B, S, H] float32/float16/bfloat16; attention_mask: [B, S], nonzero = real token.
  // weights: 12 tensors per layer in the order of csrc/encoder_args.h. Returns [B, S, H] with
  // padding positions set to zero.
  m.def(
      "encoder(Tensor hidden, Tensor attention_mask, Tensor[] weights, int num_heads, float layer_norm_eps, "
      "str activation, bool remove_padding) -> Tensor");
  m.def("build_info() -> str", &build_info);
}
