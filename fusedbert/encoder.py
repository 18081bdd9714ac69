"""FusedBertEncoder: a drop-in for a Hugging Face encoder that runs ``torch.ops.fusedbert.encoder``."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers.modeling_outputs import BaseModelOutputWithPastAndCrossAttentions

from . import _ops  # noqa: F401  (loads the op library, registers fake kernel and autograd)
from .fp8 import ffn_fp8
from .reference import TENSORS_PER_LAYER

SLOT_NAMES = (
    "qkv_weight", "qkv_bias", "attn_out_weight", "attn_out_bias", "ln1_weight", "ln1_bias",
    "ffn1_weight", "ffn1_bias", "ffn2_weight", "ffn2_bias", "ln2_weight", "ln2_bias",
)
assert len(SLOT_NAMES) == TENSORS_PER_LAYER


@dataclass
class LayerWeights:
    """One post-LN layer's parameters, in nn.Linear's [out, in] layout."""

    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attn_out: nn.Linear
    ln1: nn.LayerNorm
    ffn1: nn.Linear
    ffn2: nn.Linear
    ln2: nn.LayerNorm

    def packed(self) -> list[torch.Tensor]:
        """The 12 tensors in the op's order; Q, K and V fused into one [3H, H] projection."""
        tensors = [
            torch.cat([self.query.weight, self.key.weight, self.value.weight], dim=0),
            torch.cat([self.query.bias, self.key.bias, self.value.bias], dim=0),
            self.attn_out.weight, self.attn_out.bias, self.ln1.weight, self.ln1.bias,
            self.ffn1.weight, self.ffn1.bias, self.ffn2.weight, self.ffn2.bias, self.ln2.weight, self.ln2.bias,
        ]
        return [t.detach().clone().contiguous() for t in tensors]

    def packed_fp8(self) -> tuple[list[torch.Tensor], torch.Tensor]:
        """The 12 tensors with the FFN's weights as e4m3 codes, and the layer's row of fp8_ffn_scales."""
        tensors = self.packed()
        ffn1_codes, ffn2_codes, scales = ffn_fp8(self.ln1.weight, self.ln1.bias, self.ffn1.weight, self.ffn1.bias,
                                                 self.ffn2.weight)
        tensors[SLOT_NAMES.index("ffn1_weight")] = ffn1_codes
        tensors[SLOT_NAMES.index("ffn2_weight")] = ffn2_codes
        return tensors, scales


class FusedBertEncoder(nn.Module):
    """Runs all encoder layers as one fused op on the real tokens only.

    Called like the encoder it replaces (``hidden_states``, a 2-D ``attention_mask`` with 1 for real
    tokens) and returns the encoder output Hugging Face expects. Positions where the mask is 0 come back as zeros (Hugging
    Face leaves values there that depend on the padding; no head reads them for a real token).
    The packed weights are buffers, so ``state_dict``, ``.to()`` and TorchScript carry them.

    With ``fp8_ffn`` every FFN runs in FP8 (fusedbert/fp8.py): its weights are kept as e4m3 codes only, with
    their scales in the ``fp8_ffn_scales`` buffer, and a dtype cast of the module (``.half()``,
    ``.to(torch.bfloat16)``) leaves both as they are while moving them with the module.
    """

    def __init__(self, layers: list[LayerWeights], num_heads: int, layer_norm_eps: float, activation: str,
                 remove_padding: bool = True, fp8_ffn: bool = False):
        super().__init__()
        self.num_heads = num_heads
        self.layer_norm_eps = layer_norm_eps
        self.activation = activation
        self.remove_padding = remove_padding
        self.num_layers = len(layers)
        self.fp8_ffn = fp8_ffn
        scales = []
        for index, layer in enumerate(layers):
            if fp8_ffn:
                tensors, layer_scales = layer.packed_fp8()
                scales.append(layer_scales)
            else:
                tensors = layer.packed()
            for name, tensor in zip(SLOT_NAMES, tensors):
                self.register_buffer(f"layer{index}_{name}", tensor)
        self.register_buffer("fp8_ffn_scales", torch.stack(scales) if fp8_ffn else None)

    def _apply(self, fn, recurse=True):
        # nn.Module casts every floating-point buffer in .half() / .to(dtype), e4m3 included: codes cast to
        # float16 would lose their meaning (they are worth code * step), so these keep their dtype and
        # follow only the device.
        fixed = {name: t for name, t in self._buffers.items()
                 if t is not None and (t.dtype == torch.float8_e4m3fn or name == "fp8_ffn_scales")}
        super()._apply(fn, recurse)
        for name, before in fixed.items():
            after = self._buffers[name]
            if after.dtype != before.dtype:
                self._buffers[name] = before.to(after.device)
        return self

    def packed_weights(self) -> list[torch.Tensor]:
        return [getattr(self, f"layer{i}_{name}") for i in range(self.num_layers) for name in SLOT_NAMES]

    def forward(self, hidden_states: torch.Tensor, attention_mask: torch.Tensor | None = None, *args, **kwargs):
        if self.training:
            raise RuntimeError("fusedbert runs inference only (no dropout); call model.eval() before running it")
        if any(a is not None for a in args) or kwargs.get("encoder_hidden_states") is not None:
            raise NotImplementedError("fusedbert: cross-attention (encoder_hidden_states) is not supported")
        if kwargs.get("head_mask") is not None:
            raise NotImplementedError("fusedbert: head_mask is not supported")
        if attention_mask is None:
            attention_mask = torch.ones(hidden_states.shape[:2], dtype=torch.bool, device=hidden_states.device)
        elif attention_mask.dim() != 2:
            raise ValueError(
                "fusedbert: the encoder needs the 2-D padding mask [batch, seq_len]; got a "
                f"{attention_mask.dim()}-D mask (pass the tokenizer's attention_mask, not a prepared 4-D one)"
            )
        hidden = torch.ops.fusedbert.encoder(
            hidden_states, attention_mask, self.packed_weights(), self.num_heads, self.layer_norm_eps,
            self.activation, self.remove_padding, self.fp8_ffn_scales,
        )
        return BaseModelOutputWithPastAndCrossAttentions(last_hidden_state=hidden)

    def extra_repr(self) -> str:
        return (f"layers={self.num_layers}, heads={self.num_heads}, activation={self.activation}, "
                f"remove_padding={self.remove_padding}, fp8_ffn={self.fp8_ffn}")
