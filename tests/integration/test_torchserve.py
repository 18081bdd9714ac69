"""A real TorchServe serving every mode from archives built by scripts/build_mar.py, answers checked
against Hugging Face computed here from the same weights; tokens, loopback binding, metrics, explanations."""

from __future__ import annotations

import json
import math
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psutil
import pytest
import torch
import torch.nn.functional as F

import torchserve_control as ts
from fusedbert.tasks import load_model, load_tokenizer, mean_pool

REPO_ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = REPO_ROOT / "artifacts"
# fp32 through the fused op vs Hugging Face: the trace script verifies 1e-4 on logits; probabilities
# and normalized embeddings are smoother still.
ATOL = 1e-4
TEXTS = [
    "The new fused encoder made our search service twice as fast.",
    "Short.",
    "A longer request that shares a batch with short ones must get exactly the answer it would get alone, "
    "because the fused encoder only ever sees the real tokens of each sequence.",
    "Ünïcödé text, emoji 🚀 and numbers 12345 go through the tokenizer too.",
]


def hf_reference(checkpoint: Path, mode: str):
    model = load_model(mode, str(checkpoint))
    tokenizer = load_tokenizer(str(checkpoint))
    return model, tokenizer


def predict(server: ts.Server, model: str, body: str | dict, endpoint: str = "predictions") -> ts.Response:
    if isinstance(body, dict):
        return server.call("inference", "POST", f"/{endpoint}/{model}", json.dumps(body).encode(),
                           content_type="application/json")
    return server.call("inference", "POST", f"/{endpoint}/{model}", body.encode("utf-8"), content_type="text/plain")


def answer(server: ts.Server, model: str, body: str | dict, endpoint: str = "predictions"):
    reply = predict(server, model, body, endpoint)
    assert reply.status == 200, reply.body[:500]
    return reply.json()


# ------------------------------------------------------------------------------------------- answers


def test_sequence_classification_matches_hugging_face(server, archives):
    model, tokenizer = hf_reference(archives["sequence_classification_captum"], "sequence_classification")
    labels = list(json.loads((ARTIFACTS / "index_to_name.json").read_text()).values())
    for text in TEXTS:
        with torch.no_grad():
            probabilities = torch.softmax(model(**tokenizer(text, return_tensors="pt")).logits[0], -1).tolist()
        got = answer(server, "sequence_classification_captum", text)
        assert got["label"] == labels[max(range(len(labels)), key=probabilities.__getitem__)]
        assert got["scores"].keys() == set(labels)
        for label, expected in zip(labels, probabilities):
            assert got["scores"][label] == pytest.approx(expected, abs=ATOL)
        assert got["score"] == pytest.approx(max(probabilities), abs=ATOL)


def test_feature_extraction_matches_hugging_face_mean_pooling(server, archives):
    model, tokenizer = hf_reference(archives["feature_extraction"], "feature_extraction")
    for text in TEXTS:
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            expected = F.normalize(mean_pool(model(**encoded).last_hidden_state, encoded["attention_mask"]), dim=-1)[0]
        got = torch.tensor(answer(server, "feature_extraction", text)["embedding"])
        assert got.shape == expected.shape
        assert (got - expected).abs().max().item() < ATOL


def test_feature_extraction_ranks_a_paraphrase_above_an_unrelated_sentence(server):
    def embed(text):
        return torch.tensor(answer(server, "feature_extraction", text)["embedding"])

    anchor = embed("How do I reset my password?")
    paraphrase = embed("What are the steps to change my password?")
    unrelated = embed("The orchestra played Beethoven's ninth symphony last night.")
    assert float(anchor @ paraphrase) > float(anchor @ unrelated) + 0.3


def best_span(context_mask: torch.Tensor, start_logits, end_logits, max_answer_len: int):
    """(p_start * p_end, first, last) over context tokens with first <= last < first + max_answer_len."""
    start_p = torch.softmax(start_logits.masked_fill(~context_mask, float("-inf")), -1)
    end_p = torch.softmax(end_logits.masked_fill(~context_mask, float("-inf")), -1)
    positions = context_mask.nonzero().flatten().tolist()
    return max((float(start_p[i] * end_p[j]), i, j)
               for i in positions for j in positions if i <= j < i + max_answer_len)


def test_question_answering_matches_hugging_face_best_span(server, archives):
    model, tokenizer = hf_reference(archives["question_answering"], "question_answering")
    setup = json.loads((REPO_ROOT / "configs" / "question_answering" / "setup_config.json").read_text())
    sample = json.loads((ARTIFACTS / "sample_question_answering.json").read_text())
    encoded = tokenizer(sample["question"], sample["context"], return_offsets_mapping=True, return_tensors="pt")
    offsets = encoded.pop("offset_mapping")[0]
    context_mask = torch.tensor([s == 1 for s in encoded.sequence_ids(0)])
    assert encoded["input_ids"].shape[1] <= int(setup["max_length"]), "the sample must fit one window"
    with torch.no_grad():
        outputs = model(**encoded)
    score, first, last = best_span(context_mask, outputs.start_logits[0], outputs.end_logits[0],
                                   setup["max_answer_len"])
    start, end = int(offsets[first][0]), int(offsets[last][1])

    got = answer(server, "question_answering", sample)
    assert (got["start"], got["end"]) == (start, end)
    assert got["answer"] == sample["context"][start:end]
    assert got["score"] == pytest.approx(score, abs=ATOL)


