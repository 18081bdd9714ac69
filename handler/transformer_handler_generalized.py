"""TorchServe handler for Hugging Face BERT-family models, optionally through fusedbert's fused encoder.

Modes: sequence_classification, question_answering, token_classification, feature_extraction (see
modes.py); settings: setup_config.json (see config.py and README.md beside this file). Works with the
fusedbert package installed, or from a self-contained archive that carries config.py, modes.py,
library.py and the op library (.so) beside this file; TorchServe puts the archive's directory on sys.path.
"""

from __future__ import annotations

import importlib.util
import itertools
import json
import logging
import os
import socket
import sys
import time
from glob import glob
from typing import Any, Callable

import torch
from ts.torch_handler.base_handler import BaseHandler

try:  # installed with the fusedbert package
    from fusedbert_handler.config import AUTO_BUCKETS, ConfigError, HandlerConfig
    from fusedbert_handler.modes import (
        MODEL_INPUTS, Answer, Example, RequestError, build_mode, decode_payload, integrated_gradients, request_body)
except ModuleNotFoundError as missing:
    if missing.name != "fusedbert_handler":
        raise
    from config import AUTO_BUCKETS, ConfigError, HandlerConfig
    from modes import (
        MODEL_INPUTS, Answer, Example, RequestError, build_mode, decode_payload, integrated_gradients, request_body)

# Importing base_handler turned TF32 matmuls on (Ampere and newer); fp32 answers must match Hugging Face.
torch.set_float32_matmul_precision("highest")

logger = logging.getLogger(__name__)

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.txt")
LABEL_FILE = "index_to_name.json"
TRUNCATED_HEADER = "X-Input-Truncated"
# Modes whose model outputs are [batch, seq_len, ...] (fusedbert.tasks.TOKEN_LEVEL_MODES, which an archive
# without the fusedbert package cannot import).
PER_TOKEN_OUTPUT_MODES = ("question_answering", "token_classification")
# The logger TorchServe's metric objects write their "[METRICS]" lines through (ts/metrics/caching_metric.py).
METRIC_LOGGER = logging.getLogger("ts.metrics.caching_metric")
# The handler's metrics per batch: name -> the unit and type TorchServe's metric API writes for them (add_time:
# Milliseconds and GAUGE, add_counter: Count and COUNTER, add_percent: Percent and GAUGE; BatchSize as
# add_metric(..., "count", metric_type=GAUGE)).
BATCH_METRICS = {
    "TokenizeTime": ("Milliseconds", "GAUGE"),
    "RealTokens": ("Count", "COUNTER"),
    "PaddedTokens": ("Count", "COUNTER"),
    "PaddingRatio": ("Percent", "GAUGE"),
    "BatchSize": ("Count", "GAUGE"),
    "ModelTime": ("Milliseconds", "GAUGE"),
    "PostprocessTime": ("Milliseconds", "GAUGE"),
}


def torchserve_metric_lines(values: list[tuple[str, float]], model_name: str, request_ids: str) -> str:
    """A batch's metrics as the "[METRICS]" lines TorchServe's metric objects log, one per value, in one string.

    The frontend reads each line of this form on the worker's stdout (model level, the batch's request ids)
    into its metrics. Through TorchServe's API (context.metrics.add_time and the like), the handler's seven
    metrics cost 225 us of a 1.24 ms request on an H100 host: a TorchServe record and log call each.
    Formatted here and logged as one record they take 11 us instead of 86 on the 2-core VM, where one
    short text through TorchServe (stub model) answered at 0.95-1.04 ms p50 against 1.06-1.20 before.
    tests/test_handler.py checks the lines against the installed TorchServe's own, timestamps aside.
    """
    tail = f"|#hostname:{socket.gethostname()},{int(time.time())}" + (f",{request_ids}" if request_ids else "")
    return "\n".join(f"[METRICS]{name}.{BATCH_METRICS[name][0]}:{value}|#ModelName:{model_name},Level:Model"
                     f"|#type:{BATCH_METRICS[name][1]}{tail}" for name, value in values)


