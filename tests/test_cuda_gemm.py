"""Every implementation of the FFN's first GEMM + bias + erf-GELU (csrc/cuda/gemm.h: cuBLASLt followed by
the bias + GELU kernel, the small-batch kernel of csrc/cuda/skinny_gemm.h, and on Hopper builds with CUTLASS
the kernels with both in their epilogue), each run by name, against the same math in float32: the encoder
times them per shape and may pick any of them, so each must hold on its own. Then, on Hopper, the shapes it
leaves to the small-batch kernel untimed. Needs a GPU."""

from __future__ import annotations

import re

import pytest
import torch
import torch.nn.functional as F
from transformers import BertConfig, BertModel

import fusedbert
from fusedbert.cuda_graphs import gemm_autotuning
from gelu_fit_support import header_coefficients, load_fit_script

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
# (k, n): MiniLM's and bert-base's FFN1, and bert-base's FFN2 shape (K = 3072 over N = 768 columns: the
# small-batch kernel splits K over CTAs there, as for every N = 768 GEMM of bert-base).
SHAPES = {"minilm": (384, 1536), "bert_base": (768, 3072), "bert_base_ffn2_shape": (3072, 768)}
# One token, a small batch, a partial 16-row tile, the small-batch kernel's limit, counts off the
# 64/128/256-row tiles, and bs32 lengths 8..128's total.
TOKENS = [1, 16, 37, 64, 129, 2172]
SKINNY_MAX_ROWS = 64


def kernels() -> list[str]:
    return torch.ops.fusedbert.linear_bias_gelu_kernels() if torch.cuda.is_available() else []


def is_hopper() -> bool:
    return torch.cuda.is_available() and torch.cuda.get_device_capability() == (9, 0)


