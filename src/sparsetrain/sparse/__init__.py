"""Compressed export and sparse inference for pruned models (weights already exactly zero).

* :func:`export_sparse` / :func:`load_sparse`: lossless state_dict export to one safetensors file,
  sparse tensors stored as a packed bitmask, CSR or COO, whichever is smallest.
* :func:`convert`: swap sparse-enough ``nn.Linear`` layers for :class:`SparseLinear` (CSR weight,
  native kernel on CPU) or :class:`NMLinear` (N:M weight, native kernel on CPU), and 2:4 weights on
  CUDA for torch's semi-structured sparse tensors, for faster inference; :func:`dense_state_dict` and
  :func:`unconvert` go back to the original architecture.
* :class:`TrainableSparseLinear`: a Linear layer that stores, trains and updates only its active weights
  (truly sparse training: forward, backward and optimizer state in proportion to the density), and
  :class:`SparseEnforcer`, the storage backend built on it (``backend="sparse"`` / ``"auto"`` of every method,
  registered with :func:`sparsetrain.enforcement.make_enforcer` when this package is imported).
"""

from sparsetrain.sparse.convert import DEFAULT_MIN_NUMEL, DEFAULT_MIN_SPARSITY, convert, dense_state_dict, unconvert
from sparsetrain.sparse.encoding import choose_encoding
from sparsetrain.sparse.export import (
    ExportInfo,
    SparseFileError,
    export_sparse,
    load_sparse,
)
from sparsetrain.sparse.linear import SparseLinear
from sparsetrain.sparse.nm_linear import NMLinear
from sparsetrain.sparse.backend import SparseEnforcer
from sparsetrain.sparse.trainable import TrainableSparseLinear

__all__ = [
    "DEFAULT_MIN_NUMEL",
    "DEFAULT_MIN_SPARSITY",
    "ExportInfo",
    "NMLinear",
    "SparseFileError",
    "SparseEnforcer",
    "SparseLinear",
    "TrainableSparseLinear",
    "choose_encoding",
    "convert",
    "dense_state_dict",
    "export_sparse",
    "load_sparse",
    "unconvert",
]
