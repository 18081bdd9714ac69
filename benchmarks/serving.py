"""Serving benchmark: the fused TorchScript model against the stock Hugging Face path, through one real
TorchServe on loopback (token auth on), under the same bounded load.

    python -m benchmarks.serving                                  # CPU: fp32, concurrency 1, 16, 64
    python -m benchmarks.serving --device cuda                    # one GPU worker per model, fp16
    python -m benchmarks.serving --device cuda --gpus 2           # one worker per GPU on GPUs 0 and 1
    python -m benchmarks.serving --device cuda --random-weights bert-base   # bert-base shape, random weights
    python -m benchmarks.serving --skip-build                     # reuse the archives of the last run

Both archives are built by scripts/build_mar.py from the same checkpoint and configs/<mode>/setup_config.json,
differing only in "FasterTransformer" (true: TorchScript traced through fusedbert's op; false: TorchScript
of the plain Hugging Face model), with the same model-config.yaml (batch size, batch delay, workers,
devices). A third archive, ``noop`` (benchmarks/noop_handler.py), answers without a model under the same
model-config.yaml: the floor of latency and the ceiling of requests/s that the client, the frontend and
the worker protocol leave on this host. One TorchServe serves all three; the load alternates between
them, one concurrency level at a time, so drift in the machine's load hits all alike. ``--rounds N``
measures each cell N times, the systems' order reversed each round (A B, B A, A B, ...); a record pools its
rounds and lists each round's requests/s, p50 and p50 above the model, which shows drift during the run.
Separate runs are no A/B: on one H100 the same handler measured 1.31 ms above the model in a first run
and 1.90 ms in a third (docs/benchmarks.md).

Load: a closed loop of ``concurrency`` clients (aiohttp) sending raw text, each sending its next request
when its previous one is answered, until the cell's request count is sent or its duration cap passes.
Each cell is preceded by an unmeasured warm-up of at least ``--warmup-requests`` per worker, so that
every worker has met many input shapes (allocator caches, cuBLAS heuristics), and of at least
``--warmup-seconds``: on an H100 host 64 requests per worker passed in 0.05 s at 64 clients, and the
first round after them served 30% fewer requests/s than the rounds after it (frontend and workers still
cold; docs/benchmarks.md). On Hopper the traced stock model took tens of ms per batch on shapes it had not
met, cuDNN's attention planning each one (benchmarks/new_shapes.py); the handler turns cuDNN's attention
off in unfused GPU workers since.
``--client-processes K`` deals the clients out to K processes kept for the run, for loads past what one
event loop can send. Texts come from benchmarks/data with token lengths uniform in 8..128 and a 10% tail
up to twice max_length (truncated to max_length by the handler). Per cell: requests/s, real tokens/s
(after truncation), latency p50/p90/p99, errors by status; and from the handler's own per-batch metrics
(parsed from TorchServe's log): batch size, tokenize / model / postprocess / whole-batch time, and the
overhead (whole batch minus model).

GPU: the serving host needs Java 11+ for TorchServe's frontend (scripts/device_bundle.sh packs one, with
TorchServe, for a host that has neither; scripts/device_serving.sh runs this there). ``--gpus N`` writes
deviceIds [0..N-1] and N workers per model into model-config.yaml. On CUDA the fused archive replays CUDA
graphs (setup_config "cuda_graph_buckets": "auto", the ladder of fusedbert.cuda_graphs.bucket_ladder for
batchSize, unless --cuda-graph-buckets); the stock archive runs the Hugging Face model as TorchServe's old
example did. Workers sharing a GPU (``--workers-per-gpu``) are time-sliced by the driver unless NVIDIA's
Multi-Process Service runs; where its control daemon answers (scripts/device_serving.sh --mps starts one),
the JSON records its servers and their clients, and the file name carries ``-mps``.

Writes benchmarks/results/serving-<device>-<device slug>-<YYYYMMDD>.json and a PNG beside it.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

if __package__ in (None, ""):  # run as a file: make `benchmarks` importable as from the repo root
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    __package__ = "benchmarks"

import aiohttp
import numpy as np
import torch
import transformers
import yaml

from fusedbert.tasks import load_tokenizer

from .encoder import device_name, slug, verdict, verdict_text
from .load import LoadGenerator, Reply
from .plots import plot_serving
from .texts import serving_mix, token_count

REPO_ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO_ROOT / "scripts"))
import build_mar  # noqa: E402
import torchserve_control as ts  # noqa: E402

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SYSTEMS = {"fused": True, "stock": False}  # model name -> setup_config.json "FasterTransformer"
NOOP = "noop"  # the archive of benchmarks/noop_handler.py: no tokenizer, no model
NOOP_HANDLER = Path(__file__).resolve().parent / "noop_handler.py"
CONCURRENCY = (1, 16, 64)
# Requests per concurrency level on the CPU: enough for a stable p90 at c=1 in a 2-core budget; at c=64
# each request waits behind several full batches, so fewer requests already fill the duration cap.
CPU_REQUESTS = {1: 150, 16: 480, 64: 480}
GPU_REQUESTS = {1: 1000, 16: 5000, 64: 10000}
HANDLER_METRICS = ("BatchSize", "RealTokens", "PaddedTokens", "TokenizeTime", "ModelTime", "PostprocessTime",
                   "PredictionTime")
# TorchServe logs every backend metric line twice (two appenders); the request id dedupes them.
METRIC_LINE = re.compile(r"\[METRICS\](\w+)\.\w+:([0-9.eE+-]+)\|#ModelName:([^,|]+),[^|]*\|#type:\w+\|#hostname:[^,]*,"
                         r"\d+,([0-9a-f-]+)")
PROMETHEUS_SAMPLE = re.compile(r'^(\w+)\{model_name="([^"]+)"[^}]*\}\s+([0-9.eE+-]+)$', re.MULTILINE)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--gpus", type=int, default=1, help="--device cuda: one worker per GPU on GPUs 0..N-1")
    parser.add_argument("--workers-per-gpu", type=int, default=1,
                        help="--device cuda: workers per GPU, for both archives alike; one worker's tokenizing and "
                             "protocol work then overlaps another's GPU work (default: %(default)s)")
    parser.add_argument("--mode", default="sequence_classification",
                        help="a folder of configs/ whose setup_config.json both archives start from")
    parser.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], help="default: fp32 on CPU, fp16 on CUDA")
    parser.add_argument("--systems", nargs="+", choices=[*SYSTEMS, NOOP], default=[*SYSTEMS, NOOP],
                        help="which archives to serve and load (default: all; the ratios need them all)")
    parser.add_argument("--concurrency", type=int, nargs="+", default=list(CONCURRENCY))
    parser.add_argument("--requests", type=int, help="requests per cell (default: per concurrency, see the JSON)")
    parser.add_argument("--duration-cap", type=float, default=45.0, help="seconds per cell at most (default: %(default)s)")
    parser.add_argument("--rounds", type=int, default=1,
                        help="measure each cell this many times, alternating the systems' order (default: %(default)s)")
    parser.add_argument("--client-processes", type=int, default=1,
                        help="split each cell's clients over this many processes (default: %(default)s)")
    parser.add_argument("--warmup-requests", type=int, default=64,
                        help="unmeasured requests per worker before each cell, at least 2 per client (default: %(default)s)")
    parser.add_argument("--warmup-seconds", type=float, default=2.0,
                        help="the warm-up goes on at least this long (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, help="TorchServe batchSize (default: configs/model-config.yaml's)")
    parser.add_argument("--max-batch-delay", type=int, help="TorchServe maxBatchDelay in ms (default: the config's)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(), help="CPU worker: OMP_NUM_THREADS")
    parser.add_argument("--text-pool", type=int, default=512, help="distinct request texts (default: %(default)s)")
    parser.add_argument("--work-dir", type=Path, default=REPO_ROOT / "build" / "serving-bench",
                        help="archives, TorchServe run directory and logs (default: build/serving-bench)")
    parser.add_argument("--skip-build", action="store_true", help="reuse the archives already in --work-dir")
    parser.add_argument("--random-weights", choices=["bert-base", "bert-large"],
                        help="serve a random-weight checkpoint of this shape (seed 0) with the config's tokenizer, "
                             "instead of the config's model_name")
    parser.add_argument("--cuda-graph-buckets", type=json.loads, default=None, metavar="JSON",
                        help='the fused archive\'s "cuda_graph_buckets" on CUDA, e.g. "[[1,128],[16,128,1280]]" '
                             "(default: \"auto\", fusedbert.cuda_graphs.bucket_ladder for batchSize; [] turns graphs off)")
    parser.add_argument("--out-dir", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda, but torch sees no CUDA device")
    if args.gpus < 1 or (args.device == "cuda" and args.gpus > torch.cuda.device_count()):
        parser.error(f"--gpus {args.gpus}: this host has {torch.cuda.device_count()} CUDA device(s)")
    if args.device == "cpu" and (args.gpus != 1 or args.workers_per_gpu != 1):
        parser.error("--gpus and --workers-per-gpu need --device cuda")
    if args.workers_per_gpu < 1:
        parser.error("--workers-per-gpu must be >= 1")
    if args.client_processes < 1:
        parser.error("--client-processes must be >= 1")
    if args.rounds < 1:
        parser.error("--rounds must be >= 1")
    if not set(args.systems) & set(SYSTEMS):
        parser.error(f"--systems needs {' or '.join(SYSTEMS)}: the request texts come from that model's tokenizer")
    args.dtype = args.dtype or ("fp16" if args.device == "cuda" else "fp32")
    return args


# ------------------------------------------------------------------------------------------ archives

def workers(args: argparse.Namespace) -> int:
    """Workers per archive: on CUDA, workers_per_gpu on each of the GPUs; one on the CPU."""
    return args.gpus * args.workers_per_gpu if args.device == "cuda" else 1


def model_config(args: argparse.Namespace) -> dict:
    """configs/model-config.yaml with this run's batching, workers and devices."""
    config = yaml.safe_load(build_mar.MODEL_CONFIG.read_text())
    if args.batch_size is not None:
        config["batchSize"] = args.batch_size
    if args.max_batch_delay is not None:
        config["maxBatchDelay"] = args.max_batch_delay
    if args.device == "cuda":
        # TorchServe hands GPUs to workers round-robin over deviceIds.
        config.update(deviceType="gpu", deviceIds=list(range(args.gpus)), minWorkers=workers(args),
                      maxWorkers=workers(args))
    else:
        config.update(deviceType="cpu", minWorkers=workers(args), maxWorkers=workers(args))
        config.pop("deviceIds", None)
    return config


