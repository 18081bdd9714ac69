"""What the encoder benchmark runs: model shapes and weights, and seeded variable-length batches."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import BertConfig, BertModel

SEED = 0

# BERT-family shapes. MiniLM uses the real all-MiniLM-L6-v2 checkpoint when it is installed.
MODEL_SHAPES = {
    "minilm": dict(hidden_size=384, num_hidden_layers=6, num_attention_heads=12, intermediate_size=1536),
    "bert-base": dict(hidden_size=768, num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072),
    "bert-large": dict(hidden_size=1024, num_hidden_layers=24, num_attention_heads=16, intermediate_size=4096),
}


@dataclass(frozen=True)
class Workload:
    name: str
    batch: int
    min_len: int
    max_len: int  # lengths are uniform in [min_len, max_len]; equal bounds give a fixed length


WORKLOADS = {
    w.name: w
    for w in (
        Workload("bs1x16", 1, 16, 16),
        Workload("bs1x128", 1, 128, 128),
        Workload("bs16_var", 16, 8, 128),  # a full batch of the serving benchmark (batchSize 16, same mix)
        Workload("bs32_var", 32, 8, 128),
        Workload("bs128_var", 128, 8, 128),
    )
}


@dataclass(frozen=True)
class Batch:
    """A tokenized batch padded to its longest sequence, as a serving frontend hands it over."""

    input_ids: torch.Tensor       # [B, S] int64
    attention_mask: torch.Tensor  # [B, S] int64, 1 for real tokens
    lengths: tuple[int, ...]      # real tokens per sequence

    @property
    def real_tokens(self) -> int:
        return sum(self.lengths)

    @property
    def is_real(self) -> torch.Tensor:
        return self.attention_mask.bool()


def make_batch(workload: Workload, vocab_size: int, device: torch.device) -> Batch:
    """The same batch for every model, dtype and system: lengths and token ids come from one seed."""
    generator = torch.Generator().manual_seed(SEED)
    lengths = torch.randint(workload.min_len, workload.max_len + 1, (workload.batch,), generator=generator)
    return padded_batch(lengths.tolist(), vocab_size, device, generator)


def padded_batch(lengths: list[int], vocab_size: int, device: torch.device, generator: torch.Generator) -> Batch:
    """Texts of these token counts (random ids from ``generator``), padded to the longest."""
    seq_len = max(lengths)
    input_ids = torch.randint(1000, vocab_size, (len(lengths), seq_len), generator=generator)
    attention_mask = (torch.arange(seq_len)[None, :] < torch.tensor(lengths)[:, None]).long()
    input_ids = input_ids * attention_mask  # pad id 0, as BERT tokenizers pad
    return Batch(input_ids.to(device), attention_mask.to(device), tuple(lengths))


def load_model(name: str) -> tuple[BertModel, str]:
    """The model's fp32 weights in a BertModel without pooler (the encoder is what is measured), and
    where the weights came from."""
    if name not in MODEL_SHAPES:
        raise ValueError(f"unknown model {name!r}; expected one of {', '.join(MODEL_SHAPES)}")
    if name == "minilm":
        from fusedbert.hub import minilm_dir

        path = minilm_dir()
        if path is not None:
            model = BertModel.from_pretrained(str(path), add_pooling_layer=False, attn_implementation="eager")
            return model.float().eval(), f"all-MiniLM-L6-v2 ({path})"
    config = BertConfig(**MODEL_SHAPES[name], attn_implementation="eager")
    torch.manual_seed(SEED)
    return BertModel(config, add_pooling_layer=False).eval(), f"random (BertConfig init, seed {SEED})"
