"""A run still at chance after its first epoch: detected from its metrics, said in one line with the likely cause."""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace

import pytest
from torch import nn

from sparsetrain.cli import main
from sparsetrain.experiment import ExperimentConfig
from sparsetrain.experiment.diagnosis import at_chance, chance_note


def record(loss: float, acc: float, epoch: int = 1) -> dict:
    return {"epoch": epoch, "train_loss": loss, "train_acc": acc}


def test_chance_is_the_loss_of_a_uniform_guess_and_its_accuracy() -> None:
    assert at_chance(record(math.log(10), 0.10), 10)
    assert at_chance(record(2.29, 0.12), 10)
    assert not at_chance(record(2.20, 0.12), 10)     # the loss has moved
    assert not at_chance(record(2.30, 0.30), 10)     # the accuracy has moved
    assert at_chance(record(math.log(4) + 0.01, 0.3), 4)
    assert not at_chance({"epoch": 1, "train_loss": None, "train_acc": None}, 10)


def fake_run(method: str = "rigl", sparsity: float = 0.98, sparse_init: str = "none", norm: bool = False,
             initial_sparsity: float | None = None) -> SimpleNamespace:
    model = nn.Sequential(nn.Linear(4, 8), *([nn.BatchNorm1d(8)] if norm else []), nn.Linear(8, 3))
    if method == "dense":
        sparsifier = None
    else:
        sparsifier = SimpleNamespace(sparsity=sparsity, config={"sparse_init": sparse_init})
        if initial_sparsity is not None:
            sparsifier.initial_sparsity = initial_sparsity
    config = ExperimentConfig().with_overrides({"optim.lr": 0.1})
    return SimpleNamespace(bundle=SimpleNamespace(num_classes=10), sparsifier=sparsifier, model=model,
                           config=config)


def test_the_note_names_the_likely_cause() -> None:
    stuck = record(2.302, 0.10)
    assert chance_note(fake_run(), record(1.9, 0.4)) is None
    plain = chance_note(fake_run(), stuck)
    assert plain == ("training loss is still at chance (2.30; ln 10 = 2.30) after epoch 1: at 98% sparsity without "
                     "normalisation the signal may not propagate from a dense initialisation; try --method-option "
                     "sparse_init=fan_in or a lower sparsity")
    assert "at 98% sparsity the signal" in chance_note(fake_run(norm=True), stuck)
    scaled = chance_note(fake_run(sparse_init="fan_in"), stuck)
    assert "too few weights per unit; try a lower sparsity, more epochs or another learning rate (now 0.1)" in scaled
    for start_dense in (fake_run("dense"), fake_run("granet", initial_sparsity=0.0)):
        assert chance_note(start_dense, stuck).endswith("after epoch 1: check the learning rate (0.1) and the data")
    assert "\n" not in plain


def _train(tmp_path: Path, *extra: str) -> None:
    argv = ["train", "--model", "cnn1d", "--model-option", "channels=64", "--epochs", "1", "--batch-size", "128",
            "--lr", "0.1", "--update-every", "25", "--runs-dir", str(tmp_path), "--no-baseline", "--no-progress",
            "--no-plots", *extra]
    assert main(argv) == 0


def test_cli_says_so_after_the_first_epoch_of_a_run_at_chance(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """RigL at 98% on the 64-channel CNN (no normalisation) with the dense initialisation does not leave chance in
    its first epoch (docs/results/sparse_from_scratch.md); the dense network does."""
    _train(tmp_path, "--method", "rigl", "--sparsity", "0.98", "--method-option", "sparse_init=none")
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if "still at chance" in line]
    assert len(lines) == 1
    assert lines[0].startswith("sparsetrain: rigl-") and "try --method-option sparse_init=fan_in" in lines[0]
    _train(tmp_path, "--method", "dense")
    assert "still at chance" not in capsys.readouterr().err
