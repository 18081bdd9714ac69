"""Find, check and load fusedbert's op library.

This module needs nothing but the standard library and torch, so a TorchServe model archive can carry
it beside the ``.so`` and load the op on a host where the ``fusedbert`` package is not installed.
"""

from __future__ import annotations

import glob
import os
import re

import torch

_MARKER = re.compile(rb"FUSEDBERT_BUILD torch=(\S+) cuda=([01]) END")
_REBUILD = "rebuild it against this torch: pip install --no-build-isolation --force-reinstall --no-deps <fusedbert checkout>"


class LibraryMismatchError(RuntimeError):
    """The library was built for another torch (loading it would fail with undefined symbols)."""


def library_path() -> str:
    """The absolute path of the ``.so`` built into the installed ``fusedbert`` package."""
    here = os.path.dirname(os.path.abspath(__file__))
    found = sorted(glob.glob(os.path.join(here, "_C*.so")))
    if not found:
        raise FileNotFoundError(
            f"fusedbert's op library (_C*.so) is not in {here}; build it with "
            "`pip install --no-build-isolation -e .` from the fusedbert checkout"
        )
    return found[0]


def build_info(path: str) -> dict[str, str]:
    """The torch version and CUDA flag recorded in the library file, read without loading it."""
    with open(path, "rb") as f:
        match = _MARKER.search(f.read())
    if match is None:
        raise LibraryMismatchError(f"{path} is not a fusedbert op library (no build marker found)")
    return {"torch": match.group(1).decode(), "cuda": match.group(2).decode()}


def check_library(path: str) -> None:
    """Raise LibraryMismatchError unless ``path`` was built against the running torch."""
    built_for = build_info(path)["torch"]
    if built_for != torch.__version__:
        raise LibraryMismatchError(
            f"{path} was built for torch {built_for} but this process runs torch {torch.__version__}; {_REBUILD}"
        )


def op_is_registered() -> bool:
    return hasattr(torch.ops.fusedbert, "encoder")


def load_library(path: str | None = None) -> str | None:
    """Check and load the op library (the installed one by default) and return its path.

    The op namespace can be registered once per process: when some library already registered it,
    this loads nothing and returns None.
    """
    if op_is_registered():
        return None
    path = os.path.abspath(path or library_path())
    check_library(path)
    torch.ops.load_library(path)
    return path
