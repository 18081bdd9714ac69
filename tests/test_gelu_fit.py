"""The float16/bfloat16 GELU of csrc/cuda/gelu.cuh, its coefficients read from the header and its float32
arithmetic replayed on the CPU, against the exact GELU: the error bounds the header states."""

import importlib.util
import re
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


def load_fit_script():
    spec = importlib.util.spec_from_file_location("fit_gelu", ROOT / "scripts" / "fit_gelu.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def header_coefficients() -> np.ndarray:
    """The polynomial's coefficients, lowest degree first, as the kernel evaluates them."""
    source = (ROOT / "csrc" / "cuda" / "gelu.cuh").read_text()
    body = source[source.index("gelu_erf_low_precision"):]
    leading = re.search(r"float p = ([-0-9.e]+)f;", body).group(1)
    rest = re.findall(r"p = fmaf\(p, u, ([-0-9.e]+)f\);", body)
    return np.array([float(v) for v in [leading, *rest]][::-1], dtype=np.float32)


def test_header_polynomial_meets_its_stated_bounds():
    fit = load_fit_script()
    coefficients = header_coefficients()
    assert len(coefficients) == 8
    report = fit.error_report(coefficients)
    assert report["max_float16_ulps_within_4"] < 0.02
    assert report["max_abs"] < 2.1e-6


def test_error_report_catches_a_wrong_coefficient():
    fit = load_fit_script()
    coefficients = header_coefficients()
    coefficients[1] *= 1.001
    assert fit.error_report(coefficients)["max_float16_ulps_within_4"] > 0.02


@pytest.mark.parametrize("x", [0.0, 1.0, -1.0, 3.0, -3.0, 20.0, -20.0])
def test_replayed_arithmetic_matches_gelu_at_points(x):
    import math

    fit = load_fit_script()
    got = float(fit.evaluate(header_coefficients(), np.array([x]))[0])
    exact = x * 0.5 * math.erfc(-x / math.sqrt(2))
    assert got == pytest.approx(exact, abs=2.1e-6)
