"""Where one request's time goes inside a TorchServe worker running fusedbert's handler.

    python -m benchmarks.worker_stages ARCHIVE.mar              # or an unpacked model directory
    python -m benchmarks.worker_stages ARCHIVE.mar --gap-ms 0 1 # also with 1 ms idle between requests

The archive is loaded the way a worker loads it (TorchServe's model loader, its metrics cache and
metrics.yaml, the manifest's handler; GPU 0 when there is one) and fed one-request batches through
TorchServe's own ``Service.predict``, the call a worker makes for each batch, without the frontend. The
worker's log goes to a pipe that another process drains, as a worker's stdout does. Each stage is timed
by wrapping the function that does it; a batch's time is the whole ``Service.predict``. What the frontend
adds around the worker is the serving benchmark's noop archive (``benchmarks.serving``).

Writes benchmarks/results/worker-stages-<device slug>-<YYYYMMDD>.json: the median and mean of each stage
over ``--rounds`` x ``--requests`` batches, per ``--gap-ms``.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import importlib.metadata
import json
import logging
import random
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Callable

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import torch

from .encoder import results_header, write_results
from .texts import load_sentences, text_of_length, token_count


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("archive", type=Path, help="a .mar built by scripts/build_mar.py, or its unpacked directory")
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the request's text (default: %(default)s)")
    parser.add_argument("--requests", type=int, default=400, help="timed batches per round (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=6, help="rounds per gap (default: %(default)s)")
    parser.add_argument("--gap-ms", type=float, nargs="+", default=[0.0],
                        help="idle time before each request, ms; one result per value (default: 0)")
    parser.add_argument("--out", type=Path, default=None, help="result JSON (default: benchmarks/results/...)")
    args = parser.parse_args(argv)
    if args.tokens < 3 or args.requests < 1 or args.rounds < 1 or min(args.gap_ms) < 0:
        parser.error("--tokens >= 3, --requests >= 1, --rounds >= 1 and --gap-ms >= 0")
    return args


@contextlib.contextmanager
def unpacked(archive: Path):
    """The model directory: ``archive`` itself, or a .mar unpacked into a temporary one."""
    if archive.is_dir():
        yield archive
        return
    with tempfile.TemporaryDirectory(prefix="worker-stages-") as directory:
        with zipfile.ZipFile(archive) as mar:
            mar.extractall(directory)
        yield Path(directory)


@contextlib.contextmanager
def worker_logging():
    """Log as a worker does (its format, INFO) into a pipe that another process reads and drops; the root
    logger is as it was afterwards."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    drain = subprocess.Popen(["cat"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL)
    pipe = logging.StreamHandler(open(drain.stdin.fileno(), "w", buffering=1, closefd=False))
    pipe.setFormatter(logging.Formatter("%(message)s"))
    root.handlers, root.level = [pipe], logging.INFO
    try:
        yield
    finally:
        root.handlers, root.level = handlers, level
        pipe.close()
        drain.stdin.close()
        drain.wait()


def load_service(model_dir: Path, gpu_id: int | None):
    """TorchServe's Service for ``model_dir``, loaded as a worker loads it."""
    from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl
    from ts.model_loader import ModelLoaderFactory

    manifest = json.loads((model_dir / "MAR-INF" / "MANIFEST.json").read_text())
    metrics = MetricsCacheYamlImpl(config_file_path=str(Path(sys.modules["ts"].__file__).parent / "configs" /
                                                          "metrics.yaml"))
    metrics.initialize_cache()
    name = manifest["model"]["modelName"]
    metrics.model_name = name
    sys.path.insert(0, str(model_dir))  # where a worker finds the archive's handler and its modules
    try:
        service = ModelLoaderFactory.get_model_loader().load(name, str(model_dir), manifest["model"]["handler"], gpu_id,
                                                              1, None, True, metrics)
    finally:
        sys.path.remove(str(model_dir))
    service.set_cl_socket(None)  # the frontend's connection, which streaming responses use; none here
    return service


_INHERITED = object()


