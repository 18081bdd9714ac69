"""One TorchServe for the reliability tests: the feature-extraction archive built by scripts/build_mar.py,
and variants of it registered through the management API (see torchserve_support.py)."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:  # handler_support, for the tests that run the handler without a server
    sys.path.insert(0, str(TESTS_DIR))

from torchserve_support import (ARCHIVE, BATCH_SIZE, EMBEDDER, MAX_BATCH_DELAY_MS, QA,  # noqa: E402
                                config_with_model_api, derive_model_dir, integration, register, ts, unpack_archive)


@pytest.fixture(scope="session")
def reliability_store(tmp_path_factory) -> Path:
    """A model store with the built archive, its unpacked copy, and a question-answering variant."""
    # tests/integration's check (skip without TorchServe or Java 11+), here only for the tests that serve.
    integration.torchserve_installed.__wrapped__()
    root = tmp_path_factory.mktemp("reliability")
    store, work = root / "model_store", root / "work"
    status = integration.build_mar.main([ARCHIVE, "--export-path", str(store), "--work-dir", str(work),
                                         "--keep-work-dir", "--device", "cpu"])
    assert status == 0, f"scripts/build_mar.py {ARCHIVE} failed"
    unpack_archive(store / f"{ARCHIVE}.mar", store / EMBEDDER)
    derive_model_dir(store / EMBEDDER, store / QA,
                     setup={"mode": "question_answering", "save_mode": "pretrained", "doc_stride": 32,
                            "max_answer_len": 30, "normalize": None},
                     files={"model.safetensors": work / "checkpoint" / "model.safetensors"})
    return store


@pytest.fixture(scope="session")
def server(reliability_store, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("torchserve")
    config = config_with_model_api(run_dir.parent / "reliability.properties")
    with integration.running_torchserve(reliability_store, {ARCHIVE: f"{ARCHIVE}.mar"}, run_dir,
                                        config=config) as started:
        for name in (EMBEDDER, QA):
            reply = register(started, name, name, batch_size=BATCH_SIZE, max_batch_delay=MAX_BATCH_DELAY_MS)
            assert reply.status == 200, f"{name}: {reply.body[:300]}\n{ts.log_tail(started)}"
        yield started


@pytest.fixture(autouse=True)
def long_tests_only_when_asked(request):
    """Tests marked slow (the 10,000-request soak) run under ``-m slow`` or with FUSEDBERT_SLOW=1; the
    default run takes their short forms."""
    if request.node.get_closest_marker("slow") is None:
        return
    if "slow" not in (request.config.getoption("markexpr") or "") and os.environ.get("FUSEDBERT_SLOW") != "1":
        pytest.skip("long form: run with -m slow or FUSEDBERT_SLOW=1")
