"""Build everything a run needs from its config: data, loaders, model, optimizer, LR schedule, sparsifier.

Everything a config can get wrong surfaces here, before any file is written, as a :class:`ConfigError` (a
``ValueError``) whose one-line message names the section: the library's own ``ValueError``/``TypeError`` from
``get_dataset``, ``build_model`` and the sparsifier's constructor are re-raised with the section in front.

Inside a torchrun launch the experiment is data parallel (see :mod:`.parallel`): the process group is joined
here, the training loader reads this rank's shard of ``train.batch_size / world_size`` samples per step, the
eval loaders this rank's share, and ``Experiment.train_model`` is the DistributedDataParallel wrapper of
``Experiment.model`` (on which the optimizer and sparsifier are built).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import logging
import os
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

import sparsetrain

from .config import DENSE, ConfigError, ExperimentConfig
from .loader import eval_loader, train_loader
from .optim import build_optimizer, build_scheduler
from .parallel import SINGLE, Parallel, setup, wrap_model

__all__ = ["Experiment", "build_experiment", "build_sparsifier", "attach_sparsifier", "rewrap_sparse_layers",
           "sparsifier_step",
           "resolve_device",
           "seed_everything", "RESERVED_METHOD_OPTIONS", "method_options_help"]

logger = logging.getLogger(__name__)

#: Sparsifier arguments that have their own config field (sparse.options may not set them).
RESERVED_METHOD_OPTIONS = {"sparsity": "sparse.sparsity", "total_steps": "train.epochs",
                           "update_every": "sparse.update_every", "distribution": "sparse.distribution",
                           "scope": "sparse.scope", "seed": "train.seed", "pattern": "sparse.pattern",
                           "backend": "sparse.backend"}


@dataclass
class Experiment:
    """The objects of one run, ready to train."""

    config: ExperimentConfig
    device: torch.device
    bundle: Any  # sparsetrain.data.DatasetBundle
    model: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    sparsifier: sparsetrain.Sparsifier | None
    scaler: torch.amp.GradScaler | None
    train_loader: DataLoader
    val_loader: DataLoader | None
    test_loader: DataLoader
    loss_fn: nn.Module
    steps_per_epoch: int
    total_steps: int
    parallel: Parallel = SINGLE
    train_model: nn.Module | None = None

    def __post_init__(self) -> None:
        if self.train_model is None:  # the module whose forward trains: the DDP wrapper, or the model itself
            self.train_model = self.model

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.config.train.precision]

    def autocast(self) -> contextlib.AbstractContextManager:
        """``torch.autocast`` at ``train.precision`` on the run's device (a no-op context for fp32)."""
        dtype = self.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=dtype)


def resolve_device(name: str) -> torch.device:
    """"auto" -> cuda if available, else cpu; other names as given (checked to exist).

    Raises:
        ConfigError: the device is not available here.
    """
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} is not allowed: CUDA is not available here; use auto or cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ConfigError(f"train.device={name!r} is not allowed: this machine has {torch.cuda.device_count()} "
                          "CUDA device(s)")
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"train.device={name!r} is not allowed: MPS is not available here; use auto or cpu")
    return device


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA), numpy and Python's ``random``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _section_error(section: str, exc: Exception) -> ConfigError:
    message = " ".join(str(exc).split())
    return ConfigError(f"{section}: {message}")


def _too_large(exc: BaseException) -> bool:
    """An allocation that failed: the options ask for more memory (or a larger tensor) than there is."""
    text = str(exc).lower()
    return isinstance(exc, MemoryError) or (isinstance(exc, RuntimeError) and any(
        word in text for word in ("allocate", "out of memory", "overflow", "too large", "numel")))


def _memory_error(section: str, options: dict[str, Any], exc: BaseException) -> ConfigError:
    detail = " ".join(str(exc).split())[:200] or type(exc).__name__
    return ConfigError(f"{section}: the options {options} ask for more memory than this machine has ({detail})")


