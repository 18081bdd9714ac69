"""The encoder's attention alone: fusedbert's packed kernel against ATen's varlen flash attention, on the
packed tokens of each workload (the same seeded lengths as benchmarks/encoder.py), one layer's worth.

    python -m benchmarks.attention                       # bert-base and MiniLM head shapes, fp16
    python -m benchmarks.attention --dtypes fp16 bf16

Each sample times a burst of calls back to back and reports the mean per call, so launch latency is
counted once per call as in the encoder, not inflated by a synchronization. Writes
benchmarks/results/attention-<device slug>-<YYYYMMDD>.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch

import fusedbert  # noqa: F401  (loads the op library)

from .encoder import DTYPES, kernel_benchmark_args, results_header, write_results
from .measure import Summary, time_interleaved
from .workloads import MODEL_SHAPES, WORKLOADS, make_batch

BURST = 20
REPEATS = 30


def packed_qkv(lengths: tuple[int, ...], heads: int, head_dim: int, dtype: torch.dtype, device: torch.device):
    generator = torch.Generator(device=device).manual_seed(0)
    qkv = torch.randn(sum(lengths), 3 * heads * head_dim, device=device, generator=generator).to(dtype)
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=device)
    return qkv, cu_seqlens


def kernels(qkv: torch.Tensor, cu_seqlens: torch.Tensor, max_seqlen: int, heads: int) -> dict:
    width = qkv.shape[1] // 3
    q, k, v = (qkv[:, i * width:(i + 1) * width].view(qkv.shape[0], heads, -1) for i in range(3))
    return {
        "fusedbert": lambda: torch.ops.fusedbert.packed_attention(qkv, cu_seqlens, max_seqlen, heads),
        "flash_varlen": lambda: torch.ops.aten._flash_attention_forward(
            q, k, v, cu_seqlens, cu_seqlens, max_seqlen, max_seqlen, 0.0, False, False)[0],
    }


def burst(fn):
    def run():
        for _ in range(BURST):
            fn()
    return run


def main(argv=None) -> int:
    args = kernel_benchmark_args(__doc__.split("\n\n")[0], argv)
    device = torch.device("cuda")
    results = results_header(device, burst=BURST, repeats=REPEATS, records=[])
    for model in args.models:
        shape = MODEL_SHAPES[model]
        heads = shape["num_attention_heads"]
        head_dim = shape["hidden_size"] // heads
        for dtype_name in args.dtypes:
            for workload in args.workloads:
                lengths = make_batch(WORKLOADS[workload], 30522, torch.device("cpu")).lengths
                qkv, cu_seqlens = packed_qkv(lengths, heads, head_dim, DTYPES[dtype_name], device)
                fns = kernels(qkv, cu_seqlens, max(lengths), heads)
                with torch.inference_mode():
                    for fn in fns.values():
                        fn()
                    samples = time_interleaved({name: burst(fn) for name, fn in fns.items()}, REPEATS, device)
                us = {name: Summary.of(s).median_s / BURST * 1e6 for name, s in samples.items()}
                record = {"model": model, "dtype": dtype_name, "workload": workload, "real_tokens": sum(lengths),
                          "heads": heads, "head_dim": head_dim, "us_per_call": us,
                          "flash_over_fusedbert": us["flash_varlen"] / us["fusedbert"]}
                results["records"].append(record)
                print(f"{model} {dtype_name} {workload}: fusedbert {us['fusedbert']:.1f} us, flash varlen "
                      f"{us['flash_varlen']:.1f} us ({record['flash_over_fusedbert']:.2f}x)", flush=True)
    write_results(results, "attention", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
