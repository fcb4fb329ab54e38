"""The dataset registry: loaders register under a name; `get_dataset` builds the train/val/test bundle.

A loader is a function `loader(*, data_dir, cache_dir, seed, **its_options) -> RawSplits`. It returns the
raw train and test arrays and a `prepare` function that turns raw arrays into model-ready tensors; the
registry carves the validation split out of the raw training set (stratified, seeded) *before* `prepare`
runs, so large image sets are converted to float only once per split.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sparsetrain.data.bundle import ArrayDataset, DatasetBundle, DatasetKind
from sparsetrain.data.cache import resolve_cache_dir
from sparsetrain.data.splits import stratified_split
from sparsetrain.registry import Registry

logger = logging.getLogger(__name__)

DEFAULT_VAL_FRACTION = 0.1


@dataclass
class RawSplits:
    """What a loader returns: raw train/test arrays and how to make tensors of them.

    Attributes:
        train_inputs: raw training inputs, first axis indexes samples.
        train_targets: int training labels, shape (N,).
        test_inputs: raw test inputs.
        test_targets: int test labels.
        prepare: maps a raw input array (any subset of samples) to the model-ready tensor.
        input_shape: shape of one prepared sample.
        num_classes: number of classes.
        kind: "image", "sequence" or "tokens".
        vocab_size: number of token ids for "tokens" data, else None.
        train_transform: optional per-sample transform for the train split only (augmentation).
    """

    train_inputs: np.ndarray
    train_targets: np.ndarray
    test_inputs: np.ndarray
    test_targets: np.ndarray
    prepare: Callable[[np.ndarray], torch.Tensor]
    input_shape: tuple[int, ...]
    num_classes: int
    kind: DatasetKind
    vocab_size: int | None = None
    train_transform: Callable[[torch.Tensor], torch.Tensor] | None = None


Loader = Callable[..., RawSplits]
_LOADERS: Registry[Loader] = Registry("dataset", reserved=("data_dir", "cache_dir", "seed"))


def register_dataset(name: str) -> Callable[[Loader], Loader]:
    """Decorator that registers a loader under `name` ("cifar10"); ValueError if the name is taken."""
    return _LOADERS.register(name)


def list_datasets() -> list[str]:
    """Return the registered dataset names, sorted."""
    return _LOADERS.names()


def dataset_options(name: str) -> dict[str, Any]:
    """Return the options the dataset `name` accepts, with their defaults (`inspect.Parameter.empty` for required
    ones); ValueError for an unknown name."""
    return _LOADERS.options(name)


def get_dataset(
    name: str,
    data_dir: str | Path | None = None,
    cache_dir: str | Path | None = None,
    seed: int = 0,
    val_fraction: float = DEFAULT_VAL_FRACTION,
    **options: Any,
) -> DatasetBundle:
    """Load a registered dataset as a train/val/test bundle of in-memory tensors.

    Nothing is ever downloaded: generated datasets are built locally (and cached under `cache_dir`), and
    file datasets are read from `data_dir`.

    Args:
        name: dataset name, one of `list_datasets()`.
        data_dir: directory holding the files of file-based datasets (cifar10, cifar100, mnist,
            fashion-mnist, imagefolder); unused by the generated and embedded ones.
        cache_dir: where generated datasets are cached; default $SPARSETRAIN_CACHE or ~/.cache/sparsetrain.
        seed: seed of every random choice made here (validation carving, and train/test splits of
            datasets that have no official one). The MNIST-1D generator keeps its own standard seed.
        val_fraction: share of the original training set held out as `val` (stratified by label),
            in [0, 1); 0 gives an empty validation split.
        **options: dataset-specific options, see `dataset_options(name)`.

    Returns:
        The DatasetBundle.

    Raises:
        ValueError: unknown dataset name or option, or an invalid option value.
        DataError: a file is missing or malformed.
    """
    loader = _LOADERS.get(name)
    _LOADERS.check_options(name, options)
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise TypeError(f"seed must be an int, got {seed!r}")
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction!r}")
    root = None if data_dir is None else Path(data_dir).expanduser()
    raw = loader(data_dir=root, cache_dir=resolve_cache_dir(cache_dir), seed=seed, **options)

    keep, held = stratified_split(raw.train_targets, val_fraction, seed)

    def make(inputs: np.ndarray, targets: np.ndarray, transform: Any = None) -> ArrayDataset:
        return ArrayDataset(raw.prepare(inputs), torch.as_tensor(targets, dtype=torch.int64), transform)

    bundle = DatasetBundle(
        name=name,
        train=make(raw.train_inputs[keep], raw.train_targets[keep], raw.train_transform),
        val=make(raw.train_inputs[held], raw.train_targets[held]),
        test=make(raw.test_inputs, raw.test_targets),
        input_shape=tuple(raw.input_shape),
        num_classes=raw.num_classes,
        kind=raw.kind,
        vocab_size=raw.vocab_size,
    )
    logger.info(
        "dataset %s: train %d, val %d, test %d, input %s, %d classes",
        name, len(bundle.train), len(bundle.val), len(bundle.test), bundle.input_shape, bundle.num_classes,
    )
    return bundle
