// The encoder's linear layers through cuBLASLt, with the bias (and an activation cuBLASLt computes
// exactly as the model asks) fused into the GEMM's epilogue.
#pragma once

#include <ATen/core/Tensor.h>

namespace fusedbert::cuda {

enum class Epilogue {
  None,      // out = in @ weight^T
  Bias,      // out = in @ weight^T + bias
  BiasRelu,  // out = relu(in @ weight^T + bias)
  // out = gelu_tanh(in @ weight^T + bias): cuBLASLt's GELU epilogue is the tanh approximation, so this
  // serves gelu_new / gelu_pytorch_tanh only.
  BiasGeluTanh,
  // out = gelu_erf(in @ weight^T + bias), BERT's exact GELU: no cuBLASLt epilogue computes it, so the
  // GEMM is followed by bias_activation_.
  BiasGeluErf,
};

// Scratch space for cuBLASLt's algorithms, allocated once per encoder call from the caching allocator.
at::Tensor gemm_workspace(const at::Tensor& like);

// out[T, N] = epilogue(in[T, K] @ weight[N, K]^T, bias[N]) on the current stream. All contiguous, one
// dtype. float32 uses TF32 only where at::globalContext().allowTF32CuBLAS() allows it; float16 and
// bfloat16 accumulate in float32.
void linear(
    at::Tensor& out,
    const at::Tensor& in,
    const at::Tensor& weight,
    const at::Tensor& bias,
    Epilogue epilogue,
    const at::Tensor& workspace);

}  // namespace fusedbert::cuda
