// CUDA kernels that run around the encoder's GEMMs and attention: padding removal on the device and the
// fused elementwise stages. Each launches on the current stream and computes in float32 whatever the
// storage dtype (float32, float16, bfloat16), so low-precision storage rounds once per stage.
#pragma once

#include <ATen/core/Tensor.h>

#include "../encoder_args.h"

namespace fusedbert::cuda {

// The real tokens of a padded batch, found on the device.
struct PackedBatch {
  at::Tensor cu_seqlens;        // [B + 1] int32: sequence b owns packed rows [cu_seqlens[b], cu_seqlens[b + 1])
  at::Tensor rank_in_sequence;  // [B, S] int32: a real token's index among its sequence's real tokens; -1 at padding
  int64_t total_tokens;         // T = cu_seqlens[B]
  int64_t max_seqlen;           // longest sequence, in real tokens
  int64_t first_invalid;        // flat position of the first mask value other than 0 or 1; -1 if none
};

// Prefix sums over the mask, on the device. The call's one host synchronization happens here: it
// copies T, the longest sequence and the first invalid mask position back in a single transfer.
// mask: [B, S] bool, uint8, int32 or int64.
PackedBatch find_real_tokens(const at::Tensor& mask);

// hidden: [B * S, H] contiguous. Returns the real rows packed in order: [T, H].
at::Tensor gather_real_tokens(const at::Tensor& hidden, const PackedBatch& packed);

// Returns [B * S, H] with real rows taken from `rows` and zeros at padding. `rows` is [T, H] packed
// (rows_are_packed) or [B * S, H] in padded order.
at::Tensor scatter_real_tokens(const at::Tensor& rows, const PackedBatch& packed, bool rows_are_packed);

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

}  // namespace fusedbert::cuda
