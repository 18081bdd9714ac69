"""Loads the op library and registers the ops' fake kernels and autograd formulas.

The C++ library alone defines and runs ``torch.ops.fusedbert.encoder`` and ``embeddings``; this module
adds what only Python tools need: shapes for torch.compile / torch.export, and a backward for captum.
"""

from __future__ import annotations

import torch

from .library import load_library
from .reference import FP8_SCALES_PER_LAYER, TENSORS_PER_LAYER, embeddings_reference, encoder_reference

load_library()


@torch.library.register_fake("fusedbert::encoder")
def _encoder_fake(hidden, attention_mask, weights, num_heads, layer_norm_eps, activation, remove_padding,
                  fp8_ffn_scales=None):
    # The shape and device checks of csrc/encoder_args.cpp that tracing can make without data.
    def check(condition, message):
        torch._check(condition, lambda: f"fusedbert::encoder: {message}")

    check(hidden.dim() == 3, f"hidden must be [batch, seq_len, hidden]; got {tuple(hidden.shape)}")
    check(attention_mask.dim() == 2 and attention_mask.shape == hidden.shape[:2],
          f"attention_mask {tuple(attention_mask.shape)} does not match hidden {tuple(hidden.shape)} in [batch, seq_len]")
    check(len(weights) > 0 and len(weights) % TENSORS_PER_LAYER == 0,
          f"weights must hold {TENSORS_PER_LAYER} tensors per layer; got {len(weights)}")
    if fp8_ffn_scales is not None:
        check(fp8_ffn_scales.shape == (len(weights) // TENSORS_PER_LAYER, FP8_SCALES_PER_LAYER)
              and fp8_ffn_scales.dtype == torch.float32,
              f"fp8_ffn_scales must be float32 [num_layers, {FP8_SCALES_PER_LAYER}]; got {fp8_ffn_scales.dtype} {tuple(fp8_ffn_scales.shape)}")
    for tensor in (attention_mask, *weights, *([] if fp8_ffn_scales is None else [fp8_ffn_scales])):
        check(tensor.device == hidden.device, f"every tensor must be on hidden's device {hidden.device}; got {tensor.device}")
    return torch.empty_like(hidden, memory_format=torch.contiguous_format)


@torch.library.register_fake("fusedbert::embeddings")
def _embeddings_fake(input_ids, token_type_ids, position_ids, word_embeddings, token_type_embeddings,
                     position_embeddings, layer_norm_weight, layer_norm_bias, layer_norm_eps):
    torch._check(input_ids.dim() == 2, lambda: f"fusedbert::embeddings: input_ids must be [batch, seq_len]; got "
                                               f"{tuple(input_ids.shape)}")
    torch._check(word_embeddings.dim() == 2,
                 lambda: "fusedbert::embeddings: word_embeddings must be [vocab_size, width]")
    for tensor in (token_type_ids, position_ids, token_type_embeddings, position_embeddings, layer_norm_weight,
                   layer_norm_bias, word_embeddings):
        torch._check(tensor.device == input_ids.device,
                     lambda: f"fusedbert::embeddings: every tensor must be on input_ids' device {input_ids.device}")
    return word_embeddings.new_empty(input_ids.shape[0], input_ids.shape[1], word_embeddings.shape[1])


@torch.library.register_fake("fusedbert::packed_attention")
def _packed_attention_fake(qkv, cu_seqlens, max_seqlen, num_heads):
    torch._check(qkv.dim() == 2 and qkv.shape[1] % (3 * num_heads) == 0,
                 lambda: f"fusedbert::packed_attention: qkv must be [rows, 3 * hidden]; got {tuple(qkv.shape)}")
    return qkv.new_empty(qkv.shape[0], qkv.shape[1] // 3)


@torch.library.register_fake("fusedbert::linear_bias_gelu")
def _linear_bias_gelu_fake(input, weight, bias, kernel):
    torch._check(input.dim() == 2 and weight.dim() == 2 and input.shape[1] == weight.shape[1],
                 lambda: f"fusedbert::linear_bias_gelu: input [tokens, k] and weight [n, k] do not match: "
                         f"{tuple(input.shape)}, {tuple(weight.shape)}")
    return input.new_empty(input.shape[0], weight.shape[0])


@torch.library.register_fake("fusedbert::fp8_ffn_linear")
def _fp8_ffn_linear_fake(input, weight, bias, scales, stage, dtype, kernel):
    torch._check(input.dim() == 2 and weight.dim() == 2 and input.shape[1] == weight.shape[1],
                 lambda: f"fusedbert::fp8_ffn_linear: input [tokens, k] and weight [n, k] do not match: "
                         f"{tuple(input.shape)}, {tuple(weight.shape)}")
    # FFN1 writes e4m3 codes of its GELU's output, FFN2 the model's dtype.
    return input.new_empty(input.shape[0], weight.shape[0], dtype=torch.float8_e4m3fn if stage == "ffn1" else dtype)


def _setup_context(ctx, inputs, output):
    hidden, attention_mask, weights, num_heads, layer_norm_eps, activation, _, fp8_ffn_scales = inputs
    ctx.save_for_backward(hidden, attention_mask, fp8_ffn_scales, *weights)
    ctx.layer_args = (num_heads, layer_norm_eps, activation)


def _backward(ctx, grad_output):
    # Recompute the forward through the plain ATen reference and differentiate that: the fused kernels
    # need no backward of their own, and the gradient is exact for the same math. Gradients reach
    # `hidden` only; the packed weights are buffers, not trained here. In the FP8 FFN the rounding to e4m3
    # passes gradients through unchanged (a cast's gradient), as captum's attributions need.
    hidden, attention_mask, fp8_ffn_scales, *weights = ctx.saved_tensors
    with torch.enable_grad():
        hidden = hidden.detach().requires_grad_()
        out = encoder_reference(hidden, attention_mask, weights, *ctx.layer_args, fp8_ffn_scales)
        (grad_hidden,) = torch.autograd.grad(out, hidden, grad_output)
    # One gradient per argument the op was dispatched with: the dispatcher drops a trailing argument equal
    # to its default, so fp8_ffn_scales counts only when given.
    grads = (grad_hidden, None, [None] * len(weights), None, None, None, None)
    return grads if fp8_ffn_scales is None else (*grads, None)


torch.library.register_autograd("fusedbert::encoder", _backward, setup_context=_setup_context)

_EMBEDDING_TABLES = slice(3, 8)  # the op's float inputs: the three tables and the LayerNorm's weight and bias


def _embeddings_setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs[:8])
    ctx.layer_norm_eps = inputs[8]


def _embeddings_backward(ctx, grad_output):
    # As for the encoder: differentiate the plain-PyTorch reference of the same math. Autograd calls this
    # only when some table needs a gradient (the indices are integers).
    input_ids, token_type_ids, position_ids, *tables = ctx.saved_tensors
    needs = ctx.needs_input_grad[_EMBEDDING_TABLES]
    with torch.enable_grad():
        tables = [t.detach().requires_grad_(need) for t, need in zip(tables, needs)]
        out = embeddings_reference(input_ids, token_type_ids, position_ids, *tables, ctx.layer_norm_eps)
        grads = iter(torch.autograd.grad(out, [t for t in tables if t.requires_grad], grad_output))
    return (None, None, None, *(next(grads) if need else None for need in needs), None)


torch.library.register_autograd("fusedbert::embeddings", _embeddings_backward,
                                setup_context=_embeddings_setup_context)

encoder = torch.ops.fusedbert.encoder
