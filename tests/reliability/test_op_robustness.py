"""The fused op under threads and malformed calls (no server)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

OP_FUZZ = Path(__file__).with_name("op_fuzz.py")
THREADS = 4
# The same batch through the same weights in another thread: only the GEMMs' split over that thread's
# OpenMP team may change the rounding.
ATOL = 1e-6


def test_malformed_op_calls_raise_runtime_error_and_never_crash():
    # In its own process: a segfault or abort shows as a negative return code instead of killing pytest.
    result = subprocess.run([sys.executable, str(OP_FUZZ), "200"], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, f"exit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    assert "each refused with RuntimeError" in result.stdout


def test_one_fused_model_called_from_several_threads_gives_each_its_own_answer(minilm_path, minilm_tokenizer):
    import fusedbert
    from fusedbert.tasks import load_model

    model = fusedbert.fuse(load_model("feature_extraction", str(minilm_path)))
    texts = [f"Thread-safe request {i} " + "with more words " * (i % 7) for i in range(24)]
    batches = [minilm_tokenizer(texts[i::6], padding=True, return_tensors="pt") for i in range(6)]

    def run(batch):
        with torch.inference_mode():
            return model(**batch).last_hidden_state * batch["attention_mask"][..., None]

    alone = [run(batch) for batch in batches]
    with ThreadPoolExecutor(THREADS) as pool:
        rounds = [list(pool.map(run, batches)) for _ in range(5)]
    for outputs in rounds:
        for output, expected in zip(outputs, alone):
            assert (output - expected).abs().max().item() <= ATOL
