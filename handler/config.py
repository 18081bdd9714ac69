"""``setup_config.json``: read once, every key validated, errors that name the key.

The keys of TorchServe's Hugging Face example stay valid with the values it accepted (numbers and
booleans may be JSON strings: ``"max_length": "128"``, ``"num_labels": "0"``, ``"do_lower_case": "true"``).
Needs only the standard library, so a self-contained model archive can carry it.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

MODES = ("sequence_classification", "question_answering", "token_classification", "feature_extraction")
SAVE_MODES = ("torchscript", "pretrained")
# Accepted spellings of data_type -> the canonical one (a torch dtype name).
DATA_TYPES = {"fp32": "float32", "float32": "float32", "fp16": "float16", "float16": "float16",
              "bf16": "bfloat16", "bfloat16": "bfloat16"}
# Keys of the original example that this handler cannot honour: accepted when false, refused when true.
UNSUPPORTED_FLAGS = {
    "BetterTransformer": "the fused encoder (FasterTransformer: true) replaces it",
    "model_parallel": "serve one worker per GPU instead (deviceIds in model-config.yaml)",
}
SOURCE = "setup_config.json"


class ConfigError(ValueError):
    """A setup_config.json key is missing or has a value the handler cannot use."""


def _error(key: str, expected: str, value: Any) -> ConfigError:
    return ConfigError(f'{SOURCE}: "{key}" must be {expected}; got {json.dumps(value)}')


def _boolean(key: str, value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().lower() in ("true", "false"):
        return value.strip().lower() == "true"
    raise _error(key, 'true or false (or the strings "true" / "false")', value)


def _integer(key: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool):  # bool is an int subclass; true is not a length
        raise _error(key, f"an integer >= {minimum}", value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        value = int(value.strip())
    if not isinstance(value, int) or value < minimum:
        raise _error(key, f"an integer >= {minimum}", value)
    return value


def _choice(key: str, value: Any, choices) -> str:
    if value not in choices:
        raise _error(key, "one of " + ", ".join(choices), value)
    return value


BUCKET_SHAPE = ('"auto" or a list of [batch_size, seq_len] or [batch_size, seq_len, max_tokens] with positive '
                "integers")
AUTO_BUCKETS = "auto"


def _buckets(key: str, value: Any, max_length: int) -> tuple[tuple[int, ...], ...] | str:
    """CUDA graph buckets, each within max_length and holding at most batch_size * seq_len tokens; or "auto"
    (the handler derives them from TorchServe's batchSize and max_length)."""
    if value == AUTO_BUCKETS:
        return value
    if not isinstance(value, list):
        raise _error(key, BUCKET_SHAPE, value)
    buckets = []
    for entry in value:
        if (not isinstance(entry, list) or len(entry) not in (2, 3)
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in entry)):
            raise _error(key, BUCKET_SHAPE, entry)
        if entry[1] > max_length:
            raise _error(key, f"buckets with seq_len <= max_length ({max_length})", entry)
        if len(entry) == 3 and entry[2] > entry[0] * entry[1]:
            raise _error(key, "buckets whose max_tokens is at most batch_size * seq_len", entry)
        buckets.append(tuple(entry))
    return tuple(buckets)