@contextlib.contextmanager
def archive_model_config(path: Path):
    """Point build_mar at ``path`` for torch-model-archiver's --config-file while building."""
    shipped = build_mar.MODEL_CONFIG
    build_mar.MODEL_CONFIG = path
    try:
        yield
    finally:
        build_mar.MODEL_CONFIG = shipped


def random_checkpoint(shape: str, tokenizer_name: str, directory: Path) -> Path:
    """A BertModel of ``shape`` with random weights (seed 0) and ``tokenizer_name``'s tokenizer, saved."""
    from transformers import BertConfig, BertModel

    from .workloads import MODEL_SHAPES, SEED

    tokenizer = load_tokenizer(tokenizer_name)
    torch.manual_seed(SEED)
    BertModel(BertConfig(**MODEL_SHAPES[shape], vocab_size=len(tokenizer))).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


def build_archives(args: argparse.Namespace, store: Path, config: dict) -> dict:
    """Both .mar files in ``store``; returns each system's setup_config.json."""
    setup = json.loads(build_mar.find_setup_config(args.mode).read_text())
    if args.random_weights:
        checkpoint = args.work_dir / "checkpoints" / f"{args.random_weights}-random"
        if not args.skip_build:
            random_checkpoint(args.random_weights, setup["model_name"], checkpoint)
        setup["model_name"] = str(checkpoint)
    max_length = int(setup.get("max_length", 128))
    configs_dir = args.work_dir / "configs"
    configs_dir.mkdir(parents=True, exist_ok=True)
    model_config_path = configs_dir / "model-config.yaml"
    model_config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    setups = {}
    for name in args.systems:
        if name == NOOP:
            if not args.skip_build:
                build_noop_archive(store, model_config_path)
            continue
        setups[name] = dict(setup, FasterTransformer=SYSTEMS[name], data_type=args.dtype)
        if args.device == "cuda" and SYSTEMS[name]:
            setups[name]["cuda_graph_buckets"] = "auto" if args.cuda_graph_buckets is None else args.cuda_graph_buckets
        setup_path = configs_dir / f"{name}_setup_config.json"
        setup_path.write_text(json.dumps(setups[name], indent=2) + "\n")
        if args.skip_build:
            if not (store / f"{name}.mar").is_file():
                raise SystemExit(f"serving: --skip-build, but {store / (name + '.mar')} does not exist")
            continue
        with archive_model_config(model_config_path):
            status = build_mar.main([str(setup_path), "--model-name", name, "--export-path", str(store),
                                     "--work-dir", str(args.work_dir / "build" / name), "--device", args.device])
        if status != 0:
            raise SystemExit(f"serving: building the {name} archive failed (scripts/build_mar.py exit {status})")
    return setups


