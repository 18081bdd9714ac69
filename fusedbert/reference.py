"""The ops' math in plain PyTorch on the padded batch: the one reference for each op.

The ops' backward recomputes through it, and the tests compare the fused kernels with it and with
Hugging Face. Padding positions of the encoder's result are zero, as the op returns them.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

TENSORS_PER_LAYER = 12  # the order of csrc/encoder_args.h

ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
}


def attention(qkv: torch.Tensor, key_is_real: torch.Tensor, num_heads: int) -> torch.Tensor:
    """qkv: [B, S, 3H] (biases added); key_is_real: [B, S] bool. Returns the context [B, S, H]."""
    batch, seq_len, width3 = qkv.shape
    head_dim = width3 // 3 // num_heads
    q, k, v = qkv.view(batch, seq_len, 3, num_heads, head_dim).permute(2, 0, 3, 1, 4)
    scores = (q @ k.transpose(-1, -2)) / math.sqrt(head_dim)
    scores = scores.masked_fill(~key_is_real[:, None, None, :], float("-inf"))
    # A sequence with no real token has every key masked: its (padding) rows become zeros, not NaN.
    probs = torch.softmax(scores.float(), dim=-1).nan_to_num(0.0).to(qkv.dtype)
    return (probs @ v).transpose(1, 2).reshape(batch, seq_len, num_heads * head_dim)


def encoder_reference(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weights: list[torch.Tensor],
    num_heads: int,
    layer_norm_eps: float,
    activation: str,
) -> torch.Tensor:
    """Post-LN BERT layers: x = LN1(x + O(attn(QKV(x)))); x = LN2(x + FFN2(act(FFN1(x))))."""
    key_is_real = attention_mask.bool()
    act = ACTIVATIONS[activation]
    width = hidden.shape[-1]
    x = hidden
    for first in range(0, len(weights), TENSORS_PER_LAYER):
        qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, f1_w, f1_b, f2_w, f2_b, ln2_w, ln2_b = weights[
            first : first + TENSORS_PER_LAYER
        ]
        context = attention(F.linear(x, qkv_w, qkv_b), key_is_real, num_heads)
        x = F.layer_norm(x + F.linear(context, o_w, o_b), (width,), ln1_w, ln1_b, layer_norm_eps)
        x = F.layer_norm(x + F.linear(act(F.linear(x, f1_w, f1_b)), f2_w, f2_b), (width,), ln2_w, ln2_b,
                         layer_norm_eps)
    return x * key_is_real.unsqueeze(-1).to(x.dtype)


def embeddings_reference(
    input_ids: torch.Tensor | None,
    token_type_ids: torch.Tensor,
    position_ids: torch.Tensor,
    word_embeddings: torch.Tensor,
    token_type_embeddings: torch.Tensor,
    position_embeddings: torch.Tensor,
    layer_norm_weight: torch.Tensor,
    layer_norm_bias: torch.Tensor,
    layer_norm_eps: float,
    inputs_embeds: torch.Tensor | None = None,
) -> torch.Tensor:
    """BERT's embeddings, LayerNorm(word + token type + position) [B, S, E], summed and normalized in float32
    and rounded once to the tables' dtype, as the op computes them. ``inputs_embeds`` [B, S, E], when given,
    stands for the word rows (``input_ids`` is then unused)."""
    words = F.embedding(input_ids, word_embeddings) if inputs_embeds is None else inputs_embeds
    summed = (words.float() + F.embedding(token_type_ids, token_type_embeddings).float()
              + F.embedding(position_ids, position_embeddings).float())
    width = word_embeddings.shape[-1]
    normalized = F.layer_norm(summed, (width,), layer_norm_weight.float(), layer_norm_bias.float(), layer_norm_eps)
    return normalized.to(word_embeddings.dtype)
