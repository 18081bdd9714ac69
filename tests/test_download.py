"""scripts/download_model.py and fusedbert.hub.resolve_checkpoint: an offline, complete local checkpoint."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModel, AutoModelForTokenClassification, AutoTokenizer

from fusedbert.hub import resolve_checkpoint

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "scripts"))
import download_model  # noqa: E402

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def write_config(directory: Path, **keys) -> Path:
    path = directory / "setup_config.json"
    path.write_text(json.dumps(keys))
    return path


def test_embedded_hub_id_resolves_to_the_pip_package_copy(minilm_path):
    assert Path(resolve_checkpoint(MINILM_ID)) == minilm_path


def test_existing_directory_and_other_hub_ids_pass_through(tmp_path):
    assert resolve_checkpoint(str(tmp_path)) == str(tmp_path)
    assert resolve_checkpoint("google-bert/bert-base-uncased") == "google-bert/bert-base-uncased"


def test_a_path_that_is_neither_a_directory_nor_a_hub_id_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="is not a directory"):
        resolve_checkpoint(str(tmp_path / "missing"))


def test_saves_the_mode_head_with_string_num_labels_and_a_seeded_untrained_warning(minilm_path, tmp_path, caplog):
    config = write_config(tmp_path, model_name=MINILM_ID, mode="token_classification", num_labels="3",
                          do_lower_case=True)
    outputs = [tmp_path / "first", tmp_path / "second"]
    with caplog.at_level(logging.WARNING, logger="fusedbert.tasks"):
        for output in outputs:
            assert download_model.main([str(config), "--output", str(output)]) == 0
    assert "classifier.bias, classifier.weight" in caplog.text and "untrained" in caplog.text

    assert AutoConfig.from_pretrained(outputs[0]).num_labels == 3
    first, info = AutoModelForTokenClassification.from_pretrained(outputs[0], output_loading_info=True)
    assert not info["missing_keys"]  # the head was saved with the encoder
    second = AutoModelForTokenClassification.from_pretrained(outputs[1])
    torch.testing.assert_close(first.classifier.weight, second.classifier.weight, rtol=0, atol=0)
    assert AutoTokenizer.from_pretrained(outputs[0]).tokenize("Hello World") == ["hello", "world"]


def test_feature_extraction_saves_the_base_model_with_no_head_warning(tmp_path, caplog, minilm_path):
    config = write_config(tmp_path, model_name=str(minilm_path), mode="feature_extraction", do_lower_case="false")
    with caplog.at_level(logging.WARNING, logger="fusedbert.tasks"):
        assert download_model.main([str(config), "--output", str(tmp_path / "out")]) == 0
    assert "untrained" not in caplog.text
    _, info = AutoModel.from_pretrained(tmp_path / "out", output_loading_info=True)
    assert not info["missing_keys"]
    # do_lower_case "false" is kept: the uncased vocabulary then has no "Hello".
    assert AutoTokenizer.from_pretrained(tmp_path / "out").tokenize("Hello") != ["hello"]


@pytest.mark.parametrize("keys, message", [
    ({"mode": "sequence_classification"}, '"model_name" is required'),
    ({"model_name": MINILM_ID, "mode": "sequence_classification", "num_labels": "two"}, '"num_labels" must be'),
    ({"model_name": MINILM_ID, "mode": "qa"}, '"mode" must be one of'),
    ({"model_name": "/nonexistent/checkpoint", "mode": "feature_extraction"}, "'/nonexistent/checkpoint' is not a"),
])
def test_bad_setup_config_exits_nonzero_with_one_line_error(keys, message, tmp_path, capsys):
    config = write_config(tmp_path, **keys)
    assert download_model.main([str(config), "--output", str(tmp_path / "out")]) == 1
    stderr = capsys.readouterr().err.strip().splitlines()
    assert len(stderr) == 1 and stderr[0].startswith("error: ") and message in stderr[0]
    assert not (tmp_path / "out").exists()


def test_missing_setup_config_is_an_error(tmp_path, capsys):
    assert download_model.main([str(tmp_path / "setup_config.json")]) == 1
    assert capsys.readouterr().err.startswith("error: setup_config.json not found")
