"""``fuse()``: swap a Hugging Face model's encoder for FusedBertEncoder (and its embeddings for
FusedBertEmbeddings), in place."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn
from transformers import AttentionInterface, PreTrainedModel
from transformers.masking_utils import AttentionMaskInterface

from .embeddings import FusedBertEmbeddings, has_bert_embeddings
from .encoder import FusedBertEncoder, LayerWeights

ATTN_IMPLEMENTATION = "fusedbert"
SUPPORTED_ACTIVATIONS = ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")


def _padding_mask(*, attention_mask=None, **_):
    # Hugging Face builds a 4-D mask per attention implementation; the fused encoder needs only the
    # 2-D padding mask, which _preprocess_mask_arguments has already turned into bool [B, S].
    return attention_mask


def _no_attention_layers(*args, **kwargs):
    raise RuntimeError("fusedbert: a Hugging Face attention layer ran inside a fused model; fuse() missed it")


AttentionMaskInterface.register(ATTN_IMPLEMENTATION, _padding_mask)
AttentionInterface.register(ATTN_IMPLEMENTATION, _no_attention_layers)


@dataclass(frozen=True)
class Family:
    """Where a model family keeps its encoder and what its layers' parts are called."""

    encoder_attr: str
    num_heads: Callable
    activation: Callable
    layer_weights: Callable[[nn.Module], LayerWeights]
    # Whether its embeddings are laid out as BERT's (word, token type and position tables, then LayerNorm),
    # which FusedBertEmbeddings computes; DistilBERT's have no token types.
    bert_embeddings: bool = True


def _bert_layer(layer) -> LayerWeights:
    attn = layer.attention
    return LayerWeights(attn.self.query, attn.self.key, attn.self.value, attn.output.dense, attn.output.LayerNorm,
                        layer.intermediate.dense, layer.output.dense, layer.output.LayerNorm)


def _distilbert_layer(layer) -> LayerWeights:
    attn = layer.attention
    return LayerWeights(attn.q_lin, attn.k_lin, attn.v_lin, attn.out_lin, layer.sa_layer_norm,
                        layer.ffn.lin1, layer.ffn.lin2, layer.output_layer_norm)


_BERT_LIKE = Family("encoder", lambda c: c.num_attention_heads, lambda c: c.hidden_act, _bert_layer)
FAMILIES = {
    "bert": _BERT_LIKE,
    "roberta": _BERT_LIKE,
    "xlm-roberta": _BERT_LIKE,
    "camembert": _BERT_LIKE,
    "electra": _BERT_LIKE,
    "distilbert": Family("transformer", lambda c: c.n_heads, lambda c: c.activation, _distilbert_layer,
                         bert_embeddings=False),
}


def _check_supported(model: PreTrainedModel, family: Family) -> str:
    config = model.config
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        raise NotImplementedError("fusedbert: decoder models and cross-attention are not supported (config.is_decoder"
                                  " / config.add_cross_attention is set)")
    position = getattr(config, "position_embedding_type", "absolute")
    if position != "absolute":
        raise NotImplementedError(f"fusedbert: position_embedding_type={position!r} (relative position embeddings "
                                  "inside attention) is not supported; only 'absolute'")
    activation = family.activation(config)
    if activation not in SUPPORTED_ACTIVATIONS:
        raise NotImplementedError(f"fusedbert: activation {activation!r} is not supported; supported: "
                                  f"{', '.join(SUPPORTED_ACTIVATIONS)}")
    return activation


def _reject_unsupported_outputs(module, args, kwargs):
    # Per-layer outputs are collected by hooks on Hugging Face's layer modules, which the fused encoder
    # no longer has: asking for them would silently return nothing.
    for name in ("output_attentions", "output_hidden_states"):
        if kwargs.get(name) or getattr(module.config, name, False):
            raise NotImplementedError(f"fusedbert: {name}=True is not supported by the fused encoder")
    if kwargs.get("head_mask") is not None:
        raise NotImplementedError("fusedbert: head_mask is not supported")


def fuse(model: PreTrainedModel, *, remove_padding: bool = True, fuse_embeddings: bool = True,
         fp8_ffn: bool = False) -> PreTrainedModel:
    """Replace ``model``'s encoder with FusedBertEncoder, in place, and return ``model``; the embeddings
    become FusedBertEmbeddings too (all but DistilBERT's).

    Works on base models and on their sequence-classification, question-answering and
    token-classification heads for BERT (MiniLM too), RoBERTa, XLM-R, CamemBERT, ELECTRA and DistilBERT.
    The model is then called exactly as before and returns Hugging Face's outputs; with
    ``remove_padding`` the encoder runs on real tokens only. ``fuse_embeddings=False`` keeps Hugging Face's
    embeddings module, whose ``word_embeddings`` submodule then still runs on its own (a captum hook on
    it, as in captum's BERT tutorial, needs that; hooking the whole ``embeddings`` module works either way).
    ``fp8_ffn=True`` runs every FFN in FP8 (fusedbert/fp8.py; float16/bfloat16 models with the erf GELU,
    fast on Hopper, emulated elsewhere); its cost in accuracy is in docs/benchmarks.md.
    """
    model_type = getattr(model.config, "model_type", None)
    family = FAMILIES.get(model_type)
    if family is None:
        raise NotImplementedError(f"fusedbert: model_type {model_type!r} is not supported; supported: "
                                  f"{', '.join(sorted(FAMILIES))}")
    activation = _check_supported(model, family)
    base = model.base_model
    hf_encoder = getattr(base, family.encoder_attr)
    if isinstance(hf_encoder, FusedBertEncoder):
        raise ValueError("fusedbert: this model is already fused")
    layers = [family.layer_weights(layer) for layer in hf_encoder.layer]
    eps = {layer.ln1.eps for layer in layers} | {layer.ln2.eps for layer in layers}
    if len(eps) != 1:
        raise NotImplementedError(f"fusedbert: LayerNorms with different eps values {sorted(eps)} are not supported")
    if fp8_ffn and activation != "gelu":
        raise NotImplementedError(f"fusedbert: the FP8 FFN computes the erf GELU (\"gelu\") only; this model uses "
                                  f"{activation!r}")
    fused = FusedBertEncoder(layers, family.num_heads(model.config), eps.pop(), activation, remove_padding,
                             fp8_ffn=fp8_ffn)
    fused.train(hf_encoder.training)
    setattr(base, family.encoder_attr, fused)
    if fuse_embeddings and family.bert_embeddings and has_bert_embeddings(base.embeddings):
        base.embeddings = FusedBertEmbeddings(base.embeddings)
    model.config._attn_implementation = ATTN_IMPLEMENTATION
    base.register_forward_pre_hook(_reject_unsupported_outputs, with_kwargs=True)
    return model


def is_fused(model: nn.Module) -> bool:
    return any(isinstance(m, FusedBertEncoder) for m in model.modules())
