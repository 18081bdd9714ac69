"""The op itself: registration by the .so alone, build-version guard, input checks, reference parity,
fake kernel, autograd."""

from __future__ import annotations

import shutil
import subprocess
import sys
import textwrap

import pytest
import torch

import fusedbert
from fusedbert import LibraryMismatchError, encoder_reference
from fusedbert.library import build_info, check_library
from parity_support import HEADS, lengths_mask, random_encoder_weights, random_op_inputs



def sample_inputs(lengths=(5, 1, 9, 3), dtype=torch.float32, activation="gelu"):
    return (*random_op_inputs(lengths, dtype), HEADS, 1e-12, activation)


def run_op(hidden, mask, weights, heads, eps, activation, remove_padding=True):
    return torch.ops.fusedbert.encoder(hidden, mask, weights, heads, eps, activation, remove_padding)


@pytest.mark.parametrize("remove_padding", [True, False])
@pytest.mark.parametrize("activation", ["gelu", "gelu_new", "relu"])
def test_matches_reference_fp32(remove_padding, activation):
    args = sample_inputs(activation=activation)
    out = run_op(*args, remove_padding=remove_padding)
    expected = encoder_reference(*args)
    assert (out - expected).abs().max().item() <= 1e-5


@pytest.mark.parametrize("remove_padding", [True, False])
@pytest.mark.parametrize("hidden_size, heads", [(48, 4), (60, 3), (64, 2)])
def test_matches_reference_at_head_sizes_off_the_vector_width_and_long_sequences(remove_padding, hidden_size, heads):
    # Head sizes 12 and 20 leave a partial vector per row on the CPU (8 floats per AVX2 vector); lengths
    # 1..3 and 133 leave partial blocks of queries and of keys.
    lengths = (133, 1, 2, 3, 37)
    mask = lengths_mask(lengths)
    hidden = torch.randn(len(lengths), mask.shape[1], hidden_size, generator=torch.Generator().manual_seed(3))
    weights = random_encoder_weights(hidden=hidden_size, intermediate=2 * hidden_size)
    args = (hidden, mask, weights, heads, 1e-12, "gelu")
    out = run_op(*args, remove_padding=remove_padding)
    assert (out - encoder_reference(*args)).abs().max().item() <= 1e-5


def test_padding_positions_are_zero_and_real_tokens_ignore_padding_content():
    hidden, mask, *rest = sample_inputs()
    out = run_op(hidden, mask, *rest)
    assert torch.all(out[mask == 0] == 0)
    scrambled = hidden.clone()
    scrambled[mask == 0] = 1e3  # whatever padding holds must not leak into real tokens
    assert torch.equal(run_op(scrambled, mask, *rest), out)


def test_any_mask_pattern_is_packed_not_only_right_padding():
    hidden, _, *rest = sample_inputs(lengths=(6, 6, 6))
    mask = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]])
    out = run_op(hidden, mask, *rest)
    assert (out - encoder_reference(hidden, mask, *rest)).abs().max().item() <= 1e-5
    assert torch.all(out[2] == 0)  # a sequence with no real token comes back all zeros


@pytest.mark.parametrize("mask_dtype", [torch.bool, torch.uint8, torch.int32, torch.int64])
def test_mask_dtypes_agree(mask_dtype):
    hidden, mask, *rest = sample_inputs()
    assert torch.equal(run_op(hidden, mask.to(mask_dtype), *rest), run_op(hidden, mask, *rest))


def test_bf16_error_within_twice_plain_bf16_error():
    # The bar of flash-attention's tests: the fused kernel's bf16 error against an fp32 reference may be
    # at most twice the plain-PyTorch bf16 error on the same inputs.
    hidden, mask, weights, *rest = sample_inputs()
    reference = encoder_reference(hidden, mask, weights, *rest)
    bf16_weights = [w.bfloat16() for w in weights]
    fused = run_op(hidden.bfloat16(), mask, bf16_weights, *rest).float()
    plain = encoder_reference(hidden.bfloat16(), mask, bf16_weights, *rest).float()
    fused_err = (fused - reference).abs().max().item()
    plain_err = (plain - reference).abs().max().item()
    assert fused_err <= 2 * plain_err, (fused_err, plain_err)


