"""trace/bert_ft_trace.py: traced files match Hugging Face on unseen shapes, call the fused op, load without
the fusedbert package, and the original example's command line and the script's error handling work."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import fusedbert
from fusedbert.tasks import MODES, TOKEN_LEVEL_MODES, TracedTaskModule, load_model, load_tokenizer, mean_pool

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "trace"))
import bert_ft_trace  # noqa: E402
from check_traced import max_abs_diff  # noqa: E402

TRACE_SCRIPT = REPO / "trace" / "bert_ft_trace.py"
DOWNLOAD_SCRIPT = REPO / "scripts" / "download_model.py"
FP32_ATOL = 1e-4
TRACE_LENGTHS = [32, 20]  # traced as a [2, 32] batch
# (batch size, padded length) pairs the trace never saw, one longer than it, one without padding.
UNSEEN_LENGTHS = [[17], [45, 16, 30], [16, 23, 31, 18, 40]]


class TracedMode:
    """One mode's traced file, its Hugging Face fp32 reference and the unseen batches with expected outputs."""

    def __init__(self, mode: str, minilm_path: Path, directory: Path):
        self.mode = mode
        reference = load_model(mode, str(minilm_path))
        fused = TracedTaskModule(fusedbert.fuse(copy.deepcopy(reference)), mode)
        self.tokenizer = load_tokenizer(str(minilm_path))
        example = bert_ft_trace.encode_batch(self.tokenizer, mode, TRACE_LENGTHS, padded_length=TRACE_LENGTHS[0])
        self.path = directory / f"{mode}.pt"
        torch.jit.save(bert_ft_trace.trace(fused, example), str(self.path))
        self.cases = []
        with torch.no_grad():
            for lengths in UNSEEN_LENGTHS:
                inputs = bert_ft_trace.encode_batch(self.tokenizer, mode, lengths)
                expected = TracedTaskModule(reference, mode)(*inputs)
                self.cases.append(bert_ft_trace.Case(inputs, expected, mode in TOKEN_LEVEL_MODES))


@pytest.fixture(scope="module")
def traced_modes(minilm_path, tmp_path_factory) -> dict[str, TracedMode]:
    directory = tmp_path_factory.mktemp("traced")
    return {mode: TracedMode(mode, minilm_path, directory) for mode in MODES}


@pytest.fixture(params=MODES)
def traced(request, traced_modes) -> TracedMode:
    return traced_modes[request.param]


def run_script(script: Path, *args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(script), *args], cwd=cwd, capture_output=True, text=True)


# ------------------------------------------------------------------------------------- traced files, per mode

def test_traced_file_matches_hugging_face_on_unseen_shapes(traced):
    model = torch.jit.load(str(traced.path))
    with torch.no_grad():
        for case in traced.cases:
            assert max_abs_diff(model(*case.inputs), case.expected, case.inputs[1], case.token_level) <= FP32_ATOL


def test_traced_file_takes_token_type_ids_as_optional_third_input(traced):
    model = torch.jit.load(str(traced.path))
    input_ids, attention_mask, _ = bert_ft_trace.encode_batch(traced.tokenizer, "sequence_classification", [21, 16])
    with torch.no_grad():
        without = model(input_ids, attention_mask)
        with_zeros = model(input_ids, attention_mask, torch.zeros_like(input_ids))
    for a, b in zip(without, with_zeros):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


def test_traced_graph_calls_the_fused_encoder(traced):
    assert bert_ft_trace.contains_fused_encoder(torch.jit.load(str(traced.path)))


def test_traced_graph_holds_no_tensor_constants(traced):
    # torch.jit.load(map_location="cuda") moves tensor constants to the GPU: arithmetic on one, read back as
    # a Python number, synchronizes every call and fails a CUDA graph capture.
    graph = torch.jit.load(str(traced.path)).inlined_graph
    constants = [str(node).strip() for node in graph.findAllNodes("prim::Constant", recurse=True)
                 if node.output().type().kind() == "TensorType"]
    assert constants == []


def test_traced_file_runs_in_a_process_that_never_imports_fusedbert(traced):
    report = bert_ft_trace.verify(traced.path, traced.cases, FP32_ATOL, library=fusedbert.library_path())
    assert report.fusedbert_imported is False
    assert report.max_diff <= FP32_ATOL
    assert report.shapes == [[len(lengths), max(lengths)] for lengths in UNSEEN_LENGTHS]


def test_verify_fails_when_the_file_disagrees_with_the_expected_outputs(traced_modes):
    traced = traced_modes["sequence_classification"]
    cases = copy.deepcopy(traced.cases)
    cases[1].expected = tuple(t + 1e-3 for t in cases[1].expected)
    with pytest.raises(bert_ft_trace.VerificationError, match="differs from Hugging Face"):
        bert_ft_trace.verify(traced.path, cases, FP32_ATOL, library=fusedbert.library_path())


def test_mean_pool_averages_real_tokens_and_gives_zeros_for_an_all_padding_row():
    hidden = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [100.0, 100.0]], [[5.0, 5.0], [6.0, 6.0], [7.0, 7.0]]])
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    torch.testing.assert_close(mean_pool(hidden, mask), torch.tensor([[2.0, 3.0], [0.0, 0.0]]))


