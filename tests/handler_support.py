"""Model directories as TorchServe unpacks them, and a batch runner around TorchServe's own Context."""

from __future__ import annotations

import json
import os
import shutil
import sys
from pathlib import Path

import torch
from ts.context import Context, RequestProcessor
from ts.metrics.metric_cache_yaml_impl import MetricsCacheYamlImpl

ROOT = Path(__file__).resolve().parents[1]
HANDLER_DIR = ROOT / "handler"
TRACE_DIR = ROOT / "trace"
for path in (HANDLER_DIR, TRACE_DIR):  # TorchServe puts model_dir (the handler's modules) on sys.path
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import transformer_handler_generalized as handler_module  # noqa: E402

TOKEN_LABELS = ["O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
NUM_LABELS = {"sequence_classification": 3, "token_classification": len(TOKEN_LABELS)}
SEQUENCE_LABELS = ["negative", "neutral", "positive"]
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json")
METRICS_YAML = Path(sys.modules["ts"].__file__).parent / "configs" / "metrics.yaml"


def write_model_dir(directory: Path, checkpoint: Path, mode: str, save_mode: str, fused: bool, device: str = "cpu",
                    **settings) -> Path:
    """A model_dir like an unpacked .mar: setup_config.json, tokenizer files, labels, and the model (traced on
    ``device``)."""
    directory.mkdir(parents=True, exist_ok=True)
    for name in TOKENIZER_FILES:
        shutil.copy(checkpoint / name, directory / name)
    config = {"model_name": "all-MiniLM-L6-v2", "mode": mode, "save_mode": save_mode, "max_length": "64",
              "num_labels": str(NUM_LABELS.get(mode, 0)), "do_lower_case": "true", "FasterTransformer": fused,
              "captum_explanation": True, "embedding_name": "bert", "captum_n_steps": 4} | settings
    (directory / "setup_config.json").write_text(json.dumps(config))
    labels = {"sequence_classification": SEQUENCE_LABELS, "token_classification": TOKEN_LABELS}.get(mode)
    if labels:
        (directory / "index_to_name.json").write_text(json.dumps({str(i): n for i, n in enumerate(labels)}))
    if save_mode == "pretrained":
        for name in ("config.json", "model.safetensors"):
            os.symlink(checkpoint / name, directory / name)
    else:
        torch.jit.save(trace_model(checkpoint, mode, fused, device), str(directory / "traced_model.pt"))
    return directory


def copy_model_dir(directory: Path, target: Path, **settings) -> Path:
    """A copy of ``directory`` whose setup_config.json has ``settings`` on top."""
    shutil.copytree(directory, target)
    config = json.loads((target / "setup_config.json").read_text()) | settings
    (target / "setup_config.json").write_text(json.dumps(config))
    return target


def trace_model(checkpoint: Path, mode: str, fused: bool, device: str = "cpu") -> torch.jit.ScriptModule:
    import bert_ft_trace
    import fusedbert
    from fusedbert.tasks import TracedTaskModule, load_model, load_tokenizer

    model = load_model(mode, str(checkpoint), NUM_LABELS.get(mode), device=device)
    if fused:
        fusedbert.fuse(model)
    example = bert_ft_trace.encode_batch(load_tokenizer(str(checkpoint)), mode, bert_ft_trace.trace_lengths(2, 32),
                                         padded_length=32)
    return bert_ft_trace.trace(TracedTaskModule(model, mode), [t.to(device) for t in example])


def make_context(model_dir: Path, serialized_file: str | None = "traced_model.pt",
                 gpu_id: int | None = None) -> Context:
    manifest = {"model": {"modelName": "minilm"}}
    if serialized_file:
        manifest["model"]["serializedFile"] = serialized_file
    metrics = MetricsCacheYamlImpl(str(METRICS_YAML))
    metrics.initialize_cache()
    metrics.model_name = "minilm"
    return Context("minilm", str(model_dir), manifest, 8, gpu_id, "0.12", metrics=metrics)


def load_handler(model_dir: Path, serialized_file: str | None = "traced_model.pt", gpu_id: int | None = None):
    """The handler initialized on ``model_dir``: on the CPU, or on cuda:<gpu_id> as TorchServe assigns a GPU."""
    handler = handler_module.TransformersFusedHandler()
    context = make_context(model_dir, serialized_file, gpu_id)
    handler.initialize(context)
    return handler, context


class BatchResult:
    def __init__(self, responses, context: Context):
        self.responses = responses
        self.statuses = [context.get_response_status(i) for i in range(len(responses))]
        self.headers = [context.get_response_headers(i) for i in range(len(responses))]

    @property
    def codes(self) -> list[int]:
        return [code for code, _ in self.statuses]


def run_batch(handler, context: Context, bodies: list, explain: list[bool] | None = None) -> BatchResult:
    """Hand ``bodies`` to the handler as one TorchServe batch (each as the request's "body" parameter)."""
    explain = explain or [False] * len(bodies)
    context.request_processor = [RequestProcessor({"explain": "True"} if e else {}) for e in explain]
    context.request_ids = {i: f"request-{i}" for i in range(len(bodies))}
    context.metrics.set_request_ids(context.request_ids)
    responses = handler.handle([{"body": body} for body in bodies], context)
    assert len(responses) == len(bodies)
    return BatchResult(responses, context)
