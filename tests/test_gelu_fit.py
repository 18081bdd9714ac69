"""The GELUs of csrc/cuda/gelu.cuh, their coefficients read from the header and their float32 arithmetic
replayed on the CPU, against the exact GELU: the error bounds the header states."""

import math

import numpy as np
import pytest

from gelu_fit_support import header_coefficients, load_fit_script

# function: (polynomial degree, float16 ulps within |x| < 4, absolute error anywhere), as gelu.cuh states them.
BOUNDS = {"gelu_erf_fit": (5, 0.14, 1.4e-5)}


@pytest.mark.parametrize("function", BOUNDS)
def test_header_polynomial_meets_its_stated_bounds(function):
    degree, ulps, absolute = BOUNDS[function]
    coefficients = header_coefficients(function)
    assert len(coefficients) == degree + 1
    report = load_fit_script().error_report(coefficients)
    assert report["max_float16_ulps_within_4"] < ulps
    assert report["max_abs"] < absolute
    assert report["decreasing_past_bound"]


@pytest.mark.parametrize("function", BOUNDS)
def test_error_report_catches_a_wrong_coefficient(function):
    coefficients = header_coefficients(function)
    coefficients[1] *= 1.001
    assert load_fit_script().error_report(coefficients)["max_float16_ulps_within_4"] > BOUNDS[function][1]


def test_error_report_catches_a_polynomial_that_turns_up_past_the_fit():
    coefficients = header_coefficients("gelu_erf_fit")
    coefficients[-1] = -coefficients[-1]
    assert not load_fit_script().error_report(coefficients)["decreasing_past_bound"]


@pytest.mark.parametrize("function", BOUNDS)
@pytest.mark.parametrize("x", [0.0, 1.0, -1.0, 3.0, -3.0, 20.0, -20.0])
def test_replayed_arithmetic_matches_gelu_at_points(function, x):
    got = float(load_fit_script().evaluate(header_coefficients(function), np.array([x]))[0])
    exact = x * 0.5 * math.erfc(-x / math.sqrt(2))
    assert got == pytest.approx(exact, abs=BOUNDS[function][2])