def _text(key: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise _error(key, "a non-empty string", value)
    return value


@dataclass(frozen=True)
class HandlerConfig:
    """The validated settings; field names are the JSON keys except ``fused`` (``FasterTransformer``)."""

    mode: str
    model_name: str | None = None
    save_mode: str = "torchscript"
    max_length: int = 128
    do_lower_case: bool | None = None
    num_labels: int | None = None
    captum_explanation: bool = False
    embedding_name: str = "bert"
    fused: bool = False
    data_type: str = "float32"
    doc_stride: int | None = None
    max_answer_len: int = 15
    normalize: bool = True
    captum_n_steps: int = 50
    cuda_graph_buckets: tuple[tuple[int, ...], ...] | str = ()  # [batch_size, seq_len(, max_tokens)] each, or "auto"
    cuda_graph_warmup: bool = True
    fp8_ffn: bool = False  # "pretrained" mode; a traced model has it from bert_ft_trace.py --fp8_ffn

    @property
    def question_answering_stride(self) -> int:
        """Tokens shared by consecutive windows of a long context (default: a quarter of max_length)."""
        return self.doc_stride if self.doc_stride is not None else self.max_length // 4

    @classmethod
    def from_file(cls, path: str) -> HandlerConfig:
        try:
            with open(path, encoding="utf-8") as f:
                raw = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"{SOURCE} not found at {path}; add it to the archive with --extra-files") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{SOURCE} at {path} is not valid JSON: {e}") from None
        return cls.from_dict(raw)

    @classmethod
    def from_dict(cls, raw: Any) -> HandlerConfig:
        if not isinstance(raw, dict):
            raise ConfigError(f"{SOURCE} must hold a JSON object; got {type(raw).__name__}")
        known = {f.name for f in fields(cls)} - {"fused"} | {"FasterTransformer"} | set(UNSUPPORTED_FLAGS)
        unknown = sorted(set(raw) - known)
        if unknown:
            raise ConfigError(f"{SOURCE}: unknown key(s) {', '.join(json.dumps(k) for k in unknown)}; "
                              f"known keys: {', '.join(sorted(known))}")
        if "mode" not in raw:
            raise ConfigError(f'{SOURCE}: "mode" is required (one of {", ".join(MODES)})')
        for key, why in UNSUPPORTED_FLAGS.items():
            if key in raw and _boolean(key, raw[key]):
                raise ConfigError(f'{SOURCE}: "{key}": true is not supported; {why}')

        values: dict[str, Any] = {"mode": _choice("mode", raw["mode"], MODES)}
        if "model_name" in raw:
            values["model_name"] = _text("model_name", raw["model_name"])
        if "save_mode" in raw:
            values["save_mode"] = _choice("save_mode", raw["save_mode"], SAVE_MODES)
        if "max_length" in raw:
            values["max_length"] = _integer("max_length", raw["max_length"], minimum=8)
        if "do_lower_case" in raw:
            values["do_lower_case"] = _boolean("do_lower_case", raw["do_lower_case"])
        if "num_labels" in raw:
            # 0 is what the original's question-answering config says: "not a classifier, ask the checkpoint".
            values["num_labels"] = _integer("num_labels", raw["num_labels"], minimum=0) or None
        if "captum_explanation" in raw:
            values["captum_explanation"] = _boolean("captum_explanation", raw["captum_explanation"])
        if "embedding_name" in raw:
            values["embedding_name"] = _text("embedding_name", raw["embedding_name"])
        if "FasterTransformer" in raw:
            values["fused"] = _boolean("FasterTransformer", raw["FasterTransformer"])
        if "data_type" in raw:
            values["data_type"] = DATA_TYPES[_choice("data_type", raw["data_type"], tuple(DATA_TYPES))]
        if "doc_stride" in raw:
            values["doc_stride"] = _integer("doc_stride", raw["doc_stride"], minimum=0)
        if "max_answer_len" in raw:
            values["max_answer_len"] = _integer("max_answer_len", raw["max_answer_len"], minimum=1)
        if "captum_n_steps" in raw:
            values["captum_n_steps"] = _integer("captum_n_steps", raw["captum_n_steps"], minimum=1)
        if "normalize" in raw:
            values["normalize"] = _boolean("normalize", raw["normalize"])
        if "cuda_graph_buckets" in raw:
            values["cuda_graph_buckets"] = _buckets("cuda_graph_buckets", raw["cuda_graph_buckets"],
                                                    values.get("max_length", cls.max_length))
        if "cuda_graph_warmup" in raw:
            values["cuda_graph_warmup"] = _boolean("cuda_graph_warmup", raw["cuda_graph_warmup"])

        if "fp8_ffn" in raw:
            values["fp8_ffn"] = _boolean("fp8_ffn", raw["fp8_ffn"])

        config = cls(**values)
        if config.fp8_ffn and not (config.fused and config.save_mode == "pretrained"
                                   and config.data_type in ("float16", "bfloat16")):
            raise ConfigError(f'{SOURCE}: "fp8_ffn": true needs "FasterTransformer": true, "save_mode": "pretrained" '
                              'and "data_type" fp16 or bf16 (a traced model gets it from bert_ft_trace.py --fp8_ffn)')
        if config.question_answering_stride >= config.max_length // 2:
            raise _error("doc_stride", f"smaller than half of max_length ({config.max_length // 2})",
                         raw.get("doc_stride"))
        return config