def build_sparsifier(config: ExperimentConfig, model: nn.Module, optimizer: torch.optim.Optimizer,
                     total_steps: int, init_data: Any = None) -> sparsetrain.Sparsifier | None:
    """The sparsifier of ``config.sparse`` (None for the dense method).

    ``init_data`` (batches of the training set) goes to the static method's pruning at initialisation
    (``sparse.options.init`` = snip, grasp or synflow), which scores weights on it.

    Raises:
        ConfigError: a reserved or unknown method option, or a value the method rejects.
    """
    sparse = config.sparse
    if sparse.method == DENSE:
        return None
    for key, field_path in RESERVED_METHOD_OPTIONS.items():
        if key in sparse.options:
            raise ConfigError(f"sparse.options.{key}={sparse.options[key]!r} is not allowed: set {field_path} instead")
    cls = sparsetrain.METHODS[sparse.method]
    allowed = sorted(set(cls.declared_options()) - set(RESERVED_METHOD_OPTIONS))
    unknown = sorted(set(sparse.options) - set(allowed))
    if unknown:
        raise ConfigError(f"sparse (method {sparse.method}): sparse.options.{unknown[0]} is not allowed: no such "
                          f"option; allowed: {', '.join(allowed)}")
    masks_file = sparse.options.get("masks")
    if masks_file is not None and not isinstance(masks_file, str):
        raise ConfigError(f"sparse.options.masks={masks_file!r} is not allowed: expected the path of a masks file "
                          "(a run's masks.pt)")
    if isinstance(masks_file, str):
        sparse = dataclasses.replace(sparse, options={**sparse.options, "masks": load_masks_file(masks_file)})
    backend = sparse.backend
    if sparse.pattern is not None:  # sparse storage trains unstructured masks only
        if backend == "sparse":
            raise ConfigError(f"sparse.backend='sparse' is not allowed with sparse.pattern={sparse.pattern!r}: sparse "
                              "storage trains unstructured masks only; use sparse.backend dense or auto")
        backend = "dense"
    if config.train.precision != "fp32":  # sparse layers run their own kernels, outside autocast
        if backend == "sparse":
            raise ConfigError(f"sparse.backend='sparse' is not allowed with train.precision={config.train.precision!r}"
                              ": sparse layers train in float32; use train.precision fp32, or sparse.backend dense")
        backend = "dense"
    kwargs: dict[str, Any] = dict(sparsity=sparse.target_sparsity(), total_steps=total_steps,
                                  update_every=sparse.update_every, seed=config.train.seed, backend=backend,
                                  **sparse.options)
    if sparse.pattern is not None:
        kwargs["pattern"] = sparse.pattern
    if sparse.distribution is not None:
        kwargs["distribution"] = sparse.distribution
    if sparse.scope is not None:
        kwargs["scope"] = sparse.scope
    if sparse.options.get("init") is not None and "init_data" not in sparse.options:
        kwargs["init_data"] = init_data
    where = f"method {sparse.method}"
    if isinstance(masks_file, str):
        where += f", sparse.options.masks={masks_file!r}"
    try:
        return cls(model, optimizer, **kwargs)
    except (ValueError, TypeError) as exc:
        raise _section_error(f"sparse ({where})", exc) from None


def method_options_help() -> str:
    """The options of every method that ``--method-option NAME=VALUE`` (``sparse.options``) may set, as help text.

    The options a config sets through its own fields (:data:`RESERVED_METHOD_OPTIONS`) are left out.
    """
    from sparsetrain.options import describe

    own = ", ".join(f"{name} ({path})" for name, path in RESERVED_METHOD_OPTIONS.items())
    return (f"method options (--method-option NAME=VALUE, or sparse.options in a config; masks=PATH reads a run's "
            f"masks.pt; init_data is the run's training set). Set through their own fields instead: {own}.\n"
            + describe(sparsetrain.METHODS, exclude=(*RESERVED_METHOD_OPTIONS, "init_data")))


def load_masks_file(path: str) -> dict[str, torch.Tensor]:
    """Read ``sparse.options.masks`` given as a file (a run's ``masks.pt``: parameter name -> bool mask).

    Raises:
        ConfigError: no such file, an unreadable one, or not a mapping of names to tensors.
    """
    from sparsetrain.checkpoint_io import CheckpointError, load_checkpoint

    where = f"sparse.options.masks={path!r}"
    if not os.path.isfile(path):
        raise ConfigError(f"{where} is not allowed: no such file (expected a masks.pt of parameter name -> bool "
                          "mask)")
    try:
        masks = load_checkpoint(path)
    except CheckpointError as exc:
        raise ConfigError(f"{where} is not allowed: {exc}") from None
    if not isinstance(masks, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in masks.items()):
        raise ConfigError(f"{where} is not allowed: expected a mapping of parameter names to bool masks, got "
                          f"{type(masks).__name__}")
    return masks