def build_noop_archive(store: Path, model_config_path: Path) -> None:
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    build_mar.run([archiver if archiver.is_file() else "torch-model-archiver", "--model-name", NOOP, "--version", "1",
                   "--handler", NOOP_HANDLER, "--config-file", model_config_path, "--export-path", store, "--force"])


# --------------------------------------------------------------------------------------- measurement

def handler_metrics(log: Path, offset: int, model: str) -> list[dict[str, float]]:
    """The handler's metrics for ``model`` logged after byte ``offset`` of ``log``, one dict per batch
    (a batch's metrics carry the ids of its requests; the first one names the batch)."""
    with log.open("rb") as f:
        f.seek(offset)
        text = f.read().decode("utf-8", errors="replace")
    batches: dict[str, dict[str, float]] = {}
    for name, value, model_name, request_id in METRIC_LINE.findall(text):
        if model_name == model and name in HANDLER_METRICS:
            batches.setdefault(request_id, {})[name] = float(value)
    return list(batches.values())


def frontend_counters(server: ts.Server, model: str) -> dict[str, float]:
    text = server.call("metrics", "GET", "/metrics").body.decode()
    return {name: float(value) for name, model_name, value in PROMETHEUS_SAMPLE.findall(text) if model_name == model}


@dataclass
class Round:
    """One measured run of a cell: the replies, its wall time, the handler's batches (handler_metrics) and how
    much each of the frontend's counters for the model grew."""
    replies: list[Reply]
    wall_s: float
    batches: list[dict[str, float]]
    counters: dict[str, float]


