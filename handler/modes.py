"""What each serving mode does with a request: decode and validate it, tokenize a batch, build answers.

One object per mode; the handler drives them and never branches on the mode. Every model, traced or
not, is called as ``model(input_ids, attention_mask, token_type_ids)`` and returns a tuple (see
``fusedbert.tasks.TracedTaskModule``). Needs only torch and transformers (captum for explanations).
"""

from __future__ import annotations

import json
import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np
import torch
import torch.nn.functional as F

# The tokenizer's own names for the tensors the model takes, in the model's argument order.
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
# A text longer than max_length times this many characters is first tokenized from a prefix (see
# Mode.encode); English averages 4 to 5 characters per token.
PREFIX_CHARS_PER_TOKEN = 8
# How much longer the next prefix is when one held too few tokens (long words, runs of whitespace).
PREFIX_GROWTH = 8
# Where a prefix may end: just before a space that follows a word.
PREFIX_END = re.compile(r"(?<=\S) ")
# Pre-tokenizers that end a piece at every space after a word, and normalizers that map characters
# without looking past a space: with both, a prefix ended by PREFIX_END tokenizes to the leading tokens
# of its whole text.
SPACE_SPLITTING_PRE_TOKENIZERS = ("BertPreTokenizer", "Whitespace", "WhitespaceSplit", "ByteLevel", "Metaspace")
LOCAL_NORMALIZERS = ("BertNormalizer", "Lowercase", "NFC", "NFD", "NFKC", "NFKD", "StripAccents", "Strip", "Prepend")


