// The ops' arguments: the encoder's weight-list layout, and the checks of the encoder and the embeddings
// shared by every backend.
#pragma once

#include <ATen/core/Tensor.h>
#include <c10/util/string_view.h>

#include <cstdint>
#include <optional>

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

// The FP8 FFN (fusedbert/fp8.py): one float32 row of fp8_ffn_scales per layer. A step is what one unit of
// an e4m3 code is worth (value = code * step); an inverse is 1 / step, rounded to float32 once, by which
// a value is multiplied before it is rounded to e4m3 (saturating at +-448).
enum Fp8ScaleSlot : int64_t {
  kFfnInputStep = 0,  // the FFN's input, LN1's output
  kFfnInputInverse,
  kFfn1WeightStep,
  kFfnInnerStep,  // FFN2's input, gelu(FFN1)
  kFfnInnerInverse,
  kFfn2WeightStep,
  kFp8ScalesPerLayer
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
  bool fp8_ffn;  // FFN weights are float8_e4m3fn, with fp8_ffn_scales
};

// Validates every argument of fusedbert::encoder (shapes, dtypes, devices, weight-list layout,
// the activation name, the FP8 FFN's scales) and returns the dimensions. Mask *values* are checked by
// each backend, where it reads them anyway.
EncoderDims check_encoder_args(
    const at::Tensor& hidden,
    const at::Tensor& attention_mask,
    at::TensorList weights,
    int64_t num_heads,
    double layer_norm_eps,
    c10::string_view activation,
    const std::optional<at::Tensor>& fp8_ffn_scales);

// fusedbert::embeddings' index tensors, checked and ready for either backend: int64, [B, S] (position and
// token type ids broadcast over the batch where they were given once), any strides.
struct EmbeddingIndices {
  at::Tensor input_ids;
  at::Tensor token_type_ids;
  at::Tensor position_ids;
  int64_t batch;
  int64_t seq_len;
  int64_t width;  // E, the tables' row size
};

// Validates every argument of fusedbert::embeddings (shapes, dtypes, devices, eps). Index *values* are
// checked by each backend where it reads them.
EmbeddingIndices check_embeddings_args(
    const at::Tensor& input_ids,
    const at::Tensor& token_type_ids,
    const at::Tensor& position_ids,
    const at::Tensor& word_embeddings,
    const at::Tensor& token_type_embeddings,
    const at::Tensor& position_embeddings,
    const at::Tensor& layer_norm_weight,
    const at::Tensor& layer_norm_bias,
    double layer_norm_eps);

inline const at::Tensor& layer_weight(at::TensorList weights, int64_t layer, WeightSlot slot) {
  return weights[layer * kTensorsPerLayer + slot];
}

}  // namespace fusedbert
