// CPU kernels run between the encoder's GEMMs. Each computes in float32 whatever the storage dtype
// (float32 or bfloat16), so bf16 rounds once per stage instead of once per elementwise op.
#pragma once

#include <ATen/core/Tensor.h>

#include "../encoder_args.h"

namespace fusedbert::cpu {

// x[t, :] = act(x[t, :] + bias), in place. x: [T, N] contiguous; bias: [N].
void bias_activation_(at::Tensor& x, const at::Tensor& bias, Activation activation);

// y[t, :] = LayerNorm(y[t, :] + bias + residual[t, :]) * gamma + beta, in place.
// y, residual: [T, H] contiguous; bias, gamma, beta: [H].
void bias_residual_layernorm_(
    at::Tensor& y,
    const at::Tensor& bias,
    const at::Tensor& residual,
    const at::Tensor& gamma,
    const at::Tensor& beta,
    double eps);

// out[b, s, :] = LayerNorm(word[input_ids[b, s]] + token_type[token_type_ids[b, s]] +
// position[position_ids[b, s]]) * gamma + beta, in float32. Tables [rows, E]; gamma, beta: [E]; out:
// [B, S, E] contiguous. Every index is checked against its table first.
void embeddings(const EmbeddingIndices& indices, const at::Tensor& word, const at::Tensor& token_type,
                const at::Tensor& position, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                at::Tensor& out);

// Multi-head self-attention on packed tokens: sequence b owns rows [cu_seqlens[b], cu_seqlens[b+1])
// of qkv and attends only to them, so no mask is needed once padding is removed.
// qkv: [T, 3H] (query heads, key heads, value heads) before its bias; qkv_bias: [3H], added here while
// each head is gathered; context: [T, H], written here.
// key_is_real: null, or [T] flags for a padded batch run without padding removal (false = masked key).
void packed_attention(
    const at::Tensor& qkv,
    const at::Tensor& qkv_bias,
    at::Tensor& context,
    const int64_t* cu_seqlens,
    int64_t batch,
    int64_t num_heads,
    const bool* key_is_real);

}  // namespace fusedbert::cpu