def headline(replies: list[Reply], batches: list[dict[str, float]], wall_s: float) -> dict:
    """Requests/s answered, the p50 latency of the answers, and what serving adds to the forward pass at the
    median: that p50 minus the handler's model-time p50 (#9 asks <= 1.5 ms at one client)."""
    ok_ms = [r.seconds * 1e3 for r in replies if r.status == 200]
    model_ms = [b["ModelTime"] for b in batches if "ModelTime" in b]
    latency_p50 = float(np.median(ok_ms)) if ok_ms else None
    above = latency_p50 - float(np.median(model_ms)) if latency_p50 is not None and model_ms else None
    return {"requests_per_s": len(ok_ms) / wall_s, "latency_p50_ms": latency_p50, "p50_above_model_ms": above}


def summarize(system: str, concurrency: int, planned: int, rounds: list[Round]) -> dict:
    """One record for a cell: its rounds pooled (``planned`` requests each), and each round's own figures."""
    replies = [reply for one in rounds for reply in one.replies]
    batches = [batch for one in rounds for batch in one.batches]
    wall_s = sum(one.wall_s for one in rounds)
    pooled = headline(replies, batches, wall_s)
    ok = [r for r in replies if r.status == 200]
    latencies_ms = np.array([r.seconds * 1e3 for r in ok]) if ok else np.array([np.nan])
    latency_p50 = float(np.percentile(latencies_ms, 50))
    errors: dict[str, int] = {}
    for reply in replies:
        if reply.status != 200:
            errors[str(reply.status)] = errors.get(str(reply.status), 0) + 1

    def values(name: str) -> list[float]:
        return [batch[name] for batch in batches if name in batch]

    def p50(name: str) -> float | None:
        return float(np.median(values(name))) if values(name) else None

    # Everything in the worker but the forward pass: decoding, tokenizing, device copies, answers.
    overheads = [b["PredictionTime"] - b["ModelTime"] for b in batches if "PredictionTime" in b and "ModelTime" in b]
    served = sum(one.counters.get("ts_inference_requests_total", 0) for one in rounds)
    queued_us = sum(one.counters.get("ts_queue_latency_microseconds", 0) for one in rounds)
    total = {name: sum(values(name)) for name in ("TokenizeTime", "ModelTime", "PostprocessTime", "PredictionTime")}
    padded, real = sum(values("PaddedTokens")), sum(values("RealTokens"))
    return {
        "system": system, "concurrency": concurrency, "requests_planned": planned * len(rounds),
        "requests_sent": len(replies), "stopped_by_duration_cap": any(len(one.replies) < planned for one in rounds),
        "completed": len(ok), "errors": len(replies) - len(ok),
        "errors_by_status": errors, "wall_s": wall_s,
        "requests_per_s": pooled["requests_per_s"], "real_tokens_per_s": sum(r.tokens for r in ok) / wall_s,
        "latency_ms": {"p50": latency_p50, "p90": float(np.percentile(latencies_ms, 90)),
                       "p99": float(np.percentile(latencies_ms, 99)), "mean": float(np.mean(latencies_ms)),
                       "max": float(np.max(latencies_ms))},
        "frontend_queue_ms_mean": queued_us / served / 1e3 if served else None,
        "p50_above_model_ms": pooled["p50_above_model_ms"],
        "handler": {
            "batches": len(batches),
            "mean_batch_size": float(np.mean(values("BatchSize"))) if values("BatchSize") else None,
            "padding_share": padded / max(padded + real, 1),  # of the positions handed to the model
            "tokenize_ms_p50": p50("TokenizeTime"), "model_ms_p50": p50("ModelTime"),
            "postprocess_ms_p50": p50("PostprocessTime"), "batch_ms_p50": p50("PredictionTime"),
            "overhead_ms_p50": float(np.median(overheads)) if overheads else None,
            "share_of_batch_time": {name.removesuffix("Time").lower(): total[name] / total["PredictionTime"]
                                    for name in ("TokenizeTime", "ModelTime", "PostprocessTime")
                                    if total["PredictionTime"]},
        },
        "rounds": [headline(one.replies, one.batches, one.wall_s) for one in rounds],
        "loadavg_1m": os.getloadavg()[0],
    }