class StageClock:
    """Microseconds spent in each wrapped function during the current batch; ``restore`` unwraps them."""

    def __init__(self):
        self.spent: dict[str, float] = collections.defaultdict(float)
        self._wrapped: list[tuple[object, str, object]] = []

    def wrap(self, owner, attribute: str, stage: str) -> None:
        own = vars(owner).get(attribute, _INHERITED)  # a method of an instance lives on its class
        inner: Callable = getattr(owner, attribute)

        def timed(*args, **kwargs):
            started = time.perf_counter_ns()
            try:
                return inner(*args, **kwargs)
            finally:
                self.spent[stage] += (time.perf_counter_ns() - started) / 1e3

        self._wrapped.append((owner, attribute, own))
        setattr(owner, attribute, staticmethod(timed) if isinstance(own, staticmethod) else timed)

    def restore(self) -> None:
        for owner, attribute, own in reversed(self._wrapped):
            if own is _INHERITED:
                delattr(owner, attribute)
            else:
                setattr(owner, attribute, own)
        self._wrapped.clear()


def instrument(service, clock: StageClock) -> None:
    """Wrap the stages of one batch: TorchServe's around the handler, and the handler's own."""
    import ts.service
    from ts.metrics.caching_metric import CachingMetric

    handler = service._entry_point.__self__
    clock.wrap(ts.service.Service, "retrieve_data_for_inference", "TorchServe: read the batch")
    clock.wrap(handler, "_decode_request", "handler: decode the request")
    clock.wrap(handler.mode, "encode", "handler: tokenize")
    clock.wrap(handler, "inference", "handler: model call, copies and waits")
    clock.wrap(handler, "graph_runner" if handler.graph_runner is not None else "model", "  of it: the model or replay")
    clock.wrap(handler, "postprocess", "handler: answers")
    clock.wrap(handler, "_log_metrics", "handler: its metric lines")
    clock.wrap(CachingMetric, "add_or_update", "TorchServe: its own metric lines")
    clock.wrap(ts.service, "create_predict_response", "TorchServe: encode the response")


def request(text: str) -> list[dict]:
    return [{"requestId": b"00000000-0000-4000-8000-000000000001",
             "parameters": [{"name": "body", "contentType": "text/plain; charset=utf-8", "value": text.encode()}],
             "headers": [{"name": b"Content-Type", "value": b"text/plain; charset=utf-8"}]}]


def measure(service, clock: StageClock, batch: list[dict], args, gap_ms: float) -> dict:
    samples: dict[str, list[float]] = collections.defaultdict(list)
    for _ in range(args.rounds):
        for _ in range(max(args.requests // 10, 1)):  # untimed: caches and the allocator settle
            service.predict(batch)
        for _ in range(args.requests):
            if gap_ms:
                time.sleep(gap_ms / 1e3)
            clock.spent.clear()
            started = time.perf_counter_ns()
            service.predict(batch)
            samples["batch (Service.predict)"].append((time.perf_counter_ns() - started) / 1e3)
            for stage, spent in clock.spent.items():
                samples[stage].append(spent)
    return {stage: {"median_us": round(statistics.median(values), 1), "mean_us": round(statistics.fmean(values), 1)}
            for stage, values in samples.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    gpu_id = 0 if torch.cuda.is_available() else None
    clock = StageClock()
    with worker_logging(), unpacked(args.archive) as model_dir:
        service = load_service(model_dir, gpu_id)
        handler = service._entry_point.__self__
        text = text_of_length(handler.tokenizer, load_sentences(), args.tokens, random.Random(0))
        tokens = token_count(handler.tokenizer, text)
        results = results_header(torch.device("cuda" if gpu_id is not None else "cpu"),
                                 torchserve=importlib.metadata.version("torchserve"), archive=args.archive.name,
                                 setup_config=json.loads((model_dir / "setup_config.json").read_text()),
                                 cuda_graphs=handler.graph_runner is not None, tokens=tokens, rounds=args.rounds,
                                 requests=args.requests, records=[])
        instrument(service, clock)
        try:
            for gap_ms in args.gap_ms:
                results["records"].append({"gap_ms": gap_ms, "stages": measure(service, clock, request(text), args,
                                                                               gap_ms)})
        finally:
            clock.restore()
    for record in results["records"]:
        print(f"{record['gap_ms']} ms between requests, one text of {tokens} tokens; median us per batch:")
        for stage, values in record["stages"].items():
            print(f"  {stage:42s} {values['median_us']:9.1f}")
    write_results(results, "worker-stages", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
