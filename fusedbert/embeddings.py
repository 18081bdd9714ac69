"""FusedBertEmbeddings: a drop-in for BERT's embeddings module that runs ``torch.ops.fusedbert.embeddings``."""

from __future__ import annotations

import torch
from torch import nn

from . import _ops  # noqa: F401  (loads the op library, registers fake kernel and autograd)
from .reference import embeddings_reference


def has_bert_embeddings(module: nn.Module) -> bool:
    """Whether ``module`` is laid out as Hugging Face's BertEmbeddings (ELECTRA's and RoBERTa's too): word,
    token type and absolute position tables, then a LayerNorm with weight and bias."""
    tables = ("word_embeddings", "token_type_embeddings", "position_embeddings")
    norm = getattr(module, "LayerNorm", None)
    return (all(isinstance(getattr(module, name, None), nn.Embedding) for name in tables)
            and isinstance(norm, nn.LayerNorm) and norm.weight is not None and norm.bias is not None
            and isinstance(getattr(module, "position_ids", None), torch.Tensor))


class FusedBertEmbeddings(nn.Module):
    """word + token type + position embeddings, then LayerNorm, as one op call: one kernel on CUDA where
    Hugging Face's module runs about six (three gathers, two adds, the LayerNorm), and on the GPU the
    sums never go through memory.

    Takes over the Hugging Face module's tables and LayerNorm under their names, so ``state_dict`` keys do
    not change and captum can hook this module as it hooked the original. Called as Hugging Face calls its
    embeddings. With ``inputs_embeds`` the same math runs in plain PyTorch (fusedbert.reference).

    Positions are BERT's (0, 1, 2, ...), or, for the RoBERTa family, whose modules number real tokens from
    ``padding_idx + 1`` and give padding ``padding_idx``, what that module's own static methods compute.
    """

    def __init__(self, hf_embeddings: nn.Module):
        super().__init__()
        if not has_bert_embeddings(hf_embeddings):
            raise TypeError(f"fusedbert: {type(hf_embeddings).__name__} is not laid out as BertEmbeddings")
        self.word_embeddings = hf_embeddings.word_embeddings
        self.token_type_embeddings = hf_embeddings.token_type_embeddings
        self.position_embeddings = hf_embeddings.position_embeddings
        self.LayerNorm = hf_embeddings.LayerNorm
        self.register_buffer("position_ids", hf_embeddings.position_ids, persistent=False)  # [1, max_positions]
        # Token types default to zeros: a slice of this buffer, as Hugging Face's module keeps one, rather than
        # a new tensor per call, which on the GPU is a fill kernel (one more node in a CUDA graph).
        self.register_buffer("token_type_ids", torch.zeros_like(hf_embeddings.position_ids), persistent=False)
        counts_after_padding = hasattr(type(hf_embeddings), "create_position_ids_from_input_ids")
        self.positions_after_padding = type(hf_embeddings) if counts_after_padding else None
        self.padding_idx = getattr(hf_embeddings, "padding_idx", None)
        self.train(hf_embeddings.training)

    def forward(self, input_ids: torch.Tensor | None = None, token_type_ids: torch.Tensor | None = None,
                position_ids: torch.Tensor | None = None, inputs_embeds: torch.Tensor | None = None,
                **kwargs) -> torch.Tensor:
        if self.training:
            raise RuntimeError("fusedbert runs inference only (no dropout); call model.eval() before running it")
        # The position offset of a cached prefix: `cache_length` in newer transformers, earlier
        # `past_key_values_length`.
        offset = kwargs.get("cache_length") or kwargs.get("past_key_values_length") or 0
        seq_len = (input_ids if inputs_embeds is None else inputs_embeds).shape[1]
        if position_ids is None:
            position_ids = self._default_position_ids(input_ids, inputs_embeds, offset, seq_len)
        if token_type_ids is None:
            token_type_ids = self.token_type_ids[:, :seq_len]
        args = (token_type_ids, position_ids, self.word_embeddings.weight, self.token_type_embeddings.weight,
                self.position_embeddings.weight, self.LayerNorm.weight, self.LayerNorm.bias, self.LayerNorm.eps)
        if inputs_embeds is not None:
            return embeddings_reference(None, *args, inputs_embeds=inputs_embeds)
        return torch.ops.fusedbert.embeddings(input_ids, *args)

    def _default_position_ids(self, input_ids, inputs_embeds, offset: int, seq_len: int) -> torch.Tensor:
        if self.positions_after_padding is None:
            # No arithmetic without an offset: a trace records `0 + seq_len` as an add with a tensor constant,
            # which torch.jit.load(map_location="cuda") puts on the GPU, and reading the sum back is then a
            # device synchronization on every call, one a CUDA graph capture refuses.
            return self.position_ids[:, :seq_len] if offset == 0 else self.position_ids[:, offset:offset + seq_len]
        if inputs_embeds is None:
            return self.positions_after_padding.create_position_ids_from_input_ids(input_ids, self.padding_idx, offset)
        return self.positions_after_padding.create_position_ids_from_inputs_embeds(inputs_embeds, self.padding_idx)

    def extra_repr(self) -> str:
        return f"width={self.word_embeddings.embedding_dim}, vocab={self.word_embeddings.num_embeddings}"
