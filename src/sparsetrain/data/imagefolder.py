"""Image classification from a folder of image files, one sub-folder per class (read with Pillow).

Accepted layouts under `data_dir`:
- `train/<class>/*` and `test/<class>/*` (or `val/<class>/*` in place of `test`): the given split is kept;
- `<class>/*`: a stratified, seeded `test_fraction` of each class becomes the test split.
Class indices follow the sorted class-folder names of the training part. Files with other extensions are
ignored. Inputs are normalised per channel with the mean and std of the training part.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np

from sparsetrain.data.bundle import DataError
from sparsetrain.data.registry import RawSplits, register_dataset
from sparsetrain.data.splits import stratified_split
from sparsetrain.data.transforms import RandomCropFlip, channel_stats, normalise_pixels

IMAGE_EXTENSIONS = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".gif", ".ppm", ".pgm", ".tif", ".tiff", ".webp"})
_GRAYSCALE_MODES = frozenset({"1", "L", "LA", "I", "I;16", "F"})
_LAYOUT = (
    "expected <data_dir>/train/<class>/<image> and <data_dir>/test/<class>/<image> (or val/ for test), "
    "or <data_dir>/<class>/<image>, with images in " + ", ".join(sorted(IMAGE_EXTENSIONS))
)


def _class_dirs(root: Path) -> list[Path]:
    return sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))


def _image_files(directory: Path) -> list[Path]:
    return sorted(
        p for p in directory.iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _index_split(root: Path, class_names: list[str] | None) -> tuple[list[Path], list[int], list[str]]:
    """List (file, class index) pairs under root/<class>/; class_names fixes the indices if given."""
    dirs = _class_dirs(root)
    names = [d.name for d in dirs] if class_names is None else class_names
    unknown = sorted({d.name for d in dirs} - set(names))
    if unknown:
        raise DataError(f"{root} has class folders {unknown} that the training part lacks; {_LAYOUT}")
    files, labels = [], []
    for directory in dirs:
        images = _image_files(directory)
        if class_names is None and not images:
            raise DataError(f"class folder {directory} holds no image files; {_LAYOUT}")
        files += images
        labels += [names.index(directory.name)] * len(images)
    if not files:
        raise DataError(f"no images found under {root}; {_LAYOUT}")
    return files, labels, names


def _read_images(files: list[Path], mode: str | None, size: tuple[int, int] | None) -> tuple[np.ndarray, str]:
    """Read files as a uint8 (N, C, H, W) array; returns it and the Pillow mode used."""
    from PIL import Image, UnidentifiedImageError

    opened = []
    for path in files:
        try:
            image = Image.open(path)
            image.load()
        except (OSError, UnidentifiedImageError) as error:
            raise DataError(f"cannot read image {path}: {error}") from error
        opened.append(image)
    if mode is None:
        mode = "L" if all(image.mode in _GRAYSCALE_MODES for image in opened) else "RGB"
    arrays = []
    for image in opened:
        image = image.convert(mode)
        if size is not None:
            image = image.resize((size[1], size[0]), Image.Resampling.BILINEAR)
        array = np.asarray(image, dtype=np.uint8)
        arrays.append(array[None] if array.ndim == 2 else array.transpose(2, 0, 1))
    shapes = sorted({a.shape[1:] for a in arrays})
    if len(shapes) > 1:
        raise DataError(
            f"images under {files[0].parent.parent} have different sizes {shapes[:4]}; pass the resize option"
        )
    return np.stack(arrays), mode


def _parse_size(resize: int | Sequence[int] | None) -> tuple[int, int] | None:
    if resize is None:
        return None
    size = (resize, resize) if isinstance(resize, int) else tuple(resize)
    if len(size) != 2 or not all(isinstance(v, int) and v > 0 for v in size):
        raise ValueError(f"resize must be a positive int or (height, width), got {resize!r}")
    return size  # type: ignore[return-value]


@register_dataset("imagefolder")
def load_imagefolder(
    *,
    data_dir: Path | None,
    cache_dir: Path,
    seed: int,
    resize: int | Sequence[int] | None = None,
    mode: str | None = None,
    test_fraction: float = 0.2,
    augment: bool = False,
) -> RawSplits:
    """Images in class folders under `data_dir`.

    Args:
        resize: resize every image to this size, an int or (height, width); required if sizes differ.
        mode: Pillow mode "RGB" or "L"; None picks "L" if every image is grayscale, else "RGB".
        test_fraction: share of each class held out as test when there are no train/test folders.
        augment: random crop with padding 4 and horizontal flip on the train split.
    """
    size = _parse_size(resize)
    if mode not in (None, "RGB", "L"):
        raise ValueError(f"mode must be None, 'RGB' or 'L', got {mode!r}")
    if not 0.0 < test_fraction < 1.0:
        raise ValueError(f"test_fraction must be in (0, 1), got {test_fraction!r}")
    if data_dir is None or not data_dir.is_dir():
        raise DataError(f"image folder {data_dir} is not a directory; {_LAYOUT}")

    test_root = next((data_dir / n for n in ("test", "val") if (data_dir / n).is_dir()), None)
    if (data_dir / "train").is_dir() and test_root is not None:
        train_files, train_labels, names = _index_split(data_dir / "train", None)
        test_files, test_labels, _ = _index_split(test_root, names)
    elif (data_dir / "train").is_dir() or test_root is not None:
        raise DataError(f"{data_dir} has only one of train/ and test/ (or val/); {_LAYOUT}")
    else:
        files, labels, names = _index_split(data_dir, None)
        train_idx, test_idx = stratified_split(np.asarray(labels), test_fraction, seed)
        train_files, train_labels = [files[i] for i in train_idx], [labels[i] for i in train_idx]
        test_files, test_labels = [files[i] for i in test_idx], [labels[i] for i in test_idx]

    train_pixels, used_mode = _read_images(train_files, mode, size)
    test_pixels, _ = _read_images(test_files, used_mode, size)
    if test_pixels.shape[1:] != train_pixels.shape[1:]:
        raise DataError(
            f"train images are {train_pixels.shape[1:]} but test images {test_pixels.shape[1:]}; "
            "pass the resize option"
        )
    mean, std = channel_stats(train_pixels)
    fill = [-m / s for m, s in zip(mean, std, strict=True)]
    return RawSplits(
        train_inputs=train_pixels,
        train_targets=np.asarray(train_labels, dtype=np.int64),
        test_inputs=test_pixels,
        test_targets=np.asarray(test_labels, dtype=np.int64),
        prepare=lambda x: normalise_pixels(x, mean, std),
        input_shape=tuple(train_pixels.shape[1:]),
        num_classes=len(names),
        kind="image",
        train_transform=RandomCropFlip(padding=4, fill=fill) if augment else None,
    )
