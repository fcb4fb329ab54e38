"""CIFAR-10 and CIFAR-100 from the official "python version" pickle batches in `data_dir`.

Layouts (Krizhevsky 2009, https://www.cs.toronto.edu/~kriz/cifar.html), `data_dir` being either the
extracted folder itself or its parent:
- CIFAR-10: `cifar-10-batches-py/data_batch_1` .. `data_batch_5` and `test_batch`, each a pickled dict
  with `data` (N x 3072 uint8, channel-major 3x32x32 rows) and `labels`.
- CIFAR-100: `cifar-100-python/train` and `test`, with `data` and `fine_labels` (the 100 classes).

The pickles are read with an unpickler that only accepts plain containers and numpy arrays, so a
tampered file cannot run code. Inputs are normalised with the usual per-channel constants; `augment`
adds the standard random crop (padding 4) and horizontal flip to the train split.
"""

from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from sparsetrain.data.bundle import DataError
from sparsetrain.data.registry import RawSplits, register_dataset
from sparsetrain.data.transforms import RandomCropFlip, normalise_pixels

_ALLOWED_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("_codecs", "encode"),
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the numpy globals needed to rebuild arrays."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a CIFAR batch")
        if module.startswith("numpy.core") and hasattr(np, "_core"):
            module = "numpy._core" + module[len("numpy.core") :]
        return super().find_class(module, name)


@dataclass(frozen=True)
class _CifarSpec:
    folder: str
    train_files: tuple[str, ...]
    test_file: str
    label_key: str
    num_classes: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


_CIFAR10 = _CifarSpec(
    folder="cifar-10-batches-py",
    train_files=tuple(f"data_batch_{i}" for i in range(1, 6)),
    test_file="test_batch",
    label_key="labels",
    num_classes=10,
    mean=(0.4914, 0.4822, 0.4465),
    std=(0.2470, 0.2435, 0.2616),
)
_CIFAR100 = _CifarSpec(
    folder="cifar-100-python",
    train_files=("train",),
    test_file="test",
    label_key="fine_labels",
    num_classes=100,
    mean=(0.5071, 0.4865, 0.4409),
    std=(0.2673, 0.2564, 0.2762),
)


def _layout(spec: _CifarSpec) -> str:
    files = ", ".join((*spec.train_files, spec.test_file))
    return (
        f"expected <data_dir>/{spec.folder}/{{{files}}} (the CIFAR 'python version' pickle batches, "
        f"each a dict with 'data' (N x 3072 uint8) and '{spec.label_key}')"
    )


def _read_batch(path: Path, spec: _CifarSpec) -> tuple[np.ndarray, np.ndarray]:
    try:
        with open(path, "rb") as file:
            batch = _ArrayUnpickler(file, encoding="latin1").load()
    except Exception as error:  # any unpickling failure means the same thing: not a CIFAR batch
        raise DataError(f"cannot read CIFAR batch {path}: {error}; {_layout(spec)}") from error
    if not isinstance(batch, dict):
        raise DataError(f"CIFAR batch {path} holds a {type(batch).__name__}, not a dict; {_layout(spec)}")
    batch = {key.decode("latin1") if isinstance(key, bytes) else key: value for key, value in batch.items()}
    if "data" not in batch or spec.label_key not in batch:
        raise DataError(
            f"CIFAR batch {path} lacks key 'data' or '{spec.label_key}' (has {sorted(map(str, batch))}); "
            f"{_layout(spec)}"
        )
    data = np.asarray(batch["data"])
    labels = np.asarray(batch[spec.label_key])
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32 or labels.shape != (data.shape[0],):
        raise DataError(
            f"CIFAR batch {path}: 'data' has shape {data.shape} and labels {labels.shape}, expected "
            f"(N, 3072) and (N,); {_layout(spec)}"
        )
    if data.size and (data.min() < 0 or data.max() > 255):
        raise DataError(f"CIFAR batch {path}: pixel values outside 0..255; {_layout(spec)}")
    if labels.size and (labels.min() < 0 or labels.max() >= spec.num_classes):
        raise DataError(
            f"CIFAR batch {path}: labels outside 0..{spec.num_classes - 1}; {_layout(spec)}"
        )
    return data.astype(np.uint8).reshape(-1, 3, 32, 32), labels.astype(np.int64)


def _load_cifar(spec: _CifarSpec, data_dir: Path | None, augment: bool) -> RawSplits:
    if data_dir is None:
        raise DataError(f"this dataset is read from files: pass data_dir; {_layout(spec)}")
    root = data_dir if data_dir.name == spec.folder else data_dir / spec.folder
    names = (*spec.train_files, spec.test_file)
    missing = [str(root / name) for name in names if not (root / name).is_file()]
    if missing:
        raise DataError(f"missing CIFAR file(s): {', '.join(missing)}; {_layout(spec)}")
    train = [_read_batch(root / name, spec) for name in spec.train_files]
    test_x, test_y = _read_batch(root / spec.test_file, spec)
    fill = [-m / s for m, s in zip(spec.mean, spec.std, strict=True)]  # a black pixel after normalisation
    return RawSplits(
        train_inputs=np.concatenate([x for x, _ in train]),
        train_targets=np.concatenate([y for _, y in train]),
        test_inputs=test_x,
        test_targets=test_y,
        prepare=lambda x: normalise_pixels(x, spec.mean, spec.std),
        input_shape=(3, 32, 32),
        num_classes=spec.num_classes,
        kind="image",
        train_transform=RandomCropFlip(padding=4, fill=fill) if augment else None,
    )


@register_dataset("cifar10")
def load_cifar10(*, data_dir: Path | None, cache_dir: Path, seed: int, augment: bool = False) -> RawSplits:
    """CIFAR-10 (50,000 train / 10,000 test, 3x32x32, 10 classes) from `data_dir`.

    Args:
        augment: random crop with padding 4 and horizontal flip on the train split.
    """
    return _load_cifar(_CIFAR10, data_dir, augment)


@register_dataset("cifar100")
def load_cifar100(*, data_dir: Path | None, cache_dir: Path, seed: int, augment: bool = False) -> RawSplits:
    """CIFAR-100 (50,000 train / 10,000 test, 3x32x32, 100 fine classes) from `data_dir`.

    Args:
        augment: random crop with padding 4 and horizontal flip on the train split.
    """
    return _load_cifar(_CIFAR100, data_dir, augment)