def serving_targets(records: list[dict], fused_over_stock: dict[str, float]) -> list[dict]:
    """#9's two serving targets, asked of a GPU host: fused requests/s at least 3x stock's at 64 clients,
    and at one client a p50 at most 1.5 ms above the model's own. ``measured`` is None where the run
    had no such cell."""
    one_client = next((r for r in records if r["system"] == "fused" and r["concurrency"] == 1), {})
    figures = (("fused_over_stock_requests_per_s at 64 clients", fused_over_stock.get("64"), True, 3.0),
               ("fused p50_above_model_ms at 1 client", one_client.get("p50_above_model_ms"), False, 1.5))
    return [{"issue": "#9", "quantity": quantity, **verdict(measured, at_least, bound)}
            for quantity, measured, at_least, bound in figures]


def warm_up(load: LoadGenerator, url: str, token: str, texts, tokens, concurrency: int, requests: int,
            seconds: float, duration_cap: float) -> None:
    """Unmeasured load: fills the frontend's and the workers' pools at this concurrency and shows every
    worker many input shapes; ``requests`` of it at least, and then more until ``seconds`` have passed."""
    _, elapsed = load.run(url, token, texts, tokens, concurrency, requests, duration_cap)
    if elapsed < seconds:
        load.run(url, token, texts, tokens, concurrency, sys.maxsize, seconds - elapsed)


def measure_round(server: ts.Server, load: LoadGenerator, system: str, concurrency: int, requests: int, args, texts,
                  tokens, round_index: int) -> Round:
    url = f"{server.urls['inference']}/predictions/{system}"
    token = server.key("inference")
    warm_up(load, url, token, texts, tokens, concurrency, max(2 * concurrency, args.warmup_requests * workers(args)),
            args.warmup_seconds, args.duration_cap)
    time.sleep(1.0)  # the warm-up's last metric lines, logged just after its last answer, stay out of this round
    log = Path(server.run_dir) / "logs" / "ts_log.log"
    offset = log.stat().st_size
    before = frontend_counters(server, system)
    replies, wall_s = load.run(url, token, texts, tokens, concurrency, requests, args.duration_cap)
    time.sleep(1.0)  # the frontend logs the last batch's metrics just after answering it
    after = frontend_counters(server, system)
    one = Round(replies, wall_s, handler_metrics(log, offset, system),
                {name: after[name] - before.get(name, 0) for name in after})
    record = summarize(system, concurrency, requests, [one])
    latency, handler = record["latency_ms"], record["handler"]
    batch = "" if handler["mean_batch_size"] is None else \
        f"  batch {handler['mean_batch_size']:4.1f}  overhead p50 {handler['overhead_ms_p50'] or 0:5.1f} ms"
    label = f" r{round_index + 1}" if args.rounds > 1 else ""
    print(f"  {system:<6} c={concurrency:<3}{label} {record['completed']:>5} ok {record['errors']:>3} err "
          f"{record['requests_per_s']:8.1f} req/s {record['real_tokens_per_s']:9.0f} tok/s  "
          f"p50 {latency['p50']:7.1f} p90 {latency['p90']:7.1f} p99 {latency['p99']:7.1f} ms{batch}"
          + ("  (duration cap)" if record["stopped_by_duration_cap"] else ""), flush=True)
    return one


