"""fusedbert::embeddings and FusedBertEmbeddings: the op against its reference and Hugging Face's module on
CPU and CUDA, broadcast and int32 indices, errors naming the bad argument, opcheck, gradients, and which
models fuse() gives it to. The `cuda` cases skip without a GPU."""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
from transformers import (AutoModel, BertConfig, DistilBertConfig, ElectraConfig, RobertaConfig,
                          XLMRobertaConfig)

import fusedbert
from fusedbert import FusedBertEmbeddings, embeddings_reference

EPS = 1e-12
DEVICES = [pytest.param("cpu"), pytest.param("cuda", marks=pytest.mark.cuda)]
# The op sums and normalizes in float32 and rounds once, as the reference does: the two differ by float32
# rounding, and in float16 / bfloat16 by at most one step of the result.
TOLERANCES = {torch.float32: dict(atol=1e-5, rtol=1e-5),
              torch.float16: dict(atol=2 ** -10, rtol=2 ** -10),
              torch.bfloat16: dict(atol=2 ** -7, rtol=2 ** -7)}
DEVICE_DTYPES = [pytest.param("cpu", torch.float32, id="cpu-float32"),
                 pytest.param("cpu", torch.bfloat16, id="cpu-bfloat16")] + [
    pytest.param("cuda", dtype, id=f"cuda-{str(dtype).removeprefix('torch.')}", marks=pytest.mark.cuda)
    for dtype in TOLERANCES]


def sample_inputs(device="cpu", dtype=torch.float32, batch=3, seq_len=11, width=64, vocab=50, positions=40,
                  types=2, seed=0):
    """The op's arguments: random ids, [1, S] positions as Hugging Face passes them, random tables."""
    g = torch.Generator().manual_seed(seed)

    def table(*shape, mean=0.0):
        return (mean + torch.randn(*shape, generator=g)).to(device, dtype)

    return (torch.randint(0, vocab, (batch, seq_len), generator=g).to(device),
            torch.randint(0, types, (batch, seq_len), generator=g).to(device),
            torch.arange(seq_len).unsqueeze(0).to(device),
            table(vocab, width), table(types, width), table(positions, width),
            table(width, mean=1.0), table(width), EPS)


@pytest.mark.parametrize("device, dtype", DEVICE_DTYPES)
# odd_tokens_256: two full packs a lane where a warp holds a float32 row, at an odd token count.
# half_warp_rows: more tokens than a GPU holds warps at once, so float16 / bfloat16 rows take half a warp each;
# an odd count, so the last warp's second half has no row.
@pytest.mark.parametrize("batch, seq_len, width", [(1, 1, 64), (3, 11, 64), (5, 7, 256), (64, 128, 384),
                                                   (161, 127, 384), (2, 512, 1024)],
                         ids=["one_token", "small", "odd_tokens_256", "minilm_batch", "half_warp_rows",
                              "bert_large_512"])
def test_matches_reference(device, dtype, batch, seq_len, width):
    args = sample_inputs(device, dtype, batch=batch, seq_len=seq_len, width=width, positions=512)
    out = torch.ops.fusedbert.embeddings(*args)
    assert out.shape == (batch, seq_len, width) and out.dtype == dtype
    torch.testing.assert_close(out, embeddings_reference(*args), **TOLERANCES[dtype])


@pytest.mark.parametrize("device", DEVICES)
def test_position_and_type_ids_per_sequence_or_broadcast_agree(device):
    ids, types, positions, *tables = sample_inputs(device)
    batch, seq_len = ids.shape
    broadcast = torch.ops.fusedbert.embeddings(ids, types[:1], positions, *tables)
    per_sequence = torch.ops.fusedbert.embeddings(ids, types[:1].expand(batch, -1).contiguous(),
                                                  positions.expand(batch, -1).contiguous(), *tables)
    assert torch.equal(broadcast, per_sequence)
    assert torch.equal(torch.ops.fusedbert.embeddings(ids, types[0], positions[0], *tables), broadcast)


@pytest.mark.parametrize("device", DEVICES)
def test_int32_indices_agree_with_int64(device):
    ids, types, positions, *tables = sample_inputs(device)
    expected = torch.ops.fusedbert.embeddings(ids, types, positions, *tables)
    assert torch.equal(torch.ops.fusedbert.embeddings(ids.int(), types.int(), positions.int(), *tables), expected)


@pytest.mark.parametrize("device", DEVICES)
def test_strided_position_ids_are_read_where_they_are(device):
    ids, types, _, *tables = sample_inputs(device)
    every_other = torch.arange(2 * ids.shape[1], device=device).view(1, -1)[:, ::2]  # 0, 2, 4, ...
    out = torch.ops.fusedbert.embeddings(ids, types, every_other, *tables)
    assert torch.equal(out, torch.ops.fusedbert.embeddings(ids, types, every_other.contiguous(), *tables))