def build_experiment(config: ExperimentConfig, *, sparsifier: bool = True) -> Experiment:
    """Construct the run's objects, seeded by ``config.train.seed``.

    Args:
        config: a validated config.
        sparsifier: attach ``config.sparse``'s sparsifier (:func:`attach_sparsifier`); False leaves
            ``Experiment.sparsifier`` None, for a caller that loads weights first.

    Returns:
        The :class:`Experiment`.

    Raises:
        ConfigError: anything in the config that the data, model or method rejects.
    """
    from sparsetrain.data import get_dataset
    from sparsetrain.models import build_model

    train = config.train
    parallel, device = setup(resolve_device(train.device))
    if train.batch_size % parallel.world_size:
        raise ConfigError(f"train.batch_size={train.batch_size} is not allowed with {parallel.world_size} processes: "
                          f"the minibatch is split evenly across them; use a multiple of {parallel.world_size}")
    if train.precision == "fp16" and device.type != "cuda":
        raise ConfigError(f"train.precision='fp16' is not allowed on {device.type}: fp16 autocast needs CUDA "
                          "(a GradScaler); use bf16 or fp32")
    if train.threads is not None:
        torch.set_num_threads(train.threads)
    if train.deterministic:
        if device.type == "cuda":  # cuBLAS needs this before its first handle for deterministic matmuls
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)

    data = config.data
    try:
        bundle = get_dataset(data.name, data_dir=data.data_dir, cache_dir=data.cache_dir, seed=data.seed,
                             val_fraction=data.val_fraction, **data.options)
    except (ValueError, TypeError, ImportError) as exc:
        raise _section_error("data", exc) from None
    except (MemoryError, RuntimeError) as exc:
        if not _too_large(exc):
            raise
        raise _memory_error("data", data.options, exc) from None
    if len(bundle.train) == 0:
        raise ConfigError(f"data: dataset {data.name!r} has an empty training split")

    seed_everything(train.seed)
    try:
        model = build_model(config.model.name, bundle.input_shape, bundle.num_classes,
                            vocab_size=bundle.vocab_size, **config.model.options)
    except (ValueError, TypeError) as exc:
        raise _section_error("model", exc) from None
    except (MemoryError, RuntimeError) as exc:
        if not _too_large(exc):
            raise
        raise _memory_error("model", config.model.options, exc) from None
    model.to(device)

    pin = device.type == "cuda"
    loader = train_loader(bundle.train, train.batch_size // parallel.world_size, train.seed,
                          num_workers=train.num_workers, pin_memory=pin, rank=parallel.rank,
                          world_size=parallel.world_size)
    steps_per_epoch = len(loader)
    total_steps = train.epochs * steps_per_epoch

    optimizer = build_optimizer(config.optim, model)
    scheduler = build_scheduler(config.optim, optimizer, total_steps, steps_per_epoch)
    scaler = torch.amp.GradScaler("cuda") if train.precision == "fp16" else None

    shard = {"num_workers": train.num_workers, "pin_memory": pin, "rank": parallel.rank,
             "world_size": parallel.world_size}
    val = eval_loader(bundle.val, train.eval_batch_size, **shard) if len(bundle.val) else None
    test = eval_loader(bundle.test, train.eval_batch_size, **shard)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
    logger.info("built %s on %s: %d steps/epoch, %d steps", config.run_name(), device, steps_per_epoch, total_steps)
    exp = Experiment(config=config, device=device, bundle=bundle, model=model, optimizer=optimizer,
                     scheduler=scheduler, sparsifier=None, scaler=scaler, train_loader=loader,
                     val_loader=val, test_loader=test, loss_fn=loss_fn, steps_per_epoch=steps_per_epoch,
                     total_steps=total_steps, parallel=parallel, train_model=wrap_model(model, parallel, device))
    if sparsifier:
        attach_sparsifier(exp)
    return exp


def attach_sparsifier(exp: Experiment, total_steps: int | None = None) -> None:
    """Build ``config.sparse``'s sparsifier on the experiment's model and optimizer (``exp.sparsifier``).

    Construction applies the method's masks to the weights as they are now, so a run that starts from given
    weights (a branch, see :mod:`.branch`) loads them first and attaches the sparsifier after.

    Args:
        exp: an experiment built with ``sparsifier=False`` (its ``sparsifier`` is None).
        total_steps: the optimizer steps the sparsifier's schedules span; default ``exp.total_steps``.

    Raises:
        ConfigError: the method rejects its options (see :func:`build_sparsifier`).
    """
    config = exp.config
    train = config.train
    # Pruning at initialisation scores on shuffled training batches from a loader of its own (same seed), so the
    # training loader's order is the same with and without it.
    init_data = (train_loader(exp.bundle.train, train.batch_size, train.seed) if config.sparse.options.get("init")
                 else None)
    exp.sparsifier = build_sparsifier(config, exp.model, exp.optimizer,
                                      exp.total_steps if total_steps is None else total_steps, init_data)
    rewrap_sparse_layers(exp)


def rewrap_sparse_layers(exp: Experiment) -> None:
    """Wrap the model in DistributedDataParallel again when sparse storage holds layers of it: attaching replaced
    their weights by values parameters, and loading a checkpoint may resize them, while DDP sizes its gradient
    buckets at construction (see :func:`sparsetrain.sparse.backend.distributed_data_parallel`)."""
    if exp.parallel.distributed and exp.sparsifier is not None and getattr(exp.sparsifier.enforcer, "layers", None):
        exp.train_model = None
        gc.collect()  # the old wrapper must let go of the parameters before the new one takes them
        exp.train_model = wrap_model(exp.model, exp.parallel, exp.device)


def sparsifier_step(exp: Experiment) -> bool:
    """``exp.sparsifier.step()``, with DistributedDataParallel out of the way where sparse storage may resize.

    DDP holds each parameter's gradient accumulator, which keeps the size the parameter had when it was created: a
    topology update that changes a held layer's active count (GMP and GraNet pruning) must run with no wrapper
    alive, and the model is wrapped again after it.

    Returns:
        True if the topology changed.
    """
    sparsifier = exp.sparsifier
    assert sparsifier is not None
    held = exp.parallel.distributed and getattr(sparsifier.enforcer, "layers", None)
    if not held or not sparsifier.is_update_step(sparsifier.enforcer.optimizer_steps):
        return sparsifier.step()
    exp.train_model = None
    gc.collect()
    try:
        return sparsifier.step()
    finally:
        rewrap_sparse_layers(exp)