"""What a CUDA graph costs per launch and per node, apart from the work its kernels do: graphs of N tiny
kernels (an in-place add on 16 floats), alone and after an upload of a pinned host buffer: as a copy node
or as a kernel that reads the buffer over the bus, with or without an event recorded after it (the graph
runner's input upload). The graphs hold torch's kernels only, none of fusedbert's.

    python -m benchmarks.graph_launch

For each graph: the host time of ``replay()``, the time of one replay on its own (CUDA events around it,
after a synchronize), and the time per replay when replays run back to back. The last, over the node
count, is what a node costs the GPU; docs/benchmarks.md reads the encoder's graphs against it. Writes
benchmarks/results/graph-launch-<device slug>-<YYYYMMDD>.json.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch

from fusedbert.cuda_graphs import pinned_on_device

from .encoder import results_header, write_results

NODE_COUNTS = (1, 10, 94, 200)  # 94: the bert-base encoder's graph at bs1 x 16 before 8e94e1c
UPLOAD_BYTES = 4096
SAMPLES = 300


def capture(kernels: int, upload: str | None, event: bool, device: torch.device):
    """The graph, and the buffers and event its nodes point at (which must outlive it). upload: None, "copy"
    (a copy node, as torch captures a pinned host-to-device copy_) or "kernel" (a transposing copy, which
    torch runs as a kernel reading the pinned buffer; fusedbert's graph runner uploads with such a kernel,
    one that converts int32 to int64); event: an event recorded after the upload."""
    x = torch.zeros(16, device=device)
    staged = torch.zeros(2, UPLOAD_BYTES // 16, dtype=torch.long, device=device)
    host = torch.zeros(staged.shape, dtype=torch.long, pin_memory=True)  # copied as it is laid out
    host_transposed = torch.zeros(UPLOAD_BYTES // 16, 2, dtype=torch.long, pin_memory=True)  # read by a kernel
    host_on_device = pinned_on_device(host_transposed, device)
    uploaded = torch.cuda.Event(external=True)
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):  # torch's first launch of each kernel happens outside the capture
        x.add_(1)
        staged.copy_(host_on_device.t())
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        if upload == "copy":
            staged.copy_(host, non_blocking=True)
        elif upload == "kernel":
            staged.copy_(host_on_device.t())
        if event:
            uploaded.record()
        for _ in range(kernels):
            x.add_(1)
    return graph, (x, staged, host, host_transposed, host_on_device, uploaded)


def measure(graph: torch.cuda.CUDAGraph, device: torch.device) -> dict:
    for _ in range(20):
        graph.replay()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    host_us, alone_us = [], []
    for _ in range(SAMPLES):
        torch.cuda.synchronize(device)
        start.record()
        began = time.perf_counter()
        graph.replay()
        host_us.append((time.perf_counter() - began) * 1e6)
        end.record()
        end.synchronize()
        alone_us.append(start.elapsed_time(end) * 1e3)
    torch.cuda.synchronize(device)
    start.record()
    for _ in range(SAMPLES):
        graph.replay()
    end.record()
    end.synchronize()
    return {"launch_host_us": statistics.median(host_us), "lone_replay_us": statistics.median(alone_us),
            "back_to_back_us": start.elapsed_time(end) * 1e3 / SAMPLES}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        print("graph_launch: needs a CUDA GPU")
        return 1
    device = torch.device("cuda")
    results = results_header(device, samples=SAMPLES, upload_bytes=UPLOAD_BYTES, graphs={})
    shapes = [(n, None, False) for n in NODE_COUNTS] + [(1, "copy", False), (94, "copy", False)] + [
        (94, upload, True) for upload in ("copy", "kernel")] + [(94, "kernel", False)]
    for kernels, upload, event in shapes:
        name = f"{f'upload {upload} + ' if upload else ''}{'event + ' if event else ''}{kernels} kernel{'s' * (kernels > 1)}"
        graph, _buffers = capture(kernels, upload, event, device)
        record = measure(graph, device)
        results["graphs"][name] = record
        print(f"{name:>22}: " + ", ".join(f"{key} {value:.1f}" for key, value in record.items()), flush=True)
    write_results(results, "graph-launch", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