BAD_INPUTS = [
    ("hidden must be \\[batch, seq_len, hidden\\]", lambda h, m, w: (h[0], m, w, HEADS)),
    ("does not match hidden", lambda h, m, w: (h, m[:, :-1], w, HEADS)),
    ("attention_mask must be bool, uint8, int32 or int64", lambda h, m, w: (h, m.float(), w, HEADS)),
    ("attention_mask values must be 0 or 1; found 2", lambda h, m, w: (h, m * 2, w, HEADS)),
    ("12 tensors per layer; got 11", lambda h, m, w: (h, m, w[:11], HEADS)),
    ("layer 1 ffn2_weight\\) must be \\[64, 128\\]", lambda h, m, w: (h, m, w[:20] + [w[20].t().contiguous()] + w[21:], HEADS)),
    ("layer 0 qkv_bias\\) is BFloat16", lambda h, m, w: (h, m, [w[0], w[1].bfloat16()] + w[2:], HEADS)),
    ("must be contiguous", lambda h, m, w: (h, m, [w[0].t().contiguous().t()] + w[1:], HEADS)),
    ("not divisible by num_heads 5", lambda h, m, w: (h, m, w, 5)),
    ("num_heads must be positive", lambda h, m, w: (h, m, w, 0)),
    ("float16 is not supported on CPU", lambda h, m, w: (h.half(), m, [x.half() for x in w], HEADS)),
]


@pytest.mark.parametrize("message, make_args", BAD_INPUTS, ids=[m for m, _ in BAD_INPUTS])
def test_bad_inputs_raise_runtime_error_naming_the_problem(message, make_args):
    hidden, mask, weights, *_ = sample_inputs()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedbert.encoder(*make_args(hidden, mask, weights), 1e-12, "gelu", True)


@pytest.mark.parametrize("eps, activation, message", [
    (0.0, "gelu", "layer_norm_eps must be positive"),
    (1e-12, "swish", 'activation must be one of .* got "swish"'),
])
def test_bad_scalars_raise(eps, activation, message):
    hidden, mask, weights, *_ = sample_inputs()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedbert.encoder(hidden, mask, weights, HEADS, eps, activation, True)


def test_opcheck():
    hidden, mask, weights, heads, eps, activation = sample_inputs()
    torch.library.opcheck(torch.ops.fusedbert.encoder.default,
                          (hidden.requires_grad_(), mask, weights, heads, eps, activation, True))


def test_gradient_matches_reference():
    hidden, mask, weights, *rest = sample_inputs()
    hidden = hidden.requires_grad_()
    grad_out = torch.randn_like(hidden)
    (fused_grad,) = torch.autograd.grad(run_op(hidden, mask, weights, *rest), hidden, grad_out)
    (ref_grad,) = torch.autograd.grad(encoder_reference(hidden, mask, weights, *rest), hidden, grad_out)
    assert torch.allclose(fused_grad, ref_grad, atol=1e-5)


def test_compile_fullgraph_with_dynamic_shapes():
    hidden, mask, weights, heads, eps, activation = sample_inputs()
    compiled = torch.compile(lambda h, m: run_op(h, m, weights, heads, eps, activation), fullgraph=True, dynamic=True)
    for lengths in [(5, 1, 9, 3), (2, 7)]:
        h, m, *_ = sample_inputs(lengths)
        assert torch.equal(compiled(h, m), run_op(h, m, weights, heads, eps, activation))


def test_build_info_matches_running_torch():
    path = fusedbert.library_path()
    assert build_info(path)["torch"] == torch.__version__
    assert torch.ops.fusedbert.build_info() == f"torch={torch.__version__} cuda={build_info(path)['cuda']}"


def test_library_built_for_another_torch_is_refused(tmp_path):
    data = open(fusedbert.library_path(), "rb").read()
    stamp = f"torch={torch.__version__} ".encode()
    other = b"torch=" + b"9" * (len(stamp) - len(b"torch= ")) + b" "  # same length: the file layout stays valid
    patched = tmp_path / "libfusedbert_other.so"
    patched.write_bytes(data.replace(stamp, other, 1))
    with pytest.raises(LibraryMismatchError, match="built for torch 9+ but this process runs torch .*rebuild"):
        check_library(str(patched))


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_library_links_the_shared_libstdcxx():
    # A private static copy of libstdc++ crashes on the first error message holding a number.
    dynamic = subprocess.run(["readelf", "-d", fusedbert.library_path()], capture_output=True, text=True).stdout
    assert "[libstdc++.so.6]" in dynamic


def test_library_alone_registers_the_op_in_a_process_without_fusedbert(tmp_path):
    args = sample_inputs()
    torch.save({"args": args, "expected": encoder_reference(*args)}, tmp_path / "case.pt")
    so = tmp_path / "op.so"
    shutil.copy(fusedbert.library_path(), so)
    script = textwrap.dedent(f"""
        import sys, torch
        torch.ops.load_library({str(so)!r})
        case = torch.load({str(tmp_path / 'case.pt')!r})
        out = torch.ops.fusedbert.encoder(*case["args"], True)
        assert "fusedbert" not in sys.modules
        print((out - case["expected"]).abs().max().item())
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=120)
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.strip()) <= 1e-5
