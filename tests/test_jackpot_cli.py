"""``sparsetrain jackpot`` on a tiny trained run: outputs, the magnitude start, untouched run files, bad input."""

import hashlib
import json
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.experiment.checkpoint import load_checkpoint

TINY = ["--data", "synthetic", "--data-option", "n_train=256", "--data-option", "n_test=64",
        "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
        "--epochs", "2", "--batch-size", "32", "--no-progress", "--no-plots"]


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    runs = tmp_path_factory.mktemp("runs") / "runs"
    assert main(["train", *TINY, "--method", "dense", "--runs-dir", str(runs)]) == 0
    return next(runs.glob("dense-*/seed_0"))


def test_jackpot_writes_masks_and_json_and_changes_no_file_of_the_run(run_dir, capsys):
    before = {p.name: _digest(p) for p in run_dir.iterdir() if p.is_file()}
    weights = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    assert main(["jackpot", str(run_dir), "--sparsity", "0.8", "--steps", "20", "--lr", "0.5",
                 "--batches", "3"]) == 0
    out = run_dir / "jackpot-0.8"
    record = json.loads((out / "jackpot.json").read_text())
    assert {"accuracy_before", "accuracy_after", "iou_with_magnitude"} <= record.keys()
    assert 0.0 <= record["iou_with_magnitude"] <= 1.0 and record["batches"] == 3 and record["steps"] == 20
    masks = torch.load(out / "masks.pt", weights_only=True)
    assert set(masks) and all(m.dtype == torch.bool for m in masks.values())
    for name, mask in masks.items():  # uniform distribution: every tensor at 80% sparsity (rounded)
        assert abs(1.0 - mask.float().mean().item() - 0.8) < 1.0 / mask.numel() + 1e-6, name
    printed = capsys.readouterr().out
    assert f"{record['accuracy_before']:.4f}" in printed and f"{record['accuracy_after']:.4f}" in printed
    assert {p.name: _digest(p) for p in run_dir.iterdir() if p.is_file()} == before
    assert all(torch.equal(weights[k], v) for k, v in load_checkpoint(run_dir / "checkpoint.pt")["model"].items())


def test_zero_changes_keeps_the_magnitude_mask(run_dir):
    assert main(["jackpot", str(run_dir), "--sparsity", "0.5", "--steps", "5", "--max-changes", "0",
                 "--batches", "2"]) == 0
    record = json.loads((run_dir / "jackpot-0.5" / "jackpot.json").read_text())
    assert record["iou_with_magnitude"] == 1.0 and record["changes"] == 0
    assert record["accuracy_after"] == record["accuracy_before"]
    weights = load_checkpoint(run_dir / "checkpoint.pt")["model"]
    masks = torch.load(run_dir / "jackpot-0.5" / "masks.pt", weights_only=True)
    for name, mask in masks.items():  # the kept entries are the largest magnitudes of each tensor
        magnitude = weights[name].abs()
        assert magnitude[mask].min() >= magnitude[~mask].max(), name


@pytest.mark.parametrize("case", ["missing", "no_checkpoint", "bad_sparsity"])
def test_bad_input_exits_2_with_one_line(run_dir, tmp_path, capsys, case):
    if case == "missing":
        args = ["jackpot", str(tmp_path / "nope")]
    elif case == "no_checkpoint":
        empty = tmp_path / "run" / "seed_0"
        empty.mkdir(parents=True)
        (empty / "config.yaml").write_text((run_dir / "config.yaml").read_text())
        args = ["jackpot", str(empty)]
    else:
        args = ["jackpot", str(run_dir), "--sparsity", "1.5", "--steps", "1"]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("sparsetrain: error:")


def test_jackpot_cli_searches_an_nm_mask(run_dir, capsys) -> None:
    from sparsetrain.nm import is_nm

    assert main(["jackpot", str(run_dir), "--pattern", "2:4", "--steps", "3", "--batches", "2"]) == 0
    out = run_dir / "jackpot-2of4"
    masks = torch.load(out / "masks.pt", weights_only=True)
    record = json.loads((out / "jackpot.json").read_text())
    assert record["pattern"] == "2:4" and record["sparsity"] == 0.5
    assert all(is_nm(m, "2:4") or bool(m.all()) for m in masks.values())
    assert any(is_nm(m, "2:4") and not bool(m.all()) for m in masks.values())
