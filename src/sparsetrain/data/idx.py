"""MNIST and Fashion-MNIST from their IDX files in `data_dir` (plain or .gz).

IDX format (LeCun et al., http://yann.lecun.com/exdb/mnist/): two zero bytes, a type byte (0x08 =
unsigned byte, ...), a byte with the number of dimensions, one big-endian uint32 per dimension, then the
values in row-major order. The four files are `train-images-idx3-ubyte`, `train-labels-idx1-ubyte`,
`t10k-images-idx3-ubyte`, `t10k-labels-idx1-ubyte` (also found with `.idx3-ubyte` spelled with a dot and
with a `.gz` suffix), directly in `data_dir` or in torchvision's `<data_dir>/<MNIST|FashionMNIST>/raw/`.
"""

from __future__ import annotations

import gzip
import math
import struct
import zlib
from pathlib import Path

import numpy as np

from sparsetrain.data.bundle import DataError
from sparsetrain.data.registry import RawSplits, register_dataset
from sparsetrain.data.transforms import normalise_pixels

_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_FILES = {
    "train_images": ("train-images-idx3-ubyte", "train-images.idx3-ubyte"),
    "train_labels": ("train-labels-idx1-ubyte", "train-labels.idx1-ubyte"),
    "test_images": ("t10k-images-idx3-ubyte", "t10k-images.idx3-ubyte"),
    "test_labels": ("t10k-labels-idx1-ubyte", "t10k-labels.idx1-ubyte"),
}
_LAYOUT = (
    "expected the four IDX files train-images-idx3-ubyte, train-labels-idx1-ubyte, "
    "t10k-images-idx3-ubyte, t10k-labels-idx1-ubyte (optionally .gz) in <data_dir> or "
    "<data_dir>/{folder}/raw"
)


def read_idx(path: Path) -> np.ndarray:
    """Read one IDX file (gzip-compressed if its name ends in .gz) into a numpy array.

    Args:
        path: the file.

    Returns:
        The array, with the shape and dtype its header declares (native byte order).

    Raises:
        DataError: if the file cannot be read, the header is invalid, or the size does not match it.
    """
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError, zlib.error) as error:
        raise DataError(f"cannot read IDX file {path}: {error}") from error
    if len(raw) < 4 or raw[:2] != b"\x00\x00" or raw[2] not in _IDX_DTYPES:
        raise DataError(
            f"{path} is not an IDX file: header starts {raw[:4].hex() or 'empty'}, expected 0000 then a "
            f"type byte in {[hex(k) for k in _IDX_DTYPES]} and the number of dimensions"
        )
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"IDX file {path} is truncated inside its header ({len(raw)} bytes, {ndim} dims)")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(dims) * dtype.itemsize
    if len(raw) - header != expected:
        raise DataError(
            f"IDX file {path}: header declares shape {dims} ({expected} bytes of data) but the file has "
            f"{len(raw) - header} bytes after the header"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def _find(root: Path, names: tuple[str, ...], folder: str) -> Path | None:
    for directory in (root, root / folder / "raw"):
        for name in names:
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    return candidate
    return None


def _load_idx_dataset(
    data_dir: Path | None, folder: str, mean: tuple[float], std: tuple[float]
) -> RawSplits:
    layout = _LAYOUT.format(folder=folder)
    if data_dir is None:
        raise DataError(f"this dataset is read from files: pass data_dir; {layout}")
    found = {key: _find(data_dir, names, folder) for key, names in _FILES.items()}
    missing = [_FILES[key][0] for key, path in found.items() if path is None]
    if missing:
        raise DataError(f"missing IDX file(s) {', '.join(missing)} under {data_dir}; {layout}")
    arrays = {key: read_idx(path) for key, path in found.items() if path is not None}
    for split in ("train", "test"):
        images, labels = arrays[f"{split}_images"], arrays[f"{split}_labels"]
        image_path, label_path = found[f"{split}_images"], found[f"{split}_labels"]
        if images.ndim != 3 or images.dtype != np.uint8:
            raise DataError(f"{image_path}: expected a 3-D ubyte image array, got {images.shape} {images.dtype}")
        if labels.ndim != 1 or labels.shape[0] != images.shape[0]:
            raise DataError(
                f"{label_path}: expected {images.shape[0]} labels to match {image_path}, got shape {labels.shape}"
            )
        if labels.size and labels.max() > 9:
            raise DataError(f"{label_path}: labels must be 0..9, found {int(labels.max())}")
    if arrays["train_images"].shape[1:] != arrays["test_images"].shape[1:]:
        raise DataError(
            f"train and test images differ in size: {arrays['train_images'].shape[1:]} vs "
            f"{arrays['test_images'].shape[1:]}; {layout}"
        )
    height, width = arrays["train_images"].shape[1:]
    return RawSplits(
        train_inputs=arrays["train_images"][:, None],
        train_targets=arrays["train_labels"].astype(np.int64),
        test_inputs=arrays["test_images"][:, None],
        test_targets=arrays["test_labels"].astype(np.int64),
        prepare=lambda x: normalise_pixels(x, mean, std),
        input_shape=(1, height, width),
        num_classes=10,
        kind="image",
    )


@register_dataset("mnist")
def load_mnist(*, data_dir: Path | None, cache_dir: Path, seed: int) -> RawSplits:
    """MNIST (60,000 / 10,000 images 28x28, 10 classes) from IDX files, normalised (0.1307, 0.3081)."""
    return _load_idx_dataset(data_dir, "MNIST", (0.1307,), (0.3081,))


@register_dataset("fashion-mnist")
def load_fashion_mnist(*, data_dir: Path | None, cache_dir: Path, seed: int) -> RawSplits:
    """Fashion-MNIST (Xiao et al. 2017), same IDX layout as MNIST, normalised (0.2860, 0.3530)."""
    return _load_idx_dataset(data_dir, "FashionMNIST", (0.2860,), (0.3530,))
