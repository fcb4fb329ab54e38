"""Build everything a run needs from its config: data, loaders, model, optimizer, LR schedule, sparsifier.

Everything a config can get wrong surfaces here, before any file is written, as a :class:`ConfigError` (a
``ValueError``) whose one-line message names the section: the library's own ``ValueError``/``TypeError`` from
``get_dataset``, ``build_model`` and the sparsifier's constructor are re-raised with the section in front.
"""

from __future__ import annotations

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

__all__ = ["Experiment", "build_experiment", "resolve_device", "seed_everything", "RESERVED_METHOD_OPTIONS"]

logger = logging.getLogger(__name__)

#: Sparsifier arguments that have their own config field (sparse.options may not set them).
RESERVED_METHOD_OPTIONS = {"sparsity": "sparse.sparsity", "total_steps": "train.epochs",
                           "update_every": "sparse.update_every", "distribution": "sparse.distribution",
                           "seed": "train.seed"}


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

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """The autocast dtype, or None for fp32."""
        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.config.train.precision]


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
    kwargs: dict[str, Any] = dict(sparsity=sparse.sparsity, total_steps=total_steps,
                                  update_every=sparse.update_every, seed=config.train.seed, **sparse.options)
    if sparse.distribution is not None:
        kwargs["distribution"] = sparse.distribution
    if sparse.options.get("init") is not None and "init_data" not in sparse.options:
        kwargs["init_data"] = init_data
    try:
        return cls(model, optimizer, **kwargs)
    except (ValueError, TypeError) as exc:
        raise _section_error(f"sparse (method {sparse.method})", exc) from None


def build_experiment(config: ExperimentConfig) -> Experiment:
    """Construct the run's objects, seeded by ``config.train.seed``.

    Args:
        config: a validated config.

    Returns:
        The :class:`Experiment`.

    Raises:
        ConfigError: anything in the config that the data, model or method rejects.
    """
    from sparsetrain.data import get_dataset
    from sparsetrain.models import build_model

    train = config.train
    device = resolve_device(train.device)
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
    except (ValueError, TypeError) as exc:
        raise _section_error("data", exc) from None
    if len(bundle.train) == 0:
        raise ConfigError(f"data: dataset {data.name!r} has an empty training split")

    seed_everything(train.seed)
    try:
        model = build_model(config.model.name, bundle.input_shape, bundle.num_classes,
                            vocab_size=bundle.vocab_size, **config.model.options)
    except (ValueError, TypeError) as exc:
        raise _section_error("model", exc) from None
    model.to(device)

    pin = device.type == "cuda"
    loader = train_loader(bundle.train, train.batch_size, train.seed, num_workers=train.num_workers, pin_memory=pin)
    steps_per_epoch = len(loader)
    total_steps = train.epochs * steps_per_epoch

    optimizer = build_optimizer(config.optim, model)
    scheduler = build_scheduler(config.optim, optimizer, total_steps, steps_per_epoch)
    # Pruning at initialisation scores on shuffled training batches from a loader of its own (same seed), so the
    # training loader's order is the same with and without it.
    init_data = (train_loader(bundle.train, train.batch_size, train.seed) if config.sparse.options.get("init")
                 else None)
    sparsifier = build_sparsifier(config, model, optimizer, total_steps, init_data)
    scaler = torch.amp.GradScaler("cuda") if train.precision == "fp16" else None

    val = (eval_loader(bundle.val, train.eval_batch_size, num_workers=train.num_workers, pin_memory=pin)
           if len(bundle.val) else None)
    test = eval_loader(bundle.test, train.eval_batch_size, num_workers=train.num_workers, pin_memory=pin)
    loss_fn = nn.CrossEntropyLoss(label_smoothing=train.label_smoothing)
    logger.info("built %s on %s: %d steps/epoch, %d steps", config.run_name(), device, steps_per_epoch, total_steps)
    return Experiment(config=config, device=device, bundle=bundle, model=model, optimizer=optimizer,
                      scheduler=scheduler, sparsifier=sparsifier, scaler=scaler, train_loader=loader,
                      val_loader=val, test_loader=test, loss_fn=loss_fn, steps_per_epoch=steps_per_epoch,
                      total_steps=total_steps)
