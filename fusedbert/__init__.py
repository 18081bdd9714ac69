"""fusedbert: a fused, padding-free BERT encoder op for PyTorch, and the tools to serve it.

``fuse(model)`` swaps a Hugging Face model's encoder for one call of ``torch.ops.fusedbert.encoder``;
``library_path()`` is the op library a TorchServe archive ships.
"""

from .convert import fuse, is_fused
from .embeddings import FusedBertEmbeddings
from .encoder import FusedBertEncoder
from .library import LibraryMismatchError, library_path, load_library
from .reference import embeddings_reference, encoder_reference

__all__ = [
    "FusedBertEmbeddings",
    "FusedBertEncoder",
    "LibraryMismatchError",
    "embeddings_reference",
    "encoder_reference",
    "fuse",
    "is_fused",
    "library_path",
    "load_library",
]