def ffn1_inputs(tokens, hidden, intermediate, dtype, seed=0):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    # Scaled so that x @ w^T + b spans GELU's curved part and its linear tail (|z| up to ~5).
    x = torch.randn(tokens, hidden, device=DEVICE, generator=generator)
    w = torch.randn(intermediate, hidden, device=DEVICE, generator=generator) / hidden ** 0.5 * 1.5
    b = torch.randn(intermediate, device=DEVICE, generator=generator) * 0.5
    return x.to(dtype), w.to(dtype), b.to(dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("tokens", TOKENS)
@pytest.mark.parametrize("shape", SHAPES.values(), ids=SHAPES.keys())
def test_every_kernel_matches_float32_within_twice_torch_low_precision_error(shape, tokens, dtype):
    hidden, intermediate = shape
    x, w, b = ffn1_inputs(tokens, hidden, intermediate, dtype)
    reference = F.gelu(F.linear(x.float(), w.float(), b.float()))
    theirs = (F.gelu(F.linear(x, w, b)).float() - reference).abs().max().item()
    names = kernels() if is_hopper() else ["cublaslt", "skinny"]
    if tokens > SKINNY_MAX_ROWS:
        names = [name for name in names if name != "skinny"]
    for name in names:
        out = torch.ops.fusedbert.linear_bias_gelu(x, w, b, name)
        assert out.shape == (tokens, intermediate) and out.dtype == dtype
        ours = (out.float() - reference).abs().max().item()
        assert ours <= 2 * theirs, f"{name}: max error {ours:.3g} vs torch {dtype} {theirs:.3g}"


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
def test_every_kernel_computes_the_gelu_that_the_cpu_replays(dtype):
    """Through an identity weight every output is the GELU of one input value, as the device computes it: equal
    to scripts/fit_gelu.py's replay of gelu.cuh (whose bounds tests/test_gelu_fit.py holds) but where the
    hardware's ex2 approximation, which the replay leaves out, tips a rounding: by one ulp, rarely."""
    rows, width = SKINNY_MAX_ROWS, 256
    x = torch.linspace(-8, 8, rows * width, device=DEVICE).reshape(rows, width).to(dtype)
    w = torch.eye(width, device=DEVICE, dtype=dtype)
    b = torch.zeros(width, device=DEVICE, dtype=dtype)
    replayed = load_fit_script().evaluate(header_coefficients("gelu_erf_fit"), x.double().cpu().numpy())
    expected = torch.from_numpy(replayed).to(dtype).to(DEVICE)
    one_ulp = torch.finfo(dtype).eps * torch.exp2(torch.floor(torch.log2(expected.double().abs()
                                                                         .clamp_min(torch.finfo(dtype).tiny))))
    for name in kernels() if is_hopper() else ["cublaslt", "skinny"]:
        out = torch.ops.fusedbert.linear_bias_gelu(x, w, b, name)
        off = out != expected
        assert off.float().mean().item() <= 1e-3, f"{name}: {off.float().mean().item():.3%} differ"
        assert ((out.double() - expected.double()).abs() <= one_ulp).all(), name


def test_the_list_names_the_unfused_path_first():
    assert kernels()[0] == "cublaslt"


def test_an_unknown_kernel_is_refused_with_the_list():
    x, w, b = ffn1_inputs(4, 64, 128, torch.float16)
    with pytest.raises(RuntimeError, match="no kernel 'nope' in this build; it has cublaslt"):
        torch.ops.fusedbert.linear_bias_gelu(x, w, b, "nope")


def test_the_small_batch_kernel_refuses_more_rows_than_it_takes():
    x, w, b = ffn1_inputs(SKINNY_MAX_ROWS + 1, 64, 128, torch.float16)
    with pytest.raises(RuntimeError, match="'skinny' cannot run this GEMM: it takes 1 to 64 token rows"):
        torch.ops.fusedbert.linear_bias_gelu(x, w, b, "skinny")


def test_the_small_batch_kernel_refuses_float32():
    x, w, b = ffn1_inputs(4, 64, 128, torch.float32)
    with pytest.raises(RuntimeError, match="'skinny' cannot run this GEMM: it computes float16/bfloat16 only"):
        torch.ops.fusedbert.linear_bias_gelu(x, w, b, "skinny")


def test_split_k_runs_back_to_back_give_the_same_result():
    # A tile's splits are summed in split order by the first CTA of their cluster: no order depends on timing.
    x, w, b = ffn1_inputs(16, *SHAPES["bert_base_ffn2_shape"], torch.float16)
    first = torch.ops.fusedbert.linear_bias_gelu(x, w, b, "skinny")
    for _ in range(3):
        torch.testing.assert_close(torch.ops.fusedbert.linear_bias_gelu(x, w, b, "skinny"), first, rtol=0, atol=0)


# (k, n) where the small-batch kernel splits K into clusters of other sizes (run() in csrc/cuda/skinny_gemm.cu:
# ceil(SMs / (n / 16)) splits, at most 8 and at most one 32-wide step per warp each): 16 tiles of K = 4096 give
# the largest cluster, 8; K = 1088 (34 steps) gives 4 splits of 9, 9, 9 and 7 steps, with warps that get none.
CLUSTER_SHAPES = {"eight_splits": (4096, 256), "uneven_splits": (1088, 256)}


@pytest.mark.parametrize("tokens", [1, 16, SKINNY_MAX_ROWS])
@pytest.mark.parametrize("shape", CLUSTER_SHAPES.values(), ids=CLUSTER_SHAPES.keys())
def test_the_small_batch_kernel_sums_every_split_of_k(shape, tokens):
    hidden, intermediate = shape
    x, w, b = ffn1_inputs(tokens, hidden, intermediate, torch.float16)
    reference = F.gelu(F.linear(x.float(), w.float(), b.float()))
    theirs = (F.gelu(F.linear(x, w, b)).float() - reference).abs().max().item()
    ours = (torch.ops.fusedbert.linear_bias_gelu(x, w, b, "skinny").float() - reference).abs().max().item()
    assert ours <= 2 * theirs, f"max error {ours:.3g} vs torch float16 {theirs:.3g}"


def test_hopper_kernels_refuse_float32():
    hopper_kernels = [name for name in kernels() if name not in ("cublaslt", "skinny")]
    if not hopper_kernels or not is_hopper():
        pytest.skip("this build or GPU has no sm_90 CUTLASS kernels")
    x, w, b = ffn1_inputs(4, 64, 128, torch.float32)
    with pytest.raises(RuntimeError, match="needs an sm_90 GPU, float16/bfloat16"):
        torch.ops.fusedbert.linear_bias_gelu(x, w, b, hopper_kernels[0])


def gemm_kernels_of_one_call(model, batch) -> list[str]:
    with torch.no_grad(), torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profile:
        model(**batch)
        torch.cuda.synchronize()
    return [event.name for event in profile.events()
            if event.device_type.name == "CUDA" and re.search(r"gemm|nvjet|xmma|cutlass|cublas", event.name, re.I)]


@pytest.mark.parametrize("tokens", [1, 16, 32])
def test_up_to_32_rows_every_gemm_is_the_small_batch_kernel_when_tuned_on_hopper(tokens):
    # Timed alone, cuBLASLt wins bert-base's QKV and attention output at 16 rows on an H100; in a forward the
    # small-batch kernel, launched early to load its weights, is faster, so these shapes are not timed
    # (csrc/cuda/gemm.cpp, kSkinnyUntimedRows).
    if not is_hopper():
        pytest.skip("the untimed choice holds on sm_90")
    torch.manual_seed(0)
    config = BertConfig(vocab_size=1000, hidden_size=768, num_hidden_layers=2, num_attention_heads=12,
                        intermediate_size=3072, attn_implementation="sdpa")
    # No pooler: its linear layer is torch's, not the encoder's.
    model = fusedbert.fuse(BertModel(config, add_pooling_layer=False).to(DEVICE, torch.float16).eval())
    batch = {"input_ids": torch.randint(5, 1000, (1, tokens), device=DEVICE),
             "attention_mask": torch.ones(1, tokens, dtype=torch.long, device=DEVICE)}
    with torch.no_grad(), gemm_autotuning():
        model(**batch)  # the first call with tuning on settles every GEMM shape of this batch
    names = gemm_kernels_of_one_call(model, batch)
    assert len(names) == 4 * config.num_hidden_layers and all("skinny_gemm_kernel" in name for name in names), names
