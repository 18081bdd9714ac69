"""Trace a Hugging Face BERT-family checkpoint with fusedbert's encoder into a file TorchServe can load.

Keeps the command line of TorchServe's FasterTransformer example (``Bert_FT_trace.py``):

    python trace/bert_ft_trace.py --mode sequence_classification --model_name_or_path Transformer_model \\
        --tokenizer_name Transformer_model --batch_size 1 --data_type fp32 --model_type thsext

Steps: load the checkpoint with the mode's head; swap its encoder for the fused op (``--model_type
thsext``; ``ori`` keeps Hugging Face's for comparison); check it against Hugging Face in fp32 on batches
of several lengths; trace it (``--format torchscript``, the default) or export it (``--format export``,
a ``.pt2`` for ``torch.export.load``); write the file; then load the file in a fresh process that imports
nothing but torch and the op library and check it on batch sizes and lengths it was not traced with.

The file is called as ``model(input_ids, attention_mask[, token_type_ids])`` and returns a tuple in
Hugging Face's order (see ``fusedbert.tasks.TracedTaskModule``; feature_extraction returns the
mean-pooled, unnormalized sentence embedding). A ``.pt2`` takes all three inputs.

Importable: ``load_model``, ``TracedTaskModule``, ``trace``, ``export``, ``verify`` (put this directory
on ``sys.path``; ``check_traced`` beside it is the torch-only checker).
"""

from __future__ import annotations

import argparse
import copy
import json
import logging
import os
import subprocess
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers.utils import logging as hf_logging

import fusedbert
from fusedbert.tasks import MODES, TOKEN_LEVEL_MODES, TracedTaskModule, load_model, load_tokenizer
from check_traced import max_abs_diff

__all__ = ["TracedTaskModule", "VerificationError", "export", "load_model", "trace", "verify"]

DATA_TYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
FP32_ATOL = 1e-4
# In fp16/bf16 nothing gets closer to the fp32 answer than Hugging Face's own run in that dtype, so the
# bar is relative to it (as in flash-attention's tests): at most twice HF's own error, plus the fp32 bar.
LOW_PRECISION_ERROR_FACTOR = 2.0
# Long enough for the question-answering sample (question + separators + some context).
MIN_SEQ_LEN = 16
CHECK_SCRIPT = Path(__file__).resolve().with_name("check_traced.py")

QUESTION = "What does padding removal skip?"
PASSAGE = (
    "Padding removal gathers the real tokens of every sequence in a batch into one packed matrix, so the "
    "encoder layers spend no time on padding. Attention then runs per sequence on its own tokens, and the "
    "outputs are scattered back to the padded layout at the end. Short requests batched with long ones "
    "cost only their own length. "
)


class VerificationError(RuntimeError):
    """The fused or traced model does not match Hugging Face within the dtype's tolerance."""


class _OptionalTokenTypes(nn.Module):
    """Gives the traced model an optional third input: absent token types are all zeros, as in HF."""

    def __init__(self, traced: torch.jit.ScriptModule):
        super().__init__()
        self.traced = traced

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None):
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        return self.traced(input_ids, attention_mask, token_type_ids)


# ---------------------------------------------------------------------------------------------- inputs

