#include "encoder_args.h"

#include <ATen/ATen.h>
#include <c10/util/Exception.h>

#include <cmath>
#include <string>

namespace fusedbert {
namespace {

Activation parse_activation(c10::string_view name) {
  if (name == "gelu") return Activation::GeluErf;
  if (name == "gelu_new" || name == "gelu_pytorch_tanh") return Activation::GeluTanh;
  if (name == "relu") return Activation::Relu;
  TORCH_CHECK(false, "fusedbert::encoder: activation must be one of gelu, gelu_new, gelu_pytorch_tanh, relu; got \"",
              std::string(name), "\"");
}

const char* slot_name(int64_t slot) {
  static const char* const names[kTensorsPerLayer] = {
      "qkv_weight", "qkv_bias", "attn_out_weight", "attn_out_bias", "ln1_weight", "ln1_bias",
      "ffn1_weight", "ffn1_bias", "ffn2_weight", "ffn2_bias", "ln2_weight", "ln2_bias"};
  return names[slot];
}

}  // namespace

EncoderDims check_encoder_args(
    const at::Tensor& hidden,
    const at::Tensor& attention_mask,
    at::TensorList weights,
    int64_t num_heads,
    double layer_norm_eps,
    c10::string_view activation,
    const std::optional<at::Tensor>& fp8_ffn_scales) {
  TORCH_CHECK(hidden.dim() == 3, "fusedbert::encoder: hidden must be [batch, seq_len, hidden]; got ",
              hidden.dim(), " dims ", hidden.sizes());
  const auto dtype = hidden.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fusedbert::encoder: hidden must be float32, float16 or bfloat16; got ", dtype);
  TORCH_CHECK(!(hidden.is_cpu() && dtype == at::kHalf),
              "fusedbert::encoder: float16 is not supported on CPU; use bfloat16 on CPU or run on CUDA");

  TORCH_CHECK(attention_mask.dim() == 2, "fusedbert::encoder: attention_mask must be [batch, seq_len]; got ",
              attention_mask.sizes());
  TORCH_CHECK(attention_mask.size(0) == hidden.size(0) && attention_mask.size(1) == hidden.size(1),
              "fusedbert::encoder: attention_mask ", attention_mask.sizes(), " does not match hidden ",
              hidden.sizes(), " in [batch, seq_len]");
  const auto mask_dtype = attention_mask.scalar_type();
  TORCH_CHECK(mask_dtype == at::kBool || mask_dtype == at::kByte || mask_dtype == at::kInt ||
                  mask_dtype == at::kLong,
              "fusedbert::encoder: attention_mask must be bool, uint8, int32 or int64; got ", mask_dtype);
  TORCH_CHECK(attention_mask.device() == hidden.device(), "fusedbert::encoder: attention_mask is on ",
              attention_mask.device(), " but hidden is on ", hidden.device());

  TORCH_CHECK(num_heads > 0, "fusedbert::encoder: num_heads must be positive; got ", num_heads);
  const int64_t width = hidden.size(2);
  TORCH_CHECK(width > 0 && width % num_heads == 0, "fusedbert::encoder: hidden size ", width,
              " is not divisible by num_heads ", num_heads);
  TORCH_CHECK(std::isfinite(layer_norm_eps) && layer_norm_eps > 0,
              "fusedbert::encoder: layer_norm_eps must be positive and finite; got ", layer_norm_eps);
  const Activation act = parse_activation(activation);

  const int64_t count = static_cast<int64_t>(weights.size());
  TORCH_CHECK(count > 0 && count % kTensorsPerLayer == 0, "fusedbert::encoder: weights must hold ",
              static_cast<int64_t>(kTensorsPerLayer), " tensors per layer; got ", count);
  const int64_t intermediate = weights[kFfn1Weight].dim() == 2 ? weights[kFfn1Weight].size(0) : -1;
  TORCH_CHECK(intermediate > 0, "fusedbert::encoder: weights[", static_cast<int64_t>(kFfn1Weight),
              "] (ffn1_weight) must be [intermediate, hidden]; got ", weights[kFfn1Weight].sizes());

  const int64_t num_layers = count / kTensorsPerLayer;
  const bool fp8_ffn = fp8_ffn_scales.has_value();
  if (fp8_ffn) {
    const at::Tensor& scales = *fp8_ffn_scales;
    TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16,
                "fusedbert::encoder: the FP8 FFN serves float16 and bfloat16 models; hidden is ", dtype);
    TORCH_CHECK(act == Activation::GeluErf, "fusedbert::encoder: the FP8 FFN computes the erf GELU (\"gelu\") only; "
                "got \"", std::string(activation), "\"");
    TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.device() == hidden.device() && scales.is_contiguous() &&
                    scales.sizes() == at::IntArrayRef({num_layers, static_cast<int64_t>(kFp8ScalesPerLayer)}),
                "fusedbert::encoder: fp8_ffn_scales must be a contiguous float32 [num_layers, ",
                static_cast<int64_t>(kFp8ScalesPerLayer), "] = [", num_layers, ", ",
                static_cast<int64_t>(kFp8ScalesPerLayer), "] tensor on ", hidden.device(), "; got ",
                scales.scalar_type(), " ", scales.sizes(), " on ", scales.device());
  }

  for (int64_t i = 0; i < count; ++i) {
    const auto& w = weights[i];
    const int64_t slot = i % kTensorsPerLayer;
    TORCH_CHECK(w.defined(), "fusedbert::encoder: weights[", i, "] (layer ", i / kTensorsPerLayer, " ",
                slot_name(slot), ") is undefined");
    // With fp8_ffn_scales the FFN's two weight matrices are e4m3 codes; every other tensor is hidden's dtype.
    const auto expected_dtype =
        (slot == kFfn1Weight || slot == kFfn2Weight) && fp8_ffn ? at::kFloat8_e4m3fn : dtype;
    TORCH_CHECK(w.device() == hidden.device() && w.scalar_type() == expected_dtype, "fusedbert::encoder: weights[", i,
                "] (layer ", i / kTensorsPerLayer, " ", slot_name(slot), ") is ", w.scalar_type(), " on ",
                w.device(), "; expected ", expected_dtype, " on ", hidden.device(),
                fp8_ffn ? "" : " like hidden (float8_e4m3fn FFN weights need fp8_ffn_scales)");
    TORCH_CHECK(w.is_contiguous(), "fusedbert::encoder: weights[", i, "] (layer ", i / kTensorsPerLayer, " ",
                slot_name(slot), ") must be contiguous");
    std::vector<int64_t> expected;
    switch (slot) {
      case kQkvWeight: expected = {3 * width, width}; break;
      case kQkvBias: expected = {3 * width}; break;
      case kAttnOutWeight: expected = {width, width}; break;
      case kFfn1Weight: expected = {intermediate, width}; break;
      case kFfn1Bias: expected = {intermediate}; break;
      case kFfn2Weight: expected = {width, intermediate}; break;
      default: expected = {width}; break;  // biases and LayerNorm parameters of width H
    }
    TORCH_CHECK(w.sizes() == at::IntArrayRef(expected), "fusedbert::encoder: weights[", i, "] (layer ",
                i / kTensorsPerLayer, " ", slot_name(slot), ") must be ", at::IntArrayRef(expected), "; got ",
                w.sizes());
  }

  return EncoderDims{hidden.size(0), hidden.size(1), width, num_heads, width / num_heads,
                     intermediate, num_layers, act, fp8_ffn};
}