def avoid_cudnn_attention() -> None:
    """Turn off cuDNN's scaled-dot-product attention in this worker, for Hugging Face's SDPA attention.

    On Hopper, with the cuDNN newer than 9.15 that torch 2.11 bundles, PyTorch runs SDPA through cuDNN
    first, and cuDNN builds an execution plan for each new (batch, padded length) shape. A worker that
    pads each batch to its longest text meets up to batchSize x max_length shapes. On an H100 the traced
    bert-base in fp16 took 49 ms p50 on a new shape with cuDNN against 4.1 ms with the memory-efficient
    kernel, and 3.9 against 3.4 ms on a shape seen before (benchmarks/new_shapes.py). The fused encoder
    does not use SDPA.
    """
    if torch.backends.cuda.cudnn_sdp_enabled():
        torch.backends.cuda.enable_cudnn_sdp(False)
        logger.info("cuDNN attention off: it builds a plan per new input shape (tens of ms each on Hopper)")


class TransformersFusedHandler(BaseHandler):
    """Loads the model once, then answers each batch with one forward pass and one response per request."""

    def __init__(self):
        super().__init__()
        self.config: HandlerConfig | None = None
        self.mode = None
        self.tokenizer = None
        self.hf_model = None  # the Hugging Face model in pretrained mode (captum hooks its embeddings)
        self.graph_runner = None  # fusedbert.cuda_graphs.CudaGraphRunner when cuda_graph_buckets are set on a GPU
        self.op_library: str | None = None
        self._batch_items = 0
        self._batch_metrics: list[tuple[str, float]] = []  # (name, value), logged at the end of each batch

    # ------------------------------------------------------------------------------------- loading

    def initialize(self, context):
        properties = context.system_properties
        model_dir = properties["model_dir"]
        self.manifest = context.manifest
        self.config = config = HandlerConfig.from_file(os.path.join(model_dir, "setup_config.json"))
        gpu_id = properties.get("gpu_id")
        self.device = torch.device(f"cuda:{gpu_id}" if torch.cuda.is_available() and gpu_id is not None else "cpu")
        dtype = getattr(torch, config.data_type)
        if dtype == torch.float16 and self.device.type == "cpu":
            raise ConfigError('setup_config.json: "data_type": "float16" needs a GPU; this worker runs on CPU '
                              "(use float32 or bfloat16)")
        if config.fused:
            self.op_library = load_op_library(model_dir)
            logger.info("fusedbert op library: %s", self.op_library)
        elif self.device.type == "cuda":
            avoid_cudnn_attention()
        self.tokenizer = self._load_tokenizer(model_dir)
        if config.save_mode == "pretrained":
            self.model = self._load_pretrained(model_dir, dtype)
            model_config = self.hf_model.config
        else:
            self.model = self._load_torchscript(model_dir, dtype)
            model_config = _checkpoint_config(model_dir)
        max_positions = getattr(model_config, "max_position_embeddings", None)
        if max_positions is not None and config.max_length > max_positions:
            raise ConfigError(f'setup_config.json: "max_length" {config.max_length} is longer than the model\'s '
                              f"max_position_embeddings {max_positions}")
        if config.cuda_graph_buckets:
            self.graph_runner = self._cuda_graph_runner(model_dir, int(properties.get("batch_size") or 1))
        self.mode = build_mode(config, self.tokenizer, labels=None)
        if self.mode.uses_labels:
            self.mode.labels = self._label_names(model_dir, model_config)
        self.initialized = True

    def _load_tokenizer(self, model_dir: str):
        from transformers import AutoTokenizer

        source = model_dir if any(os.path.isfile(os.path.join(model_dir, f)) for f in TOKENIZER_FILES) else \
            self.config.model_name
        if source is None:
            raise ConfigError(f'no tokenizer files ({", ".join(TOKENIZER_FILES)}) in {model_dir} and no "model_name" '
                              "in setup_config.json to load one from")
        kwargs = {} if self.config.do_lower_case is None else {"do_lower_case": self.config.do_lower_case}
        tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
        if not tokenizer.is_fast:
            raise ConfigError(f"the tokenizer from {source} has no fast (Rust) version; answers need its offsets")
        return tokenizer

    def _load_pretrained(self, model_dir: str, dtype: torch.dtype):
        try:
            from fusedbert.tasks import TracedTaskModule, load_model
        except ImportError as e:
            raise ConfigError('setup_config.json: "save_mode": "pretrained" needs the fusedbert package installed; '
                              'a self-contained archive serves "torchscript"') from e
        self.hf_model = load_model(self.config.mode, model_dir, self.config.num_labels, dtype, self.device)
        if self.config.fused:
            import fusedbert

            fusedbert.fuse(self.hf_model, fp8_ffn=self.config.fp8_ffn)
        if self.config.captum_explanation:
            self._embeddings()  # fail at load, not at the first /explanations call
        return TracedTaskModule(self.hf_model, self.config.mode)

    def _load_torchscript(self, model_dir: str, dtype: torch.dtype):
        serialized = self.manifest.get("model", {}).get("serializedFile")
        if not serialized:
            raise ConfigError('setup_config.json: "save_mode": "torchscript" needs the traced model in the archive '
                              "(torch-model-archiver --serialized-file traced_model.pt)")
        path = os.path.join(model_dir, serialized)
        if not os.path.isfile(path):
            raise ConfigError(f"the serialized file {serialized} named by the archive's manifest is not in {model_dir}")
        try:
            model = torch.jit.load(path, map_location=self.device)
        except RuntimeError as e:
            if "fusedbert::" in str(e) and not self.config.fused:
                raise ConfigError(f'{serialized} calls fusedbert::encoder; set "FasterTransformer": true in '
                                  "setup_config.json so the op library is loaded") from e
            raise
        traced_dtype = next((t.dtype for t in itertools.chain(model.parameters(), model.buffers())
                             if t.is_floating_point()), dtype)
        if traced_dtype != dtype:
            raise ConfigError(f'setup_config.json: "data_type" is {self.config.data_type} but {serialized} was traced '
                              f"in {str(traced_dtype).removeprefix('torch.')}")
        return model.eval()

    def _cuda_graph_runner(self, model_dir: str, batch_size: int):
        """Replays self.model from one CUDA graph per configured bucket (with "auto", the ladder of
        cuda_graphs.bucket_ladder for TorchServe's batchSize and max_length); None on a CPU worker."""
        if self.device.type != "cuda":
            logger.warning('setup_config.json: "cuda_graph_buckets" and "cuda_graph_warmup" are ignored: this worker '
                           "runs on the CPU")
            return None
        cuda_graphs = _fusedbert_file(model_dir, "cuda_graphs.py", '"cuda_graph_buckets"')
        # The model gets the tensors the tokenizer makes: DistilBERT's makes no token_type_ids.
        num_inputs = sum(k in self.tokenizer.model_input_names for k in MODEL_INPUTS)
        if self.config.cuda_graph_buckets == AUTO_BUCKETS:
            buckets = cuda_graphs.bucket_ladder(batch_size, self.config.max_length)
        else:
            buckets = cuda_graphs.parse_buckets(self.config.cuda_graph_buckets)
        runner = cuda_graphs.CudaGraphRunner(self.model, buckets,
                                             self.device, token_level=self.config.mode in PER_TOKEN_OUTPUT_MODES,
                                             num_inputs=num_inputs, outputs_on_host=True)
        if self.config.cuda_graph_warmup:
            reports = runner.capture_all()  # the runner logs each bucket's time and memory
            logger.info("CUDA graphs: %d bucket(s) captured in %.2f s, holding %.1f MiB of GPU memory", len(reports),
                        sum(r.seconds for r in reports), runner.pool_bytes / 2**20)
        else:
            logger.info("CUDA graphs: %d bucket(s), each captured on its first batch", len(runner.buckets))
        return runner

    def _label_names(self, model_dir: str, model_config) -> list[str]:
        """Label names from index_to_name.json, else the checkpoint's id2label; checked against the model."""
        num_outputs = self.inference(self.preprocess([self.mode.parse("warm up")]))[0].shape[-1]
        path = os.path.join(model_dir, LABEL_FILE)
        if os.path.isfile(path):
            with open(path, encoding="utf-8") as f:
                mapping = json.load(f)
            if not isinstance(mapping, dict) or sorted(mapping, key=str) != sorted(str(i) for i in range(len(mapping))):
                raise ConfigError(f'{LABEL_FILE} must map "0".."n-1" to label names')
            names = [str(mapping[str(i)]) for i in range(len(mapping))]
        elif model_config is not None and len(getattr(model_config, "id2label", {}) or {}) == num_outputs:
            names = [model_config.id2label[i] for i in range(num_outputs)]
        else:
            names = [f"LABEL_{i}" for i in range(num_outputs)]
        if len(names) != num_outputs:
            raise ConfigError(f"{LABEL_FILE} names {len(names)} labels but the model outputs {num_outputs}")
        return names

    def _embeddings(self) -> torch.nn.Module:
        name = self.config.embedding_name
        # A base model (feature_extraction loads BertModel) is itself what "bert" names in a model with a head.
        base = self.hf_model.base_model if self.hf_model.base_model_prefix == name else getattr(self.hf_model, name, None)
        embeddings = getattr(base, "embeddings", None)
        if embeddings is None:
            raise ConfigError(f'setup_config.json: "embedding_name" {json.dumps(self.config.embedding_name)} is not '
                              f"an attribute of {type(self.hf_model).__name__} with .embeddings")
        return embeddings

    # ------------------------------------------------------------------------------------ requests

    def handle(self, data: list, context) -> list:
        """One response per request, in order: an answer, or an error for that request alone."""
        self.context = context
        self._batch_items = len(data)
        self._batch_metrics = []
        try:
            return self._handle(data)
        finally:
            self._log_metrics()

    def _handle(self, data: list) -> list:
        responses: list[Any] = [None] * len(data)
        predictions, explanations = [], []
        for index, request in enumerate(data):
            try:
                examples, wrap = self._decode_request(request)
            except RequestError as e:
                responses[index] = self._error(index, e.status, str(e))
                continue
            (explanations if self._wants_explanation(index) else predictions).append((index, examples, wrap))
        if predictions:
            self._answer(predictions, responses)
        for index, examples, wrap in explanations:
            self._guarded([index], responses, lambda: self._respond(index, wrap, self._explain(examples), responses))
        return responses

    def preprocess(self, examples: list[Example]):
        return self.mode.encode(examples)

    def inference(self, batch, *args, **kwargs) -> tuple[torch.Tensor, ...]:
        inputs = [batch.inputs[k] for k in MODEL_INPUTS if k in batch.inputs]
        if self.graph_runner is None:  # the runner copies CPU inputs straight into its bucket's buffers
            inputs = [t.to(self.device) for t in inputs]
        # ModelTime should time the model alone: its GPU work waited for, none before it pending. The graph
        # runner returns outputs on the host, so it has waited already, and with CPU inputs nothing is queued
        # before it: a device-wide synchronize there cost 9 us each on an idle H100.
        eager_gpu = self.device.type == "cuda" and self.graph_runner is None
        synchronize = torch.cuda.synchronize if eager_gpu else (lambda: None)
        synchronize()
        started = time.perf_counter()
        with torch.inference_mode():
            outputs = (self.graph_runner or self.model)(*inputs)
        synchronize()
        self._record_metrics(batch, (time.perf_counter() - started) * 1000)
        return tuple(o.float().cpu() for o in outputs)

    def postprocess(self, examples: list[Example], batch, outputs) -> list[Answer]:
        return self.mode.answers(examples, batch, outputs)

    def _predict(self, examples: list[Example]):
        started = time.perf_counter()
        batch = self.preprocess(examples)
        self._record_time("TokenizeTime", started)
        outputs = self.inference(batch)
        started = time.perf_counter()
        answers = self.postprocess(examples, batch, outputs)
        self._record_time("PostprocessTime", started)
        return answers

    def _answer(self, requests: list, responses: list) -> None:
        """All examples of all requests in one forward pass; each request gets its slice of the answers."""
        def run():
            examples = [e for _, request_examples, _ in requests for e in request_examples]
            answers = iter(self._predict(examples))
            for index, request_examples, wrap in requests:
                self._respond(index, wrap, [next(answers) for _ in request_examples], responses)

        self._guarded([index for index, _, _ in requests], responses, run)

    def _respond(self, index: int, wrap: Callable, answers: list[Answer], responses: list) -> None:
        if any(a.truncated for a in answers):
            self._per_request(index, lambda: self.context.set_response_header(index, TRUNCATED_HEADER, "true"))
        self._per_request(index, lambda: self.context.set_response_content_type(index, "application/json"))
        responses[index] = wrap([a.body for a in answers])

    def _guarded(self, indices: list[int], responses: list, run: Callable[[], None]) -> None:
        """Run ``run``; an error in it answers these requests with a 5xx (4xx for a RequestError) and the
        worker carries on."""
        try:
            run()
        except RequestError as e:
            for index in indices:
                responses[index] = self._error(index, e.status, str(e))
        except torch.OutOfMemoryError:
            logger.exception("out of memory answering %d request(s)", len(indices))
            for index in indices:
                responses[index] = self._error(index, 507, "out of memory; retry with shorter or fewer inputs")
        except Exception as e:  # noqa: BLE001 - any failure becomes these requests' 500, never the worker's death
            logger.exception("internal error answering %d request(s)", len(indices))
            for index in indices:
                responses[index] = self._error(index, 500, f"internal error: {type(e).__name__}: {e}")

    def _decode_request(self, request: Any) -> tuple[list[Example], Callable[[list], Any]]:
        """The examples in one request, and how to shape their answers into its response."""
        payload = decode_payload(request_body(request))
        if isinstance(payload, dict) and "instances" in payload:  # KServe v1
            instances = _nonempty_list(payload["instances"], '"instances"')
            examples = [self._parse_item(item, f"instances[{i}]") for i, item in enumerate(instances)]
            return examples, lambda answers: {"predictions": answers}
        if isinstance(payload, dict) and "inputs" in payload:  # KServe v2
            return self._decode_kserve_v2(payload)
        return [self.mode.parse(payload)], lambda answers: answers[0]

    def _decode_kserve_v2(self, payload: dict):
        tensors = _nonempty_list(payload["inputs"], '"inputs"')
        examples, counts = [], []
        for i, tensor in enumerate(tensors):
            if not isinstance(tensor, dict):
                raise RequestError(f"inputs[{i}] must be an object with a \"data\" array")
            items = _nonempty_list(tensor.get("data"), f"inputs[{i}].data")
            examples += [self._parse_item(item, f"inputs[{i}].data[{j}]") for j, item in enumerate(items)]
            counts.append(len(items))

        def wrap(answers: list) -> dict:
            outputs, position = [], 0
            for tensor, count in zip(tensors, counts):
                outputs.append({"name": tensor.get("name", "output"), "datatype": "BYTES", "shape": [count],
                                "data": answers[position:position + count]})
                position += count
            response = {"model_name": self.context.manifest.get("model", {}).get("modelName"), "outputs": outputs}
            if payload.get("id") is not None:
                response["id"] = payload["id"]
            return response

        return examples, wrap

    def _parse_item(self, item: Any, where: str) -> Example:
        try:
            return self.mode.parse(decode_payload(request_body(item)))
        except RequestError as e:
            raise RequestError(f"{where}: {e}", e.status) from None

    def _wants_explanation(self, index: int) -> bool:
        # TorchServe's BaseHandler asks request 0 only; a batch may mix /predictions and /explanations.
        return self._per_request(index, lambda: self.context.get_request_header(index, "explain")) == "True"

    def _per_request(self, index: int, call: Callable[[], Any]) -> Any:
        """Call a per-request context method only when the handler's items are TorchServe's requests (a
        KServe envelope turns one request into several items; TorchServe's Context has no index for them)."""
        processors = getattr(self.context, "request_processor", None)
        if processors is None or len(processors) != self._batch_items:
            return None
        return call()

    def _error(self, index: int, status: int, message: str) -> dict:
        # The reason phrase goes into the HTTP status line: one line, ASCII (the frontend's Netty rejects CR/LF).
        phrase = message.encode("ascii", "replace").decode().replace("\r", " ").replace("\n", " ")[:200]
        self._per_request(index, lambda: self.context.set_response_status(status, phrase, index))
        self._per_request(index, lambda: self.context.set_response_content_type(index, "application/json"))
        return {"code": status, "type": "BadRequest" if status < 500 else "InternalServerError", "message": message}

    def _record_time(self, name: str, started: float) -> None:
        self._batch_metrics.append((name, round((time.perf_counter() - started) * 1000, 3)))

    def _record_metrics(self, batch, model_ms: float) -> None:
        real, padded = batch.real_tokens, batch.padded_tokens
        self._batch_metrics += [("RealTokens", real), ("PaddedTokens", padded),
                                ("PaddingRatio", 100.0 * padded / max(real + padded, 1)),
                                ("BatchSize", len(batch.rows)), ("ModelTime", round(model_ms, 3))]

    def _log_metrics(self) -> None:
        """The batch's metrics to TorchServe's frontend: one log record of its metric lines."""
        metrics = self.context.metrics if self.context is not None else None
        if metrics is None or not self._batch_metrics:
            return
        request_ids = metrics.request_ids
        if isinstance(request_ids, dict):  # as TorchServe names a batch's requests in a model-level metric
            request_ids = ",".join(request_ids.values())
        METRIC_LOGGER.info(torchserve_metric_lines(self._batch_metrics, metrics.model_name, request_ids or ""))

    # -------------------------------------------------------------------------------- explanations

    def _explain(self, examples: list[Example]) -> list[Answer]:
        if not self.config.captum_explanation:
            raise RequestError('explanations are off; set "captum_explanation": true in setup_config.json', 501)
        if self.hf_model is None:
            raise RequestError('explanations need "save_mode": "pretrained": a TorchScript model has no embedding '
                               "layer for captum to attribute to", 501)
        return [Answer(self._explain_one(example)) for example in examples]

    def _explain_one(self, example: Example) -> dict:
        batch = self.mode.encode([example])
        inputs = {k: v[:1].to(self.device) for k, v in batch.inputs.items()}  # QA: the first window
        with torch.no_grad():
            outputs = self.model(*(inputs[k] for k in MODEL_INPUTS if k in inputs))
        targets = self.mode.explanation_targets(example, batch, outputs)
        response = {"words": self.tokenizer.convert_ids_to_tokens(inputs["input_ids"][0].tolist())}
        for suffix, scalar in targets.items():
            importances, delta = integrated_gradients(self.model, self._embeddings(), self.tokenizer, inputs, scalar,
                                                      self.config.captum_n_steps)
            response["importances" + suffix] = importances
            response["delta" + suffix] = delta
        return response

    def get_insights(self, tensor_data, raw_data, target):
        """BaseHandler's captum hook; explanations go through ``handle`` per request instead."""
        raise NotImplementedError("TransformersFusedHandler answers /explanations in handle()")


