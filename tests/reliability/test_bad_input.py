"""Bad requests through a real TorchServe: each gets its own 4xx with a message, the requests batched with
it are answered, and the worker that served them is the same process afterwards."""

from __future__ import annotations

import math

import pytest

from torchserve_support import (ARCHIVE, BATCH_SIZE, EMBEDDER, MAX_BATCH_DELAY_MS, QA, batches_run, describe,
                                frontend_log_length, post_all, server_properties, worker_pid)

# body -> what its 400's message must say. bytes and str go as text/plain, anything else as JSON
# (TorchServe hands a JSON body to the handler already parsed, so [1, 2, 3] arrives as a list).
BAD_BODIES = {
    "empty": (b"", "request body is empty or whitespace only"),
    "whitespace": (b" \t\r\n  \n", "request body is empty or whitespace only"),
    "invalid_utf8": (b"caf\xc3( au lait", "not valid UTF-8 (invalid byte at offset 3)"),
    "binary_garbage": (bytes(range(255, 127, -1)) * 4, "not valid UTF-8 (invalid byte at offset 0)"),
    "json_array": ([1, 2, 3], "must be text or a JSON object; got an array"),
    "json_number": (42, "must be text or a JSON object; got a number"),
    "json_null": (None, "must be text or a JSON object; got null"),
    "malformed_json": ('{"text": "unterminated', "starts with '{' but is not valid JSON"),
    "text_not_a_string": ({"text": ["a", "list"]}, '"text" must be a string; got an array'),
    "text_missing": ({"txt": "a typo"}, 'JSON request has no "text" field'),
    "text_blank": ({"text": "\u3000 \n"}, '"text" is empty or whitespace only'),
    "kserve_no_instances": ({"instances": []}, '"instances" must be a non-empty array'),
    "kserve_bad_instance": ({"instances": ["fine", 7]}, "instances[1]: request body must be text or a JSON object"),
    "kserve_v2_data_not_a_list": ({"inputs": [{"name": "x", "data": "text"}]}, "inputs[0].data must be a non-empty"),
}
QA_BAD_BODIES = {
    "no_question": ({"context": "Lisbon is the capital of Portugal."}, 'JSON request has no "question" field'),
    "no_context": ({"question": "What is the capital?"}, 'JSON request has no "context" field'),
    "question_not_a_string": ({"question": 3, "context": "Lisbon."}, '"question" must be a string; got a number'),
    "context_null": ({"question": "What?", "context": None}, '"context" must be a string; got null'),
    "plain_text": ("What is the capital of Portugal?", 'needs a JSON object {"question": ..., "context": ...}'),
}
GOOD_TEXTS = [f"Request {i} asks about {topic}." for i, topic in enumerate(
    ["serving", "batching", "padding", "tokenizers", "the weather in Lisbon", "GPU kernels", "rust", "jazz"] * 3)]
# A batched answer may differ from the same text's answer alone by GEMM rounding over another row count.
EMBEDDING_ATOL = 1e-6


@pytest.fixture(scope="module")
def worker_pids(server):
    """The workers' pids before this module's requests: every test checks its model's is unchanged."""
    return {model: worker_pid(server, model) for model in (EMBEDDER, QA)}


def send_alone(server, model, body):
    return post_all(server, model, [body], concurrency=1)[0]


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_body_gets_its_own_400_with_a_message(server, worker_pids, name):
    body, message = BAD_BODIES[name]
    reply = send_alone(server, EMBEDDER, body)
    assert reply.status == 400, reply.body[:300]
    error = reply.json()
    assert error["code"] == 400 and error["type"] == "BadRequest"
    assert message in error["message"]
    assert worker_pid(server, EMBEDDER) == worker_pids[EMBEDDER]


@pytest.mark.parametrize("name", sorted(QA_BAD_BODIES))
def test_incomplete_question_answering_request_gets_its_own_400(server, worker_pids, name):
    body, message = QA_BAD_BODIES[name]
    reply = send_alone(server, QA, body)
    assert reply.status == 400, reply.body[:300]
    assert message in reply.json()["message"]
    assert worker_pid(server, QA) == worker_pids[QA]


