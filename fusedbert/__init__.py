"""fusedbert: a fused, padding-free BERT encoder op for PyTorch, and the tools to serve it.

``fuse(model)`` swaps a Hugging Face model's encoder for one call of ``torch.ops.fusedbert.encoder``;
``library_path()`` is the op library a TorchServe archive ships.
"""

from .convert import fuse, is_fused
from .encoder import FusedBertEncoder
from .library import LibraryMismatchError, library_path, load_library
from .reference import encoder_reference

__all__ = [
    "FusedBertEncoder",
    "LibraryMismatchError",
    "encoder_reference",
    "fuse",
    "is_fused",
    "library_path",
    "load_library",
]
