"""sparsetrain: sparse neural network training and lottery-ticket science on PyTorch.

Two lines in a plain PyTorch loop::

    sparsifier = sparsetrain.GraNet(model, optimizer, sparsity=0.9, total_steps=T)
    ...
    loss.backward(); optimizer.step(); sparsifier.step(); optimizer.zero_grad()
"""

from . import analysis, distributed, lottery, sparse
from .checkpoint_io import CheckpointError, UnsafeCheckpointError, load_checkpoint, save_checkpoint
from .data import DataError, DatasetBundle, get_dataset, list_datasets
from .init_pruning import prune_at_init
from .masks import SparsityReport, select_prunable
from .methods import GMP, SET, SNFS, SRSTE, GraNet, RigL, Static
from .models import build_model, list_models
from .sparse import export_sparse, load_sparse
from .sparsifier import Sparsifier

__version__ = "0.1.0"

METHODS: dict[str, type[Sparsifier]] = {
    cls.method: cls for cls in (GraNet, GMP, RigL, SET, SNFS, Static, SRSTE)
}

__all__ = ["GraNet", "GMP", "RigL", "SET", "SNFS", "SRSTE", "Static", "Sparsifier", "SparsityReport", "select_prunable",
           "METHODS", "analysis", "get_dataset", "list_datasets", "DatasetBundle", "DataError", "build_model",
           "list_models", "distributed", "CheckpointError", "UnsafeCheckpointError", "load_checkpoint",
           "save_checkpoint", "prune_at_init", "lottery", "sparse", "export_sparse", "load_sparse", "__version__"]
