"""Accuracy parity report: fusedbert against Hugging Face, per device and dtype, on real sentences.

    python -m benchmarks.accuracy                    # CPU, and CUDA too when it is present
    python -m benchmarks.accuracy --device cuda      # one device
    python -m benchmarks.accuracy --sentences 8      # a quick look

Reference: the Hugging Face model in fp32 on the CPU (TF32 off). Against it, for every device and dtype,
both the fused model (``fusedbert.fuse``) and plain Hugging Face in the same dtype on the same device are
measured, so the table separates what the dtype itself costs from what fusion adds:

- last hidden state at real tokens (padding differs by design: zeros in the fused model): max and mean
  absolute difference (feature_extraction model, all-MiniLM-L6-v2);
- sentence embeddings (mean over real tokens): cosine similarity, minimum and mean;
- sequence classification (head seeded by fusedbert.tasks, untrained, so the logit margins are small and
  this is a strict test): argmax agreement, and max absolute logit difference;
- question answering (seeded head): share of QA pairs whose argmax start and end over the context
  tokens both equal the reference's.

Writes benchmarks/results/accuracy-<device>.md (one table) and accuracy-<device>.json beside it.
"""

from __future__ import annotations

import argparse
import copy
import datetime
import json
import logging
import os
import random
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable as from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch
import torch.nn.functional as F
import transformers
from transformers.utils import logging as hf_logging

import fusedbert
from fusedbert.tasks import load_model, load_tokenizer, mean_pool

from .encoder import device_name
from .texts import load_qa_pairs, load_sentences

CHECKPOINT = "sentence-transformers/all-MiniLM-L6-v2"
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
DEVICE_DTYPES = {"cpu": ("fp32", "bf16"), "cuda": ("fp32", "fp16", "bf16")}
SYSTEMS = ("hf", "fused", "fused_fp8")
FP8_DTYPES = ("fp16", "bf16")  # the FP8 FFN serves these (fusedbert/fp8.py)
NUM_LABELS = 2
MAX_LENGTH = 128
SHUFFLE_SEED = 0
RESULTS_DIR = Path(__file__).resolve().parent / "results"


@dataclass
class Inputs:
    """Tokenized batches, in a seeded shuffled order so that every batch mixes short and long texts."""

    batches: list[dict[str, torch.Tensor]]

    @classmethod
    def of(cls, encode: Callable[[list], dict], items: list, batch_size: int) -> "Inputs":
        order = list(range(len(items)))
        random.Random(SHUFFLE_SEED).shuffle(order)
        shuffled = [items[i] for i in order]
        return cls([encode(shuffled[i:i + batch_size]) for i in range(0, len(shuffled), batch_size)])


@dataclass
class Outputs:
    """What one system answered, concatenated over batches, on the CPU in fp32."""

    hidden_at_real_tokens: torch.Tensor  # [real tokens, H]
    embeddings: torch.Tensor             # [sentences, H]
    class_logits: torch.Tensor           # [sentences, NUM_LABELS]
    span_starts: torch.Tensor            # [QA pairs] argmax over context tokens
    span_ends: torch.Tensor              # [QA pairs]


@dataclass
class Row:
    device: str
    dtype: str
    system: str
    hidden_max_abs_diff: float
    hidden_mean_abs_diff: float
    embedding_cosine_min: float
    embedding_cosine_mean: float
    class_argmax_agreement: float
    class_flip_max_margin: float  # largest reference top-2 logit margin among the sentences whose argmax changed
    class_logit_max_abs_diff: float
    qa_spans_identical: float


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda", "all"], default="all",
                        help="all: the CPU, and CUDA when present (default)")
    parser.add_argument("--sentences", type=int, help="use only the first N sentences and N QA pairs")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    return parser.parse_args(argv)


def devices(choice: str) -> list[str]:
    if choice == "cuda" and not torch.cuda.is_available():
        raise SystemExit("accuracy: --device cuda, but torch sees no CUDA device")
    if choice == "all":
        return ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    return [choice]


