// The encoder's linear layers through cuBLASLt, with the bias (and an activation cuBLASLt computes
// exactly as the model asks) fused into the GEMM's epilogue; BERT's erf GELU through CUTLASS on Hopper.
#pragma once

#include <ATen/core/Tensor.h>

#include <string>
#include <vector>

#include "sm90_gemm.h"

namespace fusedbert::cuda {

enum class Epilogue {
  None,      // out = in @ weight^T
  Bias,      // out = in @ weight^T + bias
  BiasRelu,  // out = relu(in @ weight^T + bias)
  // out = gelu_tanh(in @ weight^T + bias): cuBLASLt's GELU epilogue is the tanh approximation, so this
  // serves gelu_new / gelu_pytorch_tanh only.
  BiasGeluTanh,
  // out = gelu_erf(in @ weight^T + bias), BERT's exact GELU: no cuBLASLt epilogue computes it. On Hopper,
  // float16/bfloat16, a CUTLASS kernel fuses it (sm90_gemm.h); elsewhere, or where timing the shape
  // finds it faster, the GEMM is followed by bias_activation_.
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

// The implementations of Epilogue::BiasGeluErf this build holds: "cublaslt" (the GEMM, then
// bias_activation_) and the Hopper CUTLASS kernels' names (sm90_gemm.h). linear() picks one per shape
// (timed when autotuning is on); linear_bias_gelu runs one by name, for tests and benchmarks.
std::vector<std::string> bias_gelu_kernels();
void linear_bias_gelu(
    at::Tensor& out,
    const at::Tensor& in,
    const at::Tensor& weight,
    const at::Tensor& bias,
    const std::string& kernel,
    const at::Tensor& workspace);

// Whether fp8_linear can run on the current device: a build with the Hopper CUTLASS kernels, on sm_90.
bool fp8_linear_available();

// One of the FP8 FFN's GEMMs (sm90::fp8_linear; fusedbert/fp8.py): in [T, K] and weight [N, K] e4m3
// codes; out [T, N] e4m3 codes for Fp8Stage::Ffn1 (bias [N] in the model's dtype), the model's dtype for
// Ffn2 (bias unused). `scales` is the layer's row of fp8_ffn_scales on the device. Picks a tile
// configuration or, up to kSkinnyMaxRows tokens, the small-batch kernel (skinny_gemm.h) per shape, timed
// as linear() times its kernels.
void fp8_linear(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                sm90::Fp8Stage stage, const at::Tensor& scales, at::ScalarType model_dtype,
                const at::Tensor& workspace);

// The kernels of fp8_linear this build holds (sm90_gemm.h's tile configurations, then "skinny"), and
// fp8_linear run by one of them, untimed, for tests and benchmarks.
std::vector<std::string> fp8_kernels();
void fp8_linear_named(at::Tensor& out, const at::Tensor& in, const at::Tensor& weight, const at::Tensor& bias,
                      sm90::Fp8Stage stage, const at::Tensor& scales, at::ScalarType model_dtype,
                      const std::string& kernel, const at::Tensor& workspace);

}  // namespace fusedbert::cuda
