"""Fits the polynomial behind csrc/cuda/gelu.cuh's GELU and reports its error; prints the C++ lines.

gelu(x) = x * Phi(x) = x / (1 + exp(-logit(Phi(x)))). logit(Phi(x)) / x is even, so it is fitted as a
polynomial in u = x^2 on [0, BOUND], by least squares reweighted towards the largest error measured in
float16 ulps of the exact GELU (both signs of x), and the coefficients are scaled by -log2(e) for ex2.

    python scripts/fit_gelu.py            # degree 7, as the kernel uses
    python scripts/fit_gelu.py --degree 6
"""

from __future__ import annotations

import argparse

import numpy as np
import torch

BOUND = 5.5  # Phi(-5.5) = 1.9e-8: past it the argument is clamped


def ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.ndtr(torch.from_numpy(x)).numpy()


def log_ndtr(x: np.ndarray) -> np.ndarray:
    return torch.special.log_ndtr(torch.from_numpy(x)).numpy()


def float16_ulp(values: np.ndarray) -> np.ndarray:
    """The spacing of float16 values at |values| (the subnormal spacing below 2^-14)."""
    exponent = np.floor(np.log2(np.maximum(np.abs(values), 2.0**-14)))
    return 2.0 ** (exponent - 10)


def fit(degree: int, rounds: int = 200) -> np.ndarray:
    x = np.linspace(1e-4, BOUND, 400_001)
    target = (log_ndtr(x) - log_ndtr(-x)) / x  # logit(Phi(x)) / x, exactly
    exact_pos, exact_neg = x * ndtr(x), -x * ndtr(-x)
    weights = np.ones_like(x)
    best_error, best = np.inf, None
    for _ in range(rounds):
        coefficients = np.polynomial.polynomial.polyfit(x * x, target, degree, w=weights)
        logit = x * np.polynomial.polynomial.polyval(x * x, coefficients)
        error = np.maximum(np.abs(x / (1 + np.exp(-logit)) - exact_pos) / float16_ulp(exact_pos),
                           np.abs(-x / (1 + np.exp(logit)) - exact_neg) / float16_ulp(exact_neg))
        if error.max() < best_error:
            best_error, best = error.max(), coefficients
        weights = weights * (1 + 5 * error / error.max())
        weights /= weights.max()
    return (best * -np.log2(np.e)).astype(np.float32)


def evaluate(coefficients: np.ndarray, x: np.ndarray) -> np.ndarray:
    """The kernel's arithmetic in float32: Horner by fused multiply-adds (a float32 product is exact in
    float64, so each step rounds once), then x / (1 + 2^(x p)). The hardware's ex2 and reciprocal
    approximations (about 2 float32 ulps) are not modelled: 1e-7 relative, far below the bounds."""
    x = x.astype(np.float32)
    clamped = np.clip(x, -BOUND, BOUND)
    u = (clamped * clamped).astype(np.float64)
    p = np.float64(coefficients[-1])
    for c in coefficients[-2::-1]:
        p = (p * u + np.float64(c)).astype(np.float32).astype(np.float64)
    e = np.exp2((clamped * p.astype(np.float32)).astype(np.float64)).astype(np.float32)
    return (x / (np.float32(1) + e)).astype(np.float64)


def error_report(coefficients: np.ndarray) -> dict[str, float]:
    x = np.linspace(-12, 12, 2_400_001)
    exact = x * ndtr(x)
    error = np.abs(evaluate(coefficients, x) - exact)
    core = np.abs(x) < 4
    return {"max_float16_ulps_within_4": float((error / float16_ulp(exact))[core].max()),
            "max_abs": float(error.max())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--degree", type=int, default=7)
    coefficients = fit(parser.parse_args().degree)
    print(error_report(coefficients))
    print(f"  float p = {float(coefficients[-1])!r}f;")
    for c in coefficients[-2::-1]:
        print(f"  p = fmaf(p, u, {float(c)!r}f);")


if __name__ == "__main__":
    main()
