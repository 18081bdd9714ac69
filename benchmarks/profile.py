"""Where fusedbert's time goes on CUDA: GPU time per kernel family per call, launches per call, and how
much of the wall time the GPU is busy (the rest is the host: launches, the one synchronization).

    python -m benchmarks.profile                                   # bert-base fp16, every workload
    python -m benchmarks.profile --models minilm --workloads bs128_var --graphs

Uses torch.profiler (CUPTI) around a few calls after warm-up; prints one table per model/dtype/workload
and writes them to benchmarks/results/profile-<device slug>-<YYYYMMDD>.json.
"""

from __future__ import annotations

import argparse
import re
import statistics
import sys
import time
from collections import defaultdict
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch
from torch.profiler import ProfilerActivity, profile

import fusedbert

from .encoder import DTYPES, results_header, write_results
from .systems import GraphedFusedEncoder, hf_forward, hf_model
from .workloads import WORKLOADS, load_model, make_batch

# Kernel name -> family, first match wins: attention first, as flash attention's kernel names carry cutlass
# types. cuBLASLt's Hopper kernels are named sm90_xmma*/nvjet*/cutlass*.
FAMILIES = (
    ("attention", re.compile(r"flash|fmha|attention", re.I)),
    # FFN1 with bias + erf-GELU in its epilogue (csrc/cuda/sm90_gemm.h): a GEMM doing the GELU pass's work.
    ("gemm_bias_gelu", re.compile(r"BiasEltAct", re.I)),
    ("gemm", re.compile(r"gemm|nvjet|xmma|cutlass|cublas", re.I)),
    ("layernorm", re.compile(r"layernorm", re.I)),
    ("bias_activation", re.compile(r"bias_activation", re.I)),
    ("padding", re.compile(r"rank_real|summarize|gather_rows", re.I)),
    ("embeddings", re.compile(r"embedding|index|native_layer_norm|elementwise|vectorized", re.I)),
)
CALLS = 10
KERNEL_NAME_CHARS = 160  # template arguments make CUTLASS and cuBLASLt names run to kilobytes


def family(name: str) -> str:
    return next((label for label, pattern in FAMILIES if pattern.search(name)), "other")


def gpu_span_ms(kernels: list[tuple[float, float]]) -> float | None:
    """Median time from a call's first kernel start to its last kernel end (the calls' kernels split
    evenly in time order): span minus busy is the GPU idling between one call's kernels (launch gaps,
    graph node gaps); wall minus span is host work before and after them."""
    if not kernels or len(kernels) % CALLS:
        return None
    kernels.sort()
    per_call = len(kernels) // CALLS
    spans = [max(end for _, end in kernels[i:i + per_call]) - kernels[i][0] for i in range(0, len(kernels), per_call)]
    return statistics.median(spans) / 1e3


def profile_system(forward, batch, device) -> dict:
    for _ in range(5):
        forward(batch)
    torch.cuda.synchronize(device)
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(CALLS):
            forward(batch)
        torch.cuda.synchronize(device)
        wall_s = (time.perf_counter() - start) / CALLS
    gpu_us: dict[str, float] = defaultdict(float)
    launches: dict[str, int] = defaultdict(int)
    by_name: dict[str, list[float]] = defaultdict(list)
    kernels = []
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA and event.device_time > 0:
            label = family(event.name)
            gpu_us[label] += event.device_time / CALLS
            launches[label] += 1
            by_name[event.name[:KERNEL_NAME_CHARS]].append(event.device_time)
            kernels.append((event.time_range.start, event.time_range.end))
    busy_ms = sum(gpu_us.values()) / 1e3
    return {
        "wall_ms": wall_s * 1e3,
        "gpu_busy_ms": busy_ms,
        "gpu_busy_share": busy_ms / (wall_s * 1e3),
        "gpu_span_ms": gpu_span_ms(kernels),
        "kernels_per_call": sum(launches.values()) / CALLS,
        "gpu_ms_by_family": {k: v / 1e3 for k, v in sorted(gpu_us.items(), key=lambda kv: -kv[1])},
        # Every kernel (and copy or memset) by name, most GPU time first: which launches make up the count.
        "kernels": [{"name": name, "family": family(name), "per_call": len(times) / CALLS,
                     "us_per_call": sum(times) / CALLS, "us_median": statistics.median(times)}
                    for name, times in sorted(by_name.items(), key=lambda kv: -sum(kv[1]))],
    }


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bert-base"])
    parser.add_argument("--dtypes", nargs="+", default=["fp16"], choices=list(DTYPES))
    parser.add_argument("--workloads", nargs="+", default=list(WORKLOADS), choices=list(WORKLOADS))
    parser.add_argument("--graphs", action="store_true", help="also profile the CUDA-graph replay")
    parser.add_argument("--hf-embeddings", action="store_true",
                        help="keep Hugging Face's embeddings module (fuse(..., fuse_embeddings=False)): the A/B for "
                             "fusedbert's embeddings op")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    device = torch.device("cuda")
    results = results_header(device, profiles=[])
    for model_name in args.models:
        reference, _ = load_model(model_name)
        reference.to(device)
        for dtype_name in args.dtypes:
            fused = fusedbert.fuse(hf_model(reference, DTYPES[dtype_name], "sdpa"),
                                   fuse_embeddings=not args.hf_embeddings)
            systems = {"fusedbert": hf_forward(fused)}
            if args.graphs:
                systems["fusedbert_graphs"] = GraphedFusedEncoder(fused, device)
            for workload in args.workloads:
                batch = make_batch(WORKLOADS[workload], reference.config.vocab_size, device)
                for system, forward in systems.items():
                    with torch.inference_mode():
                        record = profile_system(forward, batch, device)
                    record.update(model=model_name, dtype=dtype_name, workload=workload, system=system,
                                  real_tokens=batch.real_tokens, embeddings="hf" if args.hf_embeddings else "fused")
                    results["profiles"].append(record)
                    parts = ", ".join(f"{k} {v:.3f}" for k, v in record["gpu_ms_by_family"].items())
                    span = record["gpu_span_ms"]
                    print(f"{model_name} {dtype_name} {workload} {system}: wall {record['wall_ms']:.3f} ms, GPU span "
                          f"{'-' if span is None else f'{span:.3f}'} ms, GPU busy "
                          f"{record['gpu_busy_ms']:.3f} ms ({record['gpu_busy_share']:.0%}), "
                          f"{record['kernels_per_call']:.0f} kernels | {parts}", flush=True)
    write_results(results, "profile", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
