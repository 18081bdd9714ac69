"""CUDA graphs for small batches: a model's whole forward captured once per (batch, seq_len) bucket and
replayed, so a batch costs one graph launch instead of ~100 kernel launches from Python and C++.

Small batches are bound by launching, not by the GPU: at one sequence of 128 tokens the encoder's kernels
run in a fraction of the time the host takes to issue them. A graph removes the host from the loop.

Inside a capture ``fusedbert::encoder`` cannot read the real-token count back from the GPU (a host
synchronization is an error there), so it packs the real tokens into a fixed number of rows, the bucket's
token capacity (``batch_size * seq_len`` unless the bucket names a smaller one), and runs every layer on
all of them; the rows past the real tokens are zeros that no attention reads. A bucket of
``[32, 128, 2560]`` thus serves 32 sequences of up to 128 tokens holding at most 2,560 real tokens, and its
GEMMs cost 2,560 rows rather than 4,096. A batch that fits no bucket runs eagerly, padding-free.

A batch is padded up to the smallest bucket that holds it (extra rows and positions have mask 0, so real
tokens see exactly what they would see alone) and the outputs are cut back to the batch's shape.

Imports torch only, so that a model archive can ship it beside the op library; the fused encoder's
settings are reached through the loaded library (``import fusedbert``, or the handler's load of an
archive's .so), and a model without the fused encoder is captured the same way.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Callable, Iterator, Sequence

import torch

logger = logging.getLogger(__name__)

Forward = Callable[..., "torch.Tensor | tuple[torch.Tensor, ...]"]
# Eager runs before a capture: the first sets up cuBLASLt plans (tuning the GEMMs) and flash attention;
# TorchScript's profiling executor optimizes a traced module on a later call, which must not happen
# inside the capture.
WARMUP_RUNS = 3


def gemm_autotuning(enabled: bool = True):
    """While inside, the CUDA encoder times cuBLASLt's candidate algorithms for each GEMM shape it meets
    for the first time and keeps the fastest (off by default: see csrc/ops.cpp)."""
    return _op_setting("set_gemm_autotuning", enabled)


@contextlib.contextmanager
def _op_setting(setter: str, value) -> Iterator[None]:
    """One of the op library's process-wide settings (csrc/settings.h) set inside the block, restored after.
    Without the library loaded (a model with no fused encoder, e.g. the stock path) there is nothing to set."""
    if not hasattr(torch.ops.fusedbert, setter):
        yield
        return
    set_value = getattr(torch.ops.fusedbert, setter)
    previous = set_value(value)
    try:
        yield
    finally:
        set_value(previous)


@dataclass(frozen=True, order=True)
class Bucket:
    batch_size: int
    seq_len: int
    max_tokens: int | None = None  # real tokens the graph holds; None: batch_size * seq_len

    @property
    def token_capacity(self) -> int:
        return self.max_tokens or self.batch_size * self.seq_len

    def holds(self, batch_size: int, seq_len: int, real_tokens: int) -> bool:
        return batch_size <= self.batch_size and seq_len <= self.seq_len and real_tokens <= self.token_capacity


def parse_buckets(spec: Sequence[Sequence[int]]) -> list[Bucket]:
    """``[[batch_size, seq_len], [batch_size, seq_len, max_tokens], ...]`` -> sorted, distinct buckets; a
    clear error for anything else."""
    buckets = set()
    for entry in spec:
        if (not isinstance(entry, (list, tuple)) or len(entry) not in (2, 3)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in entry)):
            raise ValueError("a CUDA graph bucket is [batch_size, seq_len] or [batch_size, seq_len, max_tokens] "
                             f"with positive integers; got {entry!r}")
        bucket = Bucket(*entry)
        if bucket.max_tokens is not None and bucket.max_tokens > bucket.batch_size * bucket.seq_len:
            raise ValueError(f"a CUDA graph bucket's max_tokens cannot exceed batch_size * seq_len; got {entry!r}")
        buckets.add(bucket)
    return sorted(buckets, key=lambda b: (b.batch_size, b.seq_len, b.token_capacity))


# bucket_ladder's token-capacity steps: a batch replays at most LADDER_TOKEN_STEP rows past its real tokens, or
# 1 / LADDER_RUNGS of its batch size's full rows where that is more (it bounds the graphs per batch size).
LADDER_TOKEN_STEP = 256
LADDER_RUNGS = 8


def bucket_ladder(batch_size: int, seq_len: int) -> list[Bucket]:
    """Buckets for a server batching up to ``batch_size`` requests of up to ``seq_len`` tokens: lone
    requests at 32 and 64 tokens; then batch sizes doubling from 1, and batch_size itself, each at full
    length and with token capacities in steps below it (LADDER_TOKEN_STEP rows, coarser where a batch size
    would otherwise get more than LADDER_RUNGS graphs). A graph computes every row of its bucket, so the
    steps bound the rows a batch computes past its real tokens. On an H100 at 64 clients (batchSize 16,
    requests of 8..128 tokens), the 18 graphs of bucket_ladder(16, 128) took the fused model's time per batch
    from 1.35 to 1.23 ms against 8 graphs with [16, 128, 1280] as the only step, and did not lengthen the
    workers' load (docs/benchmarks.md)."""
    if batch_size < 1 or seq_len < 1:
        raise ValueError(f"bucket_ladder needs positive sizes; got batch_size {batch_size}, seq_len {seq_len}")
    buckets = [Bucket(1, length) for length in (32, 64) if length < seq_len]
    sizes = [1 << k for k in range(batch_size.bit_length()) if 1 << k < batch_size] + [batch_size]
    for size in sizes:
        full = size * seq_len
        step = LADDER_TOKEN_STEP * -(-full // (LADDER_RUNGS * LADDER_TOKEN_STEP))
        buckets.append(Bucket(size, seq_len))
        buckets += [Bucket(size, seq_len, tokens) for tokens in range(step, full, step)]
    return buckets


@dataclass
class CaptureReport:
    bucket: Bucket
    seconds: float
    pool_bytes: int  # growth of the memory reserved by the caching allocator during this capture


class _PinnedHostMemory:
    """What torch.as_tensor reads to see a contiguous int32 or int64 pinned host tensor as CUDA memory."""

    TYPESTRS = {torch.int32: "<i4", torch.int64: "<i8"}

    def __init__(self, host: torch.Tensor):
        if host.dtype not in self.TYPESTRS or not host.is_contiguous() or not host.is_pinned():
            raise ValueError("expected a contiguous, pinned int32 or int64 host tensor")
        self.__cuda_array_interface__ = {"shape": tuple(host.shape), "strides": None,
                                         "typestr": self.TYPESTRS[host.dtype], "data": (host.data_ptr(), False),
                                         "version": 3}


def pinned_on_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CUDA tensor over pinned host memory: with unified addressing the GPU reads the host buffer through
    the same address, over the bus. ``host`` must outlive it."""
    return torch.as_tensor(_PinnedHostMemory(host), device=device)


class _Graph:
    def __init__(self, bucket: Bucket, num_inputs: int, device: torch.device):
        # The graph's first kernel copies `host` into `staged`, the inputs the forward reads: a batch costs
        # one launch, and the host writes its inputs through numpy, with no torch call before the replay.
        # `host` holds int32 and `staged` int64, so that the copy is a converting kernel reading pinned
        # memory, not a copy-engine node, and it reads half the bytes over the bus. On an H100, in one
        # process: a copy issued before each replay cost 8-26 us more a call at one sequence than a copy node
        # in the graph (bert-base bs1 x 16: 0.452 -> 0.433 ms), and the copy node 3-14 us more than a kernel
        # (0.378 -> 0.374 ms; bs16 var 0.768 -> 0.753; docs/benchmarks.md). Token ids and types fit int32
        # for any vocabulary; like an id past the vocabulary, one that does not is the caller's to prevent.
        shape = (num_inputs, bucket.batch_size, bucket.seq_len)
        self.staged = torch.zeros(shape, dtype=torch.long, device=device)
        self.host = torch.zeros(shape, dtype=torch.int32, pin_memory=True)
        self.host_array = self.host.numpy()
        self.host_on_device = pinned_on_device(self.host, device)
        # Recorded inside the graph, after the copy: a replay's inputs are read and `host` is free for the next
        # batch while the rest of the graph runs, so the host can stage that batch meanwhile.
        self.uploaded = torch.cuda.Event(external=True)
        self.outputs: tuple[torch.Tensor, ...] = ()
        self.host_outputs: tuple[torch.Tensor, ...] = ()  # pinned copies' destinations (outputs_on_host)
        self.graph = torch.cuda.CUDAGraph()

    def upload(self) -> None:
        """The copy of `host` into `staged` and the event after it: the graph's first nodes when captured."""
        self.staged.copy_(self.host_on_device)
        self.uploaded.record()

    def stage(self, inputs: Sequence[torch.Tensor]) -> None:
        """Writes the batch into `host`, zero-padded to the bucket (mask 0 = padding), once the last replay's
        copy has read it. Inputs on the GPU are copied into it on the stream, ahead of the replay's upload."""
        batch_size, seq_len = inputs[0].shape
        self.uploaded.synchronize()
        if (batch_size, seq_len) != self.host_array.shape[1:]:  # a batch of the bucket's shape overwrites it all
            self.host_array.fill(0)
        for index, given in enumerate(inputs):
            if given.device.type == "cpu":
                self.host_array[index, :batch_size, :seq_len] = given.numpy()
            else:
                self.host[index, :batch_size, :seq_len].copy_(given, non_blocking=True)


class CudaGraphRunner:
    """Runs ``forward(input_ids, attention_mask[, token_type_ids])`` from CUDA graphs where a bucket holds
    the batch, eagerly otherwise.

    ``forward`` returns a tensor or a tuple of tensors whose dimension 0 is the batch and, with
    ``token_level``, dimension 1 the sequence (question answering, token classification, last hidden
    states). Inputs are integer tensors ``[batch, seq_len]``, on the CPU or the GPU; the mask holds 0 and 1.
    Returned tensors are the caller's own (copied out of the graph's buffers): on the GPU, or with
    ``outputs_on_host`` on the CPU, in the model's dtype. A caller that reads the answers on the host (a
    handler) should ask for that: the replay's outputs then go straight into pinned host buffers, one copy
    each and one wait. A copy on the GPU, then the caller's cast and transfer, took 49 us of host time for
    a [1, 2] output on an H100 host, against 11 us (a one-request batch through the handler: 1.28 -> 1.24 ms).

    Not thread-safe: a replay writes the graph's static buffers; use one runner per thread.
    """

    def __init__(self, forward: Forward, buckets: Sequence[Bucket], device: torch.device | str, *,
                 token_level: bool, num_inputs: int = 3, autotune_gemms: bool = True, outputs_on_host: bool = False):
        if num_inputs not in (2, 3):
            raise ValueError(f"num_inputs is 2 (input_ids, attention_mask) or 3 (+ token_type_ids); got {num_inputs}")
        self.device = torch.device(device)
        if self.device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device; got {self.device}")
        self.forward = forward
        self.buckets = sorted(buckets, key=_cost)
        self.token_level = token_level
        self.num_inputs = num_inputs
        self.autotune_gemms = autotune_gemms
        self.outputs_on_host = outputs_on_host
        self._graphs: dict[Bucket, _Graph] = {}
        self._pool = torch.cuda.graph_pool_handle()
        self.reports: list[CaptureReport] = []

    def bucket_for(self, batch_size: int, seq_len: int, real_tokens: int) -> Bucket | None:
        """The bucket with the fewest token rows (then positions) that holds the batch, or None."""
        fitting = [b for b in self.buckets if b.holds(batch_size, seq_len, real_tokens)]
        return min(fitting, key=_cost) if fitting else None

    def capture_all(self) -> list[CaptureReport]:
        """Captures every bucket now, largest first, so the smaller graphs reuse the memory pool of the
        larger ones; returns what each cost. Without this, a bucket is captured on its first batch."""
        for bucket in sorted(self.buckets, key=_cost, reverse=True):
            self._graph(bucket)
        return self.reports

    @property
    def pool_bytes(self) -> int:
        return sum(report.pool_bytes for report in self.reports)

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != self.num_inputs:
            raise ValueError(f"expected {self.num_inputs} input tensors; got {len(inputs)}")
        batch_size, seq_len = inputs[0].shape
        # The eager op checks mask values itself; inside a graph it cannot (one host check here instead,
        # free for inputs on the CPU, one synchronization for inputs on the GPU).
        mask_is_binary, real_tokens = _check_mask(inputs[1])
        if not mask_is_binary:
            raise ValueError("attention_mask values must be 0 or 1")
        bucket = self.bucket_for(batch_size, seq_len, real_tokens)
        if bucket is None:
            outputs = _as_tuple(self.forward(*(t.to(self.device) for t in inputs)))
            return tuple(out.cpu() for out in outputs) if self.outputs_on_host else outputs
        with self._on_device():  # staging and replay run on the graph's device's current stream
            graph = self._graph(bucket)
            graph.stage(inputs)
            graph.graph.replay()
            if not self.outputs_on_host:
                return tuple(self._cut(out, batch_size, seq_len).clone() for out in graph.outputs)
            for out, host in zip(graph.outputs, graph.host_outputs):
                host[:batch_size].copy_(out[:batch_size], non_blocking=True)  # the batch's rows: contiguous
            torch.cuda.current_stream(self.device).synchronize()
            return tuple(self._cut(host, batch_size, seq_len).clone() for host in graph.host_outputs)

    def _on_device(self):
        # Entering torch.cuda.device costs tens of microseconds of Python per call on a small batch's
        # latency path; skip it where it would change nothing.
        if self.device.index is None or self.device.index == torch.cuda.current_device():
            return contextlib.nullcontext()
        return torch.cuda.device(self.device)

    def _cut(self, out: torch.Tensor, batch_size: int, seq_len: int) -> torch.Tensor:
        return out[:batch_size, :seq_len] if self.token_level else out[:batch_size]

    def _graph(self, bucket: Bucket) -> _Graph:
        graph = self._graphs.get(bucket)
        if graph is None:
            with torch.cuda.device(self.device):  # a capture records on the current device's streams
                graph = self._capture(bucket)
        return graph

    def _capture(self, bucket: Bucket) -> _Graph:
        graph = _Graph(bucket, self.num_inputs, self.device)
        graph.upload()  # once before the capture, as the warm-up runs below do for the forward's kernels
        inputs = list(graph.staged.unbind(0))
        # Warm up with exactly token_capacity real tokens: the GEMM shapes the capture will use.
        inputs[1].view(-1)[:bucket.token_capacity] = 1
        start = time.perf_counter()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side), torch.inference_mode(), gemm_autotuning(self.autotune_gemms):
            for _ in range(WARMUP_RUNS):
                self.forward(*inputs)
        torch.cuda.current_stream(self.device).wait_stream(side)
        torch.cuda.synchronize(self.device)
        torch.cuda.empty_cache()  # as torch.cuda.graph does on entry: from here on, growth is the graph's pool
        reserved = torch.cuda.memory_reserved(self.device)
        with torch.inference_mode(), _op_setting("set_capture_token_capacity", bucket.token_capacity), \
                torch.cuda.graph(graph.graph, pool=self._pool):
            graph.upload()
            outputs = _as_tuple(self.forward(*inputs))
            # A strided output (QA's start and end logits, split from one tensor) is made whole inside the
            # graph, so that its rows go to the host in one plain copy.
            graph.outputs = tuple(out.contiguous() for out in outputs) if self.outputs_on_host else outputs
        if self.outputs_on_host:
            graph.host_outputs = tuple(torch.empty(out.shape, dtype=out.dtype, pin_memory=True)
                                       for out in graph.outputs)
        torch.cuda.synchronize(self.device)
        report = CaptureReport(bucket, time.perf_counter() - start, torch.cuda.memory_reserved(self.device) - reserved)
        self.reports.append(report)
        self._graphs[bucket] = graph
        logger.info("captured a CUDA graph for batch %d x seq_len %d (%d token rows) in %.2f s (+%.1f MiB reserved)",
                    bucket.batch_size, bucket.seq_len, bucket.token_capacity, report.seconds, report.pool_bytes / 2**20)
        return graph


