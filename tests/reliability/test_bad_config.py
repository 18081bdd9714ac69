"""Broken configurations and artifacts, registered into a running TorchServe: the registration fails with a
management-API error within its bound, the worker's log names the cause, and the server's other model
keeps answering.

TorchServe 0.12 reports a worker whose handler raised in ``initialize`` as "Failed to start workers for
model <name>" (HTTP 500) once the first worker has failed (``synchronous=true``), then unregisters the
model; the frontend does not forward the handler's message, which is in the worker's log.
"""

from __future__ import annotations

import json
import time

import pytest
import torch

from torchserve_support import (ARCHIVE, EMBEDDER, STARTUP_TIMEOUT_S, derive_model_dir, model_log, post_all,
                                register, unregister)

LIBRARY = "_C.abi3.so"


def library_for_another_torch(library: bytes) -> bytes:
    """The op library with its recorded torch version changed; same length, so the ELF file stays intact."""
    version = torch.__version__
    other = f"0.0.0+{'x' * (len(version) - 6)}"
    marker = f"FUSEDBERT_BUILD torch={version} ".encode()
    assert marker in library and len(other) == len(version)
    return library.replace(marker, f"FUSEDBERT_BUILD torch={other} ".encode())


def manifest_without_serialized_file(base) -> bytes:
    manifest = json.loads((base / "MAR-INF" / "MANIFEST.json").read_text())
    del manifest["model"]["serializedFile"]
    return json.dumps(manifest).encode()


# name -> (how the variant differs from the good archive, what the worker's log must say)
BROKEN = {
    "unknown_mode": (lambda base: {"setup": {"mode": "qa"}},
                     'setup_config.json: "mode" must be one of sequence_classification, question_answering, '
                     'token_classification, feature_extraction; got "qa"'),
    "misspelt_key": (lambda base: {"setup": {"max_lenght": 64}}, 'setup_config.json: unknown key(s) "max_lenght"'),
    "bad_value": (lambda base: {"setup": {"max_length": "long"}},
                  'setup_config.json: "max_length" must be an integer >= 8; got "long"'),
    "missing_mode": (lambda base: {"setup": {"mode": None}}, 'setup_config.json: "mode" is required'),
    "torchscript_without_serialized_file": (
        lambda base: {"files": {"MAR-INF/MANIFEST.json": manifest_without_serialized_file(base)},
                      "remove": ("traced_model.pt",)},
        '"save_mode": "torchscript" needs the traced model in the archive'),
    "fused_without_library": (lambda base: {"remove": (LIBRARY,)},
                              '"FasterTransformer": true, but no op library was found'),
    "library_for_another_torch": (
        lambda base: {"files": {LIBRARY: library_for_another_torch((base / LIBRARY).read_bytes())}},
        "was built for torch 0.0.0+x"),
    "float16_on_cpu": (lambda base: {"setup": {"data_type": "fp16"}},
                       'setup_config.json: "data_type": "float16" needs a GPU; this worker runs on CPU'),
}


@pytest.mark.parametrize("name", sorted(BROKEN))
def test_broken_model_fails_to_register_with_its_cause_logged_and_the_server_keeps_serving(
        server, reliability_store, name):
    if name == "float16_on_cpu" and torch.cuda.is_available():
        pytest.skip("float16 is valid where the worker gets a GPU")
    changes, cause = BROKEN[name]
    derive_model_dir(reliability_store / EMBEDDER, reliability_store / name, **changes(reliability_store / EMBEDDER))

    started = time.monotonic()
    reply = register(server, name, name)
    elapsed = time.monotonic() - started
    try:
        assert reply.status == 500, reply.body[:300]
        assert reply.json()["message"] == f"Failed to start workers for model {name} version: 1.0"
        assert elapsed < STARTUP_TIMEOUT_S
        assert cause in model_log(server, name, until=cause)
        described = server.call("management", "GET", f"/models/{name}")
        # Usually unregistered; a race in 0.12's failure path can leave it listed, but never with a worker.
        assert described.status == 404 or not described.json()[0]["workers"], described.body[:500]
        answer = post_all(server, ARCHIVE, ["The other model still answers."], concurrency=1)[0]
        assert answer.status == 200 and len(answer.json()["embedding"]) == 384
    finally:
        if server.call("management", "GET", f"/models/{name}").status == 200:
            unregister(server, name)

