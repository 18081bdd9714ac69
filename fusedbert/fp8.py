"""The FP8 FFN: each layer's feed-forward block with e4m3 operands, for Hopper's FP8 tensor cores.

The FFN is two thirds of a BERT layer's FLOPs, and Hopper runs e4m3 GEMMs at twice the float16 rate. In
this mode each FFN computes, per layer (``fusedbert.reference.fp8_ffn`` is the same math in PyTorch)::

    x8    = e4m3(x * 1/x_step)                       x: LN1's output, the FFN's input
    z     = (x8 @ W1_8^T) * (x_step * w1_step) + b1  float32 accumulation
    h8    = e4m3(gelu(z) * 1/h_step)
    out   = (h8 @ W2_8^T) * (h_step * w2_step)       rounded to the model's dtype; LN2 adds b2

with one step per tensor: weights are rounded to e4m3 codes by their largest magnitude, and each
activation's step comes from a bound on it that the weights alone give, so no calibration data is needed
and no activation can exceed e4m3's range, whatever the input:

- LN1's output element i is ``gamma_i * n_i + beta_i`` with ``|n_i| <= sqrt(H - 1)`` (a normalized row has
  zero mean and squared norm at most H), so ``|x_i| <= |gamma_i| sqrt(H - 1) + |beta_i|``; its norm is at
  most ``max|gamma| sqrt(H) + ||beta||``.
- FFN1's output j is bounded by Cauchy-Schwarz, ``|z_j| <= ||x8 step|| ||W1_8[j] step|| + |b1_j|``, with
  the rounded x at most 1/16 larger than x (e4m3 keeps 3 mantissa bits); GELU's output lies in
  ``[-0.17, max(z, 0)]``.

e4m3 is floating point, so a bound above the values actually met costs little: a value 100x below its
tensor's bound still keeps all of its 3 mantissa bits. The cost of the mode is that rounding, measured by
``benchmarks/accuracy.py`` (docs/benchmarks.md) and held to the bound in tests/test_fp8.py.
"""

from __future__ import annotations

import math

import torch

from .reference import (E4M3_MAX, FFN1_WEIGHT_STEP, FFN2_WEIGHT_STEP, FFN_INNER_INVERSE, FFN_INNER_STEP,
                        FFN_INPUT_INVERSE, FFN_INPUT_STEP, FP8_SCALES_PER_LAYER)

# Rounding that the bounds above ignore: the model's dtype rounding LN1's output (bfloat16: 2^-9 relative)
# and float32 accumulation. 1% covers both with room.
_MARGIN = 1.01
_E4M3_ROUNDING = 1 + 2.0**-4  # the most a value grows when rounded to e4m3 (3 mantissa bits)
_GELU_MIN = 0.17  # GELU(z) >= -0.16997 for every z


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, float]:
    """e4m3 codes of a weight and their step, one per tensor: the largest magnitude maps to 448."""
    w = weight.detach().double()
    largest = w.abs().max().item()
    step = largest / E4M3_MAX if largest > 0 else 1.0
    return (w / step).clamp(-E4M3_MAX, E4M3_MAX).to(torch.float8_e4m3fn), step


def ffn_fp8(ln1_weight: torch.Tensor, ln1_bias: torch.Tensor, ffn1_weight: torch.Tensor, ffn1_bias: torch.Tensor,
            ffn2_weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """One layer's FFN weights as e4m3 codes and its row of ``fp8_ffn_scales`` (float32, the op's order):
    ``(ffn1_codes, ffn2_codes, scales)``, on the weights' device."""
    gamma, beta = ln1_weight.detach().double(), ln1_bias.detach().double()
    hidden = gamma.numel()
    input_bound = _MARGIN * (gamma.abs() * math.sqrt(hidden - 1) + beta.abs()).max().item()
    input_norm_bound = _MARGIN * _E4M3_ROUNDING * (gamma.abs().max().item() * math.sqrt(hidden) + beta.norm().item())

    ffn1_codes, ffn1_step = quantize_weight(ffn1_weight)
    ffn2_codes, ffn2_step = quantize_weight(ffn2_weight)
    row_norms = ffn1_codes.double().norm(dim=1) * ffn1_step
    pre_activation_bound = (input_norm_bound * row_norms + ffn1_bias.detach().double().abs()).max().item()
    inner_bound = _MARGIN * max(pre_activation_bound, _GELU_MIN)

    scales = [0.0] * FP8_SCALES_PER_LAYER
    scales[FFN_INPUT_STEP] = input_bound / E4M3_MAX
    scales[FFN1_WEIGHT_STEP] = ffn1_step
    scales[FFN_INNER_STEP] = inner_bound / E4M3_MAX
    scales[FFN2_WEIGHT_STEP] = ffn2_step
    scales[FFN_INPUT_INVERSE] = 1.0 / scales[FFN_INPUT_STEP]
    scales[FFN_INNER_INVERSE] = 1.0 / scales[FFN_INNER_STEP]
    return ffn1_codes, ffn2_codes, torch.tensor(scales, dtype=torch.float32, device=ffn1_weight.device)
