"""Start, watch, call and stop one TorchServe instance that belongs to a run directory.

TorchServe's own CLI keeps its pid in ``$TMPDIR/.model_server.pid`` and writes ``key_file.json`` and
``logs/`` into its working directory, so two instances on one host trample each other and
``torchserve --stop`` stops whichever one wrote the pid file last. Here every instance lives in its
own run directory:

    <run_dir>/config.properties   the configuration it runs with (ports filled in)
    <run_dir>/key_file.json       its tokens (TorchServe writes it into its working directory)
    <run_dir>/logs/               ts_log.log, model_log.log, access and metrics logs
    <run_dir>/tmp/                TMPDIR and java.io.tmpdir: the pid file, worker sockets, unpacked .mars
    <run_dir>/server.json         what query.py and stop.py need: pid, URLs, model names

and ``stop`` ends only the process recorded there, after checking that it is that instance.
Standard library plus psutil (a TorchServe dependency): no HTTP client package needed.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psutil

REPO_ROOT = Path(__file__).resolve().parent.parent
SHIPPED_CONFIG = REPO_ROOT / "configs" / "config.properties"
DEFAULT_RUN_DIR = Path(".torchserve")
FRONTEND_CLASS = "org.pytorch.serve.ModelServer"
ADDRESS_KEYS = {"inference": "inference_address", "management": "management_address", "metrics": "metrics_address"}
GRPC_PORT_KEYS = ("grpc_inference_port", "grpc_management_port")


class ServeError(RuntimeError):
    """TorchServe did not start, did not load a model in time, or answered an unexpected status."""


@dataclass
class Server:
    """A TorchServe instance started by ``start``; saved as ``<run_dir>/server.json``."""

    run_dir: str
    pid: int
    urls: dict[str, str]
    models: list[str]
    config: str
    token_auth: bool = True
    started_at: float = field(default_factory=time.time)

    @property
    def key_file(self) -> Path:
        return Path(self.run_dir) / "key_file.json"

    def key(self, api: str) -> str | None:
        """The current token for ``api`` ("inference" or "management"); None when token auth is off."""
        if not self.token_auth:
            return None
        return json.loads(self.key_file.read_text())[api]["key"]

    def save(self) -> None:
        (Path(self.run_dir) / "server.json").write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, run_dir: str | Path) -> "Server":
        state = Path(run_dir) / "server.json"
        if not state.is_file():
            raise ServeError(f"no TorchServe started from {run_dir} ({state} is missing); start one with scripts/serve.py")
        return cls(**json.loads(state.read_text()))

    def call(self, api: str, method: str, path: str, body: bytes | None = None, *,
             content_type: str = "application/octet-stream", timeout: float = 120.0) -> "Response":
        """An HTTP request to this server's ``api`` with that API's token."""
        return http_request(method, self.urls[api] + path, body, token=self.key(api) if api != "metrics" else None,
                            content_type=content_type, timeout=timeout)


@dataclass
class Response:
    status: int
    body: bytes

    def json(self):
        return json.loads(self.body)


def http_request(method: str, url: str, body: bytes | None = None, *, token: str | None = None,
                 content_type: str = "application/octet-stream", timeout: float = 120.0) -> Response:
    """One request; any HTTP status comes back as a Response (only network failures raise)."""
    headers = {"Content-Type": content_type} if body is not None else {}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(url, data=body, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as reply:
            return Response(reply.status, reply.read())
    except urllib.error.HTTPError as error:
        return Response(error.code, error.read())


def read_properties(path: Path) -> dict[str, str]:
    properties = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            properties[key.strip()] = value.strip()
    return properties


def write_run_config(source: Path, destination: Path, ports: dict[str, int] | None) -> dict[str, str]:
    """Copy ``source`` to ``destination``, moving the HTTP endpoints to 127.0.0.1:<port> for the APIs in
    ``ports`` (and the gRPC ports too, so parallel instances never collide); return the HTTP URLs."""
    lines = source.read_text().splitlines()
    overrides = {}
    for api, port in (ports or {}).items():
        if api in ADDRESS_KEYS:
            overrides[ADDRESS_KEYS[api]] = f"http://127.0.0.1:{port}"
        elif api in GRPC_PORT_KEYS:
            overrides[api] = str(port)
        else:
            raise ValueError(f"unknown port name {api!r}; expected one of {[*ADDRESS_KEYS, *GRPC_PORT_KEYS]}")
    written = set()
    for i, line in enumerate(lines):
        key = line.split("=", 1)[0].strip()
        if key in overrides and not line.lstrip().startswith("#"):
            lines[i] = f"{key}={overrides[key]}"
            written.add(key)
    lines += [f"{key}={value}" for key, value in overrides.items() if key not in written]
    destination.write_text("\n".join(lines) + "\n")
    properties = read_properties(destination)
    return {api: properties.get(key, _default_address(api)) for api, key in ADDRESS_KEYS.items()}


def _default_address(api: str) -> str:
    return {"inference": "http://127.0.0.1:8080", "management": "http://127.0.0.1:8081",
            "metrics": "http://127.0.0.1:8082"}[api]


def loopback_ports() -> dict[str, int]:
    """Free loopback ports for every endpoint of one instance (tests, parallel runs), all different.

    Every probe stays bound until all ports are chosen: a probe closed at once frees its port for the
    next bind to 0, and two endpoints on one port make TorchServe stop when it binds the second.
    """
    with contextlib.ExitStack() as probes:
        ports = {}
        for name in (*ADDRESS_KEYS, *GRPC_PORT_KEYS):
            probe = probes.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            probe.bind(("127.0.0.1", 0))
            ports[name] = probe.getsockname()[1]
    return ports


def start(model_store: str | Path, models: dict[str, str], *, run_dir: str | Path = DEFAULT_RUN_DIR,
          config: str | Path = SHIPPED_CONFIG, ports: dict[str, int] | None = None,
          extra_args: tuple[str, ...] = (), log=print) -> Server:
    """Start TorchServe in the background with ``models`` (name -> .mar in ``model_store``) loaded.

    Returns once the frontend process is running; call ``wait_until_ready`` next. ``extra_args`` go to
    ``torchserve --start`` as they are (e.g. ``--disable-token-auth``).
    """
    run_dir = Path(run_dir).resolve()
    model_store = Path(model_store).resolve()
    for name, mar in models.items():
        if not (model_store / mar).is_file():
            raise ServeError(f"model {name!r}: {model_store / mar} does not exist; build it with scripts/build_mar.py")
    if (run_dir / "server.json").is_file():
        previous = Server.load(run_dir)
        if _frontend_process(previous) is not None:
            raise ServeError(f"TorchServe (pid {previous.pid}) already runs from {run_dir}; "
                             f"stop it first: python scripts/stop.py --run-dir {run_dir}")
    for stale in ("key_file.json", "server.json"):
        (run_dir / stale).unlink(missing_ok=True)
    shutil.rmtree(run_dir / "tmp", ignore_errors=True)
    (run_dir / "tmp").mkdir(parents=True)
    run_config = run_dir / "config.properties"
    urls = write_run_config(Path(config), run_config, ports)

    env = dict(os.environ, TMPDIR=str(run_dir / "tmp"), TEMP=str(run_dir / "tmp"),
               LOG_LOCATION=str(run_dir / "logs"), METRICS_LOCATION=str(run_dir / "logs"))
    command = [_torchserve_executable(), "--start", "--ncs", "--ts-config", str(run_config),
               "--model-store", str(model_store),
               "--models", *(f"{name}={mar}" for name, mar in models.items()), *extra_args]
    log(f"$ {' '.join(command)}")
    # The CLI spawns the Java frontend, records its pid in $TMPDIR/.model_server.pid and returns. The
    # frontend inherits the CLI's stdout, so that goes to a file: a pipe would stay open as long as it runs.
    (run_dir / "logs").mkdir(exist_ok=True)
    console = run_dir / "logs" / "console.log"
    with console.open("w") as console_file:
        launcher = subprocess.run(command, cwd=run_dir, env=env, stdin=subprocess.DEVNULL, stdout=console_file,
                                  stderr=subprocess.STDOUT, timeout=60)
    pid_file = run_dir / "tmp" / ".model_server.pid"
    if launcher.returncode != 0 or not pid_file.is_file():
        raise ServeError(f"torchserve --start failed (exit {launcher.returncode}):\n{console.read_text()}")
    token_auth = ("--disable-token-auth" not in extra_args
                  and read_properties(run_config).get("disable_token_authorization", "false") != "true")
    server = Server(run_dir=str(run_dir), pid=int(pid_file.read_text().strip()), urls=urls, models=list(models),
                    config=str(run_config), token_auth=token_auth)
    server.save()
    return server


def _torchserve_executable() -> str:
    beside_python = Path(sys.executable).with_name("torchserve")
    found = str(beside_python) if beside_python.is_file() else shutil.which("torchserve")
    if found is None:
        raise ServeError("the torchserve command is not installed; pip install torchserve torch-model-archiver")
    return found


def _frontend_process(server: Server) -> psutil.Process | None:
    """The Java frontend of ``server`` if it still runs: same pid, TorchServe's main class, our config."""
    try:
        process = psutil.Process(server.pid)
        command_line = process.cmdline()
    except psutil.Error:
        return None
    if FRONTEND_CLASS in command_line and server.config in command_line:
        return process
    return None


