"""The FFN's first GEMM with its bias and erf-GELU alone, each implementation the build holds
(`torch.ops.fusedbert.linear_bias_gelu_kernels()`: cuBLASLt then the bias + GELU kernel, the small-batch
kernel where the tokens are few enough, and on Hopper the CUTLASS kernels with both in the epilogue), on the
real-token count of each workload (the same seeded
lengths as benchmarks/encoder.py).

    python -m benchmarks.ffn_gemm                      # bert-base and MiniLM shapes, fp16
    python -m benchmarks.ffn_gemm --dtypes fp16 bf16

A sample replays a CUDA graph of one call per layer, each layer with its own weights as in the encoder (so
no call finds its weights in L2 from the call before), and reports the mean per call: GPU time, as in the
encoder's graph replays, with no host launch cost. Writes
benchmarks/results/ffn-gemm-<device slug>-<YYYYMMDD>.json.
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

REPEATS = 30


def layer_weights(shape: dict, dtype: torch.dtype, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator(device=device).manual_seed(0)
    hidden, intermediate = shape["hidden_size"], shape["intermediate_size"]
    return [((torch.randn(intermediate, hidden, device=device, generator=generator) * 0.03).to(dtype),
             (torch.randn(intermediate, device=device, generator=generator) * 0.1).to(dtype))
            for _ in range(shape["num_hidden_layers"])]


def captured(fn):
    """fn recorded into a CUDA graph after warm-up runs (which also let the encoder's GEMM choices settle)."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        fn()
    return graph.replay


def runs(fn) -> bool:
    """Whether a kernel takes this shape (the small-batch one refuses more than 64 rows, with a RuntimeError)."""
    try:
        fn()
    except RuntimeError:
        return False
    return True


def main(argv=None) -> int:
    args = kernel_benchmark_args(__doc__.split("\n\n")[0], argv)
    device = torch.device("cuda")
    kernels = torch.ops.fusedbert.linear_bias_gelu_kernels()
    results = results_header(device, kernels=kernels, repeats=REPEATS, records=[])
    for model in args.models:
        shape = MODEL_SHAPES[model]
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            layers = layer_weights(shape, dtype, device)
            for workload in args.workloads:
                tokens = sum(make_batch(WORKLOADS[workload], 30522, torch.device("cpu")).lengths)
                x = torch.randn(tokens, shape["hidden_size"], device=device).to(dtype)

                def every_layer(kernel):
                    def run():
                        for weight, bias in layers:
                            torch.ops.fusedbert.linear_bias_gelu(x, weight, bias, kernel)
                    return run

                with torch.inference_mode():
                    fns = {kernel: captured(every_layer(kernel)) for kernel in kernels if runs(every_layer(kernel))}
                    samples = time_interleaved(fns, REPEATS, device)
                us = {k: Summary.of(s).median_s / len(layers) * 1e6 for k, s in samples.items()}
                flops = 2 * tokens * shape["hidden_size"] * shape["intermediate_size"]
                record = {"model": model, "dtype": dtype_name, "workload": workload, "real_tokens": tokens,
                          "us_per_call": us, "tflops": {k: flops / t / 1e6 for k, t in us.items()}}
                results["records"].append(record)
                print(f"{model} {dtype_name} {workload} ({tokens} tokens): "
                      + ", ".join(f"{k} {t:.1f} us ({record['tflops'][k]:.0f} TFLOP/s)" for k, t in us.items()),
                      flush=True)
    write_results(results, "ffn-gemm", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