def _nonempty_list(value: Any, what: str) -> list:
    if not isinstance(value, list) or not value:
        raise RequestError(f"{what} must be a non-empty array")
    return value


def _checkpoint_config(model_dir: str):
    """The Hugging Face config.json shipped beside a traced model, if any (label names, max positions)."""
    if not os.path.isfile(os.path.join(model_dir, "config.json")):
        return None
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(model_dir)


def _fusedbert_file(model_dir: str, filename: str, needed_by: str):
    """One of fusedbert's standalone modules (library.py, cuda_graphs.py): the archive's copy, else the
    installed package's.

    Loaded from its file, not imported from ``fusedbert``: importing the package would load the
    installed op library before the archive's could be chosen.
    """
    path = os.path.join(model_dir, filename)
    if not os.path.isfile(path):
        package = importlib.util.find_spec("fusedbert")
        if package is None:
            raise ConfigError(f"setup_config.json: {needed_by} needs fusedbert's {filename}, but the archive has none "
                              "and the fusedbert package is not installed")
        path = os.path.join(package.submodule_search_locations[0], filename)
    spec = importlib.util.spec_from_file_location(f"fusedbert_{filename.removesuffix('.py')}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there while the file runs
    spec.loader.exec_module(module)
    return module


def load_op_library(model_dir: str) -> str:
    """Load the op library shipped in ``model_dir``, else the installed package's; return its path.

    Raises LibraryMismatchError for a library built against another torch.
    """
    library = _fusedbert_file(model_dir, "library.py", '"FasterTransformer": true')
    shipped = sorted(glob(os.path.join(model_dir, "*.so")))
    if len(shipped) > 1:
        raise ConfigError(f"{model_dir} holds several .so files ({', '.join(map(os.path.basename, shipped))}); "
                          "ship exactly one fusedbert op library")
    try:
        path = shipped[0] if shipped else library.library_path()
    except FileNotFoundError as e:
        raise ConfigError(f'setup_config.json: "FasterTransformer": true, but no op library was found: {e}') from None
    library.check_library(path)  # before load_library, which skips its check when the op is already registered
    library.load_library(path)
    return path