def wait_until_ready(server: Server, timeout: float = 240.0, log=print) -> dict[str, dict]:
    """Wait until every model of ``server`` has a READY worker; return their descriptions.

    Raises ServeError, with the end of the logs, when the frontend exits or ``timeout`` seconds pass.
    """
    deadline = time.monotonic() + timeout
    pending = list(server.models)
    described = {}
    while pending:
        if _frontend_process(server) is None:
            raise ServeError(f"TorchServe exited while loading {pending}\n{log_tail(server)}")
        if time.monotonic() > deadline:
            raise ServeError(f"models {pending} not READY after {timeout:.0f} s\n{log_tail(server)}")
        for name in list(pending):
            try:
                reply = server.call("management", "GET", f"/models/{name}", timeout=5)
            except (OSError, KeyError, ValueError):
                break  # frontend not listening yet, or key_file.json not written yet
            if reply.status == 200:
                description = reply.json()[0]
                if any(worker["status"] == "READY" for worker in description["workers"]):
                    described[name] = description
                    pending.remove(name)
                    log(f"  {name}: READY ({time.time() - server.started_at:.0f} s after start)")
        time.sleep(0.5)
    return described


def log_tail(server: Server, lines: int = 40) -> str:
    logs = Path(server.run_dir) / "logs"
    # The frontend's console (start() writes it) holds its log and what it printed before logging began;
    # a frontend started otherwise, as in the README's walkthrough, leaves only its log file.
    frontend = "console.log" if (logs / "console.log").is_file() else "ts_log.log"
    parts = []
    for name in (frontend, "model_log.log"):
        path = logs / name
        if path.is_file():
            tail = path.read_text(errors="replace").splitlines()[-lines:]
            parts.append(f"--- {path} (last {len(tail)} lines)\n" + "\n".join(tail))
    return "\n".join(parts) or f"(no logs in {server.run_dir}/logs)"


