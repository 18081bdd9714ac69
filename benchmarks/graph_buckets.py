"""What a CUDA graph bucket's token capacity and the GEMM autotuning cost, in one process: for each
workload, four graph runners of the fused model (fp16) whose bucket holds exactly the batch's real tokens
or that count rounded up to 128 rows (as the encoder benchmark's graphs round it, and a server's buckets
round it one way or another), each captured with GEMM autotuning off (cuBLASLt's first choices) and on.
They are timed interleaved, then each is profiled (GEMM kernels and the memsets before them, and the
kernel count per call).

    python -m benchmarks.graph_buckets                    # bert-base, bs128 var and bs32 var
    python -m benchmarks.graph_buckets --models minilm --workloads bs32_var

The untuned runners are captured first: the GEMM plans are cached per shape, and the tuned runners'
warm-up then tunes the plans they share.
Writes benchmarks/results/graph-buckets-<device slug>-<YYYYMMDD>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch

import fusedbert
from fusedbert.cuda_graphs import Bucket, CudaGraphRunner

from .encoder import results_header, write_results
from .measure import time_interleaved
from .profile import profile_system
from .systems import GraphedFusedEncoder, hf_model
from .workloads import MODEL_SHAPES, WORKLOADS, load_model, make_batch

REPEATS = 60
GEMM_FAMILIES = ("gemm", "gemm_bias_gelu")  # benchmarks.profile's families of GEMM kernels
RECORDED_FAMILIES = GEMM_FAMILIES + ("other",)  # "other" holds the memsets cuBLASLt launches


def capacities(batch_size: int, seq_len: int, real_tokens: int) -> dict[str, int]:
    """A bucket's token capacity: the batch's real tokens, and what the encoder benchmark's graphs give it
    (rounded up, never past the padded batch)."""
    rounded = GraphedFusedEncoder.token_capacity(batch_size, seq_len, real_tokens)
    return {"exact": real_tokens, f"rounded to {GraphedFusedEncoder.TOKEN_GRANULE}": rounded}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", nargs="+", default=["bert-base"], choices=list(MODEL_SHAPES))
    parser.add_argument("--workloads", nargs="+", default=["bs128_var", "bs32_var"], choices=list(WORKLOADS))
    parser.add_argument("--repeats", type=int, default=REPEATS)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_buckets: needs a CUDA GPU")
        return 1
    device = torch.device("cuda")
    results = results_header(device, dtype="fp16", repeats=args.repeats,
                             rounding=GraphedFusedEncoder.TOKEN_GRANULE, records=[])
    for model_name in args.models:
        reference, _ = load_model(model_name)
        fused = fusedbert.fuse(hf_model(reference.to(device), torch.float16, "sdpa"))

        def forward(input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
            return fused(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state

        for workload in args.workloads:
            batch = make_batch(WORKLOADS[workload], reference.config.vocab_size, device)
            input_ids, mask = batch.input_ids.cpu(), batch.attention_mask.cpu()
            batch_size, seq_len = input_ids.shape
            runners = {}
            for tune in (False, True):
                for capacity_name, capacity in capacities(batch_size, seq_len, batch.real_tokens).items():
                    runner = CudaGraphRunner(forward, [Bucket(batch_size, seq_len, capacity)], device,
                                             token_level=True, num_inputs=2, autotune_gemms=tune)
                    with torch.inference_mode():
                        runner.capture_all()
                    runners[f"{capacity_name}, {'tuned' if tune else 'heuristic'}"] = (runner, capacity)
            with torch.inference_mode():
                samples = time_interleaved({name: (lambda runner=runner: runner(input_ids, mask))
                                            for name, (runner, _) in runners.items()}, args.repeats, device)
                for name, (runner, capacity) in runners.items():
                    profiled = profile_system(lambda _batch, runner=runner: runner(input_ids, mask), batch, device)
                    record = {"model": model_name, "workload": workload, "real_tokens": batch.real_tokens,
                              "bucket": name, "token_capacity": capacity,
                              "median_ms": statistics.median(samples[name]) * 1e3,
                              **{key: profiled[key] for key in ("wall_ms", "gpu_span_ms", "kernels_per_call")},
                              "gemm_ms": sum(k["us_per_call"] for k in profiled["kernels"]
                                             if k["family"] in GEMM_FAMILIES) / 1e3,
                              "kernels": [k for k in profiled["kernels"] if k["family"] in RECORDED_FAMILIES]}
                    results["records"].append(record)
                    print(f"{model_name} {workload} {name:>24} (capacity {capacity}): {record['median_ms']:.3f} ms; "
                          f"profiled wall {record['wall_ms']:.3f}, span {record['gpu_span_ms']:.3f}, "
                          f"GEMMs {record['gemm_ms']:.3f} ms, {record['kernels_per_call']:.0f} kernels", flush=True)
    write_results(results, "graph-buckets", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
