"""Fits the polynomial behind csrc/cuda/gelu.cuh's GELU and reports its error; prints the C++ lines.

gelu(x) = x * Phi(x). With s = |x| and t = Phi(-s), gelu(x) = max(x, 0) - s * t for either sign of x:
x - x * Phi(-x) for x > 0 and x * Phi(x) for x < 0. log2(Phi(-s)) is smooth and decreasing on s >= 0,
so it is fitted as a polynomial in s on [0, BOUND], by least squares reweighted towards the largest error
measured in float16 ulps of the exact GELU (both signs of x); the kernel then takes one ex2 and no
division, and neither branch cancels (t <= 1/2).

    python scripts/fit_gelu.py              # degree 5: gelu_erf_fit
    python scripts/fit_gelu.py --degree 7   # 0.006 of a float16 ulp, at two more FMAs an element
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

BOUND = 5.0  # Phi(-5) = 2.9e-7; past it the polynomial keeps decreasing and t goes to 0 (error_report checks)


def ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(x)).numpy()


def log_ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.log_ndtr(torch.from_numpy(x)).numpy()


def float16_ulp(values: np.ndarray) -> np.ndarray:
    """The spacing of float16 values at |values| (the subnormal spacing below 2^-14)."""
    exponent = np.floor(np.log2(np.maximum(np.abs(values), 2.0**-14)))
    return 2.0 ** (exponent - 10)


def fit(degree: int, rounds: int = 300) -> np.ndarray:
    s = np.linspace(0, BOUND, 200_001)
    target = log_ndtr(-s) / np.log(2)  # log2(Phi(-s)), exactly
    exact_pos, exact_neg = s * ndtr(s), -s * ndtr(-s)
    weights = np.ones_like(s)
    best_error, best = np.inf, None
    for _ in range(rounds):
        coefficients = np.polynomial.polynomial.polyfit(s, target, degree, w=weights)
        tail = s * np.exp2(np.polynomial.polynomial.polyval(s, coefficients))  # s * t
        error = np.maximum(np.abs(s - tail - exact_pos) / float16_ulp(exact_pos),
                           np.abs(-tail - exact_neg) / float16_ulp(exact_neg))
        if error.max() < best_error:
            best_error, best = error.max(), coefficients
        weights = weights * (1 + 5 * error / error.max())
        weights /= weights.max()
    return best.astype(np.float32)


def evaluate(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in float32: Horner by fused multiply-adds (a float32 product is exact in
    float64, so each step rounds once), t = 2^p (flushed to 0 below float32's normal range, as ex2.ftz
    does), then max(x, 0) - s * t in one fused multiply-add. The hardware's ex2 approximation (about 2
    float32 ulps) is not modelled: 1e-7 relative, far below the bounds."""
    x = x.astype(np.float32)
    s = np.abs(x).astype(np.float64)
    p = np.float64(coefficients[-1])
    for c in coefficients[-2::-1]:
        p = (p * s + np.float64(c)).astype(np.float32).astype(np.float64)
    with np.errstate(under="ignore", over="ignore"):  # a polynomial that turns up overflows as ex2 does
        t = np.exp2(p).astype(np.float32)
        t = np.where(t < np.finfo(np.float32).tiny, np.float32(0), t).astype(np.float64)
        return (np.maximum(x, 0).astype(np.float64) - s * t).astype(np.float32).astype(np.float64)


def error_report(coefficients: np.ndarray) -> dict[str, float]:
    x = np.linspace(-30, 30, 6_000_001)
    exact = x * ndtr(x)
    error = np.abs(evaluate(coefficients, x) - exact)
    core = np.abs(x) < 4
    # Past the fit, t must keep falling towards 0 (else the negative tail would grow back).
    tail = np.polynomial.polynomial.polyval(np.linspace(BOUND, 1e3, 100_001), coefficients.astype(np.float64))
    return {"max_float16_ulps_within_4": float((error / float16_ulp(exact))[core].max()),
            "max_abs": float(error.max()),
            "decreasing_past_bound": bool(np.all(np.diff(tail) < 0))}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--degree", type=int, default=5)
    coefficients = fit(parser.parse_args().degree)
    print(error_report(coefficients))
    print("  constexpr float kFit[] = {" + ", ".join(f"{float(c)!r}f" for c in coefficients[::-1]) + "};")


if __name__ == "__main__":
    main()