namespace {

// ids: [B, S], or [1, S] / [S] when `broadcast` (one row for every sequence); int32 or int64.
at::Tensor batch_indices(const at::Tensor& ids, const char* name, int64_t batch, int64_t seq_len,
                         const at::Tensor& like, bool broadcast) {
  TORCH_CHECK(ids.scalar_type() == at::kLong || ids.scalar_type() == at::kInt, "fusedbert::embeddings: ", name,
              " must be int64 or int32; got ", ids.scalar_type());
  TORCH_CHECK(ids.device() == like.device(), "fusedbert::embeddings: ", name, " is on ", ids.device(),
              " but input_ids is on ", like.device());
  const bool full = ids.dim() == 2 && ids.size(0) == batch && ids.size(1) == seq_len;
  const bool one_row = broadcast && ((ids.dim() == 2 && ids.size(0) == 1 && ids.size(1) == seq_len) ||
                                     (ids.dim() == 1 && ids.size(0) == seq_len));
  TORCH_CHECK(full || one_row, "fusedbert::embeddings: ", name, " must be [batch, seq_len] = [", batch, ", ",
              seq_len, "]", broadcast ? " or [1, seq_len]" : "", "; got ", ids.sizes());
  return ids.to(at::kLong).reshape({full ? batch : 1, seq_len}).expand({batch, seq_len});
}

}  // namespace

