"""The TorchServe handler on TorchServe's own Context (no Java): every mode, both save modes, fused or not."""

from __future__ import annotations

import json
import logging
import re
import struct
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from ts.metrics.metric_type_enum import MetricTypes

from handler_support import (SEQUENCE_LABELS, TOKEN_LABELS, copy_model_dir, handler_module, load_handler, make_context,
                             run_batch, write_model_dir)

MODES = ("sequence_classification", "token_classification", "question_answering", "feature_extraction")
VARIANTS = [(save_mode, fused) for save_mode in ("pretrained", "torchscript") for fused in (False, True)]
TEXTS = [
    "Alice flew from Paris to Berlin with Bob.",
    "Short one.",
    "The fused encoder runs on real tokens only, so short requests batched with long ones cost little. " * 2,
    "Emoji 🙂, Arabic مرحبا, e\u0301 combining, zero\u200bwidth and a NUL\x00 byte.",
]
QUESTIONS = [
    {"question": "Where did Alice fly?", "context": TEXTS[0]},
    {"question": "What do short requests cost?", "context": TEXTS[2]},
    {"question": "Which emoji?", "context": TEXTS[3]},
]
SCORE_TOLERANCE = 1e-5


@pytest.fixture(scope="module")
def handlers(minilm_path, tmp_path_factory):
    """(mode, save_mode, fused) -> (handler, context), built once per module."""
    cache = {}

    def get(mode: str, save_mode: str = "torchscript", fused: bool = True):
        key = (mode, save_mode, fused)
        if key not in cache:
            directory = write_model_dir(tmp_path_factory.mktemp("model"), minilm_path, mode, save_mode, fused)
            cache[key] = load_handler(directory)
        return cache[key]

    return get


@pytest.fixture(scope="module")
def hf_models(minilm_path):
    """The Hugging Face models the handler's answers must equal (same seeded heads as the handler loads)."""
    from fusedbert.tasks import load_model, load_tokenizer

    cache = {}

    def get(mode: str):
        if mode not in cache:
            cache[mode] = load_model(mode, str(minilm_path), {"sequence_classification": 3,
                                                               "token_classification": 5}.get(mode))
        return cache[mode], load_tokenizer(str(minilm_path))

    return get


def bodies(mode: str) -> list:
    return QUESTIONS if mode == "question_answering" else TEXTS


# ------------------------------------------------------------------------------------------ answers

def expected_sequence_classification(model, tokenizer, text):
    with torch.no_grad():
        probabilities = model(**tokenizer(text, return_tensors="pt")).logits.softmax(-1)[0].tolist()
    best = max(range(3), key=probabilities.__getitem__)
    return SEQUENCE_LABELS[best], dict(zip(SEQUENCE_LABELS, probabilities))


def expected_entities(model, tokenizer, text):
    from transformers import pipeline

    model.config.id2label = dict(enumerate(TOKEN_LABELS))
    model.config.label2id = {n: i for i, n in enumerate(TOKEN_LABELS)}
    ner = pipeline("token-classification", model=model, tokenizer=tokenizer, aggregation_strategy="simple",
                   device="cpu")
    return ner(text)


def expected_qa(model, tokenizer, question, context, max_answer_len=15):
    """Brute force over every span of context tokens (one window: these contexts fit in max_length)."""
    encoding = tokenizer(question, context, return_tensors="pt", return_offsets_mapping=True)
    offsets = encoding.pop("offset_mapping")[0].tolist()
    with torch.no_grad():
        out = model(**encoding)
    is_context = torch.tensor([s == 1 for s in encoding.sequence_ids(0)])
    start_p = out.start_logits[0].masked_fill(~is_context, -torch.inf).softmax(-1)
    end_p = out.end_logits[0].masked_fill(~is_context, -torch.inf).softmax(-1)
    candidates = [(float(start_p[i] * end_p[j]), i, j) for i in range(len(offsets)) for j in range(len(offsets))
                  if is_context[i] and is_context[j] and i <= j < i + max_answer_len]
    score, i, j = max(candidates)
    return score, offsets[i][0], offsets[j][1]


def expected_embedding(model, tokenizer, text):
    encoding = tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        hidden = model(**encoding).last_hidden_state[0]
    return F.normalize(hidden.mean(0), dim=-1)


