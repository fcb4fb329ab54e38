"""Experiments: typed configs, run directories, the trainer with exact resume, metrics, reports and plots.

The command line (:mod:`sparsetrain.cli`) is a thin layer over this package::

    from sparsetrain.experiment import ExperimentConfig, Trainer

    config = ExperimentConfig().with_overrides({"sparse.method": "rigl", "sparse.sparsity": 0.95})
    summary = Trainer(config, "runs").fit()   # trains, resumes an interrupted run, or skips a finished one

A study's run starts from another run's checkpoint (a :class:`Branch`) in a directory the study names::

    Trainer(config, run_dir="study/cell", branch=Branch(checkpoint=kept, take=...)).fit()
"""

from .branch import Branch
from .checkpoint import capture_rng, load_checkpoint, restore_rng
from .config import (
    SECTIONS,
    ConfigError,
    DataConfig,
    ExperimentConfig,
    ModelConfig,
    OptimConfig,
    SparseConfig,
    TrainConfig,
)
from .report import aggregate_rows, collect_rows, format_rows
from .rundir import RunDir, dense_reference, find_runs
from .signals import TrainingInterrupted
from .trainer import Trainer, TrainerCallback

__all__ = [
    "SECTIONS",
    "ConfigError",
    "DataConfig",
    "ExperimentConfig",
    "ModelConfig",
    "OptimConfig",
    "SparseConfig",
    "TrainConfig",
    "Branch",
    "RunDir",
    "find_runs",
    "Trainer",
    "TrainerCallback",
    "TrainingInterrupted",
    "dense_reference",
    "capture_rng",
    "load_checkpoint",
    "restore_rng",
    "collect_rows",
    "aggregate_rows",
    "format_rows",
]