def stop(run_dir: str | Path = DEFAULT_RUN_DIR, timeout: float = 30.0) -> bool:
    """Stop the TorchServe started from ``run_dir`` and its workers; True if one was running.

    Only the process recorded in ``server.json`` is signalled, and only when it is still that
    TorchServe frontend (the pid may have been reused since).
    """
    server = Server.load(run_dir)
    frontend = _frontend_process(server)
    stopped = frontend is not None
    if frontend is not None:
        workers = frontend.children(recursive=True)
        frontend.terminate()  # SIGTERM runs the frontend's shutdown hook, which stops its workers
        _, alive = psutil.wait_procs([frontend, *workers], timeout=timeout)
        for process in alive:
            process.kill()
        psutil.wait_procs(alive, timeout=10)
    for leftover in ("server.json", "key_file.json", "tmp/.model_server.pid"):
        (Path(server.run_dir) / leftover).unlink(missing_ok=True)
    return stopped


def parse_model_args(values: list[str], model_store: Path) -> dict[str, str]:
    """``name=file.mar`` or ``file.mar`` (named after the file) -> {name: file}; none -> every .mar in the store."""
    if not values:
        found = sorted(model_store.glob("*.mar"))
        if not found:
            raise ServeError(f"no .mar files in {model_store}; build one with scripts/build_mar.py")
        return {path.stem: path.name for path in found}
    models = {}
    for value in values:
        name, _, mar = value.rpartition("=")
        if not re.fullmatch(r"[A-Za-z0-9][\w.-]*\.mar", mar):
            raise ServeError(f"--models {value!r}: expected NAME=FILE.mar or FILE.mar")
        models[name or mar[: -len(".mar")]] = mar
    return models