class RequestError(ValueError):
    """A request that cannot be answered as sent; ``status`` is its HTTP code."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


# ------------------------------------------------------------------------------------------ decoding

def request_body(request: Any) -> Any:
    """The payload TorchServe delivered for one request: its "data" or "body" parameter, or the item itself
    (a KServe envelope hands the handler bare instances)."""
    if isinstance(request, dict) and ("data" in request or "body" in request):
        return request["data"] if request.get("data") is not None else request.get("body")
    return request


def decode_payload(body: Any) -> str | dict:
    """Raw text or a JSON object, from the bytes, str or already-parsed JSON TorchServe delivers.

    A text body whose first non-blank character is ``{`` is read as JSON (TorchServe parses it itself
    only when the client sent ``Content-Type: application/json``). Only ``json.loads``: nothing from a
    request is evaluated.
    """
    if isinstance(body, (bytes, bytearray)):
        try:
            body = bytes(body).decode("utf-8")
        except UnicodeDecodeError as e:
            raise RequestError(f"request body is not valid UTF-8 (invalid byte at offset {e.start})") from None
    if isinstance(body, str):
        if not body.strip():
            raise RequestError("request body is empty or whitespace only")
        if body.lstrip().startswith("{"):
            try:
                body = json.loads(body)
            except json.JSONDecodeError as e:
                raise RequestError(f"request body starts with '{{' but is not valid JSON: {e.msg} at "
                                   f"line {e.lineno} column {e.colno}") from None
        else:
            return body
    if not isinstance(body, dict):
        raise RequestError(f"request body must be text or a JSON object; got {_json_type(body)}")
    return body


def _json_type(value: Any) -> str:
    names = {dict: "an object", list: "an array", str: "a string", bool: "a boolean", int: "a number",
             float: "a number", type(None): "null"}
    return names.get(type(value), type(value).__name__)


def _field(payload: dict, key: str) -> str:
    if key not in payload:
        raise RequestError(f'JSON request has no "{key}" field')
    value = payload[key]
    if not isinstance(value, str):
        raise RequestError(f'"{key}" must be a string; got {_json_type(value)}')
    if not value.strip():
        raise RequestError(f'"{key}" is empty or whitespace only')
    return value


def _target(payload: Any) -> int | str | None:
    """The optional explanation target: a label index or name."""
    if not isinstance(payload, dict) or payload.get("target") is None:
        return None
    target = payload["target"]
    if isinstance(target, bool) or not isinstance(target, (int, str)):
        raise RequestError(f'"target" must be a label index or name; got {_json_type(target)}')
    return target


@dataclass
class Example:
    """One validated input. ``text`` is the text to classify or embed, or the QA context."""

    text: str
    question: str | None = None
    target: int | str | None = None


@dataclass
class Answer:
    body: Any
    truncated: bool = False


@dataclass
class EncodedBatch:
    """A tokenized batch: model inputs padded to the longest row, and what the answers need per row."""

    inputs: dict[str, torch.Tensor]
    rows: list[dict]  # per row: offsets, special-token mask / sequence ids, ...
    row_example: list[int]  # row -> index of its example (QA contexts span several rows)
    truncated: list[bool]  # per example

    @property
    def real_tokens(self) -> int:
        return int(self.inputs["attention_mask"].sum())

    @property
    def padded_tokens(self) -> int:
        return self.inputs["attention_mask"].numel() - self.real_tokens


# --------------------------------------------------------------------------------------------- modes

def prefixes_tokenize_alike(tokenizer) -> bool:
    """Whether, for this fast tokenizer, a text's prefix ended by PREFIX_END gives the same leading tokens
    as the whole text (so a text truncated at max_length never needs tokenizing past its first few
    hundred words). Read from the backend's pre-tokenizer and normalizer; False when unsure."""
    if tokenizer.truncation_side != "right":
        return False
    backend = tokenizer.backend_tokenizer
    if backend.pre_tokenizer is None:
        return False
    pre_tokenizer = json.loads(backend.pre_tokenizer.__getstate__())
    if pre_tokenizer["type"] == "Sequence":  # later members only split the first one's pieces further
        pre_tokenizer = (pre_tokenizer["pretokenizers"] or [{"type": None}])[0]
    splits_at_spaces = (pre_tokenizer["type"] in SPACE_SPLITTING_PRE_TOKENIZERS
                        and pre_tokenizer.get("use_regex", True) and pre_tokenizer.get("split", True))
    if backend.normalizer is None:
        return splits_at_spaces
    normalizer = json.loads(backend.normalizer.__getstate__())
    members = normalizer["normalizers"] if normalizer["type"] == "Sequence" else [normalizer]
    return splits_at_spaces and all(member["type"] in LOCAL_NORMALIZERS for member in members)


def pad_to_longest(tokenizer, columns: dict[str, list[list[int]]]) -> dict[str, torch.Tensor]:
    """Each model input's rows padded to the longest row, as one int64 tensor: what
    ``tokenizer.pad(..., padding="longest", return_tensors="pt")`` gives (the tokenizer's padding side and
    pad values). Each row is written into a filled numpy array: tokenizer.pad's per-row Python work took a
    third of a batch's tokenizing time, and torch.tensor on padded lists still 1.6 ms for 16 rows here,
    against 0.25 ms this way."""
    longest = max(len(row) for row in columns["input_ids"])
    pad_values = {"input_ids": tokenizer.pad_token_id, "attention_mask": 0,
                  "token_type_ids": tokenizer.pad_token_type_id}
    left = tokenizer.padding_side == "left"
    padded = {}
    for key, rows in columns.items():
        array = np.full((len(rows), longest), pad_values[key], dtype=np.int64)
        for i, row in enumerate(rows):
            if left:
                array[i, longest - len(row):] = row
            else:
                array[i, :len(row)] = row
        padded[key] = torch.from_numpy(array)
    return padded


class Mode:
    """The steps shared by every mode; subclasses say how to read a request and build its answer."""

    name: str
    uses_labels = False
    # Whether answers read each token's offsets and special-token flag: asking the tokenizer for them
    # costs 15% of a batch's tokenizing.
    token_details = False

    def __init__(self, tokenizer, max_length: int, labels: list[str] | None = None):
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.labels = labels
        self.prefix_chars = max_length * PREFIX_CHARS_PER_TOKEN if prefixes_tokenize_alike(tokenizer) else None

    def parse(self, payload: str | dict) -> Example:
        if isinstance(payload, str):
            return Example(payload)
        return Example(_field(payload, "text"), target=_target(payload))

    def encode(self, examples: list[Example]) -> EncodedBatch:
        """One tokenizer call for the batch, truncated at max_length, padded to the longest row.

        A long text goes in as a prefix of about ``prefix_chars`` characters: tokenizing a 1 MiB request
        whole took 0.8 s, all of it for tokens past max_length. A prefix whose tokens overflow max_length
        gives the text's own first row; one that does not is replaced by a prefix PREFIX_GROWTH times
        longer, up to the whole text, and the batch is tokenized again.
        """
        texts = [e.text for e in examples]
        limits = [self.prefix_chars] * len(texts)
        while True:
            heads = [_prefix(text, limit) for text, limit in zip(texts, limits)]
            rows, truncated = self._first_rows(heads)
            unfilled = [i for i, (head, text) in enumerate(zip(heads, texts))
                        if len(head) < len(text) and not truncated[i]]
            if not unfilled:
                break
            for i in unfilled:
                limits[i] *= PREFIX_GROWTH
        every_row = list(range(len(examples)))
        return self._pad(rows, every_row, every_row, truncated)

    def _first_rows(self, heads: list[str]) -> tuple[dict[str, list], list[bool]]:
        """Each text's first row of tokens, cut at max_length (key -> one list per text: the model inputs,
        and with token_details its offsets and special-token mask), and whether the text had more tokens."""
        if not self.token_details:
            return self._first_rows_without_details(heads)
        # Overflowing tokens come back as extra rows: the way to know a text was cut.
        encoding = self.tokenizer(heads, truncation=True, max_length=self.max_length, return_overflowing_tokens=True,
                                  return_offsets_mapping=True, return_special_tokens_mask=True)
        sample_of_row = encoding["overflow_to_sample_mapping"]
        rows_per_text = Counter(sample_of_row)
        first_rows = [sample_of_row.index(i) for i in range(len(heads))]
        keys = [k for k in (*MODEL_INPUTS, "offset_mapping", "special_tokens_mask") if k in encoding]
        truncated = [rows_per_text[i] > 1 for i in range(len(heads))]
        return {k: [encoding[k][r] for r in first_rows] for k in keys}, truncated

    def _first_rows_without_details(self, heads: list[str]) -> tuple[dict[str, list], list[bool]]:
        """_first_rows straight from the Rust tokenizer, without the offsets that no answer of this mode reads:
        the same ids as the tokenizer's ``__call__`` (which calls the same backend). Mode.encode of one short
        text took 35 µs this way against 60 µs through ``__call__`` (2-core VM)."""
        backend = self.tokenizer.backend_tokenizer
        # The settings __call__ gives the backend for truncation=True (another mode's or captum's call may
        # have changed them): cut at max_length from the tokenizer's side, no padding.
        truncation = {"max_length": self.max_length, "stride": 0, "strategy": "longest_first",
                      "direction": self.tokenizer.truncation_side}
        if backend.truncation != truncation:
            backend.enable_truncation(**truncation)
        if backend.padding is not None:
            backend.no_padding()
        encodings = backend.encode_batch_fast(heads)
        columns = {"input_ids": [e.ids for e in encodings], "attention_mask": [e.attention_mask for e in encodings],
                   "token_type_ids": [e.type_ids for e in encodings]}
        return ({k: columns[k] for k in MODEL_INPUTS if k in self.tokenizer.model_input_names},
                [bool(e.overflowing) for e in encodings])

    def _pad(self, encoding, rows: list[int], row_example: list[int], truncated: list[bool]) -> EncodedBatch:
        present = [k for k in MODEL_INPUTS if k in encoding]
        padded = pad_to_longest(self.tokenizer, {k: [encoding[k][r] for r in rows] for k in present})
        row_info = [{key: encoding[key][r] for key in ("input_ids", "offset_mapping", "special_tokens_mask")
                     if key in encoding} | self._row_extras(encoding, r) for r in rows]
        return EncodedBatch(dict(padded), row_info, row_example, truncated)

    def _row_extras(self, encoding, row: int) -> dict:
        return {}

    def answers(self, examples: list[Example], batch: EncodedBatch, outputs: tuple) -> list[Answer]:
        raise NotImplementedError

    # Explanations: the scalar per batch row that captum attributes, for one example.
    def explanation_targets(self, example: Example, batch: EncodedBatch,
                            outputs: tuple) -> dict[str, Callable[[tuple], torch.Tensor]]:
        """Response-key suffix -> the scalar per row to attribute, for a one-example batch."""
        raise RequestError(f"explanations are not available in {self.name} mode")

    def _label_index(self, target: int | str | None, logits: torch.Tensor) -> int:
        if target is None:
            return int(logits.argmax())
        if isinstance(target, str):
            if target not in self.labels:
                raise RequestError(f'"target" {json.dumps(target)} is not a label; labels: {", ".join(self.labels)}')
            return self.labels.index(target)
        if not 0 <= target < len(self.labels):
            raise RequestError(f'"target" {target} is out of range; the model has {len(self.labels)} labels')
        return target


def _prefix(text: str, limit: int | None) -> str:
    """``text`` cut at the first PREFIX_END from character ``limit`` on; whole without a limit or such a space."""
    if limit is None or len(text) <= limit:
        return text
    end = PREFIX_END.search(text, limit)
    return text if end is None else text[:end.start()]


class SequenceClassificationMode(Mode):
    name = "sequence_classification"
    uses_labels = True

    def answers(self, examples, batch, outputs):
        probabilities = torch.softmax(outputs[0].float(), dim=-1).tolist()
        answers = []
        for example_probabilities, truncated in zip(probabilities, batch.truncated):
            best = max(range(len(example_probabilities)), key=example_probabilities.__getitem__)
            body = {"label": self.labels[best], "score": example_probabilities[best],
                    "scores": dict(zip(self.labels, example_probabilities))}
            if truncated:
                body["truncated"] = True
            answers.append(Answer(body, truncated))
        return answers

    def explanation_targets(self, example, batch, outputs):
        label = self._label_index(example.target, outputs[0][0])
        return {"": lambda out: out[0][:, label]}


class TokenClassificationMode(Mode):
    """Entities grouped as Hugging Face's token-classification pipeline does with aggregation "simple":
    adjacent tokens with the same entity type merge unless the next one starts with B-; "O" is dropped."""

    name = "token_classification"
    uses_labels = True
    token_details = True

    def answers(self, examples, batch, outputs):
        scores = torch.softmax(outputs[0].float(), dim=-1)
        return [Answer(self._entities(example.text, row, row_scores), truncated)
                for example, row, row_scores, truncated in zip(examples, batch.rows, scores, batch.truncated)]

    def _entities(self, text: str, row: dict, scores: torch.Tensor) -> list[dict]:
        tokens = []
        for position, (token_id, (start, end), special) in enumerate(
                zip(row["input_ids"], row["offset_mapping"], row["special_tokens_mask"])):
            if special:
                continue
            best = int(scores[position].argmax())
            # An unknown token's piece is "[UNK]"; the text it stands for is the useful word.
            piece = text[start:end] if token_id == self.tokenizer.unk_token_id else \
                self.tokenizer.convert_ids_to_tokens(token_id)
            tokens.append((self.labels[best], float(scores[position, best]), piece, start, end))
        groups: list[list[tuple]] = []
        for token in tokens:
            prefix, entity = _split_tag(token[0])
            if groups and prefix != "B" and _split_tag(groups[-1][-1][0])[1] == entity:
                groups[-1].append(token)
            else:
                groups.append([token])
        entities = []
        for group in groups:
            entity = _split_tag(group[0][0])[1]
            if entity == "O":
                continue
            entities.append({
                "entity": entity,
                "word": self.tokenizer.convert_tokens_to_string([t[2] for t in group]),
                "start": group[0][3],
                "end": group[-1][4],
                "score": sum(t[1] for t in group) / len(group),
            })
        return entities

    def explanation_targets(self, example, batch, outputs):
        # The label's logit summed over the text; by default the label with the most probability mass.
        label = self._label_index(example.target, outputs[0][0].softmax(-1).sum(0))
        return {"": lambda out: out[0][:, :, label].sum(dim=1)}


def _split_tag(label: str) -> tuple[str, str]:
    """"B-PER" -> ("B", "PER"); "I-PER" -> ("I", "PER"); a label without a prefix continues a group."""
    if label[:2] in ("B-", "I-"):
        return label[0], label[2:]
    return "I", label


class QuestionAnsweringMode(Mode):
    """Contexts longer than max_length are split into windows that overlap by doc_stride tokens; the best
    span over all windows wins. Scores are p(start) * p(end) with each softmax over the window's
    context tokens, as Hugging Face's question-answering pipeline scored them."""

    name = "question_answering"

    def __init__(self, tokenizer, max_length: int, doc_stride: int, max_answer_len: int):
        super().__init__(tokenizer, max_length)
        self.doc_stride = doc_stride
        self.max_answer_len = max_answer_len

    def parse(self, payload):
        if not isinstance(payload, dict):
            raise RequestError('question answering needs a JSON object {"question": ..., "context": ...}')
        example = Example(_field(payload, "context"), question=_field(payload, "question"))
        question_tokens = len(self.tokenizer(example.question, add_special_tokens=False)["input_ids"])
        room = self.max_length - self.tokenizer.num_special_tokens_to_add(pair=True) - self.doc_stride - 1
        if question_tokens > room:
            raise RequestError(f"question is {question_tokens} tokens; with max_length {self.max_length} and "
                               f"doc_stride {self.doc_stride} it may have at most {room}")
        return example

    def encode(self, examples):
        encoding = self.tokenizer([e.question for e in examples], [e.text for e in examples],
                                  truncation="only_second", max_length=self.max_length, stride=self.doc_stride,
                                  return_overflowing_tokens=True, return_offsets_mapping=True)
        rows = list(range(len(encoding["input_ids"])))
        return self._pad(encoding, rows, list(encoding["overflow_to_sample_mapping"]), [False] * len(examples))

    def _row_extras(self, encoding, row):
        return {"sequence_ids": encoding.sequence_ids(row)}

    def answers(self, examples, batch, outputs):
        start_logits, end_logits = outputs
        best: list[tuple[float, int, int, int] | None] = [None] * len(examples)
        for row, info in enumerate(batch.rows):
            span = self._best_span(info, start_logits[row], end_logits[row])
            example = batch.row_example[row]
            if span is not None and (best[example] is None or span[0] > best[example][0]):
                best[example] = (*span, row)
        answers = []
        for example, span in zip(examples, best):
            if span is None:  # the context has no tokens (e.g. only control characters)
                answers.append(Answer({"answer": "", "score": 0.0, "start": 0, "end": 0}))
                continue
            score, first, last, row = span
            offsets = batch.rows[row]["offset_mapping"]
            start, end = offsets[first][0], offsets[last][1]
            answers.append(Answer({"answer": example.text[start:end], "score": score, "start": start, "end": end}))
        return answers

    def _best_span(self, row: dict, start_logits: torch.Tensor, end_logits: torch.Tensor):
        """(score, first token, last token) of the best context span in one window, or None."""
        context = torch.tensor([s == 1 for s in row["sequence_ids"]])
        if not context.any():
            return None
        length = len(row["sequence_ids"])
        start_p = torch.softmax(start_logits[:length].float().masked_fill(~context, float("-inf")), -1)
        end_p = torch.softmax(end_logits[:length].float().masked_fill(~context, float("-inf")), -1)
        # Spans with first <= last < first + max_answer_len tokens.
        pairs = torch.triu(start_p[:, None] * end_p[None, :]).tril(self.max_answer_len - 1)
        first, last = divmod(int(pairs.argmax()), length)
        return float(pairs[first, last]), first, last

    def explanation_targets(self, example, batch, outputs):
        span = self._best_span(batch.rows[0], outputs[0][0], outputs[1][0])
        if span is None:
            raise RequestError("the context has no tokens to explain")
        _, first, last = span
        return {"_answer_start": lambda out: out[0][:, first], "_answer_end": lambda out: out[1][:, last]}


class FeatureExtractionMode(Mode):
    """Sentence embeddings: the model's mean-pooled output, L2-normalized when ``normalize``."""

    name = "feature_extraction"

    def __init__(self, tokenizer, max_length: int, normalize: bool):
        super().__init__(tokenizer, max_length)
        self.normalize = normalize

    def answers(self, examples, batch, outputs):
        embeddings = outputs[0].float()
        if self.normalize:
            embeddings = F.normalize(embeddings, dim=-1)
        answers = []
        for embedding, truncated in zip(embeddings.tolist(), batch.truncated):
            body = {"embedding": embedding}
            if truncated:
                body["truncated"] = True
            answers.append(Answer(body, truncated))
        return answers


def build_mode(config, tokenizer, labels: list[str] | None) -> Mode:
    """The mode object ``config`` (a HandlerConfig) asks for."""
    if config.mode == "sequence_classification":
        return SequenceClassificationMode(tokenizer, config.max_length, labels)
    if config.mode == "token_classification":
        return TokenClassificationMode(tokenizer, config.max_length, labels)
    if config.mode == "question_answering":
        return QuestionAnsweringMode(tokenizer, config.max_length, config.question_answering_stride,
                                     config.max_answer_len)
    return FeatureExtractionMode(tokenizer, config.max_length, config.normalize)


# ------------------------------------------------------------------------------------- explanations

def integrated_gradients(model, embeddings: torch.nn.Module, tokenizer, inputs: dict[str, torch.Tensor],
                         scalar: Callable[[tuple], torch.Tensor], n_steps: int) -> tuple[list[float], float]:
    """Per-token importances of ``scalar(model(...))`` with captum's LayerIntegratedGradients on the
    embedding layer; the baseline keeps the special tokens and replaces every other token by padding."""
    from captum.attr import LayerIntegratedGradients

    input_ids = inputs["input_ids"]
    special = torch.tensor(tokenizer.get_special_tokens_mask(input_ids[0].tolist(), already_has_special_tokens=True),
                           dtype=torch.bool, device=input_ids.device)
    baseline = torch.where(special, input_ids, torch.full_like(input_ids, tokenizer.pad_token_id))
    extra = tuple(inputs[k] for k in MODEL_INPUTS[1:] if k in inputs)

    def forward(ids, *rest):
        return scalar(model(ids, *rest))

    explainer = LayerIntegratedGradients(forward, embeddings)
    attributions, delta = explainer.attribute(input_ids, baselines=baseline, additional_forward_args=extra,
                                              n_steps=n_steps, internal_batch_size=n_steps,
                                              return_convergence_delta=True)
    per_token = attributions.sum(dim=-1).squeeze(0)
    per_token = per_token / torch.linalg.norm(per_token).clamp(min=1e-12)
    return per_token.tolist(), float(delta[0])
