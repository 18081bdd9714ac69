"""What a new input shape costs each encoder: its first call on a (batch size, padded length) it has not
met, against the same call repeated. A serving worker pads each batch to its longest text, so it keeps
meeting new shapes until it has seen them all; a system that builds state per shape (cuDNN attention
plans, TorchScript specializations, GEMM plans) pays for it on each of them.

    python -m benchmarks.new_shapes                           # bert-base, fp16 on CUDA (fp32 on CPU)
    python -m benchmarks.new_shapes --cudnn-sdpa off          # the same with cuDNN's SDPA backend disabled

Every system gets shapes of its own (dealt from one shuffled grid), so no system finds a shape another
one has already warmed; each first runs one shape of its own twice, untimed, so one-time start-up is not
counted. The attention kernels each system's PyTorch calls ran are read off the profiler on that first
shape. Writes benchmarks/results/new-shapes-<device slug>-<YYYYMMDD>.json, new-shapes-cudnn-on-... or
new-shapes-cudnn-off-... with --cudnn-sdpa, so the two runs of a comparison sit side by side.
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch
from torch import nn

from .encoder import DTYPES, results_header, write_results
from .measure import Summary, time_call
from .systems import build_systems, hf_model
from .workloads import MODEL_SHAPES, SEED, Batch, load_model, padded_batch

SYSTEMS = ("hf_eager", "hf_sdpa", "torchscript", "nested", "fusedbert")


def parse_args(argv) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"])
    parser.add_argument("--model", default="bert-base", choices=list(MODEL_SHAPES))
    parser.add_argument("--dtype", choices=list(DTYPES), help="default: fp16 on CUDA, fp32 on CPU")
    parser.add_argument("--systems", nargs="+", default=list(SYSTEMS), choices=SYSTEMS)
    parser.add_argument("--shapes", type=int, default=24, help="new shapes timed per system")
    parser.add_argument("--max-batch", type=int, default=16, help="batch sizes 1..this (the serving batchSize)")
    parser.add_argument("--lengths", type=int, nargs=2, default=[8, 128], metavar=("MIN", "MAX"),
                        help="padded lengths in MIN..MAX")
    parser.add_argument("--cudnn-sdpa", choices=["default", "on", "off"], default="default",
                        help="torch.backends.cuda.enable_cudnn_sdp before anything runs")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    return args


def seeded_batch(lengths: list[int], vocab_size: int, device: torch.device) -> Batch:
    """Texts of these token counts, padded to the longest, their ids seeded by the lengths."""
    return padded_batch(lengths, vocab_size, device, torch.Generator().manual_seed(SEED + sum(lengths)))


def batch_of_shape(size: int, padded_length: int, vocab_size: int, device: torch.device) -> Batch:
    """``size`` texts whose longest is ``padded_length`` tokens, the others of random shorter lengths."""
    generator = torch.Generator().manual_seed(SEED + 1000 * size + padded_length)
    lengths = [padded_length] + torch.randint(1, padded_length + 1, (size - 1,), generator=generator).tolist()
    return seeded_batch(lengths, vocab_size, device)


def dealt_shapes(systems: list[str], per_system: int, max_batch: int, lengths: tuple[int, int]) -> dict[str, list]:
    """Disjoint shapes for each system, the first of each its untimed warm-up."""
    grid = [(size, length) for size in range(1, max_batch + 1) for length in range(lengths[0], lengths[1] + 1)]
    needed = len(systems) * (per_system + 1)
    if needed > len(grid):
        raise SystemExit(f"{needed} shapes asked for, but the grid has {len(grid)}; lower --shapes or widen it")
    random.Random(SEED).shuffle(grid)
    return {name: grid[i * (per_system + 1):(i + 1) * (per_system + 1)] for i, name in enumerate(systems)}


class LastHiddenState(nn.Module):
    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state


def traced_forward(reference, dtype: torch.dtype, example: Batch):
    """The HF SDPA model traced to TorchScript, as the stock archive serves it."""
    with torch.no_grad():
        traced = torch.jit.trace(LastHiddenState(hf_model(reference, dtype, "sdpa")),
                                 (example.input_ids, example.attention_mask), check_trace=False)
    return lambda batch: traced(batch.input_ids, batch.attention_mask)


def attention_ops(forward, batch: Batch) -> list[str]:
    """The ATen attention operators one call ran (which SDPA backend, for one)."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        forward(batch)
    return sorted({e.name for e in profile.events() if e.name.startswith("aten::") and "attention" in e.name})


def main(argv=None) -> int:
    args = parse_args(argv)
    device, dtype = torch.device(args.device), DTYPES[args.dtype]
    if args.cudnn_sdpa != "default":
        torch.backends.cuda.enable_cudnn_sdp(args.cudnn_sdpa == "on")
    reference, weights = load_model(args.model)
    reference = reference.to(device)
    vocab = reference.config.vocab_size
    shapes = dealt_shapes(args.systems, args.shapes, args.max_batch, tuple(args.lengths))
    # The traced system's example batch is one step longer than any timed shape, so none of them is warm.
    trace_example = seeded_batch([args.lengths[1] + 1, args.lengths[0]], vocab, device)
    built, skipped = build_systems([s for s in args.systems if s != "torchscript"], reference, dtype, device, trace_example)
    if "torchscript" in args.systems:
        built["torchscript"] = traced_forward(reference, dtype, trace_example)
    results = results_header(device, model=args.model, weights=weights, dtype=args.dtype,
                             cudnn_sdpa=torch.backends.cuda.cudnn_sdp_enabled(),
                             cudnn=torch.backends.cudnn.version() if device.type == "cuda" else None,
                             skipped=skipped, records=[])
    with torch.inference_mode():
        for name in args.systems:
            if name not in built:
                continue
            forward = built[name]
            warmup, *timed = shapes[name]
            warmup_batch = batch_of_shape(*warmup, vocab, device)
            ops = attention_ops(forward, warmup_batch)
            forward(warmup_batch)  # TorchScript's profiling executor optimizes the graph on the second call
            first, again = [], []
            for size, length in timed:
                batch = batch_of_shape(size, length, vocab, device)
                first.append(time_call(lambda: forward(batch), device))
                again.append(time_call(lambda: forward(batch), device))
            first_ms, again_ms = Summary.of(first), Summary.of(again)
            record = {"system": name, "attention_ops": ops, "shapes": timed,
                      "first_ms": [s * 1e3 for s in first], "again_ms": [s * 1e3 for s in again],
                      "first_median_ms": first_ms.median_s * 1e3, "first_max_ms": first_ms.max_s * 1e3,
                      "again_median_ms": again_ms.median_s * 1e3,
                      "new_shape_cost_median_ms": statistics.median(f - a for f, a in zip(first, again)) * 1e3}
            results["records"].append(record)
            print(f"{name:12s} first call p50 {record['first_median_ms']:8.2f} ms (max {record['first_max_ms']:.1f}), "
                  f"again p50 {record['again_median_ms']:7.2f} ms; attention: {', '.join(ops) or '-'}", flush=True)
    for name, reason in skipped.items():
        print(f"{name:12s} skipped: {reason}")
    kind = "new-shapes" if args.cudnn_sdpa == "default" else f"new-shapes-cudnn-{args.cudnn_sdpa}"
    write_results(results, kind, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