@pytest.mark.parametrize("save_mode,fused", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_answers_equal_hugging_face(handlers, hf_models, mode, save_mode, fused):
    handler, context = handlers(mode, save_mode, fused)
    model, tokenizer = hf_models(mode)
    result = run_batch(handler, context, bodies(mode))
    assert result.codes == [200] * len(bodies(mode))
    for body, answer in zip(bodies(mode), result.responses):
        if mode == "sequence_classification":
            label, scores = expected_sequence_classification(model, tokenizer, body)
            assert answer["label"] == label
            assert answer["score"] == pytest.approx(scores[label], abs=SCORE_TOLERANCE)
            assert answer["scores"] == pytest.approx(scores, abs=SCORE_TOLERANCE)
        elif mode == "token_classification":
            expected = expected_entities(model, tokenizer, body)
            assert [(e["entity"], e["word"], e["start"], e["end"]) for e in answer] == \
                [(e["entity_group"], e["word"], e["start"], e["end"]) for e in expected]
            assert [e["score"] for e in answer] == pytest.approx([float(e["score"]) for e in expected],
                                                                 abs=SCORE_TOLERANCE)
        elif mode == "question_answering":
            score, start, end = expected_qa(model, tokenizer, body["question"], body["context"])
            assert (answer["start"], answer["end"]) == (start, end)
            assert answer["answer"] == body["context"][start:end]
            assert answer["score"] == pytest.approx(score, abs=SCORE_TOLERANCE)
        else:
            expected = expected_embedding(model, tokenizer, body)
            assert torch.allclose(torch.tensor(answer["embedding"]), expected, atol=SCORE_TOLERANCE)


@pytest.mark.parametrize("save_mode,fused", VARIANTS)
@pytest.mark.parametrize("mode", MODES)
def test_batched_answers_equal_answers_alone(handlers, mode, save_mode, fused):
    handler, context = handlers(mode, save_mode, fused)
    batched = run_batch(handler, context, bodies(mode)).responses
    alone = [run_batch(handler, context, [body]).responses[0] for body in bodies(mode)]
    # Same labels, spans and words; floats as close as a GEMM over a different row count allows.
    for together, single in zip(batched, alone):
        assert _discrete(together) == _discrete(single)
        assert _floats(together) == pytest.approx(_floats(single), abs=1e-6)


def _discrete(answer):
    if isinstance(answer, list):
        return [_discrete(a) for a in answer]
    return {k: v for k, v in answer.items() if not isinstance(v, (float, list, dict))}


def _floats(answer) -> list[float]:
    if isinstance(answer, float):
        return [answer]
    if isinstance(answer, list):
        return [f for a in answer for f in _floats(a)]
    if isinstance(answer, dict):
        return [f for v in answer.values() for f in _floats(v)]
    return []


def test_long_question_answering_context_is_split_into_windows(handlers, hf_models):
    handler, context = handlers("question_answering")
    filler = "Nothing about the answer is said in this sentence. " * 12
    passage = filler + "The secret city is Lisbon. " + filler
    answer = run_batch(handler, context, [{"question": "What is the secret city?", "context": passage}]).responses[0]
    assert answer["answer"] == passage[answer["start"]:answer["end"]]
    model, tokenizer = hf_models("question_answering")
    windows = tokenizer("What is the secret city?", passage, truncation="only_second", max_length=64, stride=16,
                        return_overflowing_tokens=True)["input_ids"]
    assert len(windows) > 3, "the passage must need several windows"
    # The best span over all windows: no window scores higher than the returned answer.
    best = 0.0
    for window in windows:
        decoded_context = tokenizer.decode(window[window.index(tokenizer.sep_token_id) + 1:-1])
        best = max(best, expected_qa(model, tokenizer, "What is the secret city?", decoded_context)[0])
    assert answer["score"] == pytest.approx(best, abs=1e-4)


# ------------------------------------------------------------------------------------------ requests

BAD_BODIES = {
    "empty": b"",
    "whitespace": "  \n\t ",
    "invalid_utf8": b"caf\xc3(",
    "binary_garbage": bytes(range(128, 256)),
    "json_array": [1, 2, 3],
    "json_number": 42,
    "malformed_json": '{"text": "unterminated',
    "text_not_string": {"text": 7},
    "text_missing": {"txt": "typo"},
    "text_empty": {"text": "   "},
    "kserve_empty_instances": {"instances": []},
    "kserve_bad_instance": {"instances": ["fine", {"text": None}]},
}


@pytest.mark.parametrize("name", sorted(BAD_BODIES))
def test_bad_request_gets_its_own_400_and_the_batch_is_answered(handlers, name):
    handler, context = handlers("sequence_classification")
    result = run_batch(handler, context, ["good one", BAD_BODIES[name], "good two"])
    assert result.codes == [200, 400, 200]
    error = result.responses[1]
    assert error["code"] == 400 and error["message"]
    assert result.statuses[1][1] == error["message"]
    assert {"label", "score", "scores"} <= set(result.responses[0]) and {"label"} <= set(result.responses[2])


@pytest.mark.parametrize("body,message", [
    ({"context": "Some context."}, 'no "question" field'),
    ({"question": "Who?"}, 'no "context" field'),
    ({"question": ["Who?"], "context": "Some context."}, '"question" must be a string; got an array'),
    ("just text", "needs a JSON object"),
    ({"question": "why " * 60, "context": "Some context."}, "question is 60 tokens"),
])
def test_question_answering_rejects_incomplete_requests(handlers, body, message):
    handler, context = handlers("question_answering")
    result = run_batch(handler, context, [body, QUESTIONS[0]])
    assert result.codes == [400, 200]
    assert message in result.responses[0]["message"]


@pytest.mark.parametrize("mode", ["sequence_classification", "feature_extraction", "token_classification"])
def test_text_past_max_length_is_answered_and_marked_truncated(handlers, mode):
    handler, context = handlers(mode)
    long_text = "word " * 1000
    result = run_batch(handler, context, [long_text, "short text"])
    assert result.codes == [200, 200]
    assert result.headers[0].get("X-Input-Truncated") == "true"
    assert "X-Input-Truncated" not in result.headers[1]
    if isinstance(result.responses[0], dict):
        assert result.responses[0]["truncated"] is True
        assert "truncated" not in result.responses[1]


def test_request_shapes_give_the_same_answer(handlers):
    handler, context = handlers("sequence_classification")
    text = TEXTS[0]
    result = run_batch(handler, context, [
        text, text.encode(), bytearray(text.encode()), {"text": text}, json.dumps({"text": text}).encode(),
        {"instances": [text, {"text": text}, {"data": text}]},
        {"id": "r1", "inputs": [{"name": "input-0", "datatype": "BYTES", "shape": [2], "data": [text, text]}]},
    ])
    assert result.codes == [200] * 7
    plain = result.responses[0]
    # The ten copies are ten rows of one batch. The encoder gives every row the same bits, but Hugging
    # Face's pooler and classifier (torch GEMMs over 10 rows) can round the rows of their tail block
    # differently (rows 8 and 9 here), so scores are compared as in test_batched_answers_equal_answers_alone.
    assert_same_answer(result.responses[1:5], [plain] * 4)
    assert_same_answer(result.responses[5], {"predictions": [plain] * 3})
    v2 = result.responses[6]
    assert v2["id"] == "r1" and v2["model_name"] == "minilm"
    assert_same_answer(v2["outputs"], [{"name": "input-0", "datatype": "BYTES", "shape": [2], "data": [plain, plain]}])


def assert_same_answer(got, expected, abs_tolerance=1e-6):
    """Equal structure, strings and integers; floats within abs_tolerance."""
    if isinstance(expected, float):
        assert isinstance(got, float) and got == pytest.approx(expected, abs=abs_tolerance)
    elif isinstance(expected, dict):
        assert isinstance(got, dict) and got.keys() == expected.keys()
        for key in expected:
            assert_same_answer(got[key], expected[key], abs_tolerance)
    elif isinstance(expected, list):
        assert isinstance(got, list) and len(got) == len(expected)
        for g, e in zip(got, expected):
            assert_same_answer(g, e, abs_tolerance)
    else:
        assert got == expected


def test_unicode_edge_cases_are_answered_with_exact_offsets(handlers):
    handler, context = handlers("question_answering")
    contexts = ["🙂🙂 emoji first then words", "مرحبا بالعالم hello", "e\u0301te\u0301 combining", "a\u200bb zero width",
                "NUL\x00inside the text", "\x00"]
    result = run_batch(handler, context, [{"question": "What?", "context": c} for c in contexts])
    assert result.codes == [200] * len(contexts)
    for text, answer in zip(contexts, result.responses):
        assert answer["answer"] == text[answer["start"]:answer["end"]]
    assert result.responses[-1] == {"answer": "", "score": 0.0, "start": 0, "end": 0}


def test_internal_error_answers_its_batch_with_500_and_the_handler_keeps_serving(handlers, monkeypatch):
    handler, context = handlers("sequence_classification")

    def broken(*args):
        raise RuntimeError("simulated kernel failure")

    with monkeypatch.context() as patch:
        patch.setattr(handler, "model", broken)
        result = run_batch(handler, context, ["one", b"", "two"])
    assert result.codes == [500, 400, 500]
    assert result.responses[0]["message"] == "internal error: RuntimeError: simulated kernel failure"
    assert run_batch(handler, context, ["one"]).codes == [200]


def test_per_request_status_reaches_the_frontend_message(handlers):
    """Through TorchServe's Service.predict: the bytes the worker sends to the frontend carry each
    request's own code, reason phrase and body."""
    from ts.service import Service

    handler, _ = handlers("sequence_classification")
    context = make_context(handler.context.system_properties["model_dir"])
    service = Service("minilm", context.system_properties["model_dir"], context.manifest, handler.handle, None, 8,
                      metrics_cache=context.metrics)
    service.set_cl_socket(None)
    batch = [{"requestId": f"id-{i}".encode(), "parameters": [{"name": "body", "value": v, "contentType": "text/plain"}]}
             for i, v in enumerate([b"fine", b"\xff\xfe", b"also fine"])]
    code, predictions = _decode_predict_response(service.predict(batch))
    assert code == 200
    assert [(p["id"], p["status"]) for p in predictions] == [("id-0", 200), ("id-1", 400), ("id-2", 200)]
    assert predictions[1]["phrase"] == "request body is not valid UTF-8 (invalid byte at offset 0)"
    assert json.loads(predictions[1]["body"])["code"] == 400
    assert json.loads(predictions[0]["body"])["label"] in SEQUENCE_LABELS
    assert predictions[0]["content_type"] == "application/json"


def _decode_predict_response(message: bytes):
    """Parse ts.protocol.otf_message_handler.create_predict_response's frame."""
    position = 0

    def integer():
        nonlocal position
        (value,) = struct.unpack_from("!i", message, position)
        position += 4
        return value

    def chunk() -> bytes:
        nonlocal position
        length = integer()
        position += length
        return bytes(message[position - length:position])

    code = integer()
    chunk()  # batch message
    predictions = []
    while True:
        length = integer()
        if length == -1:
            return code, predictions
        position -= 4
        prediction = {"id": chunk().decode(), "content_type": chunk().decode(), "status": integer(),
                      "phrase": chunk().decode()}
        prediction["headers"] = {chunk().decode(): chunk().decode() for _ in range(integer())}
        prediction["body"] = chunk().decode()
        predictions.append(prediction)


def test_metrics_count_real_and_padded_tokens(handlers, minilm_tokenizer, caplog):
    handler, context = handlers("sequence_classification")
    texts = ["one two three four five six", "one"]
    with caplog.at_level(logging.INFO, logger="ts.metrics.caching_metric"):
        run_batch(handler, context, texts)
    emitted = dict(re.findall(r"\[METRICS\](\w+)\.[^:]*:([0-9.]+)\|", caplog.text))
    lengths = [len(minilm_tokenizer(t)["input_ids"]) for t in texts]
    padded = max(lengths) * len(lengths) - sum(lengths)
    assert float(emitted["RealTokens"]) == sum(lengths)
    assert float(emitted["PaddedTokens"]) == padded
    assert float(emitted["PaddingRatio"]) == pytest.approx(100 * padded / (max(lengths) * len(lengths)))
    assert float(emitted["BatchSize"]) == 2
    assert float(emitted["ModelTime"]) > 0
    assert float(emitted["TokenizeTime"]) > 0
    assert float(emitted["PostprocessTime"]) > 0


# TorchServe 0.12's frontend (WorkerLifeCycle.ReaderThread) reads a metric from each stdout line that matches this.
FRONTEND_METRIC_LINE = re.compile(r"(INFO > )?\[METRICS\](\w+)\.(\w+):([0-9.]+)\|#ModelName:minilm,Level:Model\|"
                                  r"#type:(\w+)\|#hostname:[^,]+,\d+,request-0,request-1")


def test_a_batchs_metrics_reach_the_log_as_one_record_of_torchserve_lines(handlers, caplog):
    handler, context = handlers("sequence_classification")
    with caplog.at_level(logging.INFO, logger=handler_module.METRIC_LOGGER.name):
        run_batch(handler, context, ["one two three", "four"])
    records = [r for r in caplog.records if r.name == handler_module.METRIC_LOGGER.name]
    assert len(records) == 1
    lines = records[0].getMessage().split("\n")
    matches = [FRONTEND_METRIC_LINE.fullmatch(line) for line in lines]
    assert all(matches), lines
    assert [(m.group(2), m.group(3), m.group(5)) for m in matches] == [
        ("TokenizeTime", "Milliseconds", "GAUGE"), ("RealTokens", "Count", "COUNTER"),
        ("PaddedTokens", "Count", "COUNTER"), ("PaddingRatio", "Percent", "GAUGE"), ("BatchSize", "Count", "GAUGE"),
        ("ModelTime", "Milliseconds", "GAUGE"), ("PostprocessTime", "Milliseconds", "GAUGE")]


# How the handler would report each of its metrics through TorchServe's metric API. Each call gets a list of
# its own: TorchServe 0.12 adds the ModelName dimension to the API's shared default list, so in a process that
# served another model first (this test session) the default would carry that model's name. A worker
# serves one model.
TORCHSERVE_METRIC_CALLS = {
    "TokenizeTime": lambda metrics, value: metrics.add_time("TokenizeTime", value, dimensions=[]),
    "RealTokens": lambda metrics, value: metrics.add_counter("RealTokens", value, dimensions=[]),
    "PaddedTokens": lambda metrics, value: metrics.add_counter("PaddedTokens", value, dimensions=[]),
    "PaddingRatio": lambda metrics, value: metrics.add_percent("PaddingRatio", value, dimensions=[]),
    "BatchSize": lambda metrics, value: metrics.add_metric("BatchSize", value, "count", dimensions=[],
                                                           metric_type=MetricTypes.GAUGE),
    "ModelTime": lambda metrics, value: metrics.add_time("ModelTime", value, dimensions=[]),
    "PostprocessTime": lambda metrics, value: metrics.add_time("PostprocessTime", value, dimensions=[]),
}


def test_metric_lines_are_those_torchserves_metric_api_writes(handlers, caplog):
    """The handler formats its metric lines itself (one log call per batch): they must stay exactly what
    the installed TorchServe writes for the same metrics, timestamps aside."""
    assert set(TORCHSERVE_METRIC_CALLS) == set(handler_module.BATCH_METRICS)
    handler, context = handlers("sequence_classification")
    with caplog.at_level(logging.INFO, logger=handler_module.METRIC_LOGGER.name):
        run_batch(handler, context, ["one two three", "four"])
        ours = [r.getMessage() for r in caplog.records if r.name == handler_module.METRIC_LOGGER.name]
        caplog.clear()
        for name, value in handler._batch_metrics:
            TORCHSERVE_METRIC_CALLS[name](context.metrics, value)
        theirs = [r.getMessage() for r in caplog.records if r.name == handler_module.METRIC_LOGGER.name]
    assert len(ours) == 1 and len(theirs) == len(handler_module.BATCH_METRICS)

    def without_timestamp(line: str) -> str:
        return re.sub(r"(\|#hostname:[^,]+),\d+,", r"\1,<time>,", line)

    assert [without_timestamp(line) for line in ours[0].split("\n")] == [without_timestamp(line) for line in theirs]


# ------------------------------------------------------------------------------------- explanations

@pytest.mark.parametrize("mode,fused", [("sequence_classification", False), ("sequence_classification", True),
                                        ("question_answering", True), ("token_classification", True)])
def test_explanations_in_pretrained_mode(handlers, mode, fused):
    handler, context = handlers(mode, "pretrained", fused)
    body = QUESTIONS[0] if mode == "question_answering" else {"text": TEXTS[0], "target": 1}
    result = run_batch(handler, context, [body, bodies(mode)[1]], explain=[True, False])
    assert result.codes == [200, 200]
    explanation = result.responses[0]
    suffixes = ["_answer_start", "_answer_end"] if mode == "question_answering" else [""]
    for suffix in suffixes:
        importances = explanation["importances" + suffix]
        assert len(importances) == len(explanation["words"])
        assert sum(v * v for v in importances) == pytest.approx(1.0, abs=1e-5)
        assert isinstance(explanation["delta" + suffix], float)
    assert "importances" not in result.responses[1]  # the other request of the batch got a prediction


def test_explanations_in_torchscript_mode_say_they_need_pretrained(handlers):
    handler, context = handlers("sequence_classification", "torchscript", True)
    result = run_batch(handler, context, ["explain me", "predict me"], explain=[True, False])
    assert result.codes == [501, 200]
    assert 'explanations need "save_mode": "pretrained"' in result.responses[0]["message"]


# ------------------------------------------------------------------------------ long texts, prefixes

def trained_tokenizer(kind: str):
    """A small fast tokenizer of another family than MiniLM's WordPiece, trained here on the benchmark
    sentences: "byte_level" (GPT-2 / RoBERTa style BPE) or "metaspace" (SentencePiece style Unigram)."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    from benchmarks.texts import load_sentences

    if kind == "byte_level":
        backend = Tokenizer(models.BPE())
        backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        backend.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    else:
        backend = Tokenizer(models.Unigram())
        backend.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
        backend.pre_tokenizer = pre_tokenizers.Metaspace()
        trainer = trainers.UnigramTrainer(vocab_size=600, special_tokens=["<s>", "</s>", "<pad>", "<unk>"],
                                          unk_token="<unk>")
    backend.train_from_iterator(load_sentences(), trainer)
    from tokenizers.processors import TemplateProcessing

    backend.post_processor = TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> $B </s>",
                                                special_tokens=[("<s>", 0), ("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", cls_token="<s>", sep_token="</s>")


def long_texts() -> list[str]:
    """Texts past max_length whose cut points are awkward: runs of spaces and other whitespace, marks
    that combine, characters the normalizer drops or spaces out, words longer than a prefix limit."""
    from benchmarks.texts import load_sentences

    prose = " ".join(load_sentences(40))
    return [
        prose,
        "word " * 1000,
        prose.replace(" ", "  \t\n ").replace(".", ". \u00a0"),
        ("cafe\u0301 nai\u0308ve \x00null\x00 zero\u200bwidth \U0001F642 ok " * 200),
        "\u4e2d\u6587\u6ca1\u6709\u7a7a\u683c" * 400 + " then words " * 50,  # no space until far past the limit
        ("x" * 150 + " ") * 40 + prose,  # each word one [UNK]: a short prefix holds too few tokens
        "Short one.",
        prose[:200],
    ]


def detailed_and_plain_mode(tokenizer, max_length: int):
    """A mode that reads offsets (tokenized through the tokenizer's __call__) and one that does not (through
    its Rust backend directly)."""
    from modes import FeatureExtractionMode, TokenClassificationMode

    return (TokenClassificationMode(tokenizer, max_length=max_length, labels=TOKEN_LABELS),
            FeatureExtractionMode(tokenizer, max_length=max_length, normalize=True))


@pytest.mark.parametrize("kind", ["minilm", "byte_level", "metaspace"])
def test_long_texts_tokenize_from_a_prefix_exactly_as_whole(kind, minilm_tokenizer):
    """Every prefix limit, from one that cuts inside the first few tokens to past the whole text, gives
    the rows of the whole text: at max_length 16 the cut lands among the tokens the model sees."""
    from modes import Example, prefixes_tokenize_alike

    tokenizer = minilm_tokenizer if kind == "minilm" else trained_tokenizer(kind)
    assert prefixes_tokenize_alike(tokenizer)
    max_length, texts = 16, long_texts()
    whole = tokenizer(texts, truncation=True, max_length=max_length, return_overflowing_tokens=True,
                      return_offsets_mapping=True, return_special_tokens_mask=True)
    sample_of_row = whole["overflow_to_sample_mapping"]
    first_rows = [sample_of_row.index(i) for i in range(len(texts))]
    assert [sample_of_row.count(i) > 1 for i in range(len(texts))] == [True] * 6 + [False, True]
    for mode in detailed_and_plain_mode(tokenizer, max_length):
        for limit in range(1, 200, 3):
            mode.prefix_chars = limit
            got = mode.encode([Example(text) for text in texts])
            assert got.truncated == [sample_of_row.count(i) > 1 for i in range(len(texts))], limit
            for position, row in enumerate(first_rows):
                where = f"{mode.name}, text {position}, prefix limit {limit}"
                length = len(whole["input_ids"][row])
                for key in got.inputs:
                    assert got.inputs[key][position, :length].tolist() == whole[key][row], where
                assert got.inputs["attention_mask"][position].sum() == length, where
                if mode.token_details:
                    assert got.rows[position]["offset_mapping"] == whole["offset_mapping"][row], where
                    assert got.rows[position]["special_tokens_mask"] == whole["special_tokens_mask"][row], where


def test_both_ways_of_tokenizing_ignore_settings_left_by_another_tokenizer_call(minilm_tokenizer):
    """A mode tokenizes as its own __call__ would (truncated at its max_length, padded to the batch's
    longest), whatever an earlier call with other settings (another mode, captum) left in the backend."""
    import copy

    from modes import Example

    tokenizer = copy.deepcopy(minilm_tokenizer)
    texts = ["a few words", "one two three four five six seven eight nine ten eleven twelve", "x"]
    expected = tokenizer(texts, truncation=True, max_length=8, padding="longest", return_tensors="pt")
    for mode in detailed_and_plain_mode(tokenizer, max_length=8):
        for other_call in ({"truncation": False}, {"truncation": True, "max_length": 5},
                           {"padding": "max_length", "max_length": 32, "truncation": True}):
            tokenizer(texts, **other_call)
            got = mode.encode([Example(text) for text in texts])
            assert set(got.inputs) == set(expected), (mode.name, other_call)
            for key, tensor in expected.items():
                assert torch.equal(got.inputs[key], tensor), (mode.name, other_call, key)
            assert got.truncated == [False, True, False], (mode.name, other_call)


class _RecordingBackend:
    """A Rust tokenizer that records the longest text of each encode_batch_fast call."""

    def __init__(self, backend, seen: list):
        self._backend, self._seen = backend, seen

    def __getattr__(self, name):
        return getattr(self._backend, name)

    def encode_batch_fast(self, texts):
        self._seen.append(max(map(len, texts)))
        return self._backend.encode_batch_fast(texts)


@pytest.mark.parametrize("details", [True, False], ids=["tokenizer_call", "rust_backend"])
def test_a_huge_text_is_tokenized_only_as_far_as_max_length_needs(minilm_tokenizer, monkeypatch, details):
    from modes import Example

    mode = detailed_and_plain_mode(minilm_tokenizer, max_length=128)[0 if details else 1]
    seen = []
    if details:
        tokenize = type(minilm_tokenizer).__call__
        monkeypatch.setattr(type(minilm_tokenizer), "__call__", lambda self, texts, **kwargs:
                            seen.append(max(map(len, texts))) or tokenize(self, texts, **kwargs))
    else:
        recording = _RecordingBackend(minilm_tokenizer.backend_tokenizer, seen)
        monkeypatch.setattr(type(minilm_tokenizer), "backend_tokenizer", property(lambda self: recording))
    huge = ("The fused encoder runs on real tokens only. " * 30_000)[: 1 << 20]
    batch = mode.encode([Example(huge), Example("short")])
    assert batch.truncated == [True, False] and batch.real_tokens == 128 + 3
    assert seen == [huge.index(" ", 128 * 8)]  # one call, on a prefix ending before the next space


@pytest.mark.parametrize("change", ["left truncation", "no pre-tokenizer", "a replacing normalizer"])
def test_prefixes_are_not_used_where_they_could_tokenize_differently(minilm_tokenizer, change):
    import copy

    from tokenizers import Regex, normalizers

    from modes import prefixes_tokenize_alike

    tokenizer = copy.deepcopy(minilm_tokenizer)
    if change == "left truncation":
        tokenizer.truncation_side = "left"
    elif change == "no pre-tokenizer":
        tokenizer.backend_tokenizer.pre_tokenizer = None
    else:  # a pattern may span the space a prefix ends before
        tokenizer.backend_tokenizer.normalizer = normalizers.Replace(Regex("a b"), "ab")
    assert not prefixes_tokenize_alike(tokenizer)


# ------------------------------------------------------------------------------------- CUDA graphs

GRAPH_BUCKETS = [[1, 16], [4, 32], [8, 64, 256]]


@pytest.mark.parametrize("side", ["right", "left"])
def test_pad_to_longest_gives_what_tokenizer_pad_gives(minilm_tokenizer, side):
    import copy

    from modes import pad_to_longest

    tokenizer = copy.deepcopy(minilm_tokenizer)
    tokenizer.padding_side = side
    encoding = tokenizer(["short", "a rather longer sentence than the first one", "mid length text"])
    for keys in (("input_ids", "attention_mask", "token_type_ids"), ("input_ids", "attention_mask")):
        columns = {k: encoding[k] for k in keys}
        got, expected = pad_to_longest(tokenizer, columns), tokenizer.pad(columns, padding="longest", return_tensors="pt")
        assert got.keys() == set(keys)
        for key in keys:
            assert got[key].dtype == torch.long and torch.equal(got[key], expected[key]), key


def test_cuda_graphs_module_is_loaded_from_the_archive_copy_with_torch_alone(tmp_path):
    import subprocess
    import sys

    import fusedbert.cuda_graphs

    archived = tmp_path / "cuda_graphs.py"
    archived.write_text(Path(fusedbert.cuda_graphs.__file__).read_text())
    module = handler_module._fusedbert_file(str(tmp_path), "cuda_graphs.py", '"cuda_graph_buckets"')
    assert Path(module.__file__) == archived
    assert module.parse_buckets([[4, 32, 64]]) == [module.Bucket(4, 32, 64)]
    # What an archive's worker has: torch, not the fusedbert package; nor the op library for an unfused
    # (stock) model, whose capture must not need the fused encoder's settings.
    probe = ("import importlib.util, sys; sys.modules['fusedbert'] = None; "
             f"spec = importlib.util.spec_from_file_location('cg', {str(archived)!r}); "
             "m = importlib.util.module_from_spec(spec); sys.modules['cg'] = m; spec.loader.exec_module(m); "
             "ctx = m.gemm_autotuning(); ctx.__enter__(); ctx.__exit__(None, None, None); "
             "print(m.Bucket(1, 8).token_capacity)")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0 and result.stdout.strip() == "8", result.stderr


def test_cuda_graph_keys_are_ignored_with_one_warning_on_cpu(handlers, tmp_path, caplog):
    handler, context = handlers("sequence_classification")
    directory = copy_model_dir(context.system_properties["model_dir"], tmp_path / "graphs",
                               cuda_graph_buckets=GRAPH_BUCKETS, cuda_graph_warmup=True)
    with caplog.at_level(logging.INFO, logger=handler_module.logger.name):
        graph_handler, graph_context = load_handler(directory)
    warnings = [r.getMessage() for r in caplog.records
                if r.name == handler_module.logger.name and r.levelno >= logging.WARNING]
    assert warnings == ['setup_config.json: "cuda_graph_buckets" and "cuda_graph_warmup" are ignored: this worker '
                        "runs on the CPU"]
    assert graph_handler.graph_runner is None
    assert run_batch(graph_handler, graph_context, TEXTS).responses == run_batch(handler, context, TEXTS).responses


def test_predictions_go_through_the_graph_runner_with_cpu_inputs_and_explanations_do_not(handlers, monkeypatch):
    handler, context = handlers("sequence_classification", "pretrained", True)
    devices = []

    def runner(*inputs):
        devices.append([t.device.type for t in inputs])
        return handler.model(*inputs)

    with monkeypatch.context() as patch:
        patch.setattr(handler, "graph_runner", runner)
        result = run_batch(handler, context, [{"text": TEXTS[0], "target": 1}, TEXTS[1]], explain=[True, False])
    assert result.codes == [200, 200]
    assert "importances" in result.responses[0]  # captum needs autograd: the model itself, never a graph
    assert devices == [["cpu"] * 3]  # one prediction batch; the runner copies to the GPU itself


# On a GPU: the handler with buckets against the same model without, per variant (save_mode, fused, data_type).
GPU_VARIANTS = {
    "pretrained_fused_fp16": ("pretrained", True, "fp16"),
    "torchscript_fused_fp32": ("torchscript", True, "fp32"),
    "pretrained_unfused_fp16": ("pretrained", False, "fp16"),
}
# Graph and eager runs differ in GEMM row counts and algorithms (tuned while capturing); see test_cuda_graphs.py.
LOGIT_TOLERANCE = {"fp32": 1e-4, "fp16": 2e-2}
GPU_ID = 0


@pytest.fixture(scope="module")
def gpu_handler_pairs(minilm_path, tmp_path_factory):
    """(mode, variant) -> ((handler, context) without buckets, (handler, context) with GRAPH_BUCKETS captured at
    load), on cuda:0."""
    cache = {}

    def get(mode: str, variant: str):
        if (mode, variant) not in cache:
            save_mode, fused, data_type = GPU_VARIANTS[variant]
            # The GPU machine's MiniLM copy is float16: tracing loads it in float32 (load_model's default).
            eager_dir = write_model_dir(tmp_path_factory.mktemp("eager"), minilm_path, mode, save_mode, fused,
                                        device=f"cuda:{GPU_ID}", data_type=data_type)
            graph_dir = copy_model_dir(eager_dir, tmp_path_factory.mktemp("graphs") / "model",
                                       cuda_graph_buckets=GRAPH_BUCKETS)
            cache[mode, variant] = (load_handler(eager_dir, gpu_id=GPU_ID), load_handler(graph_dir, gpu_id=GPU_ID))
        return cache[mode, variant]

    return get


def graph_batches(mode: str) -> dict[str, list]:
    return {"one_request": bodies(mode)[1:2], "mixed_lengths": bodies(mode), "fits_no_bucket": bodies(mode) * 3}


@pytest.mark.cuda
@pytest.mark.parametrize("variant", GPU_VARIANTS)
@pytest.mark.parametrize("mode", ["sequence_classification", "question_answering"])
def test_graph_outputs_and_answers_equal_the_handler_without_graphs(gpu_handler_pairs, mode, variant, monkeypatch):
    (eager, eager_context), (graphed, context) = gpu_handler_pairs(mode, variant)
    runner = graphed.graph_runner
    assert {r.bucket for r in runner.reports} == set(runner.buckets)  # all captured at load
    tolerance = LOGIT_TOLERANCE[GPU_VARIANTS[variant][2]]
    for name, batch_bodies in graph_batches(mode).items():
        batch = graphed.preprocess([graphed.mode.parse(body) for body in batch_bodies])
        mask = batch.inputs["attention_mask"]
        bucket = runner.bucket_for(*mask.shape, int(mask.sum()))
        assert (bucket is None) == (name == "fits_no_bucket")
        synchronizations = []
        with monkeypatch.context() as patch:
            synchronize = torch.cuda.synchronize
            patch.setattr(torch.cuda, "synchronize", lambda *a: (synchronizations.append(a), synchronize(*a)))
            graphed_outputs = graphed.inference(batch)
        assert synchronizations == []  # the runner's outputs arrive on the host: it has waited already
        for got, expected in zip(graphed_outputs, eager.inference(batch), strict=True):
            assert got.shape == expected.shape
            difference = (got - expected).abs()
            if runner.token_level:  # padding positions carry no answer
                difference = difference[mask.bool()]
            assert difference.max().item() <= tolerance, f"{name}: max logit difference {difference.max().item():.3g}"
        graph_result = run_batch(graphed, context, batch_bodies)
        assert graph_result.codes == [200] * len(batch_bodies)
        eager_answers = run_batch(eager, eager_context, batch_bodies).responses
        # Probabilities move less than logits; a near-tie may pick another label or span with a close score.
        assert _floats(graph_result.responses) == pytest.approx(_floats(eager_answers), abs=tolerance)


@pytest.mark.cuda
def test_auto_buckets_are_the_ladder_for_torchserves_batch_size(minilm_path, tmp_path):
    from fusedbert.cuda_graphs import bucket_ladder

    directory = write_model_dir(tmp_path, minilm_path, "sequence_classification", "pretrained", True, data_type="fp16",
                                max_length=64, cuda_graph_buckets="auto", cuda_graph_warmup=False)
    handler, context = load_handler(directory, gpu_id=GPU_ID)
    assert context.system_properties["batch_size"] == 8
    # The runner's Bucket is the class of the handler's own copy of cuda_graphs.py: compare the fields.
    def fields(buckets):
        return {(b.batch_size, b.seq_len, b.max_tokens) for b in buckets}

    assert fields(handler.graph_runner.buckets) == fields(bucket_ladder(8, 64))
    assert run_batch(handler, context, TEXTS).codes == [200] * len(TEXTS)


@pytest.mark.cuda
@pytest.mark.parametrize("warmup", [True, False])
def test_cuda_graph_warmup_captures_at_load_or_on_first_batch(minilm_path, tmp_path, caplog, warmup):
    directory = write_model_dir(tmp_path, minilm_path, "question_answering", "pretrained", True, data_type="fp16",
                                cuda_graph_buckets=GRAPH_BUCKETS, cuda_graph_warmup=warmup)
    with caplog.at_level(logging.INFO, logger=handler_module.logger.name):
        handler, context = load_handler(directory, gpu_id=GPU_ID)
    runner = handler.graph_runner
    if warmup:
        assert [r.bucket for r in runner.reports] == sorted(runner.buckets, key=lambda b: b.token_capacity,
                                                            reverse=True)
        assert runner.pool_bytes > 0
        assert "CUDA graphs: 3 bucket(s) captured in" in caplog.text
        assert f"holding {runner.pool_bytes / 2**20:.1f} MiB of GPU memory" in caplog.text
    else:
        assert runner.reports == []  # question answering has no labels to check with a warm-up batch
        assert "CUDA graphs: 3 bucket(s), each captured on its first batch" in caplog.text
        assert run_batch(handler, context, QUESTIONS[:1]).codes == [200]
        assert len(runner.reports) == 1
