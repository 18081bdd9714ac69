"""What the reliability tests need beyond tests/integration's fixtures: model directories derived from one
built archive, registration through the management API, and a worker's pid and memory.

TorchServe registers an unpacked archive (a directory holding MAR-INF/MANIFEST.json) from its model
store like a .mar, so one archive built by scripts/build_mar.py is unpacked once and every variant (a
changed setup_config.json, a missing or patched .so, another mode) is a directory of hard links with
only the changed files written anew: seconds instead of a rebuild per case.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import re
import shutil
import time
import urllib.parse
import zipfile
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]

# tests/integration/conftest.py owns starting and stopping a TorchServe (and the skip when it or Java is
# missing); loaded by path because every conftest module is named "conftest".
_spec = importlib.util.spec_from_file_location("integration_conftest", REPO_ROOT / "tests/integration/conftest.py")
integration = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(integration)

import torchserve_control as ts  # noqa: E402  (on sys.path through the integration conftest)

# The models conftest.py serves. Those under test batch up to 16 requests that wait at most 300 ms for
# each other: long enough that requests sent together share a batch on a busy machine.
BATCH_SIZE = 16
MAX_BATCH_DELAY_MS = 300
ARCHIVE = "feature_extraction"  # served from the .mar as built: the model that must keep serving
EMBEDDER = "embedder"  # the same archive unpacked, with the batch settings above
QA = "qa"  # question answering from the same checkpoint, save_mode pretrained

# A failing worker answers synchronous registration within its startup; a healthy one loads MiniLM
# in well under a minute on a busy 2-core machine. Bounds, so that nothing waits forever.
STARTUP_TIMEOUT_S = 120
REGISTER_TIMEOUT_S = STARTUP_TIMEOUT_S + 30


def config_with_model_api(path: Path) -> Path:
    """configs/config.properties with the management API allowed to register models (which the shipped
    file keeps off): the tests register archive variants, broken ones among them, into a running server."""
    properties = [line for line in ts.SHIPPED_CONFIG.read_text().splitlines()
                  if not line.startswith("enable_model_api=")]
    path.write_text("\n".join(properties + ["enable_model_api=true"]) + "\n")
    return path


def unpack_archive(mar: Path, directory: Path) -> Path:
    with zipfile.ZipFile(mar) as archive:
        archive.extractall(directory)
    return directory


def derive_model_dir(base: Path, target: Path, *, setup: dict | None = None, remove: tuple[str, ...] = (),
                     files: dict[str, bytes | Path] | None = None) -> Path:
    """A copy of the unpacked archive ``base`` (hard links) with setup_config.json updated by ``setup``
    (a None value deletes the key), the files in ``remove`` left out, and ``files`` written anew."""
    shutil.copytree(base, target, copy_function=os.link)
    for name in remove:
        (target / name).unlink()
    replaced = dict(files or {})
    if setup is not None:
        config = json.loads((base / "setup_config.json").read_text())
        config.update(setup)
        replaced["setup_config.json"] = json.dumps({k: v for k, v in config.items() if v is not None}).encode()
    for name, content in replaced.items():
        (target / name).unlink(missing_ok=True)  # a hard link: writing through it would change ``base``
        if isinstance(content, Path):
            os.link(content, target / name)
        else:
            (target / name).write_bytes(content)
    return target


def register(server: ts.Server, name: str, directory: str, **parameters) -> ts.Response:
    """Register the model directory ``directory`` of the model store as ``name`` with one worker and wait
    (synchronous=true) until it is READY or has failed; TorchServe unregisters a model that failed."""
    query = {"url": directory, "model_name": name, "initial_workers": 1, "synchronous": "true",
             "startup_timeout": STARTUP_TIMEOUT_S} | parameters
    return server.call("management", "POST", "/models?" + urllib.parse.urlencode(query),
                       timeout=REGISTER_TIMEOUT_S)


def unregister(server: ts.Server, name: str) -> ts.Response:
    return server.call("management", "DELETE", f"/models/{name}", timeout=REGISTER_TIMEOUT_S)


def server_properties(server: ts.Server) -> dict[str, str]:
    """The configuration the server runs with."""
    return ts.read_properties(Path(server.config))


def describe(server: ts.Server, name: str) -> dict:
    reply = server.call("management", "GET", f"/models/{name}", timeout=30)
    assert reply.status == 200, reply.body[:500]
    return reply.json()[0]


def worker_pid(server: ts.Server, name: str) -> int:
    """The pid of the model's one READY worker (the management API's description lists it)."""
    ready = [w["pid"] for w in describe(server, name)["workers"] if w["status"] == "READY"]
    assert len(ready) == 1, f"expected one READY worker of {name}: {describe(server, name)['workers']}"
    return int(ready[0])


def resident_bytes(pid: int) -> int:
    """The process's resident set size, from /proc/<pid>/status."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise ValueError(f"/proc/{pid}/status has no VmRSS line")


