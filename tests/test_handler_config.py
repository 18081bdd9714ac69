"""setup_config.json validation and load-time failures: each names its cause."""

from __future__ import annotations

import json
import logging
import shutil

import pytest
import torch

from handler_support import copy_model_dir, handler_module, load_handler, write_model_dir

HandlerConfig = handler_module.HandlerConfig
ConfigError = handler_module.ConfigError


def test_original_example_config_with_string_values_is_accepted():
    config = HandlerConfig.from_dict({
        "model_name": "bert-base-uncased", "mode": "question_answering", "do_lower_case": "true",
        "num_labels": "0", "save_mode": "pretrained", "max_length": "150", "captum_explanation": "false",
        "embedding_name": "bert", "FasterTransformer": "true", "BetterTransformer": False, "model_parallel": "false",
    })
    assert (config.max_length, config.num_labels, config.do_lower_case, config.fused) == (150, None, True, True)
    assert config.captum_explanation is False and config.question_answering_stride == 37


@pytest.mark.parametrize("raw,message", [
    ({}, '"mode" is required'),
    ({"mode": "qa"}, '"mode" must be one of sequence_classification, question_answering, token_classification, '
                     'feature_extraction; got "qa"'),
    ({"mode": "feature_extraction", "max_length": "12x"}, '"max_length" must be an integer >= 8; got "12x"'),
    ({"mode": "feature_extraction", "max_length": True}, '"max_length" must be an integer >= 8; got true'),
    ({"mode": "feature_extraction", "do_lower_case": "yes"}, '"do_lower_case" must be true or false'),
    ({"mode": "feature_extraction", "save_mode": "onnx"}, '"save_mode" must be one of torchscript, pretrained'),
    ({"mode": "feature_extraction", "data_type": "int8"}, '"data_type" must be one of'),
    ({"mode": "feature_extraction", "max_lenght": 64}, 'unknown key(s) "max_lenght"'),
    ({"mode": "feature_extraction", "BetterTransformer": True}, '"BetterTransformer": true is not supported'),
    ({"mode": "question_answering", "max_length": 64, "doc_stride": 40}, '"doc_stride" must be smaller than half'),
    ({"mode": "sequence_classification", "num_labels": -1}, '"num_labels" must be an integer >= 0; got -1'),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [1, 16]},
     '"cuda_graph_buckets" must be "auto" or a list of [batch_size, seq_len] or [batch_size, seq_len, max_tokens] '
     "with positive integers; got 1"),
    ({"mode": "feature_extraction", "cuda_graph_buckets": "[[1, 16]]"}, '"cuda_graph_buckets" must be "auto" or a list of'),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[1, 16], [8]]}, "positive integers; got [8]"),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[0, 16]]}, "positive integers; got [0, 16]"),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[1, "16"]]}, 'positive integers; got [1, "16"]'),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[True, 16]]}, "positive integers; got [true, 16]"),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[1, 16, 8, 8]]}, "positive integers; got [1, 16, 8, 8]"),
    ({"mode": "feature_extraction", "max_length": 64, "cuda_graph_buckets": [[1, 16], [4, 128]]},
     '"cuda_graph_buckets" must be buckets with seq_len <= max_length (64); got [4, 128]'),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[4, 129]]},  # the default max_length is 128
     "seq_len <= max_length (128); got [4, 129]"),
    ({"mode": "feature_extraction", "cuda_graph_buckets": [[2, 16, 33]]},
     '"cuda_graph_buckets" must be buckets whose max_tokens is at most batch_size * seq_len; got [2, 16, 33]'),
    ({"mode": "feature_extraction", "cuda_graph_warmup": "later"}, '"cuda_graph_warmup" must be true or false'),
    ({"mode": "feature_extraction", "cuda_graph_warmup": 1}, '"cuda_graph_warmup" must be true or false'),
])
def test_bad_key_is_named_in_the_error(raw, message):
    with pytest.raises(ConfigError, match=None) as error:
        HandlerConfig.from_dict(raw)
    assert message in str(error.value)


