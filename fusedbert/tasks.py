"""The serving modes: which Hugging Face head each one loads, and the tensor-only module traced for it.

Shared by the trace script, the download script and the handler, so a mode means the same model and
the same outputs everywhere.
"""

from __future__ import annotations

import inspect
import logging

import torch
from torch import nn
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    PreTrainedModel,
)

from .hub import resolve_checkpoint

logger = logging.getLogger(__name__)

AUTO_CLASSES = {
    "sequence_classification": AutoModelForSequenceClassification,
    "question_answering": AutoModelForQuestionAnswering,
    "token_classification": AutoModelForTokenClassification,
    "feature_extraction": AutoModel,
}
MODES = tuple(AUTO_CLASSES)
# Modes whose outputs have one value per token ([batch, seq_len, ...]); padding positions carry no answer.
TOKEN_LEVEL_MODES = ("question_answering", "token_classification")
HEAD_INIT_SEED = 0


def check_mode(mode: str) -> str:
    if mode not in AUTO_CLASSES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    return mode


def load_model(mode: str, model_name_or_path: str, num_labels: int | None = None,
               dtype: torch.dtype = torch.float32, device: str | torch.device = "cpu") -> PreTrainedModel:
    """The checkpoint with the head ``mode`` needs, in eval mode, on ``device`` in ``dtype``.

    ``model_name_or_path`` goes through ``resolve_checkpoint`` (a local copy of a known hub id needs no
    network). A head the checkpoint lacks is initialized from HEAD_INIT_SEED, so every load of it gives
    the same weights, and a warning says it is untrained.
    """
    auto_class = AUTO_CLASSES[check_mode(mode)]
    kwargs = {} if num_labels is None else {"num_labels": int(num_labels)}
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(HEAD_INIT_SEED)
        model, loading_info = auto_class.from_pretrained(
            resolve_checkpoint(model_name_or_path), dtype=dtype, output_loading_info=True, **kwargs)
    missing = sorted(loading_info["missing_keys"])
    if missing:
        logger.warning("%s has no weights for %s; they are initialized from seed %d and untrained (fine-tune "
                       "the %s head before serving answers)", model_name_or_path, ", ".join(missing),
                       HEAD_INIT_SEED, mode)
    return model.to(device).eval()


def load_tokenizer(name_or_path: str, do_lower_case: bool | None = None):
    kwargs = {} if do_lower_case is None else {"do_lower_case": do_lower_case}
    return AutoTokenizer.from_pretrained(resolve_checkpoint(name_or_path), **kwargs)


def mean_pool(last_hidden_state: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """[batch, seq_len, hidden] -> [batch, hidden]: the mean over real tokens (mask 1), summed in fp32."""
    mask = attention_mask.unsqueeze(-1).to(torch.float32)
    summed = (last_hidden_state.to(torch.float32) * mask).sum(dim=1)
    # An all-padding row averages nothing and gives zeros, not NaN.
    return (summed / mask.sum(dim=1).clamp(min=1.0)).to(last_hidden_state.dtype)


class TracedTaskModule(nn.Module):
    """A Hugging Face model (fused or not) called with tensors only, returning a tuple in HF's order.

    ``forward(input_ids [B,S], attention_mask [B,S], token_type_ids [B,S] or None)`` returns, per mode:

    - sequence_classification: ``(logits [B, num_labels],)``
    - question_answering: ``(start_logits [B, S], end_logits [B, S])``
    - token_classification: ``(logits [B, S, num_labels],)``
    - feature_extraction: ``(sentence_embedding [B, H],)``, the mean of the last hidden state over real
      tokens, NOT normalized (all-MiniLM-L6-v2 normalizes after pooling; the handler does when configured).

    Token-level outputs at padding positions are meaningless (a fused encoder gives zeros there, HF
    garbage). This is what ``torch.jit.trace`` and ``torch.export`` see: no dicts, no optional outputs.
    """

    def __init__(self, model: PreTrainedModel, mode: str):
        super().__init__()
        self.model = model
        self.mode = check_mode(mode)
        # DistilBERT's forward has no token_type_ids; the argument is then accepted and ignored.
        self.uses_token_type_ids = "token_type_ids" in inspect.signature(model.forward).parameters

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, ...]:
        extra = {"token_type_ids": token_type_ids} if self.uses_token_type_ids else {}
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True, **extra)
        if self.mode == "question_answering":
            return outputs.start_logits, outputs.end_logits
        if self.mode == "feature_extraction":
            return (mean_pool(outputs.last_hidden_state, attention_mask),)
        return (outputs.logits,)
