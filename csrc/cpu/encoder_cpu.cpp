// The encoder on CPU: pack real tokens, run every layer on [T, H], scatter back.
#include <ATen/ATen.h>
#include <torch/library.h>

#include "../encoder_args.h"
#include "kernels.h"
#include "linear.h"

#include <vector>

namespace fusedbert::cpu {
namespace {

// Real tokens of a padded batch, packed by a prefix sum over the mask.
struct PackedBatch {
  at::Tensor token_index;            // [T] int64: flat position b * S + s of each packed row
  std::vector<int64_t> cu_seqlens;   // [B + 1]: sequence b owns packed rows [cu[b], cu[b + 1])
};

// A mask value other than 0 or 1 is an error: it usually means a float additive mask (0 / -inf) or a
// 4-D mask was flattened by mistake, and treating it as "nonzero = real" would give silent wrong numbers.
template <typename mask_t>
PackedBatch pack_real_tokens_typed(const at::Tensor& mask) {
  const int64_t batch = mask.size(0), seq_len = mask.size(1);
  const mask_t* m = mask.data_ptr<mask_t>();
  PackedBatch packed;
  packed.cu_seqlens.assign(batch + 1, 0);
  for (int64_t i = 0; i < batch * seq_len; ++i) {
    const auto value = static_cast<int64_t>(m[i]);
    TORCH_CHECK(value == 0 || value == 1, "fusedbert::encoder: attention_mask values must be 0 or 1; found ",
                value, " at [", i / seq_len, ", ", i % seq_len, "]");
    packed.cu_seqlens[i / seq_len + 1] += value;
  }
  for (int64_t b = 0; b < batch; ++b) packed.cu_seqlens[b + 1] += packed.cu_seqlens[b];
  packed.token_index = at::empty({packed.cu_seqlens[batch]}, mask.options().dtype(at::kLong));
  int64_t* out = packed.token_index.data_ptr<int64_t>();
  for (int64_t i = 0, t = 0; i < batch * seq_len; ++i) {
    if (m[i]) out[t++] = i;
  }
  return packed;
}

PackedBatch pack_real_tokens(const at::Tensor& mask) {
  const at::Tensor m = mask.contiguous();
  switch (m.scalar_type()) {
    case at::kBool: return pack_real_tokens_typed<bool>(m);
    case at::kByte: return pack_real_tokens_typed<uint8_t>(m);
    case at::kInt: return pack_real_tokens_typed<int32_t>(m);
    default: return pack_real_tokens_typed<int64_t>(m);
  }
}

// The FP8 FFN's math (fusedbert/fp8.py) in plain ATen: e4m3 rounding emulated in float32, float32 GEMMs.
// A reference-speed path: it lets a model converted for FP8 run, and be checked, on a machine without
// Hopper.
at::Tensor round_to_e4m3(const at::Tensor& values) {
  constexpr double kE4m3Max = 448.0;  // rounding saturates, as the CUDA kernels' conversions do
  return values.clamp(-kE4m3Max, kE4m3Max).to(at::kFloat8_e4m3fn).to(at::kFloat);
}

// FFN2(gelu(FFN1(x))) without FFN2's bias (the LayerNorm after it adds that), in x's dtype.
at::Tensor fp8_ffn(const at::Tensor& x, at::TensorList weights, int64_t layer, const at::Tensor& layer_scales) {
  auto w = [&](WeightSlot slot) -> const at::Tensor& { return layer_weight(weights, layer, slot); };
  auto scale = [&](Fp8ScaleSlot slot) { return layer_scales.select(0, slot); };  // 0-dim float32
  const at::Tensor x_codes = round_to_e4m3(x.to(at::kFloat) * scale(kFfnInputInverse));
  const at::Tensor pre_activation =
      at::mm(x_codes, w(kFfn1Weight).to(at::kFloat).t()) * (scale(kFfnInputStep) * scale(kFfn1WeightStep)) +
      w(kFfn1Bias).to(at::kFloat);
  const at::Tensor inner_codes = round_to_e4m3(at::gelu(pre_activation) * scale(kFfnInnerInverse));
  const at::Tensor out = at::mm(inner_codes, w(kFfn2Weight).to(at::kFloat).t()) *
                         (scale(kFfnInnerStep) * scale(kFfn2WeightStep));
  return out.to(x.scalar_type());
}

// One post-LN BERT layer on packed rows x [T, H]:
//   x = LN1(x + O(attn(QKV(x)))),  x = LN2(x + FFN2(act(FFN1(x))))
// GEMM biases are folded into the kernel that follows each GEMM.
at::Tensor run_layer(
    const at::Tensor& x, at::TensorList weights, int64_t layer, const EncoderDims& dims, double eps,
    const std::vector<int64_t>& cu_seqlens, const bool* key_is_real, const at::Tensor& fp8_ffn_scales) {
  auto w = [&](WeightSlot slot) -> const at::Tensor& { return layer_weight(weights, layer, slot); };
  const at::Tensor qkv = linear_no_bias(x, w(kQkvWeight));
  at::Tensor context = at::empty_like(x);
  packed_attention(qkv, w(kQkvBias), context, cu_seqlens.data(), dims.batch, dims.num_heads, key_is_real);

  at::Tensor attn = linear_no_bias(context, w(kAttnOutWeight));
  bias_residual_layernorm_(attn, w(kAttnOutBias), x, w(kLn1Weight), w(kLn1Bias), eps);

  at::Tensor out;
  if (dims.fp8_ffn) {
    out = fp8_ffn(attn, weights, layer, fp8_ffn_scales.select(0, layer));
  } else {
    at::Tensor inner = linear_no_bias(attn, w(kFfn1Weight));
    bias_activation_(inner, w(kFfn1Bias), dims.activation);
    out = linear_no_bias(inner, w(kFfn2Weight));
  }
  bias_residual_layernorm_(out, w(kFfn2Bias), attn, w(kLn2Weight), w(kLn2Bias), eps);
  return out;
}

at::Tensor encoder_cpu(
    const at::Tensor& hidden, const at::Tensor& attention_mask, at::TensorList weights, int64_t num_heads,
    double layer_norm_eps, c10::string_view activation, bool remove_padding,
    const std::optional<at::Tensor>& fp8_ffn_scales) {
  const EncoderDims dims =
      check_encoder_args(hidden, attention_mask, weights, num_heads, layer_norm_eps, activation, fp8_ffn_scales);
  const at::Tensor scales = fp8_ffn_scales.value_or(at::Tensor());
  const int64_t rows = dims.batch * dims.seq_len;
  const at::Tensor flat = hidden.contiguous().view({rows, dims.hidden});
  PackedBatch packed = pack_real_tokens(attention_mask);

  at::Tensor x;
  at::Tensor key_is_real;  // only without padding removal: padded rows stay in, masked as keys
  std::vector<int64_t> cu_seqlens;
  if (remove_padding) {
    x = flat.index_select(0, packed.token_index);
    cu_seqlens = std::move(packed.cu_seqlens);
  } else {
    x = flat;
    key_is_real = attention_mask.contiguous().view({rows}).to(at::kBool);
    cu_seqlens.resize(dims.batch + 1);
    for (int64_t b = 0; b <= dims.batch; ++b) cu_seqlens[b] = b * dims.seq_len;
  }
  const bool* key_flags = key_is_real.defined() ? key_is_real.data_ptr<bool>() : nullptr;
  for (int64_t layer = 0; layer < dims.num_layers; ++layer) {
    x = run_layer(x, weights, layer, dims, layer_norm_eps, cu_seqlens, key_flags, scales);
  }

  // Padding positions come back as zeros in both modes, so results never depend on what padding held.
  at::Tensor out = at::zeros({rows, dims.hidden}, hidden.options());
  if (remove_padding) {
    out.index_copy_(0, packed.token_index, x);
  } else {
    out.index_copy_(0, packed.token_index, x.index_select(0, packed.token_index));
  }
  return out.view({dims.batch, dims.seq_len, dims.hidden});
}

at::Tensor embeddings_cpu(
    const at::Tensor& input_ids, const at::Tensor& token_type_ids, const at::Tensor& position_ids,
    const at::Tensor& word_embeddings, const at::Tensor& token_type_embeddings, const at::Tensor& position_embeddings,
    const at::Tensor& layer_norm_weight, const at::Tensor& layer_norm_bias, double layer_norm_eps) {
  const EmbeddingIndices indices =
      check_embeddings_args(input_ids, token_type_ids, position_ids, word_embeddings, token_type_embeddings,
                            position_embeddings, layer_norm_weight, layer_norm_bias, layer_norm_eps);
  at::Tensor out = at::empty({indices.batch, indices.seq_len, indices.width}, word_embeddings.options());
  embeddings(indices, word_embeddings.contiguous(), token_type_embeddings.contiguous(),
             position_embeddings.contiguous(), layer_norm_weight.contiguous(), layer_norm_bias.contiguous(),
             layer_norm_eps, out);
  return out;
}

}  // namespace
}  // namespace fusedbert::cpu

TORCH_LIBRARY_IMPL(fusedbert, CPU, m) {
  m.impl("encoder", &fusedbert::cpu::encoder_cpu);
  m.impl("embeddings", &fusedbert::cpu::embeddings_cpu);
}
