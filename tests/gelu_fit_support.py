"""csrc/cuda/gelu.cuh's GELUs as the CPU can replay them: the fit script (scripts/fit_gelu.py) and each
function's coefficients read from the header."""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def load_fit_script():
    spec = importlib.util.spec_from_file_location("fit_gelu", ROOT / "scripts" / "fit_gelu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def header_coefficients(function: str) -> np.ndarray:
    """`function`'s polynomial coefficients, lowest degree first, as the kernel evaluates them."""
    source = (ROOT / "csrc" / "cuda" / "gelu.cuh").read_text()
    start = source.index(f"float {function}(float x)")
    body = source[start:source.index("\n}\n", start)]
    listed = re.search(r"kFit\[\] = \{([^}]*)\}", body).group(1)  # highest degree first
    return np.array([float(v.strip().rstrip("f")) for v in listed.split(",")][::-1], dtype=np.float32)
