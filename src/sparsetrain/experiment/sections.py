"""The five sections of an experiment config and the metadata of their fields: the config's schema.

Each section (``data``, ``model``, ``optim``, ``sparse``, ``train``) is a dataclass whose fields carry their help
text, command-line flag, allowed values and whether they identify a run in ``dataclasses.field`` metadata, made by
:func:`option` (the OpenLTH style: the config *is* the documentation of the command line). :func:`iter_fields`
reads that metadata back as one :class:`FieldInfo` per field, for the checks of :mod:`.config` and the flags of
the command line. The limits ``MAX_*`` bound the fields that size a run.

Checking, parsing and combining values is :mod:`.config`'s work; this module only declares what there is.
"""

from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from sparsetrain.distributions import DISTRIBUTIONS
from sparsetrain.enforcement import BACKENDS
from sparsetrain.nm import NMPattern
from sparsetrain.selection import SCOPES

__all__ = [
    "DENSE",
    "OPTIMIZERS",
    "LR_SCHEDULES",
    "PRECISIONS",
    "MAX_EPOCHS",
    "MAX_BATCH",
    "MAX_UPDATE_EVERY",
    "MAX_WORKERS",
    "MAX_THREADS",
    "MAX_SEED",
    "option",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "SparseConfig",
    "TrainConfig",
    "SECTIONS",
    "FieldInfo",
    "iter_fields",
]

DENSE = "dense"
OPTIMIZERS = ("sgd", "adam", "adamw")
LR_SCHEDULES = ("constant", "multistep", "cosine")
PRECISIONS = ("fp32", "bf16", "fp16")


def _methods() -> tuple[str, ...]:
    import sparsetrain

    return (DENSE, *sparsetrain.METHODS)


def _datasets() -> tuple[str, ...]:
    from sparsetrain.data import list_datasets

    return tuple(list_datasets())


def _models() -> tuple[str, ...]:
    from sparsetrain.models import list_models

    return tuple(list_models())


def _is_factory(value: Any) -> bool:
    from sparsetrain.models import is_factory

    return is_factory(value)


def option(
    default: Any,
    help: str,
    *,
    flag: str | None = None,
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None = None,
    check: tuple[Callable[[Any], bool], str] | None = None,
    hashed: bool = True,
    also: tuple[Callable[[Any], bool], str] | None = None,
) -> Any:
    """A config field with its help text and command-line metadata.

    Args:
        default: the default value (lists and dicts are copied per instance).
        help: one sentence for ``--help``.
        flag: the command-line flag (default ``--`` + the field name with dashes).
        choices: allowed values of a string field (or a function returning them, for registries).
        check: ``(predicate, description)``: a value is allowed when ``predicate(value)`` is true.
        hashed: whether the field is part of the run's identity (False for paths, devices, seeds...).
        also: ``(predicate, description)``: values allowed besides the choices (e.g. a user's model factory).

    Returns:
        A ``dataclasses.field``.
    """
    metadata = {"help": help, "flag": flag, "choices": choices, "check": check, "hashed": hashed, "also": also}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: copy.deepcopy(default), metadata=metadata)
    return field(default=default, metadata=metadata)


#: Upper limits of the fields that size a run: past them a value is a typo, not an experiment (and would run for
#: ever, or ask for more memory or processes than any machine has).
MAX_EPOCHS = 100_000
MAX_BATCH = 1 << 20
MAX_UPDATE_EVERY = 10**9
MAX_WORKERS = 256
MAX_THREADS = 1024
MAX_SEED = 2**63 - 1


def _trackers(kinds: list[str]) -> bool:
    from .loggers import LOGGERS

    return len(set(kinds)) == len(kinds) and all(kind in LOGGERS for kind in kinds)


def _is_pattern(v: str) -> bool:
    """``"N:M"`` spelled as the run identity keeps it (no spaces: one spelling, one run name)."""
    try:
        return str(NMPattern.parse(v)) == v
    except ValueError:
        return False


def _nonneg(v: float) -> bool:
    return v >= 0


def _between(low: float, high: float, what: str = "an int") -> tuple[Callable[[Any], bool], str]:
    """A ``check``: ``low <= value <= high``, described as "<what> in [low, high]"."""
    return (lambda v: low <= v <= high), f"{what} in [{low}, {high}]"