@pytest.mark.parametrize("device", DEVICES)
def test_empty_batch(device):
    ids, types, positions, *tables = sample_inputs(device)
    assert torch.ops.fusedbert.embeddings(ids[:0], types[:0], positions, *tables).shape == (0, ids.shape[1], 64)


@pytest.mark.parametrize("device", DEVICES)
def test_opcheck(device):
    args = list(sample_inputs(device))
    args[6] = args[6].requires_grad_()  # the LayerNorm weight: exercises the autograd registration
    torch.library.opcheck(torch.ops.fusedbert.embeddings.default, tuple(args))


def test_gradients_reach_the_tables_as_through_the_reference():
    ids, types, positions, *tables, eps = sample_inputs()
    tables = [t.requires_grad_() for t in tables]
    grad_out = torch.randn(ids.shape + (tables[0].shape[1],))
    fused = torch.autograd.grad(torch.ops.fusedbert.embeddings(ids, types, positions, *tables, eps), tables, grad_out)
    expected = torch.autograd.grad(embeddings_reference(ids, types, positions, *tables, eps), tables, grad_out)
    for got, want in zip(fused, expected):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("position", [0, 1, 2], ids=["input_ids", "token_type_ids", "position_ids"])
def test_index_out_of_range_names_tensor_and_position(position):
    args = list(sample_inputs())
    name, table, rows = [("input_ids", "word_embeddings", 50), ("token_type_ids", "token_type_embeddings", 2),
                         ("position_ids", "position_embeddings", 40)][position]
    bad = args[position].expand(3, -1).clone()
    bad[2, 4] = rows
    args[position] = bad
    with pytest.raises(RuntimeError, match=rf"{name}\[2, 4\] = {rows} is out of range for {table} \({rows} rows\)"):
        torch.ops.fusedbert.embeddings(*args)


def test_negative_index_is_out_of_range():
    ids, *rest = sample_inputs()
    ids[0, 0] = -1
    with pytest.raises(RuntimeError, match=r"input_ids\[0, 0\] = -1 is out of range"):
        torch.ops.fusedbert.embeddings(ids, *rest)


BAD_ARGUMENTS = {
    "input_ids must be \\[batch, seq_len\\]": lambda a: a.__setitem__(0, a[0].flatten()),
    "token_type_ids must be \\[batch, seq_len\\] = \\[3, 11\\] or \\[1, seq_len\\]":
        lambda a: a.__setitem__(1, a[1][:, :5]),
    "position_ids must be int64 or int32": lambda a: a.__setitem__(2, a[2].float()),
    "position_embeddings must be \\[rows, 64\\]": lambda a: a.__setitem__(5, a[5][:, :32]),
    "layer_norm_bias must be \\[64\\]": lambda a: a.__setitem__(7, a[7][:10]),
    "token_type_embeddings is Double": lambda a: a.__setitem__(4, a[4].double()),
    "layer_norm_eps must be positive": lambda a: a.__setitem__(8, 0.0),
    "float16 is not supported on CPU": lambda a: a.__setitem__(slice(3, 8), [t.half() for t in a[3:8]]),
}


@pytest.mark.parametrize("message", BAD_ARGUMENTS, ids=range(len(BAD_ARGUMENTS)))
def test_bad_arguments_raise_naming_them(message):
    args = list(sample_inputs())
    BAD_ARGUMENTS[message](args)
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedbert.embeddings(*args)


@pytest.mark.cuda
@pytest.mark.parametrize("position, message", [
    (2, "position_ids is on cpu but input_ids is on cuda"),
    (5, "position_embeddings is Float on cpu; expected word_embeddings' dtype Float on input_ids' device cuda"),
], ids=["index", "table"])
def test_a_tensor_on_another_device_than_input_ids_is_refused(position, message):
    args = list(sample_inputs("cuda"))
    args[position] = args[position].cpu()
    with pytest.raises(RuntimeError, match=message):
        torch.ops.fusedbert.embeddings(*args)


# ---- the module and fuse() ----------------------------------------------------------------------------

@pytest.fixture(scope="module")
def minilm(minilm_path):
    return AutoModel.from_pretrained(str(minilm_path), dtype=torch.float32).eval()