def test_body_over_max_request_size_is_refused_with_413_by_the_frontend(server, worker_pids):
    limit = int(server_properties(server)["max_request_size"])
    over = send_alone(server, EMBEDDER, b"a" * (limit + 1))
    assert over.status == 413, over.body[:300]
    # Just under the limit reaches the handler: answered (cut at max_length tokens) by the same worker.
    under = send_alone(server, EMBEDDER, b"a " * (limit // 2 - 64))
    assert under.status == 200, under.body[:300]
    assert under.json()["truncated"] is True
    assert worker_pid(server, EMBEDDER) == worker_pids[EMBEDDER]


def test_text_far_past_max_length_is_answered_and_says_it_was_truncated(server, worker_pids):
    long_text = "The quick brown fox jumps over the lazy dog. " * 2000  # ~20,000 tokens; max_length is 128
    long_reply, short_reply = (send_alone(server, EMBEDDER, text) for text in (long_text, "The quick brown fox."))
    assert long_reply.status == 200 and short_reply.status == 200
    assert long_reply.headers.get("X-Input-Truncated") == "true"
    assert long_reply.json()["truncated"] is True
    assert "X-Input-Truncated" not in short_reply.headers and "truncated" not in short_reply.json()
    assert worker_pid(server, EMBEDDER) == worker_pids[EMBEDDER]


UNICODE_TEXTS = {
    "emoji": "🚀🔥 launch day 👩‍👩‍👧‍👦 family 🏳️‍🌈",
    "right_to_left": "مرحبا بالعالم — שלום עולם",
    "combining_marks": "e\u0301te\u0301 Z\u0351\u0352\u0353a\u0354\u0355l\u0356g\u0357o",
    "zero_width": "zero\u200bwidth\u200cjoiner\u200d\ufeffmarks",
    "nul": "a NUL\x00inside",
    "only_controls": "\x00\x01\x02",
}


@pytest.mark.parametrize("name", sorted(UNICODE_TEXTS))
def test_unicode_edge_cases_are_answered(server, worker_pids, name):
    text = UNICODE_TEXTS[name]
    reply = send_alone(server, EMBEDDER, text)
    assert reply.status == 200, reply.body[:300]
    embedding = reply.json()["embedding"]
    assert len(embedding) == 384 and all(math.isfinite(x) for x in embedding)
    answer = send_alone(server, QA, {"question": "What is it?", "context": text})
    assert answer.status == 200, answer.body[:300]
    span = answer.json()
    assert span["answer"] == text[span["start"]:span["end"]]
    assert worker_pid(server, EMBEDDER) == worker_pids[EMBEDDER]
    assert worker_pid(server, QA) == worker_pids[QA]


def test_good_and_bad_requests_in_one_dynamic_batch_each_get_their_own_answer(server, worker_pids):
    model = describe(server, EMBEDDER)
    assert (model["batchSize"], model["maxBatchDelay"]) == (BATCH_SIZE, MAX_BATCH_DELAY_MS)
    # The sequential answers come from the model serving the archive itself (the embedder is its unpacked
    # copy): same files, same worker code, a batch of one each.
    alone = [send_alone(server, ARCHIVE, text).json()["embedding"] for text in GOOD_TEXTS]
    bad = sorted(BAD_BODIES)
    # Good and bad interleaved, all sent at once: the frontend batches them together.
    bodies = [body for i, text in enumerate(GOOD_TEXTS) for body in (text, BAD_BODIES[bad[i % len(bad)]][0])]
    log_start = frontend_log_length(server)
    replies = post_all(server, EMBEDDER, bodies, concurrency=len(bodies))
    for i, text in enumerate(GOOD_TEXTS):
        good, wrong = replies[2 * i], replies[2 * i + 1]
        assert good.status == 200, good.body[:300]
        assert max(abs(a - b) for a, b in zip(good.json()["embedding"], alone[i])) <= EMBEDDING_ATOL
        assert wrong.status == 400, wrong.body[:300]
        assert BAD_BODIES[bad[i % len(bad)]][1] in wrong.json()["message"]
    # Every good text ran through the model once, and some batch of the frontend's held good and bad
    # requests together (fewer rows ran than it held requests, but some did).
    batches = batches_run(server, EMBEDDER, skip_lines=log_start, rows_expected=len(GOOD_TEXTS))
    assert sum(rows for rows, _ in batches) == len(GOOD_TEXTS), batches
    assert any(0 < rows < requests for rows, requests in batches), batches
    assert worker_pid(server, EMBEDDER) == worker_pids[EMBEDDER]