def tokenize_inputs(tokenizer, sentences: list[str], qa_pairs: list[dict], batch_size: int) -> tuple[Inputs, Inputs]:
    def encode_texts(texts):
        return dict(tokenizer(texts, padding=True, truncation=True, max_length=MAX_LENGTH, return_tensors="pt"))

    def encode_pairs(pairs):
        encoded = tokenizer([p["question"] for p in pairs], [p["context"] for p in pairs], padding=True,
                            truncation="only_second", max_length=MAX_LENGTH, return_tensors="pt")
        # Spans may only start and end inside the context (sequence 1), as an extractive answer does.
        is_context = [[sequence == 1 for sequence in encoded.sequence_ids(i)] for i in range(len(pairs))]
        return dict(encoded) | {"is_context": torch.tensor(is_context)}

    return Inputs.of(encode_texts, sentences, batch_size), Inputs.of(encode_pairs, qa_pairs, batch_size)


def load_task_models() -> dict[str, torch.nn.Module]:
    """The three models the report needs, fp32 on the CPU: the reference, and what every system is copied from."""
    return {mode: load_model(mode, CHECKPOINT, NUM_LABELS if mode == "sequence_classification" else None)
            for mode in ("feature_extraction", "sequence_classification", "question_answering")}


def system_models(reference_models: dict, device: str, dtype: torch.dtype,
                  system: str) -> Iterator[tuple[str, torch.nn.Module]]:
    """Copies of the reference models in ``dtype`` on ``device`` as ``system`` runs them, one after another."""
    for mode, reference_model in reference_models.items():
        model = copy.deepcopy(reference_model).to(device=device, dtype=dtype)
        if system != "hf":
            fusedbert.fuse(model, fp8_ffn=system == "fused_fp8")
        yield mode, model


def run_system(models: Iterator[tuple[str, torch.nn.Module]], device: str, texts: Inputs, qa: Inputs) -> Outputs:
    def forward(model, batch):
        model_inputs = {k: v.to(device) for k, v in batch.items() if k != "is_context"}
        return model(**model_inputs)

    collected: dict[str, list[torch.Tensor]] = {name: [] for name in Outputs.__dataclass_fields__}
    with torch.inference_mode():
        for mode, model in models:
            batches = qa.batches if mode == "question_answering" else texts.batches
            for batch in batches:
                output = forward(model, batch)
                if mode == "feature_extraction":
                    hidden = output.last_hidden_state.float().cpu()
                    collected["hidden_at_real_tokens"].append(hidden[batch["attention_mask"].bool()])
                    collected["embeddings"].append(mean_pool(hidden, batch["attention_mask"]))
                elif mode == "sequence_classification":
                    collected["class_logits"].append(output.logits.float().cpu())
                else:
                    outside = ~batch["is_context"]
                    starts = output.start_logits.float().cpu().masked_fill(outside, float("-inf"))
                    ends = output.end_logits.float().cpu().masked_fill(outside, float("-inf"))
                    collected["span_starts"].append(starts.argmax(dim=1))
                    collected["span_ends"].append(ends.argmax(dim=1))
    return Outputs(**{name: torch.cat(parts) for name, parts in collected.items()})


def compare(device: str, dtype: str, system: str, outputs: Outputs, reference: Outputs) -> Row:
    hidden_diff = (outputs.hidden_at_real_tokens - reference.hidden_at_real_tokens).abs()
    cosine = F.cosine_similarity(outputs.embeddings, reference.embeddings, dim=1)
    same_class = outputs.class_logits.argmax(dim=1) == reference.class_logits.argmax(dim=1)
    top2 = reference.class_logits.topk(2, dim=1).values
    flip_margins = (top2[:, 0] - top2[:, 1])[~same_class]
    same_span = (outputs.span_starts == reference.span_starts) & (outputs.span_ends == reference.span_ends)
    return Row(device=device, dtype=dtype, system=system,
               hidden_max_abs_diff=hidden_diff.max().item(), hidden_mean_abs_diff=hidden_diff.mean().item(),
               embedding_cosine_min=cosine.min().item(), embedding_cosine_mean=cosine.mean().item(),
               class_argmax_agreement=same_class.float().mean().item(),
               class_flip_max_margin=flip_margins.max().item() if len(flip_margins) else 0.0,
               class_logit_max_abs_diff=(outputs.class_logits - reference.class_logits).abs().max().item(),
               qa_spans_identical=same_span.float().mean().item())


