"""Fuzz the op's argument checks: every malformed call must raise RuntimeError naming the problem.

Run as a script (``python op_fuzz.py [max_examples]``) by test_op_robustness.py, in a process of its own,
so that a crash in a kernel (a segfault, an abort) fails the test instead of the test run.
"""

from __future__ import annotations

import math
import sys

import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import fusedbert  # noqa: F401  (registers torch.ops.fusedbert)

HIDDEN, HEADS, INTERMEDIATE, PER_LAYER = 8, 2, 16, 12
# A tensor on another device than the others: only a second real device reaches the kernels' checks
# (a "meta" tensor would dispatch to the fake kernel, which only propagates shapes).
OTHER_DEVICE = "cuda" if torch.cuda.is_available() else None


def choices(*names: str, device: bool = True) -> st.SearchStrategy[str]:
    return st.sampled_from([*names, *(["device"] if device and OTHER_DEVICE else [])])


def valid_call(batch: int, seq_len: int, layers: int) -> dict:
    shapes = [(3 * HIDDEN, HIDDEN), (3 * HIDDEN,), (HIDDEN, HIDDEN), (HIDDEN,), (HIDDEN,), (HIDDEN,),
              (INTERMEDIATE, HIDDEN), (INTERMEDIATE,), (HIDDEN, INTERMEDIATE), (HIDDEN,), (HIDDEN,), (HIDDEN,)]
    return {"hidden": torch.randn(batch, seq_len, HIDDEN),
            "attention_mask": torch.ones(batch, seq_len, dtype=torch.long),
            "weights": [torch.randn(shape) * 0.1 for _ in range(layers) for shape in shapes],
            "num_heads": HEADS, "layer_norm_eps": 1e-12, "activation": "gelu", "remove_padding": True}


def call(arguments: dict) -> torch.Tensor:
    return torch.ops.fusedbert.encoder(*arguments.values())


def break_hidden(data, arguments):
    hidden = arguments["hidden"]
    choice = data.draw(choices("rank", "dtype", "float16_on_cpu", "empty_width"))
    if choice == "rank":
        rank = data.draw(st.sampled_from([0, 1, 2, 4]))
        arguments["hidden"] = torch.randn([2] * rank)
    elif choice == "dtype":
        arguments["hidden"] = hidden.to(data.draw(st.sampled_from([torch.float64, torch.int32, torch.int64,
                                                                     torch.bool, torch.complex64])))
    elif choice == "float16_on_cpu":
        arguments["hidden"] = hidden.half()
    elif choice == "empty_width":
        arguments["hidden"] = hidden[..., :0]
    else:
        arguments["hidden"] = hidden.to(OTHER_DEVICE)


def break_mask(data, arguments):
    mask = arguments["attention_mask"]
    choice = data.draw(choices("rank", "batch", "length", "dtype"))
    if choice == "rank":
        arguments["attention_mask"] = mask[0] if data.draw(st.booleans()) else mask[..., None]
    elif choice == "batch":
        arguments["attention_mask"] = torch.ones(mask.shape[0] + data.draw(st.integers(1, 3)), mask.shape[1])
    elif choice == "length":
        arguments["attention_mask"] = torch.ones(mask.shape[0], mask.shape[1] + data.draw(st.integers(1, 3)),
                                                 dtype=torch.long)
    elif choice == "dtype":
        arguments["attention_mask"] = mask.to(data.draw(st.sampled_from([torch.float32, torch.float16,
                                                                           torch.int16, torch.float64])))
    else:
        arguments["attention_mask"] = mask.to(OTHER_DEVICE)


def break_scalars(data, arguments):
    choice = data.draw(st.sampled_from(["heads", "eps", "activation"]))
    if choice == "heads":
        arguments["num_heads"] = data.draw(st.integers(-5, 0) | st.sampled_from([3, 5, 7, 16, 2 ** 40]))
    elif choice == "eps":
        arguments["layer_norm_eps"] = data.draw(st.sampled_from([0.0, -1e-5, math.inf, -math.inf, math.nan]))
    else:
        arguments["activation"] = data.draw(st.text(max_size=20).filter(
            lambda name: name not in ("gelu", "gelu_new", "gelu_pytorch_tanh", "relu")))


def break_weights(data, arguments):
    weights = arguments["weights"]
    choice = data.draw(choices("count", "shape", "dtype", "non_contiguous"))
    if choice == "count":
        count = data.draw(st.integers(0, 3 * PER_LAYER).filter(lambda n: n % PER_LAYER != 0 or n == 0))
        arguments["weights"] = (weights * 3)[:count]
        return
    index = data.draw(st.integers(0, len(weights) - 1))
    weight = weights[index]
    if choice == "shape":
        shape = data.draw(st.lists(st.integers(0, 3 * INTERMEDIATE), min_size=0, max_size=3).filter(
            lambda s: tuple(s) != tuple(weight.shape)))
        replacement = torch.randn(shape)
    elif choice == "dtype":
        replacement = weight.to(data.draw(st.sampled_from([torch.float64, torch.bfloat16, torch.int64])))
    elif choice == "device":
        replacement = weight.to(OTHER_DEVICE)
    else:
        if weight.dim() < 2:
            replacement = torch.randn(weight.shape[0] * 2)[::2]
        else:
            replacement = weight.t().contiguous().t()
    arguments["weights"] = weights[:index] + [replacement] + weights[index + 1:]


BREAKERS = [break_hidden, break_mask, break_scalars, break_weights]


@given(data=st.data(), batch=st.integers(1, 3), seq_len=st.integers(1, 6), layers=st.integers(1, 2),
       breakers=st.lists(st.sampled_from(BREAKERS), min_size=1, max_size=3, unique=True))
def malformed_calls_raise_runtime_error(data, batch, seq_len, layers, breakers):
    arguments = valid_call(batch, seq_len, layers)
    for breaker in breakers:
        breaker(data, arguments)
    try:
        call(arguments)
    except RuntimeError as error:
        assert str(error), describe(arguments)
    else:
        raise AssertionError(f"no error for {describe(arguments)}")


def describe(arguments: dict) -> str:
    def one(value):
        if isinstance(value, torch.Tensor):
            return f"{value.dtype}{list(value.shape)}@{value.device}{'' if value.is_contiguous() else ' strided'}"
        if isinstance(value, list):
            return "[" + ", ".join(one(v) for v in value) + "]"
        return repr(value)

    return ", ".join(f"{key}={one(value)}" for key, value in arguments.items())


def main(max_examples: int) -> None:
    call(valid_call(2, 4, 1))  # the valid call itself must work, or every "error" below is meaningless
    settings(max_examples=max_examples, deadline=None, derandomize=True)(malformed_calls_raise_runtime_error)()
    print(f"op_fuzz: {max_examples} malformed calls, each refused with RuntimeError")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 300)