def test_token_classification_matches_hugging_face_simple_aggregation(server, archives):
    from transformers import pipeline

    model, tokenizer = hf_reference(archives["ner"], "token_classification")
    names = json.loads((ARTIFACTS / "ner_index_to_name.json").read_text())
    model.config.id2label = {int(i): name for i, name in names.items()}
    expected_pipeline = pipeline("token-classification", model=model, tokenizer=tokenizer,
                                 aggregation_strategy="simple")
    text = (ARTIFACTS / "sample_token_classification.txt").read_text().strip()
    expected = expected_pipeline(text)

    got = answer(server, "ner", text)
    assert [(e["entity"], e["word"], e["start"], e["end"]) for e in got] == \
        [(e["entity_group"], e["word"], e["start"], e["end"]) for e in expected]
    for entity, reference in zip(got, expected):
        assert entity["score"] == pytest.approx(float(reference["score"]), abs=ATOL)


def test_concurrent_requests_batched_by_the_frontend_get_their_own_answers(server, archives):
    model, tokenizer = hf_reference(archives["feature_extraction"], "feature_extraction")
    texts = TEXTS * 4
    with ThreadPoolExecutor(max_workers=len(texts)) as pool:
        replies = list(pool.map(lambda text: predict(server, "feature_extraction", text), texts))
    for text, reply in zip(texts, replies):
        assert reply.status == 200, reply.body[:500]
        encoded = tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            expected = F.normalize(mean_pool(model(**encoded).last_hidden_state, encoded["attention_mask"]), dim=-1)[0]
        assert (torch.tensor(reply.json()["embedding"]) - expected).abs().max().item() < ATOL


def test_a_bad_request_gets_a_4xx_and_the_worker_keeps_answering(server):
    reply = predict(server, "question_answering", {"question": "Where?"})
    assert 400 <= reply.status < 500, reply.body[:500]
    assert "context" in reply.body.decode()
    assert answer(server, "question_answering", json.loads((ARTIFACTS / "sample_question_answering.json").read_text()))


# ------------------------------------------------------------------------------- explanations, metrics


def test_explanations_attribute_every_token(server, archives):
    _, tokenizer = hf_reference(archives["sequence_classification_captum"], "sequence_classification")
    text = (ARTIFACTS / "sample_text.txt").read_text().strip()
    got = answer(server, "sequence_classification_captum", text, endpoint="explanations")
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert got["words"] == tokens
    assert len(got["importances"]) == len(tokens)
    assert all(math.isfinite(value) for value in got["importances"])
    assert any(value != 0 for value in got["importances"])


def test_explanations_of_a_torchscript_model_are_refused_with_a_reason(server):
    reply = predict(server, "feature_extraction", "Some text.", endpoint="explanations")
    assert reply.status == 501, reply.body[:500]
    assert "explanations" in reply.body.decode()


def metric_values(server: ts.Server, metric: str) -> dict[str, float]:
    """model name -> value of one Prometheus metric, read from the metrics endpoint."""
    reply = server.call("metrics", "GET", "/metrics")
    assert reply.status == 200
    values = {}
    for line in reply.body.decode().splitlines():
        if line.startswith(metric + "{"):
            labels, value = line.rsplit(" ", 1)
            model = labels.split('ModelName="', 1)[1].split('"', 1)[0]
            values[model] = float(value)
    return values


def test_custom_handler_metrics_are_on_the_metrics_endpoint(server):
    answer(server, "feature_extraction", "Count my tokens.")
    real_tokens = metric_values(server, "RealTokens")
    assert real_tokens.get("feature_extraction", 0) >= len("count my tokens.".split()) + 2
    for metric in ("PaddedTokens", "PaddingRatio", "BatchSize", "ModelTime"):
        assert "feature_extraction" in metric_values(server, metric), metric


# ------------------------------------------------------------------------------------- security


def test_every_endpoint_listens_on_loopback_only(server):
    listening = [c.laddr for c in psutil.Process(server.pid).net_connections(kind="inet")
                 if c.status == psutil.CONN_LISTEN]
    assert listening
    assert {address.ip for address in listening} <= {"127.0.0.1", "::ffff:127.0.0.1"}


# TorchServe 0.12 refuses a missing or wrong token with 400 InvalidKeyException (not 401).
TOKEN_REFUSED = 400


def refused(reply: ts.Response) -> bool:
    return reply.status == TOKEN_REFUSED and reply.json()["type"] == "InvalidKeyException"


def test_inference_without_a_token_is_refused(server):
    url = f"{server.urls['inference']}/predictions/feature_extraction"
    assert refused(ts.http_request("POST", url, b"hello", content_type="text/plain"))


def test_inference_with_a_wrong_token_is_refused(server):
    url = f"{server.urls['inference']}/predictions/feature_extraction"
    assert refused(ts.http_request("POST", url, b"hello", token="not-the-key", content_type="text/plain"))


def test_the_inference_token_does_not_open_the_management_api(server):
    url = f"{server.urls['management']}/models"
    assert refused(ts.http_request("GET", url))
    assert refused(ts.http_request("GET", url, token=server.key("inference")))
    assert server.call("management", "GET", "/models").status == 200


def test_registering_a_model_from_a_url_is_disabled(server):
    reply = server.call("management", "POST", "/models?url=https://example.com/model.mar")
    assert reply.status == 405, reply.body[:500]
