"""Checkpoint files: atomic writes, weights-only loading, RNG state round trips; LR schedule known values."""

import os
import random

import numpy as np
import pytest
import torch

from sparsetrain.atomic import write_text
from sparsetrain.checkpoint_io import save_checkpoint
from sparsetrain.experiment.checkpoint import capture_rng, load_checkpoint, restore_rng
from sparsetrain.experiment.metrics import (
    BEST_BY_LAST,
    BEST_BY_VAL,
    append_metrics,
    best_by,
    best_epoch,
    truncate_metrics,
)
from sparsetrain.experiment.optim import lr_factor


def _draws():
    return (torch.rand(3).tolist(), np.random.rand(3).tolist(), [random.random() for _ in range(3)],
            np.random.randn(1).tolist(), random.gauss(0, 1))


def test_rng_states_survive_a_weights_only_round_trip(tmp_path):
    torch.manual_seed(1), np.random.seed(2), random.seed(3)
    np.random.randn(1)  # leave a cached gaussian in numpy's state
    random.gauss(0, 1)  # and in Python's
    save_checkpoint({"rng": capture_rng()}, tmp_path / "ck.pt")
    expected = _draws()
    _draws()  # move every generator on
    restore_rng(load_checkpoint(tmp_path / "ck.pt")["rng"])
    assert _draws() == expected


def test_save_checkpoint_replaces_and_leaves_no_temp_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"a": torch.arange(3)}, path)
    save_checkpoint({"a": torch.arange(5)}, path)
    assert torch.equal(load_checkpoint(path)["a"], torch.arange(5))
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_failed_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "ck.pt"
    save_checkpoint({"a": 1}, path)

    class Unpicklable:
        def __reduce__(self):
            raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"):
        save_checkpoint({"a": Unpicklable()}, path)
    assert load_checkpoint(path) == {"a": 1}
    assert os.listdir(tmp_path) == ["ck.pt"]


def test_weights_only_load_refuses_arbitrary_objects(tmp_path):
    torch.save({"f": np.random.get_state()}, tmp_path / "bad.pt")  # numpy arrays inside a tuple: not allowed
    with pytest.raises(Exception):
        load_checkpoint(tmp_path / "bad.pt")


def test_truncate_metrics_drops_epochs_after_the_checkpoint_and_torn_lines(tmp_path):
    path = tmp_path / "metrics.jsonl"
    for epoch in (1, 2, 3):
        append_metrics(path, {"epoch": epoch, "test_acc": epoch / 10})
    with open(path, "a") as handle:
        handle.write('{"epoch": 4, "te')  # a crash mid-write
    assert truncate_metrics(path, 2) == 2
    assert [line for line in path.read_text().splitlines()] == ['{"epoch": 1, "test_acc": 0.1}',
                                                               '{"epoch": 2, "test_acc": 0.2}']
    write_text("", path)
    assert truncate_metrics(path, 5) == 0


def test_best_epoch_uses_validation_accuracy_earliest_on_ties():
    records = [{"epoch": 1, "val_acc": 0.5, "test_acc": 0.9}, {"epoch": 2, "val_acc": 0.7, "test_acc": 0.6},
               {"epoch": 3, "val_acc": 0.7, "test_acc": 0.8}]
    assert best_epoch(records)["epoch"] == 2
    assert best_by(records) == BEST_BY_VAL


def test_without_a_validation_split_best_is_the_last_epoch_never_the_test_sets_best():
    records = [{"epoch": 1, "val_acc": None, "test_acc": 0.4}, {"epoch": 2, "val_acc": None, "test_acc": 0.3}]
    assert best_epoch(records)["epoch"] == 2
    assert best_by(records) == BEST_BY_LAST
    assert best_epoch([]) is None


def test_lr_factor_known_values():
    assert [lr_factor(s, 10, warmup_steps=4) for s in range(5)] == [0.25, 0.5, 0.75, 1.0, 1.0]
    steps = [lr_factor(s, 100, schedule="multistep", milestones=(0.5, 0.75), gamma=0.1) for s in (0, 49, 50, 74, 75)]
    assert steps == pytest.approx([1.0, 1.0, 0.1, 0.1, 0.01])
    assert lr_factor(0, 100, schedule="cosine") == 1.0
    assert lr_factor(50, 100, schedule="cosine") == pytest.approx(0.5)
    assert lr_factor(10, 110, warmup_steps=10, schedule="cosine") == 1.0
    assert lr_factor(60, 110, warmup_steps=10, schedule="cosine") == pytest.approx(0.5)
