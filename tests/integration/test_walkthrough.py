"""The README's manual sequence (the original TorchServe example's commands, with this repository's
paths), run verbatim in bash from a scratch directory that links to the repository's folders.

Only the environment differs from a user's shell: TMPDIR and TEMP point into the scratch directory, so
`torchserve --stop` finds this test's pid file and no other; TS_CONFIG_FILE moves ports 8080-8082 to
free ones (the `curl` lines get the same ports). The frontend is stopped in teardown whatever happens.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import torchserve_control as ts

REPO_ROOT = Path(__file__).resolve().parents[2]
DOC = REPO_ROOT / "README.md"
LINKED = ("artifacts", "configs", "handler", "scripts", "trace", "fusedbert")
DEFAULT_PORTS = {"inference": 8080, "management": 8081, "metrics": 8082}
COMMAND_TIMEOUT_S = 300


def walkthrough_commands() -> list[str]:
    text = DOC.read_text()
    block = text.split("<!-- walkthrough:begin -->", 1)[1].split("<!-- walkthrough:end -->", 1)[0]
    body = block.split("```bash\n", 1)[1].split("```", 1)[0]
    return [line for line in body.splitlines() if line.strip()]


@pytest.fixture
def scratch(tmp_path) -> Path:
    for name in LINKED:
        (tmp_path / name).symlink_to(REPO_ROOT / name)
    (tmp_path / "tmp").mkdir()
    return tmp_path


def test_the_documented_manual_sequence_serves_classification_and_qa(scratch):
    ports = ts.loopback_ports()
    config = scratch / "ports.properties"
    ts.write_run_config(ts.SHIPPED_CONFIG, config, ports)
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
               TMPDIR=str(scratch / "tmp"), TEMP=str(scratch / "tmp"), TS_CONFIG_FILE=str(config))
    to_free_port = {str(DEFAULT_PORTS[api]): str(ports[api]) for api in DEFAULT_PORTS}

    frontend = None
    replies = []
    try:
        for step, command in enumerate(walkthrough_commands()):
            command = re.sub(r"127\.0\.0\.1:(808[0-2])", lambda m: f"127.0.0.1:{to_free_port[m.group(1)]}", command)
            # Output to files, not pipes, one pair per step: the frontend `torchserve --start` spawns
            # inherits them and keeps writing for as long as it runs.
            output, errors = scratch / f"step{step}.stdout", scratch / f"step{step}.stderr"
            with output.open("w") as stdout, errors.open("w") as stderr:
                status = subprocess.run(["bash", "-c", command], cwd=scratch, env=env, stdin=subprocess.DEVNULL,
                                        stdout=stdout, stderr=stderr, timeout=COMMAND_TIMEOUT_S).returncode
            assert status == 0, f"$ {command}\n{output.read_text()}\n{errors.read_text()}"
            if command.startswith("torchserve --start"):
                frontend = _started_frontend(scratch, config, ports, errors)
            elif command.startswith("curl"):
                replies.append(json.loads(output.read_text()))
            elif command.startswith("torchserve --stop"):
                _, alive = psutil.wait_procs([frontend], timeout=60)
                assert not alive, "torchserve --stop left the frontend running"
    finally:
        frontend = frontend or _frontend_of_this_test(scratch, config)
        if frontend is not None and frontend.is_running():
            children = frontend.children(recursive=True)
            frontend.terminate()
            _, alive = psutil.wait_procs([frontend, *children], timeout=30)
            for process in alive:
                process.kill()

    labels = set(json.loads((REPO_ROOT / "artifacts" / "index_to_name.json").read_text()).values())
    classification, qa = replies
    assert classification["label"] in labels and set(classification["scores"]) == labels
    context = json.loads((REPO_ROOT / "artifacts" / "sample_question_answering.json").read_text())["context"]
    assert qa["answer"] and context[qa["start"]:qa["end"]] == qa["answer"]


def _frontend_of_this_test(scratch: Path, config: Path) -> psutil.Process | None:
    """The frontend `torchserve --start` spawned here: the pid in this test's TMPDIR, running our config."""
    pid_file = scratch / "tmp" / ".model_server.pid"
    if not pid_file.is_file():
        return None
    try:
        process = psutil.Process(int(pid_file.read_text()))
        return process if str(config) in process.cmdline() else None
    except psutil.Error:
        return None


def _started_frontend(scratch: Path, config: Path, ports: dict[str, int], stderr: Path) -> psutil.Process:
    """The frontend, once its models are READY: the documented curl calls come after that wait.

    ``stderr`` is the file the frontend inherited from `torchserve --start`; its exceptions go there.
    """
    frontend = _frontend_of_this_test(scratch, config)
    assert frontend is not None, "torchserve --start left no running frontend"
    urls = {api: f"http://127.0.0.1:{ports[api]}" for api in DEFAULT_PORTS}
    server = ts.Server(run_dir=str(scratch), pid=frontend.pid, urls=urls, models=["my_tc", "my_qa"],
                       config=str(config), token_auth=False)
    try:
        ts.wait_until_ready(server, timeout=240, log=lambda *_: None)
    except ts.ServeError as error:
        pytest.fail(f"{error}\n--- frontend stderr\n{stderr.read_text()}")
    return frontend
