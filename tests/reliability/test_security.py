"""Security: what the shipped configurations open, and what a request can make the handler do.

Token refusal (no token, wrong token, the inference token on the management API) and loopback-only
listening are tested against the running server in tests/integration/test_torchserve.py.
"""

from __future__ import annotations

import json
import os
import pickle
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from handler_support import load_handler, run_batch, write_model_dir
from torchserve_support import REPO_ROOT, ts

SHIPPED_CONFIGS = sorted((REPO_ROOT / "configs").rglob("config.properties"))
ADDRESS_KEYS = ("inference_address", "management_address", "metrics_address")
GRPC_ADDRESS_KEYS = ("grpc_inference_address", "grpc_management_address")


def test_the_serving_config_turns_token_auth_on_and_model_registration_off():
    properties = ts.read_properties(REPO_ROOT / "configs" / "config.properties")
    assert properties["disable_token_authorization"] == "false"
    assert properties["enable_model_api"] == "false"


@pytest.mark.parametrize("path", SHIPPED_CONFIGS, ids=lambda p: str(p.relative_to(REPO_ROOT)))
def test_every_shipped_config_listens_on_loopback_only_with_model_registration_off(path):
    properties = ts.read_properties(path)
    for key in ADDRESS_KEYS:
        assert properties[key].startswith("http://127.0.0.1:"), f"{key}={properties[key]}"
    for key in GRPC_ADDRESS_KEYS:
        assert properties[key] == "127.0.0.1", f"{key}={properties[key]}"
    assert properties["enable_model_api"] == "false"


# ------------------------------------------------------------------------------ requests are only data

MARKER = "fusedbert-probe-5b1e"


class _RunsAShellCommandWhenUnpickled:
    def __init__(self, command: str):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


class AuditLog:
    """Python's audit events (open, exec, compile, pickle.find_class, os.system, ...) while recording.

    An audit hook cannot be removed, so one hook per process appends to whichever log is recording.
    """

    current: AuditLog | None = None
    installed = False

    def __init__(self):
        self.events: list[tuple[str, tuple]] = []

    def __enter__(self):
        if not AuditLog.installed:
            sys.addaudithook(lambda event, args: AuditLog.current and AuditLog.current.events.append((event, args)))
            AuditLog.installed = True
        AuditLog.current = self
        return self

    def __exit__(self, *exc):
        AuditLog.current = None

    def carrying(self, text: str) -> list[str]:
        """The events with an argument that contains ``text``."""
        return [event for event, args in self.events if any(text in repr(arg) for arg in args)]


@pytest.fixture(scope="module")
def classifier(minilm_path, tmp_path_factory):
    directory = write_model_dir(tmp_path_factory.mktemp("model"), minilm_path, "sequence_classification",
                                "pretrained", fused=True)
    return load_handler(directory, serialized_file=None)


def test_path_code_and_pickle_payloads_are_only_text(classifier, tmp_path):
    handler, context = classifier
    touched = tmp_path / MARKER
    command = f"touch {touched}"
    as_text = [
        f"../../../../tmp/{MARKER}/../etc/passwd",
        f"file:///tmp/{MARKER}",
        f"__import__('os').system('{command}')",
        f"open('/tmp/{MARKER}').read()",
        pickle.dumps(_RunsAShellCommandWhenUnpickled(command), protocol=0).decode("ascii"),
    ]
    binary_pickle = pickle.dumps(_RunsAShellCommandWhenUnpickled(command), protocol=pickle.HIGHEST_PROTOCOL)
    python_literal = f"{{'text': '{MARKER}'}}"  # what ast.literal_eval would read as a dict
    run_batch(handler, context, ["warm up"])  # lazy imports would otherwise show up as exec/open events

    with AuditLog() as audit:
        plain = run_batch(handler, context, [*as_text, binary_pickle, python_literal])
        wrapped = run_batch(handler, context, [{"text": text} for text in as_text])

    assert audit.carrying(MARKER) == []
    assert not touched.exists()
    assert plain.codes == [200] * len(as_text) + [400, 400]
    assert plain.responses[:len(as_text)] == wrapped.responses  # the same answer as the string sent as JSON text
    assert "not valid UTF-8" in plain.responses[-2]["message"]
    assert "starts with '{' but is not valid JSON" in plain.responses[-1]["message"]


def test_setup_config_is_read_as_json_only(tmp_path):
    from handler_support import handler_module

    path = tmp_path / "setup_config.json"
    path.write_text(f"{{'mode': 'feature_extraction', 'model_name': __import__('os').system('touch {tmp_path}/x')}}")
    with AuditLog() as audit, pytest.raises(handler_module.ConfigError, match="is not valid JSON"):
        handler_module.HandlerConfig.from_file(str(path))
    assert [event for event in audit.events if event[0] in ("exec", "compile", "os.system")] == []
    assert not (tmp_path / "x").exists()


# ---------------------------------------------------------------------------------- decoding fuzz

JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=40),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=12), children, max_size=4),
    max_leaves=12)
# Keys the handler looks for, with values of any JSON type, so that the fuzz reaches past the first check.
KNOWN_KEYS = st.dictionaries(st.sampled_from(["text", "question", "context", "instances", "inputs", "data",
                                              "target", "id", "name"]), JSON_VALUES, max_size=4)
# A request as TorchServe hands it over: raw bytes, decoded text, or JSON it already parsed.
REQUEST_BODIES = st.one_of(
    st.binary(max_size=300),
    st.text(max_size=300),
    JSON_VALUES,
    KNOWN_KEYS,
    st.dictionaries(st.sampled_from(["instances", "inputs"]), st.lists(JSON_VALUES | KNOWN_KEYS, max_size=3)),
    (JSON_VALUES | KNOWN_KEYS).map(lambda value: json.dumps(value).encode()),
)
GOOD = {"sequence_classification": "A well-formed request.",
        "question_answering": {"question": "What is well formed?", "context": "This request is well formed."}}


@pytest.fixture(scope="module")
def handlers_by_mode(classifier, minilm_path, tmp_path_factory):
    directory = write_model_dir(tmp_path_factory.mktemp("qa"), minilm_path, "question_answering", "pretrained",
                                fused=True)
    return {"sequence_classification": classifier,
            "question_answering": load_handler(directory, serialized_file=None)}


@pytest.mark.parametrize("mode", sorted(GOOD))
def test_fuzzed_requests_get_an_answer_or_their_own_4xx(handlers_by_mode, mode):
    handler, context = handlers_by_mode[mode]

    @settings(max_examples=100, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow])
    @given(st.lists(REQUEST_BODIES, min_size=1, max_size=4))
    def check(bodies):
        result = run_batch(handler, context, [*bodies, GOOD[mode]])  # raising out of handle() fails here
        assert result.codes[-1] == 200
        for code, response in zip(result.codes, result.responses):
            assert code == 200 or 400 <= code < 500, response
            if code != 200:
                assert response["code"] == code and response["message"]

    check()
