"""Real TorchServe (Java frontend + Python workers) on loopback, with archives built by scripts/build_mar.py.

One server with token auth on serves every mode for the whole session; each instance lives in its own
temporary run directory (config, key file, logs, pid), and teardown stops only that instance.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT / "scripts"))

import build_mar  # noqa: E402
import torchserve_control as ts  # noqa: E402

# configs/ folder -> what the session's archives exercise: the fused pretrained path (with captum)
# for sequence classification, the fused TorchScript path for the others.
ARCHIVES = ("sequence_classification_captum", "question_answering", "ner", "feature_extraction")
READY_TIMEOUT_S = 240
JAVA = shutil.which("java")


def _java_major() -> int | None:
    if JAVA is None:
        return None
    banner = subprocess.run([JAVA, "-version"], capture_output=True, text=True, timeout=30).stderr
    quoted = banner.split('"')[1] if '"' in banner else ""
    return int(quoted.split(".")[0]) if quoted.split(".")[0].isdigit() else None


@pytest.fixture(scope="session", autouse=True)
def torchserve_installed():
    if shutil.which("torchserve", path=str(Path(sys.executable).parent)) is None and shutil.which("torchserve") is None:
        pytest.skip("TorchServe is not installed (pip install torchserve torch-model-archiver)")
    major = _java_major()
    if major is None or major < 11:
        pytest.skip(f"TorchServe's frontend needs Java 11+ (found {major}); apt-get install openjdk-17-jre-headless")


@contextmanager
def running_torchserve(model_store: Path, models: dict[str, str], run_dir: Path, **start_options):
    """A started, READY TorchServe; stopped on exit whatever happened inside."""
    run_dir.mkdir(parents=True, exist_ok=True)
    try:
        server = ts.start(model_store, models, run_dir=run_dir, ports=ts.loopback_ports(), log=lambda *_: None,
                          **start_options)
        ts.wait_until_ready(server, timeout=READY_TIMEOUT_S, log=lambda *_: None)
        yield server
    finally:
        if (run_dir / "server.json").is_file():
            ts.stop(run_dir)


@pytest.fixture(scope="session")
def archives(tmp_path_factory) -> dict[str, Path]:
    """configs/ folder name -> its checkpoint directory (the weights inside the archive); archives in
    ``<archives>/model_store``."""
    root = tmp_path_factory.mktemp("archives")
    checkpoints = {}
    for name in ARCHIVES:
        work = root / "work" / name
        status = build_mar.main([name, "--export-path", str(root / "model_store"), "--work-dir", str(work),
                                 "--keep-work-dir", "--device", "cpu"])
        assert status == 0, f"scripts/build_mar.py {name} failed"
        checkpoints[name] = work / "checkpoint"
    return checkpoints


@pytest.fixture(scope="session")
def model_store(archives) -> Path:
    return next(iter(archives.values())).parents[2] / "model_store"


@pytest.fixture(scope="session")
def server(model_store, tmp_path_factory):
    models = {name: f"{name}.mar" for name in ARCHIVES}
    with running_torchserve(model_store, models, tmp_path_factory.mktemp("torchserve")) as started:
        yield started