def encode_batch(tokenizer, mode: str, lengths: list[int], padded_length: int | None = None):
    """(input_ids, attention_mask, token_type_ids), each [len(lengths), S]: one sample per length, each
    exactly that many tokens, padded to the longest or to ``padded_length``."""
    passage = PASSAGE * (1 + max(lengths) // 40)  # ~60 tokens a copy: always longer than needed
    encodings = []
    for length in lengths:
        if mode == "question_answering":
            encoding = tokenizer(QUESTION, passage, truncation="only_second", max_length=length)
        else:
            encoding = tokenizer(passage, truncation=True, max_length=length)
        assert len(encoding["input_ids"]) == length, (length, len(encoding["input_ids"]))
        encodings.append(encoding)
    batch = tokenizer.pad(encodings, padding="max_length" if padded_length else "longest",
                          max_length=padded_length, return_tensors="pt")
    input_ids = batch["input_ids"]
    token_type_ids = batch.get("token_type_ids")
    if token_type_ids is None:  # RoBERTa-style tokenizers produce none; a single segment is all zeros
        token_type_ids = torch.zeros_like(input_ids)
    return input_ids, batch["attention_mask"], token_type_ids


def trace_lengths(batch_size: int, seq_len: int) -> list[int]:
    """The traced example: the first sample fills ``seq_len``, the others are shorter, so the trace sees
    padding (a trace of an all-ones mask could keep a shortcut that skips masking)."""
    step = max(1, seq_len // (2 * batch_size))
    return [max(MIN_SEQ_LEN, seq_len - i * step) for i in range(batch_size)]


def verification_lengths(batch_size: int, seq_len: int, max_len: int) -> list[list[int]]:
    """Batches whose (batch size, padded length) the trace never saw, one of them longer than it."""
    single = MIN_SEQ_LEN + 1 if seq_len != MIN_SEQ_LEN + 1 else MIN_SEQ_LEN + 2
    longer = seq_len + 9 if seq_len + 9 <= max_len else seq_len - 1
    spread = seq_len - MIN_SEQ_LEN + 1
    return [
        [single],
        [longer, MIN_SEQ_LEN, max(MIN_SEQ_LEN, seq_len // 3)] + ([MIN_SEQ_LEN + 5] if batch_size == 3 else []),
        [MIN_SEQ_LEN + (i * 37) % spread for i in range(batch_size + 2)],
    ]


# ------------------------------------------------------------------------------------- trace / export

def trace(module: TracedTaskModule, example_inputs) -> torch.jit.ScriptModule:
    """TorchScript of ``module`` (traced on ``(input_ids, attention_mask, token_type_ids)``), callable with
    or without ``token_type_ids``."""
    with torch.no_grad():
        traced = torch.jit.trace(module, tuple(example_inputs), check_trace=False)
    return torch.jit.script(_OptionalTokenTypes(traced))


def export(module: TracedTaskModule, example_inputs, max_seq_len: int) -> torch.export.ExportedProgram:
    """A ``torch.export`` program of ``module`` with dynamic batch size and sequence length."""
    batch = torch.export.Dim("batch", min=1)
    seq_len = torch.export.Dim("seq_len", min=2, max=max_seq_len)
    dims = {0: batch, 1: seq_len}
    # torch.export specializes a dimension of size 1 to a constant, so export a batch of at least two rows.
    example_inputs = [t.expand(2, -1).contiguous() if t.shape[0] == 1 else t for t in example_inputs]
    with torch.no_grad():
        return torch.export.export(module, tuple(example_inputs),
                                   dynamic_shapes={"input_ids": dims, "attention_mask": dims, "token_type_ids": dims})


def contains_fused_encoder(traced: torch.jit.ScriptModule) -> bool:
    return "fusedbert::encoder" in str(traced.inlined_graph)


# ----------------------------------------------------------------------------------------------- verify

@dataclass
class Case:
    inputs: tuple[torch.Tensor, torch.Tensor, torch.Tensor]
    expected: tuple[torch.Tensor, ...]
    token_level: bool


@dataclass
class VerificationReport:
    max_diff: float
    per_case: list[float]
    shapes: list[list[int]]
    fusedbert_imported: bool


def verify(path: str | os.PathLike, cases: list[Case], atol: float, library: str | None = None,
           device: str = "cpu") -> VerificationReport:
    """Load the file at ``path`` in a fresh Python that imports only torch (and loads ``library``, the op's
    ``.so``), run ``cases`` and raise VerificationError if an output is more than ``atol`` off."""
    with tempfile.TemporaryDirectory() as tmp:
        cases_file = os.path.join(tmp, "cases.pt")
        torch.save([{"inputs": [t.cpu() for t in case.inputs], "expected": [t.cpu() for t in case.expected],
                     "token_level": case.token_level} for case in cases], cases_file)
        command = [sys.executable, str(CHECK_SCRIPT), str(path), cases_file, "--atol", repr(atol), "--device", device]
        if library:
            command += ["--library", library]
        result = subprocess.run(command, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if not lines or not lines[-1].startswith("{"):
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise VerificationError(f"{path} failed to load or run in a fresh process: {last}")
    report = VerificationReport(**json.loads(lines[-1]))
    if result.returncode != 0:
        raise VerificationError(f"{path} in a fresh process differs from Hugging Face by {report.max_diff:.3g} "
                                f"> {atol:.3g} (batches {report.shapes}, per batch {report.per_case})")
    return report


def run_cases(module: nn.Module, cases: list[Case]) -> float:
    with torch.no_grad():
        return max(max_abs_diff(module(*case.inputs), case.expected, case.inputs[1], case.token_level)
                   for case in cases)


# ------------------------------------------------------------------------------------------------- CLI

class _OneLineErrorParser(argparse.ArgumentParser):
    def error(self, message: str):
        self.exit(2, f"error: {message} (see --help)\n")


def parse_args(argv=None) -> argparse.Namespace:
    parser = _OneLineErrorParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", default="sequence_classification", help=f"one of {', '.join(MODES)}")
    parser.add_argument("--model_name_or_path", required=True, help="checkpoint directory or hub id")
    parser.add_argument("--tokenizer_name", help="tokenizer directory or hub id (default: the model's)")
    parser.add_argument("--batch_size", type=int, default=1, help="batch size of the traced example")
    parser.add_argument("--seq_len", type=int, default=128, help="padded length of the traced example")
    parser.add_argument("--data_type", default="fp32", choices=sorted(DATA_TYPES))
    parser.add_argument("--model_type", default="thsext", choices=["thsext", "ori"],
                        help="thsext: fused encoder; ori: Hugging Face's encoder, traced the same way")
    parser.add_argument("--remove_padding", action=argparse.BooleanOptionalAction, default=True,
                        help="run the fused encoder on real tokens only (default on)")
    parser.add_argument("--fp8_ffn", action="store_true",
                        help="run every FFN in FP8 (fusedbert/fp8.py; --data_type fp16 or bf16, fast on Hopper)")
    parser.add_argument("--num_labels", type=int, help="labels of a new classification head")
    parser.add_argument("--device", choices=["cpu", "cuda"],
                        default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--format", default="torchscript", choices=["torchscript", "export"])
    parser.add_argument("--output", help="output file (default ./traced_model.pt, or .pt2 for --format export)")
    args = parser.parse_args(argv)
    if args.mode not in MODES:
        parser.error(f"--mode must be one of {', '.join(MODES)}; got {args.mode!r}")
    if args.batch_size < 1:
        parser.error(f"--batch_size must be at least 1; got {args.batch_size}")
    if args.seq_len < MIN_SEQ_LEN:
        parser.error(f"--seq_len must be at least {MIN_SEQ_LEN}; got {args.seq_len}")
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: no CUDA device is available here; use --device cpu")
    if args.data_type == "fp16" and args.device == "cpu":
        parser.error("--data_type fp16 needs --device cuda; on CPU use --data_type bf16")
    if args.fp8_ffn and (args.model_type != "thsext" or args.data_type == "fp32"):
        parser.error("--fp8_ffn needs --model_type thsext and --data_type fp16 or bf16")
    args.tokenizer_name = args.tokenizer_name or args.model_name_or_path
    args.output = args.output or ("traced_model.pt2" if args.format == "export" else "traced_model.pt")
    return args


def build(args: argparse.Namespace) -> str:
    """Trace or export as ``args`` say, verify, write the file; return the one-line summary."""
    dtype = DATA_TYPES[args.data_type]
    reference = load_model(args.mode, args.model_name_or_path, args.num_labels, torch.float32, args.device)
    hf_in_dtype = reference if dtype == torch.float32 else copy.deepcopy(reference).to(dtype)
    target = hf_in_dtype if args.model_type == "ori" else copy.deepcopy(hf_in_dtype)
    if args.model_type == "thsext":
        fusedbert.fuse(target, remove_padding=args.remove_padding, fp8_ffn=args.fp8_ffn)
    module = TracedTaskModule(target, args.mode)

    tokenizer = load_tokenizer(args.tokenizer_name)
    max_len = reference.config.max_position_embeddings
    if args.seq_len > max_len:
        raise ValueError(f"--seq_len {args.seq_len} is longer than the model's max_position_embeddings {max_len}")
    token_level = args.mode in TOKEN_LEVEL_MODES
    # An FP8 model is held to its own eager outputs: its distance from fp32 is FP8's, bounded in tests/test_fp8.py.
    reference_module = module if args.fp8_ffn else TracedTaskModule(reference, args.mode)
    cases = []
    with torch.no_grad():
        for lengths in verification_lengths(args.batch_size, args.seq_len, max_len):
            inputs = tuple(t.to(args.device) for t in encode_batch(tokenizer, args.mode, lengths))
            cases.append(Case(inputs, reference_module(*inputs), token_level))
    atol = FP32_ATOL
    if dtype != torch.float32:
        atol += LOW_PRECISION_ERROR_FACTOR * run_cases(TracedTaskModule(hf_in_dtype, args.mode), cases)

    eager_diff = run_cases(module, cases)
    if eager_diff > atol:
        raise VerificationError(f"the {args.model_type} model in {args.data_type} differs from Hugging Face fp32 by "
                                f"{eager_diff:.3g} > {atol:.3g} before tracing; not writing {args.output}")

    example = tuple(t.to(args.device) for t in encode_batch(
        tokenizer, args.mode, trace_lengths(args.batch_size, args.seq_len), padded_length=args.seq_len))
    if args.format == "export":
        torch.export.save(export(module, example, max_len), args.output)
    else:
        traced = trace(module, example)
        if args.model_type == "thsext" and not contains_fused_encoder(traced):
            raise VerificationError("the traced graph has no fusedbert::encoder call; the fused encoder was bypassed")
        torch.jit.save(traced, args.output)

    library = fusedbert.library_path() if args.model_type == "thsext" else None
    report = verify(args.output, cases, atol, library=library, device=args.device)
    if args.model_type == "thsext":
        encoder = "fused encoder, " + ("padding removed" if args.remove_padding else "padded")
        encoder += ", FP8 FFN" if args.fp8_ffn else ""
    else:
        encoder = "Hugging Face encoder"
    against = "the eager FP8 model" if args.fp8_ffn else "Hugging Face fp32"
    return (f"{args.mode}: {args.model_type} ({encoder}), {args.data_type} on {args.device} -> "
            f"{os.path.abspath(args.output)} [{args.format}]; max |diff| vs {against} on unseen batches "
            f"{report.shapes}: {report.max_diff:.3g} (eager {eager_diff:.3g}, tolerance {atol:.3g})")


def main(argv=None) -> int:
    args = parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    hf_logging.set_verbosity_error()  # our own warning names a missing head; HF's load report repeats it
    hf_logging.disable_progress_bar()
    # Tracing reads every attribute of the model, deprecated ones too; the warnings concern HF, not the user.
    warnings.filterwarnings("ignore", category=FutureWarning, module="transformers")
    # HF's mask code turns a few sizes into Python values while tracing (padding_length, is_causal); they
    # do not depend on the input for an encoder, and verify() runs the file on shapes the trace never saw.
    warnings.filterwarnings("ignore", category=torch.jit.TracerWarning, module="transformers")
    try:
        print(build(args))
    except (OSError, ValueError, NotImplementedError, VerificationError, fusedbert.LibraryMismatchError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
