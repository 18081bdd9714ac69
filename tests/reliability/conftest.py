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

from torchserve_support import config_with_model_api, derive_model_dir, integration, register, ts, unpack_archive  # noqa: E402

# The batch-forming settings of the models under test: up to 16 requests wait at most 300 ms for each
# other, long enough that requests sent together share a batch on a busy machine.
BATCH_SIZE = 16
MAX_BATCH_DELAY_MS = 300
ARCHIVE = "feature_extraction"  # served from the .mar as built: the model that must keep serving
EMBEDDER = "embedder"  # the same archive unpacked, with the batch settings above
QA = "qa"  # question answering from the same checkpoint, save_mode pretrained


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
