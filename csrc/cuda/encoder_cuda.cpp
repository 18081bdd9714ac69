// The encoder on CUDA: pack real tokens on the device, run every layer on [T, H], scatter back.
#include <ATen/ATen.h>
#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAGuard.h>
#include <torch/library.h>

#include "../encoder_args.h"
#include "../settings.h"
#include "gemm.h"
#include "kernels.h"

#include <cstdint>
#include <limits>
#include <string>

namespace fusedbert::cuda {
namespace {

bool aligned_16(const at::Tensor& t) {
  return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0;
}

// [B, 1, 1, S] additive key bias for a padded batch run without padding removal: 0 for a real key,
// -inf for padding. Its rows live in storage padded to 16 elements, the alignment memory-efficient
// attention needs for a bias; broadcast over heads and queries by an expand, never materialized.
at::Tensor key_padding_bias(const at::Tensor& attention_mask, at::ScalarType dtype) {
  const int64_t batch = attention_mask.size(0), seq_len = attention_mask.size(1);
  const int64_t padded_len = (seq_len + 15) / 16 * 16;
  at::Tensor bias = at::zeros({batch, 1, 1, padded_len}, attention_mask.options().dtype(dtype)).narrow(3, 0, seq_len);
  bias.masked_fill_(attention_mask.view({batch, 1, 1, seq_len}) == 0, -std::numeric_limits<double>::infinity());
  return bias;
}

// Self-attention of qkv [rows, 3H] (biases added) -> context [rows, H]. Q, K and V are strided views of
// qkv with heads split in place: no copies. Packed rows (no key_bias) attend within their sequence by
// cu_seqlens: float16/bfloat16 at the usual head sizes through fusedbert's kernel (csrc/cuda/attention.cu),
// other head sizes through ATen's flash attention, float32 through its memory-efficient attention. Padded
// rows (key_bias given) attend over their sequence's S rows with padding keys masked.
at::Tensor self_attention(
    const at::Tensor& qkv, const PackedBatch& packed, const at::Tensor& key_bias, const EncoderDims& dims) {
  const int64_t rows = qkv.size(0), width = dims.hidden;
  auto part = [&](int64_t index) {
    return qkv.narrow(1, index * width, width).view({rows, dims.num_heads, dims.head_dim});
  };
  const at::Tensor q = part(0), k = part(1), v = part(2);
  if (key_bias.defined()) {
    const int64_t batch = dims.batch, seq_len = dims.seq_len;
    auto padded = [&](const at::Tensor& t) { return t.view({batch, seq_len, dims.num_heads, dims.head_dim}); };
    auto result = at::_efficient_attention_forward(
        padded(q), padded(k), padded(v), key_bias.expand({batch, dims.num_heads, seq_len, seq_len}),
        /*cu_seqlens_q=*/std::nullopt, /*cu_seqlens_k=*/std::nullopt, /*max_seqlen_q=*/std::nullopt,
        /*max_seqlen_k=*/std::nullopt, /*dropout_p=*/0.0, /*custom_mask_type=*/0, /*compute_log_sumexp=*/false);
    return std::get<0>(result).reshape({rows, width});
  }
  const int64_t max_seqlen = packed.max_seqlen;
  if (qkv.scalar_type() == at::kFloat) {
    // Flash attention has no float32 kernel; memory-efficient attention does, exactly (no TF32).
    auto result = at::_efficient_attention_forward(
        q.unsqueeze(0), k.unsqueeze(0), v.unsqueeze(0), /*bias=*/std::nullopt, packed.cu_seqlens, packed.cu_seqlens,
        max_seqlen, max_seqlen, /*dropout_p=*/0.0, /*custom_mask_type=*/0, /*compute_log_sumexp=*/false);
    return std::get<0>(result).reshape({rows, width});
  }
  if (packed_attention_supports(qkv.scalar_type(), dims.head_dim)) {
    return packed_attention(qkv, packed.cu_seqlens, max_seqlen, dims.num_heads);
  }
  auto result = at::_flash_attention_forward(q, k, v, packed.cu_seqlens, packed.cu_seqlens, max_seqlen, max_seqlen,
                                             /*dropout_p=*/0.0, /*is_causal=*/false, /*return_debug_mask=*/false);
  return std::get<0>(result).reshape({rows, width});
}

Epilogue activation_epilogue(Activation activation) {
  switch (activation) {
    case Activation::GeluErf: return Epilogue::BiasGeluErf;
    case Activation::GeluTanh: return Epilogue::BiasGeluTanh;
    case Activation::Relu: return Epilogue::BiasRelu;
  }
  TORCH_CHECK(false, "fusedbert::encoder (CUDA): unknown activation");
}

// One post-LN BERT layer on rows x [rows, H]:
//   x = LN1(x + O(attn(QKV(x)))),  x = LN2(x + FFN2(act(FFN1(x))))
// The QKV bias and FFN1's bias + activation go with their GEMMs (see linear()); the output projections'
// biases fold into the residual + LayerNorm kernel, which sums in float32. Adding bias and residual in those
// GEMMs' epilogue instead (cuBLASLt's C with beta = 1; branch attempt/residual-epilogue) sped the LayerNorms
// up 8-12% but slowed the GEMMs more (H100, bs128 var: +0.12 ms eager, +0.20 ms from graphs, against
// -0.03 ms), and rounding the sum to float16 before the LayerNorm raised the error against float32 from
// 8.8e-3 to 1.24e-2.
//
// The FP8 FFN (fp8_ffn_scales defined): LN1 writes its output as e4m3 codes too, FFN1 writes the GELU's
// output as codes, and FFN2 reads them (fusedbert/fp8.py).
//
// The last layer (restore_padded_shape) writes its second LayerNorm straight into the padded [B * S, H]
// output, zeros at padding, so that restoring the padded shape costs no pass of its own.
at::Tensor run_layer(
    const at::Tensor& x, at::TensorList weights, int64_t layer, const EncoderDims& dims, double eps,
    const PackedBatch& packed, const at::Tensor& key_bias, const at::Tensor& fp8_ffn_scales,
    const at::Tensor& workspace, bool restore_padded_shape) {
  auto w = [&](WeightSlot slot) -> const at::Tensor& { return layer_weight(weights, layer, slot); };
  const int64_t rows = x.size(0), width = dims.hidden;

  at::Tensor attn = at::empty({rows, width}, x.options());
  {  // qkv and context go back to the allocator before the FFN's larger buffer is taken
    at::Tensor qkv = at::empty({rows, 3 * width}, x.options());
    linear(qkv, x, w(kQkvWeight), w(kQkvBias), Epilogue::Bias, workspace);
    const at::Tensor context = self_attention(qkv, packed, key_bias, dims);
    linear(attn, context, w(kAttnOutWeight), {}, Epilogue::None, workspace);
  }
  at::Tensor out = at::empty({rows, width}, x.options());
  if (dims.fp8_ffn) {
    const at::Tensor scales = fp8_ffn_scales.select(0, layer);
    const auto codes = x.options().dtype(at::kFloat8_e4m3fn);
    at::Tensor attn_codes = at::empty({rows, width}, codes);
    bias_residual_layernorm_(attn, w(kAttnOutBias), x, w(kLn1Weight), w(kLn1Bias), eps,
                             {&attn_codes, scales.const_data_ptr<float>() + kFfnInputInverse});
    at::Tensor inner_codes = at::empty({rows, dims.intermediate}, codes);
    fp8_linear(inner_codes, attn_codes, w(kFfn1Weight), w(kFfn1Bias), sm90::Fp8Stage::Ffn1, scales,
               x.scalar_type(), workspace);
    fp8_linear(out, inner_codes, w(kFfn2Weight), {}, sm90::Fp8Stage::Ffn2, scales, x.scalar_type(), workspace);
  } else {
    bias_residual_layernorm_(attn, w(kAttnOutBias), x, w(kLn1Weight), w(kLn1Bias), eps);
    at::Tensor inner = at::empty({rows, dims.intermediate}, x.options());
    linear(inner, attn, w(kFfn1Weight), w(kFfn1Bias), activation_epilogue(dims.activation), workspace);
    linear(out, inner, w(kFfn2Weight), {}, Epilogue::None, workspace);
  }
  if (restore_padded_shape) {
    // Padded rows (key_bias given) keep their positions; packed rows go back to theirs.
    return bias_residual_layernorm_scatter(out, w(kFfn2Bias), attn, w(kLn2Weight), w(kLn2Bias), eps, packed,
                                           /*rows_are_packed=*/!key_bias.defined());
  }
  bias_residual_layernorm_(out, w(kFfn2Bias), attn, w(kLn2Weight), w(kLn2Bias), eps);
  return out;
}

at::Tensor encoder_cuda(
    const at::Tensor& hidden, const at::Tensor& attention_mask, at::TensorList weights, int64_t num_heads,
    double layer_norm_eps, c10::string_view activation, bool remove_padding,
    const std::optional<at::Tensor>& fp8_ffn_scales) {
  const EncoderDims dims =
      check_encoder_args(hidden, attention_mask, weights, num_heads, layer_norm_eps, activation, fp8_ffn_scales);
  // 16-byte vector accesses in the fused kernels and flash attention's head sizes need these.
  TORCH_CHECK(dims.hidden % 8 == 0 && dims.head_dim % 8 == 0 && dims.intermediate % 8 == 0,
              "fusedbert::encoder (CUDA): hidden size, head size and intermediate size must be multiples of 8; got "
              "hidden ", dims.hidden, ", head ", dims.head_dim, ", intermediate ", dims.intermediate);
  const c10::cuda::CUDAGuard device_guard(hidden.device());
  if (dims.fp8_ffn) {
    TORCH_CHECK(fp8_linear_available(), "fusedbert::encoder (CUDA): the FP8 FFN needs a Hopper GPU (sm_90) and a "
                "build with CUTLASS for sm_90a (csrc/cuda/sm90_gemm.h); this is ",
                at::cuda::getCurrentDeviceProperties()->name);
    // Rows of e4m3 codes are read by TMA, 16-byte aligned.
    TORCH_CHECK(dims.hidden % 16 == 0 && dims.intermediate % 16 == 0, "fusedbert::encoder (CUDA): the FP8 FFN needs "
                "hidden and intermediate sizes that are multiples of 16; got ", dims.hidden, " and ", dims.intermediate);
  }
  const at::Tensor scales = fp8_ffn_scales.value_or(at::Tensor());

  const int64_t rows = dims.batch * dims.seq_len;
  const at::Tensor flat = hidden.contiguous().view({rows, dims.hidden});
  // In a CUDA graph the sizes cannot be read back: every layer then runs on a fixed row count, the real
  // tokens packed first and zeros after: the capture's token capacity, or B * S. The replayer checks mask
  // values and the real-token count on the host (fusedbert/cuda_graphs.py).
  const PackedBatch packed = current_stream_is_capturing()
                                 ? find_real_tokens(attention_mask, /*read_back=*/false, capture_token_capacity())
                                 : find_real_tokens(attention_mask, /*read_back=*/true);
  // A value other than 0 or 1 usually means a float additive mask (0 / -inf) or a flattened 4-D mask
  // passed by mistake; treating it as "nonzero = real" would give silently wrong numbers.
  if (packed.first_invalid >= 0) {
    const int64_t b = packed.first_invalid / dims.seq_len, s = packed.first_invalid % dims.seq_len;
    TORCH_CHECK(false, "fusedbert::encoder: attention_mask values must be 0 or 1; found ",
                attention_mask[b][s].item<int64_t>(), " at [", b, ", ", s, "]");
  }
  if (packed.packed_rows == 0) return at::zeros({dims.batch, dims.seq_len, dims.hidden}, hidden.options());

  const at::Tensor workspace = gemm_workspace(hidden);
  at::Tensor x;
  at::Tensor key_bias;  // only without padding removal: padded rows stay in, masked as keys
  if (remove_padding) {
    x = gather_real_tokens(flat, packed);
  } else {
    x = aligned_16(flat) ? flat : flat.clone();
    key_bias = key_padding_bias(attention_mask, hidden.scalar_type());
  }
  // Pulling the next layer's weights into L2 on a side stream while a layer runs was measured and dropped: it
  // gained 2% at one sequence of 16 tokens and lost at every other size. With their weights in L2, bert-base's
  // GEMMs there were at most 7% faster, and the prefetch kernels took SMs from the layer's own (H100,
  // docs/benchmarks.md, "The next layer's weights prefetched into L2").
  for (int64_t layer = 0; layer < dims.num_layers; ++layer) {
    const bool last = layer + 1 == dims.num_layers;  // check_encoder_args admits no encoder without layers
    x = run_layer(x, weights, layer, dims, layer_norm_eps, packed, key_bias, scales, workspace, last);
  }
  // The last layer has written [B * S, H]: padding positions come back as zeros in both modes, as on CPU.
  return x.view({dims.batch, dims.seq_len, dims.hidden});
}

at::Tensor embeddings_cuda(
    const at::Tensor& input_ids, const at::Tensor& token_type_ids, const at::Tensor& position_ids,
    const at::Tensor& word_embeddings, const at::Tensor& token_type_embeddings, const at::Tensor& position_embeddings,
    const at::Tensor& layer_norm_weight, const at::Tensor& layer_norm_bias, double layer_norm_eps) {
  const c10::cuda::CUDAGuard device_guard(input_ids.device());
  const EmbeddingIndices indices =
      check_embeddings_args(input_ids, token_type_ids, position_ids, word_embeddings, token_type_embeddings,
                            position_embeddings, layer_norm_weight, layer_norm_bias, layer_norm_eps);
  at::Tensor out = at::empty({indices.batch, indices.seq_len, indices.width}, word_embeddings.options());
  embeddings(indices, word_embeddings.contiguous(), token_type_embeddings.contiguous(),
             position_embeddings.contiguous(), layer_norm_weight.contiguous(), layer_norm_bias.contiguous(),
             layer_norm_eps, out);
  return out;
}

// The encoder's own attention kernel as an op of its own, for tests and benchmarks.
at::Tensor packed_attention_op(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t max_seqlen,
                               int64_t num_heads) {
  TORCH_CHECK(qkv.dim() == 2 && num_heads > 0 && qkv.size(1) % (3 * num_heads) == 0,
              "fusedbert::packed_attention: qkv must be [rows, 3 * hidden] with hidden a multiple of num_heads; got ",
              qkv.sizes(), " and num_heads ", num_heads);
  TORCH_CHECK(cu_seqlens.dim() == 1 && cu_seqlens.size(0) >= 1 && cu_seqlens.scalar_type() == at::kInt &&
                  cu_seqlens.device() == qkv.device() && cu_seqlens.is_contiguous(),
              "fusedbert::packed_attention: cu_seqlens must be a contiguous [batch + 1] int32 tensor on qkv's device");
  TORCH_CHECK(max_seqlen >= 0, "fusedbert::packed_attention: max_seqlen must be >= 0; got ", max_seqlen);
  const c10::cuda::CUDAGuard device_guard(qkv.device());
  return packed_attention(qkv.contiguous(), cu_seqlens, max_seqlen, num_heads);
}

at::Tensor linear_bias_gelu_op(const at::Tensor& input, const at::Tensor& weight, const at::Tensor& bias,
                               c10::string_view kernel) {
  TORCH_CHECK(input.dim() == 2 && weight.dim() == 2 && bias.dim() == 1 && input.size(1) == weight.size(1) &&
                  bias.size(0) == weight.size(0),
              "fusedbert::linear_bias_gelu: input must be [tokens, k], weight [n, k] and bias [n]; got ", input.sizes(),
              ", ", weight.sizes(), " and ", bias.sizes());
  TORCH_CHECK(weight.scalar_type() == input.scalar_type() && bias.scalar_type() == input.scalar_type() &&
                  weight.device() == input.device() && bias.device() == input.device(),
              "fusedbert::linear_bias_gelu: input, weight and bias must share one dtype and device");
  const c10::cuda::CUDAGuard device_guard(input.device());
  const at::Tensor in = input.contiguous(), w = weight.contiguous(), b = bias.contiguous();
  at::Tensor out = at::empty({in.size(0), w.size(0)}, in.options());
  linear_bias_gelu(out, in, w, b, std::string(kernel), gemm_workspace(in));
  return out;
}

at::Tensor fp8_ffn_linear_op(const at::Tensor& input, const at::Tensor& weight, const std::optional<at::Tensor>& bias,
                             const at::Tensor& scales, c10::string_view stage, at::ScalarType dtype,
                             c10::string_view kernel) {
  TORCH_CHECK(stage == "ffn1" || stage == "ffn2", "fusedbert::fp8_ffn_linear: stage must be 'ffn1' or 'ffn2'; got '",
              stage, "'");
  const bool ffn1 = stage == "ffn1";
  TORCH_CHECK(input.dim() == 2 && weight.dim() == 2 && input.size(1) == weight.size(1),
              "fusedbert::fp8_ffn_linear: input must be [tokens, k] and weight [n, k]; got ", input.sizes(), " and ",
              weight.sizes());
  TORCH_CHECK(input.scalar_type() == at::kFloat8_e4m3fn && weight.scalar_type() == at::kFloat8_e4m3fn,
              "fusedbert::fp8_ffn_linear: input and weight must be float8_e4m3fn codes; got ", input.scalar_type(),
              " and ", weight.scalar_type());
  TORCH_CHECK(weight.size(0) % 16 == 0 && weight.size(1) % 16 == 0,
              "fusedbert::fp8_ffn_linear: n and k must be multiples of 16; got ", weight.sizes());
  TORCH_CHECK(dtype == at::kHalf || dtype == at::kBFloat16,
              "fusedbert::fp8_ffn_linear: dtype must be float16 or bfloat16; got ", dtype);
  TORCH_CHECK(scales.scalar_type() == at::kFloat && scales.dim() == 1 && scales.size(0) == kFp8ScalesPerLayer,
              "fusedbert::fp8_ffn_linear: scales must be one layer's [", static_cast<int64_t>(kFp8ScalesPerLayer),
              "] float32 row of fp8_ffn_scales; got ", scales.scalar_type(), " ", scales.sizes());
  TORCH_CHECK(bias.has_value() == ffn1, "fusedbert::fp8_ffn_linear: ", ffn1 ? "'ffn1' needs" : "'ffn2' takes no",
              " bias");
  if (ffn1) {
    TORCH_CHECK(bias->dim() == 1 && bias->size(0) == weight.size(0) && bias->scalar_type() == dtype,
                "fusedbert::fp8_ffn_linear: bias must be [n] in dtype; got ", bias->scalar_type(), " ", bias->sizes());
  }
  for (const at::Tensor* tensor : {&input, &weight, &scales, bias ? &*bias : nullptr}) {
    TORCH_CHECK(tensor == nullptr || tensor->device() == input.device(),
                "fusedbert::fp8_ffn_linear: every tensor must be on input's device");
  }
  const c10::cuda::CUDAGuard device_guard(input.device());
  TORCH_CHECK(fp8_linear_available(), "fusedbert::fp8_ffn_linear: needs a Hopper GPU (sm_90) and a build with "
              "CUTLASS for sm_90a; this is ", at::cuda::getCurrentDeviceProperties()->name);
  // Fresh contiguous copies where needed: TMA reads rows from 16-byte aligned addresses.
  auto aligned = [](const at::Tensor& t) {
    return t.is_contiguous() && aligned_16(t) ? t : t.clone(at::MemoryFormat::Contiguous);
  };
  const at::Tensor in = aligned(input), w = aligned(weight), b = ffn1 ? aligned(*bias) : at::Tensor();
  at::Tensor out = at::empty({in.size(0), w.size(0)}, in.options().dtype(ffn1 ? at::kFloat8_e4m3fn : dtype));
  fp8_linear_named(out, in, w, b, ffn1 ? sm90::Fp8Stage::Ffn1 : sm90::Fp8Stage::Ffn2, scales.contiguous(), dtype,
                   std::string(kernel), gemm_workspace(out));
  return out;
}

}  // namespace
}  // namespace fusedbert::cuda

TORCH_LIBRARY_IMPL(fusedbert, CUDA, m) {
  m.impl("linear_bias_gelu", &fusedbert::cuda::linear_bias_gelu_op);
  m.impl("fp8_ffn_linear", &fusedbert::cuda::fp8_ffn_linear_op);
  m.impl("encoder", &fusedbert::cuda::encoder_cuda);
  m.impl("embeddings", &fusedbert::cuda::embeddings_cuda);
  m.impl("packed_attention", &fusedbert::cuda::packed_attention_op);
}
