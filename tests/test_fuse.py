"""fuse() on Hugging Face models: parity with HF on real and random weights, awkward batches, every
supported family and head, and clear errors for what the fused encoder does not do."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import (
    AutoModel,
    AutoModelForQuestionAnswering,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    BertConfig,
    DistilBertConfig,
    ElectraConfig,
    GPT2Config,
    RobertaConfig,
    XLMRobertaConfig,
)

import fusedbert
from parity_support import AWKWARD_BATCHES, SENTENCES, max_diff_at_real_tokens, random_batch

FP32_TOLERANCE = 1e-4
def fused_copy(model, **kwargs):
    return fusedbert.fuse(copy.deepcopy(model), **kwargs)


@pytest.fixture(scope="module")
def minilm(minilm_path):
    # float32 whatever the checkpoint stores (the GPU machine carries a float16 copy of it)
    return AutoModel.from_pretrained(str(minilm_path), dtype=torch.float32).eval()


@pytest.fixture(scope="module")
def fused_minilm(minilm):
    return fused_copy(minilm)


@pytest.mark.parametrize("lengths", AWKWARD_BATCHES.values(), ids=AWKWARD_BATCHES.keys())
def test_minilm_real_weights_fp32_awkward_batches(minilm, fused_minilm, lengths):
    batch = random_batch(minilm.config.vocab_size, lengths)
    with torch.no_grad():
        expected = minilm(**batch).last_hidden_state
        out = fused_minilm(**batch).last_hidden_state
    assert max_diff_at_real_tokens(out, expected, batch["attention_mask"]) <= FP32_TOLERANCE


def test_minilm_real_text_and_pooler(minilm, fused_minilm, minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected, out = minilm(**batch), fused_minilm(**batch)
    assert max_diff_at_real_tokens(out.last_hidden_state, expected.last_hidden_state, batch["attention_mask"]) <= FP32_TOLERANCE
    assert (out.pooler_output - expected.pooler_output).abs().max().item() <= FP32_TOLERANCE


def test_without_padding_removal_matches_too(minilm, minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = minilm(**batch).last_hidden_state
        out = fused_copy(minilm, remove_padding=False)(**batch).last_hidden_state
    assert max_diff_at_real_tokens(out, expected, batch["attention_mask"]) <= FP32_TOLERANCE


def test_bf16_error_within_twice_hf_bf16_error(minilm, minilm_tokenizer):
    batch = minilm_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    hf_bf16 = copy.deepcopy(minilm).to(torch.bfloat16)
    fused_bf16 = fused_copy(minilm).to(torch.bfloat16)
    with torch.no_grad():
        reference = minilm(**batch).last_hidden_state
        hf_err = max_diff_at_real_tokens(hf_bf16(**batch).last_hidden_state, reference, batch["attention_mask"])
        fused_err = max_diff_at_real_tokens(fused_bf16(**batch).last_hidden_state, reference, batch["attention_mask"])
    assert fused_err <= 2 * hf_err, (fused_err, hf_err)


def test_bf16_classification_argmax_agrees_on_real_text(minilm_path, minilm_tokenizer):
    torch.manual_seed(0)  # the MiniLM checkpoint has no classification head: a seeded one
    hf = AutoModelForSequenceClassification.from_pretrained(str(minilm_path), num_labels=3,
                                                            dtype=torch.float32).eval()
    fused_bf16 = fused_copy(hf).to(torch.bfloat16)
    batch = minilm_tokenizer(SENTENCES * 4, padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**batch).logits.argmax(-1)
        got = fused_bf16(**batch).logits.argmax(-1)
    assert torch.equal(got, expected)


def small_config(config_cls, **extra):
    return config_cls(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=128, **extra)


FAMILY_CONFIGS = {
    "bert_base_shape": lambda: BertConfig(vocab_size=1000),  # 12 layers, H=768, 12 heads
    "roberta": lambda: small_config(RobertaConfig, pad_token_id=1),
    "xlm_roberta": lambda: small_config(XLMRobertaConfig, pad_token_id=1),
    "electra": lambda: small_config(ElectraConfig, embedding_size=32),
    "bert_gelu_new": lambda: small_config(BertConfig, hidden_act="gelu_new"),
    "bert_relu": lambda: small_config(BertConfig, hidden_act="relu"),
    "distilbert": lambda: DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4, hidden_dim=128,
                                           max_position_embeddings=128),
}
HEADS = [AutoModel, AutoModelForSequenceClassification, AutoModelForQuestionAnswering, AutoModelForTokenClassification]


def outputs_of(result):
    names = ("last_hidden_state", "logits", "start_logits", "end_logits")
    return {name: getattr(result, name) for name in names if getattr(result, name, None) is not None}


@pytest.mark.parametrize("head", HEADS, ids=lambda h: h.__name__)
@pytest.mark.parametrize("make_config", FAMILY_CONFIGS.values(), ids=FAMILY_CONFIGS.keys())
def test_random_weight_families_and_heads(make_config, head):
    torch.manual_seed(0)
    hf = head.from_config(make_config()).eval()
    fused = fused_copy(hf)
    batch = random_batch(1000, [1, 23, 9, 64, 40])
    with torch.no_grad():
        expected, got = outputs_of(hf(**batch)), outputs_of(fused(**batch))
    assert expected.keys() == got.keys()
    for name in expected:
        per_token = expected[name].shape[:2] == batch["attention_mask"].shape
        diff = (max_diff_at_real_tokens(got[name], expected[name], batch["attention_mask"]) if per_token
                else (got[name] - expected[name]).abs().max().item())
        assert diff <= FP32_TOLERANCE, name


def test_fuse_returns_the_same_model_and_runs_the_op(minilm):
    model = copy.deepcopy(minilm)
    assert fusedbert.fuse(model) is model and fusedbert.is_fused(model)
    batch = random_batch(minilm.config.vocab_size, [5, 9])
    with torch.profiler.profile() as prof, torch.no_grad():
        model(**batch)
    assert "fusedbert::encoder" in {event.name for event in prof.events()}


def test_packed_weights_travel_with_state_dict_and_dtype(fused_minilm):
    state = fused_minilm.state_dict()
    assert "encoder.layer0_qkv_weight" in state and state["encoder.layer0_qkv_weight"].shape == (3 * 384, 384)
    assert copy.deepcopy(fused_minilm).to(torch.bfloat16).encoder.layer5_ln2_bias.dtype == torch.bfloat16


@pytest.mark.parametrize("kwargs, message", [
    ({"output_attentions": True}, "output_attentions=True is not supported"),
    ({"output_hidden_states": True}, "output_hidden_states=True is not supported"),
])
def test_unsupported_outputs_raise_at_call_time(fused_minilm, kwargs, message):
    batch = random_batch(1000, [4])
    with pytest.raises(NotImplementedError, match=message):
        fused_minilm(**batch, **kwargs)


def test_training_mode_is_refused(minilm):
    model = fused_copy(minilm).train()
    with pytest.raises(RuntimeError, match="inference only"):
        model(**random_batch(1000, [4]))


@pytest.mark.parametrize("make_model, message", [
    (lambda: AutoModel.from_config(small_config(BertConfig, is_decoder=True)), "decoder models and cross-attention"),
    (lambda: AutoModel.from_config(small_config(BertConfig, hidden_act="silu")), "activation 'silu' is not supported"),
    (lambda: AutoModel.from_config(GPT2Config(n_layer=1, n_embd=32, n_head=2)), "model_type 'gpt2' is not supported"),
])
def test_unsupported_models_raise_at_fuse_time(make_model, message):
    with pytest.raises(NotImplementedError, match=message):
        fusedbert.fuse(make_model())


def test_fusing_twice_is_refused(fused_minilm):
    with pytest.raises(ValueError, match="already fused"):
        fusedbert.fuse(fused_minilm)
