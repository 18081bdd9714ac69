// The encoder op's arguments: the weight-list layout and the checks shared by every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>

namespace fusedbert {

enum class Activation { GeluErf, GeluTanh, Relu };

// One layer's slots in the flat `weights` list. Linear weights keep nn.Linear's [out, in] row-major
// layout: that is column-major [in, out], the "TN" form both MKL and cuBLAS take without a copy.
enum WeightSlot : int64_t {
  kQkvWeight = 0,  // [3H, H]  rows: all query heads, then all key heads, then all value heads
  kQkvBias,        // [3H]
  kAttnOutWeight,  // [H, H]
  kAttnOutBias,    // [H]
  kLn1Weight,      // [H]
  kLn1Bias,        // [H]
  kFfn1Weight,     // [I, H]
  kFfn1Bias,       // [I]
  kFfn2Weight,     // [H, I]
  kFfn2Bias,       // [H]
  kLn2Weight,      // [H]
  kLn2Bias,        // [H]
  kTensorsPerLayer
};

struct EncoderDims {
  int64_t batch;
  int64_t seq_len;
  int64_t hidden;
  int64_t num_heads;
  int64_t head_dim;
  int64_t intermediate;
  int64_t num_layers;
  Activation activation;
};

// Validates every argument of fusedbert::encoder (shapes, dtypes, devices, weight-list layout,
// the activation name) and returns the dimensions. Mask *values* are checked by each backend,
// where it reads them anyway.
EncoderDims check_encoder_args(
    const at::Tensor& hidden,
    const at::Tensor& attention_mask,
    at::TensorList weights,
    int64_t num_heads,
    double layer_norm_eps,
    c10::string_view activation);

inline const at::Tensor& layer_weight(at::TensorList weights, int64_t layer, WeightSlot slot) {
  return weights[layer * kTensorsPerLayer + slot];
}

}  // namespace fusedbert