def test_cuda_graph_keys_are_read():
    config = HandlerConfig.from_dict({"mode": "question_answering", "max_length": "64",
                                      "cuda_graph_buckets": [[1, 64], [8, 32], [16, 64, 512]],
                                      "cuda_graph_warmup": "false"})
    assert config.cuda_graph_buckets == ((1, 64), (8, 32), (16, 64, 512))
    assert config.cuda_graph_warmup is False
    assert HandlerConfig.from_dict({"mode": "feature_extraction", "cuda_graph_buckets": "auto"}).cuda_graph_buckets == "auto"


def test_cuda_graphs_are_off_by_default_and_warm_up_when_on():
    assert HandlerConfig.from_dict({"mode": "feature_extraction"}).cuda_graph_buckets == ()
    assert HandlerConfig.from_dict({"mode": "feature_extraction", "cuda_graph_buckets": []}).cuda_graph_buckets == ()
    assert HandlerConfig.from_dict({"mode": "feature_extraction", "cuda_graph_buckets": [[1, 16]]}).cuda_graph_warmup


def test_missing_setup_config_is_named(tmp_path):
    with pytest.raises(ConfigError, match="setup_config.json not found"):
        HandlerConfig.from_file(str(tmp_path / "setup_config.json"))


@pytest.fixture(scope="module")
def traced_dir(minilm_path, tmp_path_factory):
    return write_model_dir(tmp_path_factory.mktemp("traced"), minilm_path, "sequence_classification", "torchscript",
                           True)


def copy_with(directory, tmp_path, **settings):
    return copy_model_dir(directory, tmp_path / "model", **settings)


def test_float16_on_cpu_is_refused_at_load(traced_dir, tmp_path):
    with pytest.raises(ConfigError, match='"data_type": "float16" needs a GPU'):
        load_handler(copy_with(traced_dir, tmp_path, data_type="fp16"))


def test_torchscript_without_serialized_file_is_refused(traced_dir, tmp_path):
    with pytest.raises(ConfigError, match="--serialized-file"):
        load_handler(copy_with(traced_dir, tmp_path), serialized_file=None)


def test_label_file_must_match_the_model_outputs(traced_dir, tmp_path):
    target = copy_with(traced_dir, tmp_path)
    (target / "index_to_name.json").write_text(json.dumps({"0": "a", "1": "b"}))
    with pytest.raises(ConfigError, match="index_to_name.json names 2 labels but the model outputs 3"):
        load_handler(target)


def test_op_library_built_for_another_torch_is_refused(traced_dir, tmp_path):
    import fusedbert

    target = copy_with(traced_dir, tmp_path)
    library = open(fusedbert.library_path(), "rb").read()
    marker = f"FUSEDBERT_BUILD torch={__import__('torch').__version__} ".encode()
    assert marker in library
    (target / "_C.abi3.so").write_bytes(library.replace(marker, b"FUSEDBERT_BUILD torch=1.0.0+other "))
    with pytest.raises(Exception, match="built for torch 1.0.0\\+other but this process runs torch") as error:
        load_handler(target)
    assert type(error.value).__name__ == "LibraryMismatchError"


def test_shipped_op_library_is_the_one_loaded(traced_dir, tmp_path):
    import fusedbert

    target = copy_with(traced_dir, tmp_path)
    shutil.copy(fusedbert.library_path(), target / "_C.abi3.so")
    handler, _ = load_handler(target)
    assert handler.op_library == str(target / "_C.abi3.so")


def test_handler_module_defines_exactly_one_class():
    # TorchServe instantiates the module's only class; a second one makes the model fail to load.
    from ts.utils.util import list_classes_from_module

    assert list_classes_from_module(handler_module) == [handler_module.TransformersFusedHandler]


def test_cudnn_attention_is_turned_off_for_unfused_models(caplog):
    """Unfused GPU workers call this at load (cuDNN's SDPA builds a plan per new input shape)."""
    enabled = torch.backends.cuda.cudnn_sdp_enabled()
    torch.backends.cuda.enable_cudnn_sdp(True)
    try:
        with caplog.at_level(logging.INFO, logger=handler_module.logger.name):
            handler_module.avoid_cudnn_attention()
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert "cuDNN attention off" in caplog.text
    finally:
        torch.backends.cuda.enable_cudnn_sdp(enabled)
