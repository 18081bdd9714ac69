"""fusedbert's packed attention kernel (csrc/cuda/attention.cu) on its own, against softmax attention run
per sequence in float32: every supported head size, lengths on and across its 64-row tiles, empty
sequences, a grid bound above the longest sequence (as under CUDA graph capture). Needs a GPU."""

from __future__ import annotations

import math

import pytest
import torch

import fusedbert  # noqa: F401  (loads the op library)

pytestmark = pytest.mark.cuda

DEVICE = "cuda"
LENGTHS = {
    "one_token": [1],
    "one_tile": [64],
    "tile_plus_one": [65],
    "mixed": [1, 130, 7, 64, 0, 200],
    "bert_max": [512],
    "many_short": [3, 17, 9, 31, 2, 16, 8, 5] * 16,
}


def packed_qkv(lengths, heads, head_dim, dtype, seed=0):
    generator = torch.Generator(device=DEVICE).manual_seed(seed)
    rows = sum(lengths)
    # Scaled like a trained BERT's projections: scores of a few units, so the softmax is not uniform.
    qkv = torch.randn(rows, 3 * heads * head_dim, device=DEVICE, generator=generator) * 1.5
    cu_seqlens = torch.tensor([0, *torch.tensor(lengths).cumsum(0).tolist()], dtype=torch.int32, device=DEVICE)
    return qkv.to(dtype), cu_seqlens


def attention_per_sequence(qkv, lengths, heads, head_dim):
    """softmax(Q K^T / sqrt(d)) V for each sequence apart, in qkv's dtype, through plain matmuls."""
    width = heads * head_dim
    out, start = [], 0
    for length in lengths:
        rows = qkv[start:start + length]
        q, k, v = (rows[:, i * width:(i + 1) * width].view(length, heads, head_dim).transpose(0, 1) for i in range(3))
        weights = torch.softmax((q @ k.transpose(1, 2)).float() / math.sqrt(head_dim), dim=-1).to(qkv.dtype)
        out.append((weights @ v).transpose(0, 1).reshape(length, width))
        start += length
    return torch.cat(out)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16], ids=str)
@pytest.mark.parametrize("head_dim", [32, 64, 128])
@pytest.mark.parametrize("lengths", LENGTHS.values(), ids=LENGTHS.keys())
def test_matches_float32_attention_within_twice_torch_low_precision_error(lengths, head_dim, dtype):
    heads = 4
    qkv, cu_seqlens = packed_qkv(lengths, heads, head_dim, dtype)
    out = torch.ops.fusedbert.packed_attention(qkv, cu_seqlens, max(lengths), heads)
    reference = attention_per_sequence(qkv.float(), lengths, heads, head_dim)
    torch_low = attention_per_sequence(qkv, lengths, heads, head_dim)
    ours = (out.float() - reference).abs().max().item()
    theirs = (torch_low.float() - reference).abs().max().item()
    # Softmax and accumulation in float32 with the probabilities rounded once for P V (flash-attention's
    # recipe) err no more than PyTorch's matmuls in the same dtype.
    assert ours <= 2 * theirs, f"fused {ours:.3g} vs torch {dtype} {theirs:.3g}"


def test_grid_bound_above_the_longest_sequence_changes_nothing():
    # Under CUDA graph capture the encoder cannot read the longest length back and passes seq_len.
    lengths = [5, 70, 33]
    qkv, cu_seqlens = packed_qkv(lengths, 2, 64, torch.float16)
    exact = torch.ops.fusedbert.packed_attention(qkv, cu_seqlens, 70, 2)
    bounded = torch.ops.fusedbert.packed_attention(qkv, cu_seqlens, 512, 2)
    assert torch.equal(exact, bounded)


def test_sequences_do_not_see_each_other():
    lengths = [20, 20]
    qkv, cu_seqlens = packed_qkv(lengths, 2, 64, torch.float16)
    before = torch.ops.fusedbert.packed_attention(qkv, cu_seqlens, 20, 2)
    qkv[20:] = torch.randn_like(qkv[20:])  # the second sequence changes; the first's context must not
    after = torch.ops.fusedbert.packed_attention(qkv, cu_seqlens, 20, 2)
    assert torch.equal(before[:20], after[:20])
    assert not torch.equal(before[20:], after[20:])


def test_unsupported_inputs_are_refused_with_the_reason():
    cu_seqlens = torch.tensor([0, 4], dtype=torch.int32, device=DEVICE)
    with pytest.raises(RuntimeError, match="float16 or bfloat16 with a head size of 32, 64 or 128"):
        torch.ops.fusedbert.packed_attention(torch.zeros(4, 3 * 48, device=DEVICE, dtype=torch.float16), cu_seqlens, 4, 1)
    with pytest.raises(RuntimeError, match="float16 or bfloat16"):
        torch.ops.fusedbert.packed_attention(torch.zeros(4, 3 * 64, device=DEVICE), cu_seqlens, 4, 1)
    with pytest.raises(RuntimeError, match="int32"):
        torch.ops.fusedbert.packed_attention(torch.zeros(4, 3 * 64, device=DEVICE, dtype=torch.float16),
                                             cu_seqlens.long(), 4, 1)


def test_opcheck():
    qkv, cu_seqlens = packed_qkv([3, 40], 2, 64, torch.float16)
    torch.library.opcheck(torch.ops.fusedbert.packed_attention.default, (qkv, cu_seqlens, 40, 2),
                          test_utils=("test_schema", "test_faketensor"))
