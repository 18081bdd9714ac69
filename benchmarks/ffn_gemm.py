"""The FFN's GEMMs alone, each implementation the build holds, on the real-token count of each workload (the
same seeded lengths as benchmarks/encoder.py):

- FFN1 with its bias and erf-GELU in the model's dtype (`torch.ops.fusedbert.linear_bias_gelu_kernels()`:
  cuBLASLt then the bias + GELU kernel, the small-batch kernel where the tokens are few enough, and on
  Hopper the CUTLASS kernels with both in the epilogue);
- FFN1's GEMM through torch's `F.linear` (cuBLAS) with no epilogue and with the bias only, for what the
  fused kernels' epilogue costs;
- on Hopper builds with CUTLASS, the FP8 FFN's two GEMMs (`fuse(..., fp8_ffn=True)`) by each tile
  configuration of `torch.ops.fusedbert.fp8_ffn_linear_kernels()`, beside FFN2 in the model's dtype through
  torch's `F.linear` (cuBLAS) for scale.

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
import torch.nn.functional as F

from fusedbert.fp8 import ffn_fp8  # (importing fusedbert loads the op library)

from .encoder import DTYPES, kernel_benchmark_args, results_header, write_results
from .measure import Summary, time_interleaved
from .workloads import MODEL_SHAPES, WORKLOADS, make_batch

REPEATS = 30


def layer_weights(shape: dict, dtype: torch.dtype, device: torch.device) -> list[dict[str, torch.Tensor]]:
    """Each layer's FFN weights in `dtype` and as the FP8 FFN holds them (codes and its row of scales)."""
    generator = torch.Generator(device=device).manual_seed(0)
    hidden, intermediate = shape["hidden_size"], shape["intermediate_size"]
    layers = []
    for _ in range(shape["num_hidden_layers"]):
        ffn1 = torch.randn(intermediate, hidden, device=device, generator=generator) * 0.03
        bias = torch.randn(intermediate, device=device, generator=generator) * 0.1
        ffn2 = torch.randn(hidden, intermediate, device=device, generator=generator) * 0.03
        ffn1_codes, ffn2_codes, scales = ffn_fp8(torch.ones(hidden, device=device), torch.zeros(hidden, device=device),
                                                 ffn1, bias, ffn2)
        layers.append({"ffn1": ffn1.to(dtype), "bias": bias.to(dtype), "ffn2": ffn2.to(dtype),
                       "ffn1_codes": ffn1_codes, "ffn2_codes": ffn2_codes, "scales": scales})
    return layers


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


def fp8_available() -> bool:
    return bool(torch.ops.fusedbert.fp8_ffn_linear_kernels()) and torch.cuda.get_device_capability() == (9, 0)


def time_per_layer(calls: dict, layers: list, device: torch.device) -> dict[str, float]:
    """calls: name -> fn(layer) for one layer's GEMM. Each name's graph of every layer's call, timed
    round-robin with the others: microseconds per call (median sample / layers)."""
    def every_layer(call):
        return lambda: [call(layer) for layer in layers]

    with torch.inference_mode():
        fns = {name: captured(every_layer(call)) for name, call in calls.items() if runs(every_layer(call))}
        samples = time_interleaved(fns, REPEATS, device)
    return {name: Summary.of(s).median_s / len(layers) * 1e6 for name, s in samples.items()}


def gemm_calls(dtype: torch.dtype, tokens: int, shape: dict, device: torch.device) -> dict[str, dict]:
    """For each GEMM measured: name -> fn(layer), on inputs of `tokens` rows."""
    hidden, intermediate = shape["hidden_size"], shape["intermediate_size"]
    generator = torch.Generator(device=device).manual_seed(1)
    x = torch.randn(tokens, hidden, device=device, generator=generator)
    inner = torch.randn(tokens, intermediate, device=device, generator=generator).abs()
    x_low, inner_low = x.to(dtype), inner.to(dtype)
    # Codes spread over e4m3's range, as the FP8 FFN's scales spread its activations.
    x_codes, inner_codes = (x * 64).to(torch.float8_e4m3fn), (inner * 64).to(torch.float8_e4m3fn)
    fusedbert_ops = torch.ops.fusedbert
    calls = {"ffn1": {kernel: (lambda layer, kernel=kernel: fusedbert_ops.linear_bias_gelu(
        x_low, layer["ffn1"], layer["bias"], kernel)) for kernel in fusedbert_ops.linear_bias_gelu_kernels()}}
    # FFN1's shape with less epilogue, for what the bias and GELU cost the fused kernels.
    calls["ffn1_without_gelu"] = {
        "cublas (F.linear)": lambda layer: F.linear(x_low, layer["ffn1"]),
        "cublas (F.linear + bias)": lambda layer: F.linear(x_low, layer["ffn1"], layer["bias"]),
    }
    calls["ffn2"] = {"cublas (F.linear)": lambda layer: F.linear(inner_low, layer["ffn2"])}
    if fp8_available():
        kernels = fusedbert_ops.fp8_ffn_linear_kernels()
        calls["ffn1_fp8"] = {kernel: (lambda layer, kernel=kernel: fusedbert_ops.fp8_ffn_linear(
            x_codes, layer["ffn1_codes"], layer["bias"], layer["scales"], "ffn1", dtype, kernel)) for kernel in kernels}
        calls["ffn2_fp8"] = {kernel: (lambda layer, kernel=kernel: fusedbert_ops.fp8_ffn_linear(
            inner_codes, layer["ffn2_codes"], None, layer["scales"], "ffn2", dtype, kernel)) for kernel in kernels}
    return calls


def main(argv=None) -> int:
    args = kernel_benchmark_args(__doc__.split("\n\n")[0], argv)
    device = torch.device("cuda")
    results = results_header(device, ffn1_kernels=torch.ops.fusedbert.linear_bias_gelu_kernels(),
                             fp8_kernels=torch.ops.fusedbert.fp8_ffn_linear_kernels() if fp8_available() else [],
                             repeats=REPEATS, records=[])
    for model in args.models:
        shape = MODEL_SHAPES[model]
        for dtype_name in args.dtypes:
            dtype = DTYPES[dtype_name]
            layers = layer_weights(shape, dtype, device)
            for workload in args.workloads:
                tokens = sum(make_batch(WORKLOADS[workload], 30522, torch.device("cpu")).lengths)
                flops = 2 * tokens * shape["hidden_size"] * shape["intermediate_size"]
                for gemm, calls in gemm_calls(dtype, tokens, shape, device).items():
                    us = time_per_layer(calls, layers, device)
                    record = {"model": model, "dtype": dtype_name, "workload": workload, "real_tokens": tokens,
                              "gemm": gemm, "us_per_call": us, "tflops": {k: flops / t / 1e6 for k, t in us.items()}}
                    results["records"].append(record)
                    print(f"{model} {dtype_name} {workload} {gemm} ({tokens} tokens): "
                          + ", ".join(f"{k} {t:.1f} us ({record['tflops'][k]:.0f} TFLOP/s)" for k, t in us.items()),
                          flush=True)
    write_results(results, "ffn-gemm", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
