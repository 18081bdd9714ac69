"""Save a complete local checkpoint (model with the mode's head, and its tokenizer) for a setup_config.json.

    python scripts/download_model.py [setup_config.json] [--output Transformer_model]

The counterpart of TorchServe's ``Download_Transformer_models.py``: reads ``model_name``, ``mode``,
``num_labels`` and ``do_lower_case`` (validated as the handler validates them) and writes
``Transformer_model/`` for ``trace/bert_ft_trace.py`` and the archive. ``model_name`` is a local
directory or a hub id; ``sentence-transformers/all-MiniLM-L6-v2`` needs no network (see
``fusedbert.hub.resolve_checkpoint``). A head the checkpoint lacks is initialized from a fixed seed,
and a warning says it is untrained.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT))  # handler/config.py: the one validator of setup_config.json

from handler.config import HandlerConfig  # noqa: E402


def save_checkpoint(mode: str, model_name_or_path: str, output: str | Path, num_labels: int | None = None,
                    do_lower_case: bool | None = None) -> Path:
    """Write the model with ``mode``'s head and its tokenizer to ``output``; return ``output``."""
    from fusedbert.tasks import load_model, load_tokenizer

    output = Path(output)
    load_model(mode, model_name_or_path, num_labels).save_pretrained(output)
    load_tokenizer(model_name_or_path, do_lower_case).save_pretrained(output)
    return output


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("setup_config", nargs="?", default="setup_config.json",
                        help="path of setup_config.json (default: ./setup_config.json)")
    parser.add_argument("--output", default="Transformer_model", help="checkpoint directory to write")
    args = parser.parse_args(argv)
    logging.basicConfig(format="%(levelname)s: %(message)s")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()  # fusedbert.tasks warns about an untrained head in one line
    hf_logging.disable_progress_bar()
    try:
        config = HandlerConfig.from_file(args.setup_config)
        if config.model_name is None:
            raise ValueError(f'{args.setup_config}: "model_name" is required (a hub id or a checkpoint directory)')
        output = save_checkpoint(config.mode, config.model_name, args.output, config.num_labels, config.do_lower_case)
    except (OSError, ValueError) as error:
        print(f"error: {' '.join(str(error).split())}", file=sys.stderr)
        return 1
    print(f"saved {config.model_name} with its {config.mode} head and tokenizer to {output.resolve()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