# ---------------------------------------------------------------------------------------------- main

def run_header(args, config: dict, setups: dict, tokens: list[int], max_length: int) -> dict:
    device = torch.device(args.device)
    java = shutil.which("java")
    java_version = subprocess.run([java, "-version"], capture_output=True, text=True).stderr.splitlines()[0] if java else None
    lengths = np.array(tokens)
    return {
        "device": args.device, "device_name": device_name(device), "gpus": args.gpus if args.device == "cuda" else 0,
        "torch": torch.__version__, "transformers": transformers.__version__,
        "torchserve": _version("torchserve"), "aiohttp": aiohttp.__version__, "java": java_version,
        "python": platform.python_version(),
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "mode": args.mode, "checkpoint": next(iter(setups.values())).get("model_name"), "dtype": args.dtype,
        "max_length": max_length, "setup_config": setups,
        "model_config": {k: config[k] for k in ("batchSize", "maxBatchDelay", "minWorkers", "maxWorkers", "deviceType")
                         if k in config} | ({"deviceIds": config["deviceIds"]} if "deviceIds" in config else {}),
        "token_auth": True, "client": "aiohttp closed loop on the same host (its CPU use competes with the server's)",
        "client_processes": args.client_processes,
        "duration_cap_s": args.duration_cap,
        "warmup": {"requests_per_worker": args.warmup_requests, "min_seconds": args.warmup_seconds},
        "text_mix": {"texts": len(tokens), "tokens_p10": int(np.percentile(lengths, 10)),
                     "tokens_p50": int(np.percentile(lengths, 50)), "tokens_p90": int(np.percentile(lengths, 90)),
                     "tokens_max": int(lengths.max()), "truncated_share": float(np.mean(lengths >= max_length)),
                     "description": "lengths uniform in 8..128 tokens, 10% tail up to 2 x max_length "
                                    "(truncated to max_length)"},
        "worker_env": {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
                       "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY")},
        "cpu_count": os.cpu_count(), "loadavg_start": os.getloadavg(),
    }


def mps_servers() -> dict[str, int] | None:
    """The NVIDIA Multi-Process Service servers on this host, each with its number of client processes;
    None where no MPS control daemon answers. Started before TorchServe (scripts/device_serving.sh --mps),
    the daemon runs every later CUDA process's kernels in one server, so that the workers sharing a GPU run
    side by side instead of time-sliced; its clients should then be the workers (and this process, where it
    traced on the GPU)."""
    control = shutil.which("nvidia-cuda-mps-control")
    if control is None:
        return None

    def ask(command: str) -> list[str] | None:
        done = subprocess.run([control], input=command + "\n", capture_output=True, text=True, timeout=10)
        return done.stdout.split() if done.returncode == 0 else None

    servers = ask("get_server_list")
    if not servers:
        return None
    return {pid: len(ask(f"get_client_list {pid}") or []) for pid in servers}


