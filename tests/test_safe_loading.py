"""Safe checkpoint files: weights-only loading refuses code, atomic saves, clear errors, sparsifier round trips."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsetrain
from sparsetrain.checkpoint_io import CheckpointError, UnsafeCheckpointError, load_checkpoint, save_checkpoint


def write_marker(path: str) -> str:
    """The 'payload': unpickling a :class:`Booby` calls this, which leaves a file behind."""
    Path(path).write_text("code ran")
    return "payload"


class Booby:
    """An object whose unpickling runs ``write_marker`` (what a malicious checkpoint does)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return (write_marker, (self.marker,))


def _tiny_model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 3))


def test_code_in_a_torch_save_file_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pt"
    torch.save({"model": {"w": torch.ones(2)}, "x": Booby(str(marker))}, path)
    with pytest.raises(UnsafeCheckpointError, match="evil.pt") as info:
        load_checkpoint(path)
    assert "write_marker" in str(info.value)
    assert not marker.exists()
    # The payload is real: a full unpickle does run it (this is what load_checkpoint protects against).
    torch.load(path, weights_only=False)
    assert marker.read_text() == "code ran"


def test_code_in_a_plain_pickle_file_is_refused_and_not_run(tmp_path: Path) -> None:
    marker = tmp_path / "marker.txt"
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as handle:
        pickle.dump({"x": Booby(str(marker))}, handle, protocol=2)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="evil.pkl"):
            load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize("keep", [0, 10, 0.5, -5])
def test_truncated_file_gives_a_clear_error_naming_it(tmp_path: Path, keep: float) -> None:
    path = tmp_path / "state.pt"
    save_checkpoint({"w": torch.randn(500), "step": 3}, path)
    data = path.read_bytes()
    cut = int(len(data) * keep) if isinstance(keep, float) else (keep if keep >= 0 else len(data) + keep)
    path.write_bytes(data[:cut])
    with pytest.raises(CheckpointError, match="state.pt") as info:
        load_checkpoint(path)
    assert not isinstance(info.value, UnsafeCheckpointError)


@pytest.mark.parametrize("content", [b"hello world", bytes(range(256)) * 4])
def test_garbage_file_gives_checkpoint_error(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "junk.pt"
    path.write_bytes(content)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(CheckpointError, match="junk.pt"):
            load_checkpoint(path)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


def test_save_is_atomic_when_pickling_fails(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"step": 1, "w": torch.arange(4.0)}, path)
    before = path.read_bytes()
    with pytest.raises(Exception):
        save_checkpoint({"step": 2, "bad": lambda: None}, path)  # lambdas cannot be pickled
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]  # no temp file left behind
    loaded = load_checkpoint(path)
    assert loaded["step"] == 1 and torch.equal(loaded["w"], torch.arange(4.0))


def test_save_replaces_and_creates_directories(tmp_path: Path) -> None:
    path = tmp_path / "a" / "b" / "ckpt.pt"
    save_checkpoint({"step": 1}, path)
    save_checkpoint({"step": 2}, path)
    assert load_checkpoint(path) == {"step": 2}
    assert os.listdir(path.parent) == ["ckpt.pt"]
    with pytest.raises(IsADirectoryError):
        save_checkpoint({"step": 3}, tmp_path)


def test_safe_globals_allows_named_types(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"size": torch.Size([2, 3]), "dtype": torch.float16}, path)
    assert load_checkpoint(path) == {"size": torch.Size([2, 3]), "dtype": torch.float16}


def _train(sparsifier: sparsetrain.Sparsifier, model: nn.Module, optimizer: torch.optim.Optimizer,
           steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(8, 12, generator=generator)
        y = torch.randint(0, 3, (8,), generator=generator)
        loss = nn.functional.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsifier.step()


METHOD_OPTIONS = {
    "granet": dict(update_every=3, prune_end=0.6),
    "gmp": dict(update_every=3, prune_end=0.6),
    "rigl": dict(update_every=3),
    "set": dict(update_every=3),
    "snfs": dict(update_every=3),
    "static": dict(),
}


@pytest.mark.parametrize("method", sorted(METHOD_OPTIONS))
def test_sparsifier_and_training_state_round_trip_with_weights_only(tmp_path: Path, method: str) -> None:
    """Save mid-run, load weights-only into fresh objects, continue: identical to the uninterrupted run."""
    cls = sparsetrain.METHODS[method]

    def build():
        model = _tiny_model()
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        sparsifier = cls(model, optimizer, sparsity=0.8, total_steps=30, seed=5, **METHOD_OPTIONS[method])
        return model, optimizer, sparsifier

    model, optimizer, sparsifier = build()
    _train(sparsifier, model, optimizer, 12, seed=1)
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "sparsifier": sparsifier.state_dict()}, path)
    _train(sparsifier, model, optimizer, 12, seed=2)

    loaded = load_checkpoint(path)  # weights_only=True: must not need any unsafe global
    model2, optimizer2, sparsifier2 = build()
    model2.load_state_dict(loaded["model"])
    optimizer2.load_state_dict(loaded["optimizer"])
    sparsifier2.load_state_dict(loaded["sparsifier"])
    assert sparsifier2.step_count == 12
    _train(sparsifier2, model2, optimizer2, 12, seed=2)

    assert sparsifier2.step_count == sparsifier.step_count == 24
    for name in sparsifier.masks:
        assert torch.equal(sparsifier.masks[name], sparsifier2.masks[name]), name
        assert torch.equal(sparsifier.params[name], sparsifier2.params[name]), name
    assert sparsifier2.current_sparsity() == pytest.approx(sparsifier.current_sparsity())