@pytest.mark.parametrize("device", DEVICES)
def test_module_matches_hugging_face_on_real_weights(minilm, device):
    hf = copy.deepcopy(minilm.embeddings).to(device)
    fused = FusedBertEmbeddings(copy.deepcopy(hf))
    ids, types, *_ = sample_inputs(device, batch=4, seq_len=37, vocab=minilm.config.vocab_size)
    with torch.no_grad():
        for kwargs in ({"input_ids": ids, "token_type_ids": types}, {"input_ids": ids},
                       {"input_ids": ids, "position_ids": torch.arange(5, 42, device=device).expand(4, -1)}):
            torch.testing.assert_close(fused(**kwargs), hf(**kwargs), atol=1e-5, rtol=1e-5)


def test_module_with_inputs_embeds_matches_hugging_face(minilm):
    hf = minilm.embeddings
    fused = FusedBertEmbeddings(copy.deepcopy(hf))
    ids, types, *_ = sample_inputs(batch=2, seq_len=9, vocab=minilm.config.vocab_size)
    with torch.no_grad():
        words = hf.word_embeddings(ids)
        torch.testing.assert_close(fused(inputs_embeds=words, token_type_ids=types),
                                   hf(inputs_embeds=words, token_type_ids=types), atol=1e-5, rtol=1e-5)


def test_module_refuses_training_mode(minilm):
    fused = FusedBertEmbeddings(copy.deepcopy(minilm.embeddings)).train()
    with pytest.raises(RuntimeError, match="inference only"):
        fused(input_ids=torch.zeros(1, 3, dtype=torch.long))


def test_fuse_embeddings_false_keeps_hugging_faces_module(minilm):
    assert type(fusedbert.fuse(copy.deepcopy(minilm), fuse_embeddings=False).embeddings) is type(minilm.embeddings)


def test_fuse_keeps_the_state_dict_keys_and_values(minilm):
    fused = fusedbert.fuse(copy.deepcopy(minilm))
    assert isinstance(fused.embeddings, FusedBertEmbeddings)
    original = {k: v for k, v in minilm.state_dict().items() if k.startswith("embeddings.")}
    kept = {k: v for k, v in fused.state_dict().items() if k.startswith("embeddings.")}
    assert original.keys() == kept.keys()
    assert all(torch.equal(original[k], kept[k]) for k in original)


SMALL = dict(hidden_size=64, num_hidden_layers=1, num_attention_heads=4, intermediate_size=128,
             max_position_embeddings=64)


@pytest.mark.parametrize("config, fused_embeddings", [
    (BertConfig(**SMALL), True),
    (ElectraConfig(embedding_size=32, **SMALL), True),
    (RobertaConfig(**SMALL), True),  # positions counted from the padding in input_ids
    (XLMRobertaConfig(**SMALL), True),
    (DistilBertConfig(dim=64, n_layers=1, n_heads=4, hidden_dim=128, max_position_embeddings=64), False),
], ids=["bert", "electra", "roberta", "xlm-roberta", "distilbert"])
def test_fuse_gives_fused_embeddings_to_all_but_distilbert(config, fused_embeddings):
    torch.manual_seed(0)
    model = AutoModel.from_config(config).eval()
    fused = fusedbert.fuse(copy.deepcopy(model))
    assert isinstance(fused.embeddings, FusedBertEmbeddings) == fused_embeddings
    ids = torch.randint(5, config.vocab_size, (2, 10))
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    ids[1, 6:] = config.pad_token_id
    with torch.no_grad():
        expected = model(input_ids=ids, attention_mask=mask).last_hidden_state
        out = fused(input_ids=ids, attention_mask=mask).last_hidden_state
    assert (out - expected)[mask.bool()].abs().max().item() <= 1e-4


@pytest.mark.parametrize("device", DEVICES)
def test_roberta_positions_count_real_tokens_after_padding_idx(device):
    torch.manual_seed(0)
    hf = AutoModel.from_config(RobertaConfig(**SMALL)).embeddings.eval().to(device)
    fused = FusedBertEmbeddings(copy.deepcopy(hf))
    ids = torch.randint(5, 100, (3, 12), device=device)
    ids[0, 7:] = ids[2, :4] = hf.padding_idx  # right and left padding
    # A cached prefix's length: `cache_length` in newer transformers, `past_key_values_length` before.
    offset = next(name for name in ("cache_length", "past_key_values_length")
                  if name in inspect.signature(hf.forward).parameters)
    with torch.no_grad():
        for kwargs in ({"input_ids": ids}, {"input_ids": ids, offset: 3}):
            torch.testing.assert_close(fused(**kwargs), hf(**kwargs), atol=1e-5, rtol=1e-5)
        words = hf.word_embeddings(ids)
        torch.testing.assert_close(fused(inputs_embeds=words), hf(inputs_embeds=words), atol=1e-5, rtol=1e-5)
