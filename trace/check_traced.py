"""Check a traced model file against expected outputs, in a process that needs nothing but torch.

    python check_traced.py MODEL_FILE CASES_FILE --atol 1e-4 [--library libfusedbert.so] [--device cpu]

MODEL_FILE is TorchScript (``.pt``) or a ``torch.export`` program (``.pt2``). CASES_FILE is a
``torch.save``d list of cases, each ``{"inputs": [input_ids, attention_mask, token_type_ids],
"expected": [output, ...], "token_level": bool}``; token-level outputs are compared on real tokens only.
The last line printed is a JSON report; the exit status is 1 when a difference exceeds ``--atol``.
This file imports only torch: it is how a TorchServe worker without the fusedbert package sees the model.
"""

from __future__ import annotations

import argparse
import json
import sys

import torch


def max_abs_diff(outputs, expected, attention_mask: torch.Tensor, token_level: bool) -> float:
    """The largest |output - expected| over all outputs, on real tokens only where ``token_level``."""
    if len(outputs) != len(expected):
        raise ValueError(f"the model returned {len(outputs)} outputs; expected {len(expected)}")
    worst = 0.0
    for out, ref in zip(outputs, expected):
        out, ref = out.detach().to("cpu", torch.float32), ref.detach().to("cpu", torch.float32)
        if out.shape != ref.shape:
            raise ValueError(f"output shape {tuple(out.shape)} != expected {tuple(ref.shape)}")
        diff = (out - ref).abs()
        if token_level:
            diff = diff[attention_mask.to("cpu").bool()]
        worst = max(worst, diff.max().item())
    return worst


def load_model_file(path: str, device: str):
    if path.endswith(".pt2"):
        return torch.export.load(path).module()
    return torch.jit.load(path, map_location=device).eval()


def run_cases(model, cases, device: str) -> list[float]:
    diffs = []
    with torch.no_grad():
        for case in cases:
            inputs = [t.to(device) for t in case["inputs"]]
            outputs = model(*inputs)
            diffs.append(max_abs_diff(outputs, case["expected"], inputs[1], case["token_level"]))
    return diffs


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("model_file")
    parser.add_argument("cases_file")
    parser.add_argument("--atol", type=float, required=True)
    parser.add_argument("--library", help="the op library to load first (torch.ops.load_library)")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args(argv)
    if args.library:
        torch.ops.load_library(args.library)
    model = load_model_file(args.model_file, args.device)
    cases = torch.load(args.cases_file, weights_only=True)
    diffs = run_cases(model, cases, args.device)
    report = {
        "max_diff": max(diffs),
        "per_case": diffs,
        "shapes": [list(case["inputs"][0].shape) for case in cases],
        "fusedbert_imported": "fusedbert" in sys.modules,
    }
    print(json.dumps(report))
    return 0 if report["max_diff"] <= args.atol else 1


if __name__ == "__main__":
    sys.exit(main())