def test_trace_and_verification_batches_are_never_the_traced_shape():
    for batch_size, seq_len in [(1, 17), (1, 18), (3, 128), (8, 512), (1, 16)]:
        traced_shape = [batch_size, seq_len]
        for lengths in bert_ft_trace.verification_lengths(batch_size, seq_len, max_len=512):
            assert [len(lengths), max(lengths)] != traced_shape
            assert min(lengths) >= bert_ft_trace.MIN_SEQ_LEN and max(lengths) <= 512


# --------------------------------------------------------------------------------------------- command line

def test_original_command_line_after_download_model(tmp_path):
    (tmp_path / "setup_config.json").write_text(
        '{"model_name": "sentence-transformers/all-MiniLM-L6-v2", "mode": "sequence_classification", '
        '"do_lower_case": true, "num_labels": "2", "save_mode": "torchscript", "max_length": "128"}')
    download = run_script(DOWNLOAD_SCRIPT, cwd=tmp_path)
    assert download.returncode == 0, download.stderr
    assert (tmp_path / "Transformer_model" / "config.json").is_file()

    result = run_script(TRACE_SCRIPT, "--mode", "sequence_classification", "--model_name_or_path", "Transformer_model",
                        "--tokenizer_name", "Transformer_model", "--batch_size", "1", "--data_type", "fp32",
                        "--model_type", "thsext", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "sequence_classification: thsext" in result.stdout and "traced_model.pt" in result.stdout
    model = torch.jit.load(str(tmp_path / "traced_model.pt"))
    assert bert_ft_trace.contains_fused_encoder(model)
    assert model(*bert_ft_trace.encode_batch(load_tokenizer(str(tmp_path / "Transformer_model")),
                                             "sequence_classification", [19, 16]))[0].shape == (2, 2)


def trace_cli(minilm_path, tmp_path, *flags) -> Path:
    output = tmp_path / ("model.pt2" if "export" in flags else "model.pt")
    # A short traced length keeps the script's own Hugging Face reference runs (and this test) quick.
    code = bert_ft_trace.main(["--model_name_or_path", str(minilm_path), "--device", "cpu", "--seq_len", "32",
                               "--output", str(output), *flags])
    assert code == 0
    return output


def test_model_type_ori_traces_hugging_face_encoder(minilm_path, tmp_path):
    output = trace_cli(minilm_path, tmp_path, "--mode", "token_classification", "--model_type", "ori")
    assert not bert_ft_trace.contains_fused_encoder(torch.jit.load(str(output)))


def test_format_export_writes_a_program_with_dynamic_batch_and_length(minilm_path, tmp_path):
    output = trace_cli(minilm_path, tmp_path, "--mode", "question_answering", "--format", "export")
    program = torch.export.load(str(output))
    assert "torch.ops.fusedbert.encoder" in program.graph_module.code
    tokenizer = load_tokenizer(str(minilm_path))
    reference = TracedTaskModule(load_model("question_answering", str(minilm_path)), "question_answering")
    inputs = bert_ft_trace.encode_batch(tokenizer, "question_answering", [150, 16, 33])  # unseen batch and length
    with torch.no_grad():
        diff = max_abs_diff(program.module()(*inputs), reference(*inputs), inputs[1], token_level=True)
    assert diff <= FP32_ATOL


def test_bf16_on_cpu_writes_a_bf16_model(minilm_path, tmp_path):
    output = trace_cli(minilm_path, tmp_path, "--mode", "feature_extraction", "--data_type", "bf16")
    inputs = bert_ft_trace.encode_batch(load_tokenizer(str(minilm_path)), "feature_extraction", [19, 16])
    (embedding,) = torch.jit.load(str(output))(*inputs[:2])
    assert embedding.dtype == torch.bfloat16 and embedding.shape == (2, 384)


@pytest.fixture
def gpt2_checkpoint(tmp_path) -> Path:
    from transformers import GPT2Config, GPT2Model

    path = tmp_path / "gpt2"
    GPT2Model(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=100, n_positions=64)).save_pretrained(path)
    return path


@pytest.mark.parametrize("flags, message", [
    (["--mode", "qa"], "--mode must be one of sequence_classification, question_answering"),
    (["--model_name_or_path", "/nonexistent/checkpoint"], "checkpoint '/nonexistent/checkpoint' is not a directory"),
    (["--data_type", "fp16", "--device", "cpu"], "--data_type fp16 needs --device cuda; on CPU use --data_type bf16"),
    (["GPT2"], "model_type 'gpt2' is not supported"),
])
def test_bad_input_exits_nonzero_with_one_line_error(flags, message, minilm_path, gpt2_checkpoint, tmp_path, capsys):
    argv = ["--model_name_or_path", str(minilm_path), "--output", str(tmp_path / "x.pt")]
    argv += ["--model_name_or_path", str(gpt2_checkpoint)] if flags == ["GPT2"] else flags
    try:
        code = bert_ft_trace.main(argv)
    except SystemExit as exit:
        code = exit.code
    assert code != 0
    stderr_lines = [line for line in capsys.readouterr().err.splitlines() if not line.startswith("WARNING")]
    assert len(stderr_lines) == 1 and stderr_lines[0].startswith("error: ")
    assert message in stderr_lines[0]
    assert not (tmp_path / "x.pt").exists()


def test_bad_input_prints_no_traceback_from_the_real_script(tmp_path):
    result = run_script(TRACE_SCRIPT, "--model_name_or_path", str(tmp_path / "missing"), "--device", "cpu", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [f"error: checkpoint '{tmp_path / 'missing'}' is not a directory "
                                                  "(and not a hub id)"]
