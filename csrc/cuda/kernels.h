// CUDA kernels that run around the encoder's GEMMs and attention: padding removal on the device, the
// embeddings and the fused elementwise stages. Each launches on the current stream and computes in float32
// whatever the storage dtype (float32, float16, bfloat16), so low-precision storage rounds once per stage.
#pragma once

#include <ATen/core/Tensor.h>

#include "../encoder_args.h"

namespace fusedbert::cuda {

// Whether the current stream is being captured into a CUDA graph, where host synchronization is an error.
bool current_stream_is_capturing();

// The real tokens of a padded batch, found on the device.
struct PackedBatch {
  at::Tensor cu_seqlens;        // [B + 1] int32: sequence b owns packed rows [cu_seqlens[b], cu_seqlens[b + 1])
  at::Tensor rank_in_sequence;  // [B, S] int32: a real token's index among its sequence's real tokens; -1 at padding
  // Rows of the packed buffer: T = cu_seqlens[B] when read back, else a bound (rows past T are zeros and no
  // sequence's attention reads them).
  int64_t packed_rows;
  int64_t max_seqlen;     // longest sequence in real tokens when read back, else the bound S
  int64_t first_invalid;  // flat position of the first mask value other than 0 or 1; -1 if none or not read back
  bool read_back;
};

// Prefix sums over the mask, on the device. With read_back, the call's one host synchronization happens
// here: T, the longest sequence and the first invalid mask position come back in a single transfer.
// Without it (a stream being captured into a CUDA graph, where a synchronization is an error) nothing is
// read and mask values are not checked: the buffer holds `row_bound` rows (B * S when 0) and the longest
// sequence is taken as S. Real tokens past row_bound are dropped (sequence offsets are capped at it, their
// outputs are zeros): the caller that sets a bound below B * S must keep T within it.
// mask: [B, S] bool, uint8, int32 or int64.
PackedBatch find_real_tokens(const at::Tensor& mask, bool read_back, int64_t row_bound = 0);

// hidden: [B * S, H] contiguous. Returns the real rows packed in order, then zero rows: [packed_rows, H].
at::Tensor gather_real_tokens(const at::Tensor& hidden, const PackedBatch& packed);

// Self-attention of packed sequences, softmax(Q K^T / sqrt(head_dim)) V per sequence and head
// (csrc/cuda/attention.cu). qkv: [rows, 3H] float16/bfloat16, contiguous, each row [Q | K | V] with the
// heads side by side; cu_seqlens: [B + 1] int32 on the device, sequence b owning rows
// [cu_seqlens[b], cu_seqlens[b + 1]); max_seqlen: a bound on every sequence's length (sizes the grid).
// Returns the context [rows, H]; rows outside every sequence are left unwritten.
bool packed_attention_supports(at::ScalarType dtype, int64_t head_dim);
at::Tensor packed_attention(const at::Tensor& qkv, const at::Tensor& cu_seqlens, int64_t max_seqlen, int64_t num_heads);

// out[b, s, :] = LayerNorm(word[input_ids[b, s]] + token_type[token_type_ids[b, s]] +
// position[position_ids[b, s]]) * gamma + beta, computed in float32. Tables [rows, E] and gamma, beta [E]
// contiguous; out [B, S, E] contiguous. An index outside its table fails a device-side assertion.
void embeddings(const EmbeddingIndices& indices, const at::Tensor& word, const at::Tensor& token_type,
                const at::Tensor& position, const at::Tensor& gamma, const at::Tensor& beta, double eps,
                at::Tensor& out);

// x[t, :] = act(x[t, :] + bias), in place. x: [T, N] contiguous; bias: [N].
void bias_activation_(at::Tensor& x, const at::Tensor& bias, Activation activation);

// Where a kernel also writes its output as e4m3 codes: codes [T, N] float8_e4m3fn contiguous, each
// e4m3(value * *inverse), `inverse` a float32 in device memory. None by default.
struct E4m3Output {
  at::Tensor* codes = nullptr;
  const float* inverse = nullptr;
};

// y[t, :] = LayerNorm(y[t, :] + bias + residual[t, :]) * gamma + beta, in place, and into `codes` too
// when given. y, residual: [T, H] contiguous; bias, gamma, beta: [H].
void bias_residual_layernorm_(
    at::Tensor& y,
    const at::Tensor& bias,
    const at::Tensor& residual,
    const at::Tensor& gamma,
    const at::Tensor& beta,
    double eps,
    const E4m3Output& codes = {});

// The last layer's second LayerNorm, written into the padded shape: returns [B * S, H] whose row p is
// LayerNorm(y[src] + bias + residual[src]) * gamma + beta, src being p's packed row (rows_are_packed: y is
// [T, H] packed) or p itself (y is [B * S, H] in padded order), and zeros where p is padding or src is past
// y's rows. y, residual: contiguous, as many rows; bias, gamma, beta: [H].
at::Tensor bias_residual_layernorm_scatter(
    const at::Tensor& y,
    const at::Tensor& bias,
    const at::Tensor& residual,
    const at::Tensor& gamma,
    const at::Tensor& beta,
    double eps,
    const PackedBatch& packed,
    bool rows_are_packed);

}  // namespace fusedbert::cuda