def _cost(bucket: Bucket) -> tuple[int, int, int]:
    return bucket.token_capacity, bucket.batch_size * bucket.seq_len, bucket.batch_size


def _check_mask(mask: torch.Tensor) -> tuple[bool, int]:
    """Whether every value is 0 or 1, and the number of ones. A CPU mask (what a tokenizer gives) is read
    through numpy: a few microseconds instead of the tens that torch's dispatch takes on a tiny tensor (a
    128 x 128 int64 mask on a 2-core VM: 6 us, where comparing with 0 and with 1 took 9). A GPU mask's two
    answers come back in one transfer: each read-back waits for the GPU."""
    if mask.device.type == "cpu" and mask.dtype != torch.bfloat16:
        values = mask.numpy()
        if values.dtype.kind == "b":
            binary = True
        elif values.dtype.kind in "iu":  # one pass: read as unsigned, any value but 0 and 1 exceeds 1
            binary = values.size == 0 or values.view(f"u{values.itemsize}").max() <= 1
        else:
            binary = ((values == 0) | (values == 1)).all()
        return bool(binary), int(values.sum())
    invalid, ones = torch.stack((((mask != 0) & (mask != 1)).sum(), mask.sum().long())).tolist()
    return invalid == 0, int(ones)


def _as_tuple(outputs) -> tuple[torch.Tensor, ...]:
    return outputs if isinstance(outputs, tuple) else (outputs,)
