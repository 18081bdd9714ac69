"""The CPU encoder's GEMMs (csrc/cpu/linear.cpp): oneDNN on packed copies of the weights by default,
at::mm when switched off, and packed copies that follow their weights' contents."""

from __future__ import annotations

import contextlib

import pytest
import torch

import fusedbert  # noqa: F401  (loads the op library)
from fusedbert import encoder_reference
from parity_support import HEADS, random_encoder_weights, random_op_inputs

pytestmark = pytest.mark.skipif(not torch.backends.mkldnn.is_available(), reason="torch built without oneDNN")

GEMM_SLOTS = (0, 2, 6, 8)  # qkv, attention out, ffn1, ffn2 weights in each layer's 12 tensors


@contextlib.contextmanager
def cpu_onednn(enabled: bool):
    previous = torch.ops.fusedbert.set_cpu_onednn(enabled)
    try:
        yield
    finally:
        torch.ops.fusedbert.set_cpu_onednn(previous)


def run_op(hidden, mask, weights):
    return torch.ops.fusedbert.encoder(hidden, mask, weights, HEADS, 1e-12, "gelu", True)


def reference_diff(out, hidden, mask, weights) -> float:
    return (out - encoder_reference(hidden, mask, weights, HEADS, 1e-12, "gelu")).abs().max().item()


def ops_called(fn) -> set[str]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        fn()
    return {event.key for event in prof.key_averages()}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("enabled", [True, False])
def test_gemms_run_through_onednn_unless_switched_off(enabled, dtype):
    if dtype == torch.bfloat16 and not torch.ops.mkldnn._is_mkldnn_bf16_supported():
        pytest.skip("oneDNN has no bf16 kernels on this CPU")
    hidden, mask, weights = random_op_inputs(dtype=dtype)
    with cpu_onednn(enabled):
        called = ops_called(lambda: run_op(hidden, mask, weights))
    assert ("mkldnn::_linear_pointwise" in called) == enabled
    assert ("aten::mm" in called) == (not enabled)


def test_switch_returns_the_previous_setting():
    with cpu_onednn(False):
        assert torch.ops.fusedbert.set_cpu_onednn(True) is False
        assert torch.ops.fusedbert.set_cpu_onednn(False) is True


def test_onednn_and_at_mm_agree_in_fp32():
    hidden, mask, weights = random_op_inputs(lengths=(40, 7, 64, 1))
    with cpu_onednn(True):
        onednn = run_op(hidden, mask, weights)
    with cpu_onednn(False):
        at_mm = run_op(hidden, mask, weights)
    assert (onednn - at_mm).abs().max().item() <= 1e-5


def test_weight_written_in_place_is_packed_again():
    hidden, mask, weights = random_op_inputs()
    with cpu_onednn(True):
        run_op(hidden, mask, weights)  # packs every GEMM weight
        with torch.no_grad():
            for layer_start in range(0, len(weights), 12):
                for slot in GEMM_SLOTS:
                    weights[layer_start + slot].mul_(-0.5)
        out = run_op(hidden, mask, weights)
    assert reference_diff(out, hidden, mask, weights) <= 1e-5


def test_new_weights_in_freed_memory_never_get_old_packed_copies():
    # Freed tensors' memory, and their storage objects, come back for the next tensors of the same size
    # (seen here within four rounds): a copy found by address alone would be an old weight's.
    hidden, mask, _ = random_op_inputs()
    with cpu_onednn(True):
        for seed in range(6):
            weights = random_encoder_weights(seed=seed)
            out = run_op(hidden, mask, weights)
            assert reference_diff(out, hidden, mask, weights) <= 1e-5, seed
            del weights, out


def test_inference_tensors_run_unpacked_and_correct():
    hidden, mask, weights = random_op_inputs()
    with torch.inference_mode():
        frozen = [w.clone() for w in weights]
    with cpu_onednn(True), torch.inference_mode():
        out = run_op(hidden, mask, frozen)
        called = ops_called(lambda: run_op(hidden, mask, frozen))
    assert "mkldnn::_linear_pointwise" in called and "mkldnn::_reorder_linear_weight" not in called
    assert reference_diff(out, hidden, mask, weights) <= 1e-5