def _version(distribution: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(distribution)
    except PackageNotFoundError:
        return None


def main(argv=None) -> int:
    args = parse_args(argv)
    if shutil.which("java") is None:
        raise SystemExit("serving: TorchServe's frontend needs Java 11+ on PATH (e.g. apt-get install openjdk-17-jre-headless)")
    # The worker inherits this process's environment (scripts/torchserve_control.py). On a CPU shared with
    # other jobs, spinning OpenMP threads wait on descheduled ones (see benchmarks/README.md, Shared CPUs).
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.device == "cpu":
        os.environ["OMP_NUM_THREADS"] = str(args.threads)
    args.work_dir = args.work_dir.resolve()
    store = args.work_dir / "model_store"
    config = model_config(args)
    setups = build_archives(args, store, config)
    setup = next(iter(setups.values()))  # parse_args made sure fused or stock is among the systems
    max_length = int(setup.get("max_length", 128))

    tokenizer = load_tokenizer(setup["model_name"])
    texts = serving_mix(tokenizer, args.text_pool, max_length=max_length)
    tokens = [token_count(tokenizer, text, max_length) for text in texts]
    header = run_header(args, config, setups, tokens, max_length)
    per_concurrency = {c: args.requests or (GPU_REQUESTS if args.device == "cuda" else CPU_REQUESTS).get(c, 480)
                       for c in args.concurrency}
    header["requests_per_cell"] = per_concurrency
    header["rounds"] = args.rounds

    run_dir = args.work_dir / "torchserve"
    run_dir.mkdir(parents=True, exist_ok=True)
    print(f"starting TorchServe ({', '.join(args.systems)}) in {run_dir}", flush=True)
    server = ts.start(store, {name: f"{name}.mar" for name in args.systems}, run_dir=run_dir, ports=ts.loopback_ports())
    records = []
    load = LoadGenerator(args.client_processes)  # started beside TorchServe's workers loading
    try:
        ts.wait_until_ready(server)
        for position, concurrency in enumerate(args.concurrency):
            # Alternate which system goes first so that slow drift does not favour either.
            order = args.systems if position % 2 == 0 else args.systems[::-1]
            rounds: dict[str, list[Round]] = {system: [] for system in order}
            for index in range(args.rounds):
                for system in order if index % 2 == 0 else order[::-1]:
                    rounds[system].append(measure_round(server, load, system, concurrency,
                                                        per_concurrency[concurrency], args, texts, tokens, index))
            records += [summarize(system, concurrency, per_concurrency[concurrency], rounds[system]) for system in order]
        header["mps_servers"] = mps_servers()  # asked while the workers are up: each one is a client then
    finally:
        load.close()
        ts.stop(run_dir)
    header["loadavg_end"] = os.getloadavg()

    ratios = {name: {} for name in ("fused_over_stock_requests_per_s", "fused_share_of_noop_requests_per_s")}
    for concurrency in args.concurrency:
        cell = {r["system"]: r for r in records if r["concurrency"] == concurrency}
        for name, pair in zip(ratios, (("fused", "stock"), ("fused", NOOP))):
            if all(system in cell for system in pair) and cell[pair[1]]["requests_per_s"] > 0:
                ratios[name][str(concurrency)] = cell[pair[0]]["requests_per_s"] / cell[pair[1]]["requests_per_s"]
    targets = serving_targets(records, ratios["fused_over_stock_requests_per_s"])
    result = {"header": header, "records": records, **ratios, "targets": targets}
    args.out_dir.mkdir(parents=True, exist_ok=True)
    date = datetime.date.today().strftime("%Y%m%d")
    gpus = f"-x{args.gpus}" if args.device == "cuda" and args.gpus > 1 else ""
    per_gpu = f"-w{args.workers_per_gpu}" if args.workers_per_gpu > 1 else ""
    # Batching other than the shipped model-config.yaml's is part of the name: runs that differ only there
    # can sit side by side.
    batching = "".join(f"-{flag}{value}" for flag, value in (("b", args.batch_size), ("d", args.max_batch_delay))
                       if value is not None)
    mps = "-mps" if header.get("mps_servers") else ""
    stem = f"serving-{args.device}{gpus}{per_gpu}{batching}{mps}-{slug(header['device_name'])}-{date}"
    (args.out_dir / f"{stem}.json").write_text(json.dumps(result, indent=2) + "\n")
    plot_serving(result, args.out_dir / f"{stem}.png")
    for name, by_concurrency in ratios.items():
        if by_concurrency:
            print(f"{name}: {', '.join(f'c={c}: {r:.2f}' for c, r in by_concurrency.items())}")
    for target in targets:
        measured = None if target["measured"] is None else f"{target['measured']:.3g}"
        print(f"{target['issue']} {target['quantity']} {verdict_text(target, measured)}")
    if header.get("mps_servers"):
        print("MPS: " + ", ".join(f"server {pid} with {clients} clients" for pid, clients in header["mps_servers"].items()))
    print(f"wrote {args.out_dir / stem}.json and .png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