def _positive(v: float) -> bool:
    return v > 0


@dataclass
class DataConfig:
    """The dataset and its split (``sparsetrain.data.get_dataset``)."""

    name: str = option("mnist1d", "dataset name", flag="--data", choices=_datasets)
    seed: int = option(0, "seed of the train/val split (kept apart from train.seed: every run sees the same data)",
                       flag="--data-seed", check=_between(0, MAX_SEED))
    val_fraction: float = option(0.1, "share of the training set held out for validation",
                                 check=(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"))
    data_dir: str | None = option(None, "directory with the files of file-based datasets (cifar10, mnist, ...)",
                                  hashed=False)
    cache_dir: str | None = option(None, "cache of generated datasets (default $SPARSETRAIN_CACHE or "
                                   "~/.cache/sparsetrain)", hashed=False)
    options: dict[str, Any] = option({}, "dataset-specific options (sparsetrain.data.dataset_options)",
                                     flag="--data-option")


@dataclass
class ModelConfig:
    """The network (``sparsetrain.models.build_model``)."""

    name: str = option("cnn1d", "model name, or a user's model as package.module:factory (called as factory("
                       "input_shape, num_classes, **options); importable from the current directory or PYTHONPATH)",
                       flag="--model", choices=_models, also=(_is_factory, "package.module:factory"))
    options: dict[str, Any] = option({}, "model-specific options (sparsetrain.models.model_options)",
                                     flag="--model-option")


@dataclass
class OptimConfig:
    """The optimizer and its learning-rate schedule (counted in optimizer steps)."""

    name: str = option("sgd", "optimizer", flag="--optimizer", choices=OPTIMIZERS)
    lr: float = option(0.05, "peak learning rate", check=(_positive, "a number > 0"))
    momentum: float = option(0.9, "SGD momentum", check=(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"))
    nesterov: bool = option(True, "Nesterov momentum (SGD)")
    weight_decay: float = option(5e-4, "weight decay (coupled for sgd/adam, decoupled for adamw)",
                                 check=(_nonneg, "a number >= 0"))
    betas: list[float] = option([0.9, 0.999], "Adam/AdamW betas",
                                check=(lambda v: len(v) == 2 and all(0.0 <= b < 1.0 for b in v),
                                       "two numbers in [0, 1)"))
    lr_schedule: str = option("cosine", "learning-rate schedule after warm-up", choices=LR_SCHEDULES)
    milestones: list[float] = option([0.5, 0.75], "multistep: fractions of the run where the lr is multiplied "
                                     "by gamma", check=(lambda v: all(0.0 < m < 1.0 for m in v) and v == sorted(v),
                                                        "increasing numbers in (0, 1)"))
    gamma: float = option(0.1, "multistep: lr factor at each milestone", check=(_positive, "a number > 0"))
    warmup_epochs: float = option(0.0, "linear warm-up from 0 over this many epochs",
                                  check=_between(0, MAX_EPOCHS, "a number"))
    grad_clip: float | None = option(None, "clip the global gradient norm to this value (none: no clipping)",
                                     check=(_positive, "a number > 0 or none"))


@dataclass
class SparseConfig:
    """The sparse-training method (``sparsetrain.METHODS``; "dense" trains without a sparsifier)."""

    method: str = option("granet", "sparse-training method", flag="--method", choices=_methods)
    sparsity: float = option(0.9, "final sparsity of the sparsified weights",
                             check=(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"))
    distribution: str | None = option(None, "per-layer allocation of the sparsity (none: the method's default; "
                                      "given without a scope, it means scope layer)", choices=DISTRIBUTIONS)
    scope: str | None = option(None, "layer: each layer ranked on its own; global: one ranking over all layers "
                               "(none: the method's default)", flag="--sparse-scope", choices=SCOPES)
    update_every: int = option(100, "ΔT: optimizer steps between topology updates",
                               check=_between(1, MAX_UPDATE_EVERY))
    pattern: str | None = option(None, "N:M structured sparsity, e.g. 2:4: every group of M consecutive weights along "
                                 "a layer's reduction dim keeps N; sparse.sparsity at its default then means 1 - N/M "
                                 "(none: unstructured)", check=(_is_pattern, "'N:M' with integers 1 <= N < M, e.g. "
                                                                            "2:4"))
    backend: str = option("auto", "where the sparsified weights live: auto (the faster storage per Linear layer, "
                          "from the measured break-even: sparse where it is float32 on the CPU, large and at most 0.3 "
                          "dense when the method starts; dense otherwise and with autocast), dense (bool masks over "
                          "dense weights), sparse (Linear layers store and train only their active weights)",
                          choices=BACKENDS)
    options: dict[str, Any] = option({}, "method-specific keyword arguments (e.g. initial_sparsity, drop_fraction)",
                                     flag="--method-option")

    def target_sparsity(self) -> float:
        """The sparsity the method trains to: ``sparsity``, or with a ``pattern`` and ``sparsity`` left at its
        default, the pattern's ``1 - N/M`` (a sparsity given that differs from it is refused by the method)."""
        default = next(f.default for f in dataclasses.fields(self) if f.name == "sparsity")
        if self.pattern is not None and self.sparsity == default:
            return NMPattern.parse(self.pattern).sparsity
        return self.sparsity


@dataclass
class TrainConfig:
    """The training loop."""

    epochs: int = option(30, "training epochs", check=_between(1, MAX_EPOCHS))
    batch_size: int = option(32, "training minibatch size", check=_between(1, MAX_BATCH))
    label_smoothing: float = option(0.0, "label smoothing of the cross-entropy loss",
                                    check=(lambda v: 0.0 <= v < 1.0, "a number in [0, 1)"))
    precision: str = option("fp32", "fp32, or autocast with bf16 (CPU/CUDA) or fp16 (CUDA, with a GradScaler)",
                            choices=PRECISIONS)
    seed: int = option(0, "seed of the model init, data order and sparsifier (a run directory per seed)",
                       check=_between(0, MAX_SEED), hashed=False)
    eval_batch_size: int = option(1000, "batch size of evaluation", check=_between(1, MAX_BATCH), hashed=False)
    device: str = option("auto", "auto (cuda if available, else cpu), cpu, cuda, cuda:N or mps", hashed=False,
                         check=(lambda v: v in ("auto", "cpu", "cuda", "mps") or
                                (v.startswith("cuda:") and v[5:].isdigit()), "auto, cpu, cuda, cuda:N or mps"))
    threads: int | None = option(1, "torch CPU threads; 1 is fastest for small models and safe on a shared "
                                 "machine, raise it for large models on CPU (none: torch's default)",
                                 check=_between(1, MAX_THREADS, "none or an int"), hashed=False)
    num_workers: int = option(0, "DataLoader worker processes", check=_between(0, MAX_WORKERS), hashed=False)
    deterministic: bool = option(True, "torch.use_deterministic_algorithms (warn only)", hashed=False)
    log: list[str] = option([], "experiment trackers the run also logs to: tensorboard (event files in "
                            "<run>/tensorboard), mlflow (<runs-dir>/mlflow.db); each needs the extra of its name",
                            check=(_trackers, "tensorboard and/or mlflow, each once"), hashed=False)


SECTIONS: dict[str, type] = {
    "data": DataConfig,
    "model": ModelConfig,
    "optim": OptimConfig,
    "sparse": SparseConfig,
    "train": TrainConfig,
}


@dataclass(frozen=True)
class FieldInfo:
    """One config field as the command line sees it."""

    section: str
    name: str
    type: Any
    default: Any
    help: str
    flag: str
    choices: tuple[str, ...] | Callable[[], tuple[str, ...]] | None
    check: tuple[Callable[[Any], bool], str] | None
    hashed: bool
    also: tuple[Callable[[Any], bool], str] | None = None

    @property
    def path(self) -> str:
        return f"{self.section}.{self.name}"

    def allowed(self) -> tuple[str, ...] | None:
        """The allowed choices, resolving a registry function."""
        return self.choices() if callable(self.choices) else self.choices


def iter_fields() -> Iterator[FieldInfo]:
    """Every config field, section by section, in declaration order."""
    for section, cls in SECTIONS.items():
        hints = typing.get_type_hints(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
            meta = f.metadata
            yield FieldInfo(section, f.name, hints[f.name], default, meta["help"],
                            meta["flag"] or "--" + f.name.replace("_", "-"), meta["choices"], meta["check"],
                            meta["hashed"], meta["also"])
