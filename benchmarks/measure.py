"""Clocks, interleaved timing, and the GEMM peak and GEMM-only floor the encoder is measured against."""

from __future__ import annotations

import gc
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch


def time_call(fn: Callable[[], object], device: torch.device) -> float:
    """Seconds one call of ``fn`` takes, including the device work it queued."""
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda.synchronize(device)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end) / 1e3
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, device: torch.device,
                     block: int = 1) -> dict[str, list[float]]:
    """Time every function ``repeats`` times, round-robin (A B C A B C ...), so that drift in clock
    speed or in the load other processes put on the machine hits each of them alike.

    With ``block`` > 1 each turn is ``block`` calls in a row, of which the first only settles and the others
    are timed (A A A B B B ... with block 3): ``repeats * (block - 1)`` samples each. A call that follows
    another system's is slower than one that follows its own (on an H100, MiniLM from CUDA graphs took
    0.89-1.02 ms after a peer's call against 0.78 after its own); in a server a model follows itself, and
    blocks time every system that way."""
    samples: dict[str, list[float]] = {name: [] for name in fns}
    gc.collect()
    gc.disable()
    try:
        for _ in range(repeats):
            for name, fn in fns.items():
                for call in range(block):
                    seconds = time_call(fn, device)
                    if block == 1 or call > 0:
                        samples[name].append(seconds)
    finally:
        gc.enable()
    return samples


@dataclass(frozen=True)
class Summary:
    median_s: float
    p90_s: float
    min_s: float
    max_s: float
    count: int

    @classmethod
    def of(cls, seconds: list[float]) -> "Summary":
        values = np.asarray(seconds)
        return cls(float(np.median(values)), float(np.percentile(values, 90)), float(values.min()),
                   float(values.max()), len(values))


def onednn_linear_runs(device: torch.device, dtype: torch.dtype) -> bool:
    """Whether the fused op's CPU GEMMs go through oneDNN here (csrc/cpu/linear.cpp decides alike)."""
    if device.type != "cpu" or not torch.backends.mkldnn.is_available() or not torch.backends.mkldnn.enabled:
        return False
    return dtype == torch.float32 or (dtype == torch.bfloat16 and torch.ops.mkldnn._is_mkldnn_bf16_supported())


def gemm_peak(device: torch.device, dtype: torch.dtype, size: int, repeats: int) -> dict:
    """The dense GEMM rate of this device and dtype: the best of ``repeats`` [size]^3 matmuls, through
    torch.mm and, on a CPU where the fused op uses it, through oneDNN on packed weights (the faster one
    counts: on an EPYC oneDNN beat torch.mm's MKL, and a peak below what the encoder's GEMMs reach is none)."""
    generator = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    b = torch.randn(size, size, device=device, dtype=dtype, generator=generator)
    out = torch.empty(size, size, device=device, dtype=dtype)
    matmuls = {"torch.mm": lambda: torch.mm(a, b, out=out)}
    if onednn_linear_runs(device, dtype):
        packed = torch.ops.mkldnn._reorder_linear_weight(b)
        matmuls["onednn"] = lambda: torch.ops.mkldnn._linear_pointwise(a, packed, None, "none", [], None)
    seconds_by_library = {}
    for library, matmul in matmuls.items():
        matmul()
        seconds_by_library[library] = [time_call(matmul, device) for _ in range(repeats)]
    library = min(seconds_by_library, key=lambda name: min(seconds_by_library[name]))
    seconds = seconds_by_library[library]
    best = min(seconds)
    return {"size": size, "repeats": repeats, "library": library, "best_ms": best * 1e3,
            "median_ms": float(np.median(seconds)) * 1e3, "tflops": 2 * size**3 / best / 1e12}


@dataclass(frozen=True)
class EncoderShape:
    hidden: int
    intermediate: int
    layers: int
    heads: int

    def gemm_flops(self, tokens: int) -> int:
        """FLOPs of the encoder's four GEMMs per layer (QKV, attention out, FFN1, FFN2) on ``tokens`` rows."""
        h, i = self.hidden, self.intermediate
        return 2 * tokens * (3 * h * h + h * h + h * i + i * h) * self.layers

    def attention_flops(self, lengths: tuple[int, ...]) -> int:
        """FLOPs of QK^T and PV when each sequence attends only to its own tokens."""
        return sum(4 * n * n * self.hidden for n in lengths) * self.layers

    def useful_flops(self, lengths: tuple[int, ...]) -> int:
        return self.gemm_flops(sum(lengths)) + self.attention_flops(lengths)


class GemmFloor:
    """Calling it runs only the encoder's GEMMs on ``tokens`` packed rows: per layer [T,H]x[H,3H],
    [T,H]x[H,H], [T,H]x[H,I], [T,I]x[I,H], with each layer's own [out, in] weights (the layout the fused
    op multiplies with). On CUDA, cuBLAS into preallocated outputs, the whole sequence one CUDA graph, so
    the floor carries no launch overhead that a fused encoder could not also remove. On the CPU, the GEMM
    the fused op runs there: oneDNN's inner product on weights packed into its layout (torch.mm where
    oneDNN cannot run the dtype), which beat torch.mm (MKL) at every encoder shape measured on an EPYC."""

    def __init__(self, weights: list[list[torch.Tensor]], tokens: int, device: torch.device, dtype: torch.dtype):
        self.onednn = onednn_linear_runs(device, dtype)
        if self.onednn:
            weights = [[torch.ops.mkldnn._reorder_linear_weight(w) for w in layer] for layer in weights]
        self.weights = weights  # per layer: qkv [3H, H], attention out [H, H], ffn1 [I, H], ffn2 [H, I]
        hidden, intermediate = weights[0][0].shape[1], weights[0][2].shape[0]
        self.x = torch.randn(tokens, hidden, device=device).to(dtype)
        if not self.onednn:  # torch.mm's outputs; oneDNN allocates its own, as the fused op's calls do
            # The buffers live as long as this object: a captured graph keeps writing to their addresses.
            self.qkv = torch.empty(tokens, 3 * hidden, device=device, dtype=dtype)
            self.attn = torch.empty(tokens, hidden, device=device, dtype=dtype)
            self.inner = torch.empty(tokens, intermediate, device=device, dtype=dtype)
            self.out = torch.empty(tokens, hidden, device=device, dtype=dtype)
        self.graph = None
        if device.type == "cuda":
            side = torch.cuda.Stream(device)
            side.wait_stream(torch.cuda.current_stream(device))
            with torch.cuda.stream(side):  # cuBLAS sets up its handles and workspace outside the capture
                for _ in range(3):
                    self.gemms()
            torch.cuda.current_stream(device).wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.gemms()

    def gemms(self) -> None:
        if self.onednn:
            linear = torch.ops.mkldnn._linear_pointwise
            for qkv_weight, out_weight, ffn1_weight, ffn2_weight in self.weights:
                linear(self.x, qkv_weight, None, "none", [], None)
                attn = linear(self.x, out_weight, None, "none", [], None)
                inner = linear(attn, ffn1_weight, None, "none", [], None)
                linear(inner, ffn2_weight, None, "none", [], None)
            return
        for qkv_weight, out_weight, ffn1_weight, ffn2_weight in self.weights:
            torch.mm(self.x, qkv_weight.t(), out=self.qkv)
            torch.mm(self.x, out_weight.t(), out=self.attn)
            torch.mm(self.attn, ffn1_weight.t(), out=self.inner)
            torch.mm(self.inner, ffn2_weight.t(), out=self.out)

    def __call__(self) -> None:
        if self.graph is None:
            self.gemms()
        else:
            self.graph.replay()