EmbeddingIndices check_embeddings_args(
    const at::Tensor& input_ids,
    const at::Tensor& token_type_ids,
    const at::Tensor& position_ids,
    const at::Tensor& word_embeddings,
    const at::Tensor& token_type_embeddings,
    const at::Tensor& position_embeddings,
    const at::Tensor& layer_norm_weight,
    const at::Tensor& layer_norm_bias,
    double layer_norm_eps) {
  TORCH_CHECK(input_ids.dim() == 2, "fusedbert::embeddings: input_ids must be [batch, seq_len]; got ",
              input_ids.sizes());
  const int64_t batch = input_ids.size(0), seq_len = input_ids.size(1);
  const auto dtype = word_embeddings.scalar_type();
  TORCH_CHECK(dtype == at::kFloat || dtype == at::kHalf || dtype == at::kBFloat16,
              "fusedbert::embeddings: the tables must be float32, float16 or bfloat16; got ", dtype);
  TORCH_CHECK(!(input_ids.is_cpu() && dtype == at::kHalf),
              "fusedbert::embeddings: float16 is not supported on CPU; use bfloat16 on CPU or run on CUDA");
  TORCH_CHECK(word_embeddings.dim() == 2 && word_embeddings.size(1) > 0,
              "fusedbert::embeddings: word_embeddings must be [vocab_size, width]; got ", word_embeddings.sizes());
  const int64_t width = word_embeddings.size(1);
  auto check_like_word_table = [&](const char* name, const at::Tensor& t, bool is_table) {
    TORCH_CHECK(is_table ? t.dim() == 2 && t.size(0) > 0 && t.size(1) == width : t.dim() == 1 && t.size(0) == width,
                "fusedbert::embeddings: ", name, " must be ", is_table ? "[rows, " : "[", width,
                "] (word_embeddings' row size); got ", t.sizes());
    TORCH_CHECK(t.scalar_type() == dtype && t.device() == input_ids.device(), "fusedbert::embeddings: ", name, " is ",
                t.scalar_type(), " on ", t.device(), "; expected word_embeddings' dtype ", dtype,
                " on input_ids' device ", input_ids.device());
  };
  check_like_word_table("word_embeddings", word_embeddings, true);
  check_like_word_table("token_type_embeddings", token_type_embeddings, true);
  check_like_word_table("position_embeddings", position_embeddings, true);
  check_like_word_table("layer_norm_weight", layer_norm_weight, false);
  check_like_word_table("layer_norm_bias", layer_norm_bias, false);
  TORCH_CHECK(std::isfinite(layer_norm_eps) && layer_norm_eps > 0,
              "fusedbert::embeddings: layer_norm_eps must be positive and finite; got ", layer_norm_eps);
  EmbeddingIndices indices;
  indices.input_ids = batch_indices(input_ids, "input_ids", batch, seq_len, input_ids, /*broadcast=*/false);
  indices.token_type_ids = batch_indices(token_type_ids, "token_type_ids", batch, seq_len, input_ids, true);
  indices.position_ids = batch_indices(position_ids, "position_ids", batch, seq_len, input_ids, true);
  indices.batch = batch;
  indices.seq_len = seq_len;
  indices.width = width;
  return indices;
}

}  // namespace fusedbert
