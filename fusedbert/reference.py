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


E4M3_MAX = 448.0  # the largest finite float8_e4m3fn
# fp8_ffn_scales' columns (csrc/encoder_args.h): value = e4m3 code * step; a value is multiplied by the
# inverse (1 / step in float32) before rounding.
FP8_SCALES_PER_LAYER = 6
FFN_INPUT_STEP, FFN_INPUT_INVERSE, FFN1_WEIGHT_STEP, FFN_INNER_STEP, FFN_INNER_INVERSE, FFN2_WEIGHT_STEP = range(
    FP8_SCALES_PER_LAYER)


def round_to_e4m3(values: torch.Tensor) -> torch.Tensor:
    """Float32 values rounded to the nearest e4m3 code (saturating at +-448, as the kernels round), as float32."""
    return values.clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn).float()


def fp8_ffn(x: torch.Tensor, ffn1_codes: torch.Tensor, ffn1_bias: torch.Tensor, ffn2_codes: torch.Tensor,
            scales: torch.Tensor) -> torch.Tensor:
    """FFN2(gelu(FFN1(x))) without FFN2's bias, in x's dtype, as the FP8 FFN computes it (fusedbert/fp8.py):
    x and the GELU output rounded to e4m3 codes, GEMMs of codes accumulated in float32 and scaled after."""
    codes = round_to_e4m3(x.float() * scales[FFN_INPUT_INVERSE])
    pre_activation = (codes @ ffn1_codes.float().T) * (scales[FFN_INPUT_STEP] * scales[FFN1_WEIGHT_STEP]) \
        + ffn1_bias.float()
    inner = round_to_e4m3(F.gelu(pre_activation) * scales[FFN_INNER_INVERSE])
    return ((inner @ ffn2_codes.float().T) * (scales[FFN_INNER_STEP] * scales[FFN2_WEIGHT_STEP])).to(x.dtype)


def encoder_reference(
    hidden: torch.Tensor,
    attention_mask: torch.Tensor,
    weights: list[torch.Tensor],
    num_heads: int,
    layer_norm_eps: float,
    activation: str,
    fp8_ffn_scales: torch.Tensor | None = None,
) -> torch.Tensor:
    """Post-LN BERT layers: x = LN1(x + O(attn(QKV(x)))); x = LN2(x + FFN2(act(FFN1(x)))); each FFN in FP8
    where ``fp8_ffn_scales`` are given (its weights then hold e4m3 codes)."""
    key_is_real = attention_mask.bool()
    act = ACTIVATIONS[activation]
    width = hidden.shape[-1]
    x = hidden
    for layer, first in enumerate(range(0, len(weights), TENSORS_PER_LAYER)):
        qkv_w, qkv_b, o_w, o_b, ln1_w, ln1_b, f1_w, f1_b, f2_w, f2_b, ln2_w, ln2_b = weights[
            first : first + TENSORS_PER_LAYER
        ]
        context = attention(F.linear(x, qkv_w, qkv_b), key_is_real, num_heads)
        x = F.layer_norm(x + F.linear(context, o_w, o_b), (width,), ln1_w, ln1_b, layer_norm_eps)
        if fp8_ffn_scales is None:
            ffn = F.linear(act(F.linear(x, f1_w, f1_b)), f2_w, f2_b)
        else:
            ffn = fp8_ffn(x, f1_w, f1_b, f2_w, fp8_ffn_scales[layer]) + f2_b
        x = F.layer_norm(x + ffn, (width,), ln2_w, ln2_b, layer_norm_eps)
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