def markdown_table(header: dict, rows: list[Row]) -> str:
    lines = [
        f"# Accuracy parity: fusedbert vs Hugging Face on {header['device_name']} ({header['device']})",
        "",
        f"{header['date']}; torch {header['torch']}, transformers {header['transformers']}; model {CHECKPOINT} "
        f"(classification and QA heads seeded, untrained); {header['sentences']} sentences "
        f"({header['real_tokens']} real tokens), {header['qa_pairs']} QA pairs; batches of {header['batch_size']} "
        f"padded to their longest text, max_length {MAX_LENGTH}.",
        "",
        "Every row is compared with Hugging Face fp32 on the CPU. `hf` is plain Hugging Face in that dtype on "
        "that device (what the dtype costs); `fused` is `fusedbert.fuse()` of the same model (what fusion adds "
        "on top); `fused_fp8` is `fusedbert.fuse(fp8_ffn=True)`, every FFN in FP8 (fusedbert/fp8.py; on the CPU "
        "its rounding is emulated). Hidden-state differences are over real tokens only. An untrained head's logits are nearly tied, "
        "so argmax flips are likely wherever any rounding moves the logits; *largest margin flipped* is the "
        "reference's top-2 logit gap for the most decided sentence whose class changed.",
        "",
        "| dtype | system | hidden max abs diff | hidden mean abs diff | embedding cosine min | embedding cosine mean "
        "| class argmax agreement | largest margin flipped | class logit max abs diff | QA spans identical |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(f"| {row.dtype} | {row.system} | {row.hidden_max_abs_diff:.2e} | {row.hidden_mean_abs_diff:.2e} "
                     f"| {row.embedding_cosine_min:.6f} | {row.embedding_cosine_mean:.6f} "
                     f"| {row.class_argmax_agreement:.1%} | {row.class_flip_max_margin:.1e} | {row.class_logit_max_abs_diff:.2e} "
                     f"| {row.qa_spans_identical:.1%} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    # The table says the heads are seeded and untrained; the per-load warnings and progress bars would bury it.
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    logging.getLogger("fusedbert.tasks").setLevel(logging.ERROR)
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    sentences, qa_pairs = load_sentences(args.sentences), load_qa_pairs(args.sentences)
    texts, qa = tokenize_inputs(load_tokenizer(CHECKPOINT), sentences, qa_pairs, args.batch_size)
    real_tokens = sum(int(b["attention_mask"].sum()) for b in texts.batches)
    reference_models = load_task_models()
    reference = run_system(reference_models.items(), "cpu", texts, qa)

    args.out_dir.mkdir(parents=True, exist_ok=True)
    for device in devices(args.device):
        loadavg_start = os.getloadavg()
        rows = []
        for dtype_name in DEVICE_DTYPES[device]:
            for system in SYSTEMS:
                if system == "fused_fp8" and dtype_name not in FP8_DTYPES:
                    continue
                models = system_models(reference_models, device, DTYPES[dtype_name], system)
                rows.append(compare(device, dtype_name, system, run_system(models, device, texts, qa), reference))
        header = {
            "device": device, "device_name": device_name(torch.device(device)),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "fusedbert_build": torch.ops.fusedbert.build_info(),
            "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
            "checkpoint": CHECKPOINT, "reference": "hf fp32 cpu", "sentences": len(sentences),
            "real_tokens": real_tokens, "qa_pairs": len(qa_pairs), "batch_size": args.batch_size,
            "max_length": MAX_LENGTH, "loadavg_start": loadavg_start, "loadavg_end": os.getloadavg(),
        }
        table = markdown_table(header, rows)
        (args.out_dir / f"accuracy-{device}.md").write_text(table)
        (args.out_dir / f"accuracy-{device}.json").write_text(
            json.dumps({"header": header, "rows": [asdict(r) for r in rows]}, indent=2) + "\n")
        print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