def model_log(server: ts.Server, model: str, *, until: str | None = None, timeout_s: float = 10.0) -> str:
    """What the model's workers printed (tracebacks included), from TorchServe's model_log.log. With
    ``until``, rereads it until that text appears or timeout_s passes: the frontend relays a worker's
    output to the file asynchronously, so its last lines can land after the reply that reports the failure."""
    path = Path(server.run_dir) / "logs" / "model_log.log"
    worker = re.compile(rf" W-\d+-{re.escape(model)}_[^ ]*-std(out|err) ")
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text(errors="replace").splitlines() if path.is_file() else []
        log = "\n".join(line for line in lines if worker.search(line))
        if until is None or until in log or time.monotonic() > deadline:
            return log
        time.sleep(0.1)


def frontend_log_length(server: ts.Server) -> int:
    """How many lines TorchServe's ts_log.log holds now: pass it to ``batches_run`` to skip them."""
    path = Path(server.run_dir) / "logs" / "ts_log.log"
    return len(path.read_text(errors="replace").splitlines()) if path.is_file() else 0


def batches_run(server: ts.Server, model: str, *, skip_lines: int = 0, rows_expected: int,
                timeout_s: float = 10.0) -> list[tuple[int, int]]:
    """For each batch the model's handler ran past the first ``skip_lines`` lines of ts_log.log: (rows it
    ran through the model, requests in the frontend's batch). The handler's BatchSize metric line carries
    the batch's request ids, and the frontend logs the line as it relays it, asynchronously: rereads the
    log until the rows add up to ``rows_expected`` or timeout_s passes."""
    path = Path(server.run_dir) / "logs" / "ts_log.log"
    metric = re.compile(rf"\[METRICS\]BatchSize\.\w+:(\d+)\|#ModelName:{re.escape(model)},.*?\|#hostname:([^ ]*)")
    deadline = time.monotonic() + timeout_s
    while True:
        lines = path.read_text(errors="replace").splitlines()[skip_lines:] if path.is_file() else []
        batches = {}  # by request ids: the frontend may log a relayed line twice
        for match in filter(None, map(metric.search, lines)):
            _host, _timestamp, *request_ids = match.group(2).split(",")  # "host,timestamp,id,id,...,"
            request_ids = tuple(i for i in request_ids if i)
            batches[request_ids] = (int(match.group(1)), len(request_ids))
        if sum(rows for rows, _ in batches.values()) >= rows_expected or time.monotonic() > deadline:
            return list(batches.values())
        time.sleep(0.1)


LOST = 0  # Reply.status of a request that got no HTTP reply


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes
    sent: float  # time.monotonic() when the request was sent
    done: float  # ... and when its reply (or failure) arrived

    def json(self):
        return json.loads(self.body)


async def post_many(server: ts.Server, model: str, bodies: list, *, concurrency: int, on_reply=None,
                    timeout: float = 300.0) -> list[Reply]:
    """POST every body to /predictions/<model>, at most ``concurrency`` at a time; replies in request order.

    bytes and str go as text/plain, anything else as JSON. A request that gets no HTTP reply (connection
    error, timeout) comes back with status LOST. ``on_reply(index, reply)`` runs after each reply (e.g.
    to kill a worker part-way)."""
    import aiohttp

    url = f"{server.urls['inference']}/predictions/{model}"
    token = {"Authorization": f"Bearer {server.key('inference')}"}
    gate = asyncio.Semaphore(concurrency)
    replies: list[Reply | None] = [None] * len(bodies)

    async def post(session, index: int, body):
        async with gate:
            sent = time.monotonic()
            if isinstance(body, (bytes, str)):
                request = session.post(url, data=body, headers=token | {"Content-Type": "text/plain; charset=utf-8"})
            else:
                request = session.post(url, data=json.dumps(body), headers=token | {"Content-Type": "application/json"})
            try:
                async with request as response:
                    content = await response.read()
                replies[index] = Reply(response.status, dict(response.headers), content, sent, time.monotonic())
            except (aiohttp.ClientError, asyncio.TimeoutError) as error:  # counted as lost, not raised
                replies[index] = Reply(LOST, {}, repr(error).encode(), sent, time.monotonic())
            if on_reply is not None:
                on_reply(index, replies[index])

    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=timeout)) as session:
        await asyncio.gather(*(post(session, i, body) for i, body in enumerate(bodies)))
    return replies


def post_all(server: ts.Server, model: str, bodies: list, *, concurrency: int, **options) -> list[Reply]:
    return asyncio.run(post_many(server, model, bodies, concurrency=concurrency, **options))
