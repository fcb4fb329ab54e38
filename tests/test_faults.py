"""File-system faults: one line with the documented exit status, nothing lost, and an exact resume afterwards; a
damaged file of one run does not stop a report or a plot of the others."""

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest
import torch

from sparsetrain.cli import main

T = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=32", "--data-option",
     "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[256]", "--epochs", "6", "--batch-size",
     "32", "--method", "rigl", "--update-every", "2", "--no-baseline", "--no-progress", "--no-plots"]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB tmpfs (needs root; skipped otherwise), unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a small tmpfs that can fill up")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    yield where
    subprocess.run(["umount", "-l", str(where)], capture_output=True)


def _records(run):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_full_disk_stops_the_run_with_one_line_and_it_resumes_exactly_once_space_is_freed(small_disk, tmp_path,
                                                                                           monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["train", *T, "--runs-dir", "reference"]) == 0  # the uninterrupted run
    (reference,) = Path("reference").glob("*/seed_0")
    size = (reference / "checkpoint.pt").stat().st_size
    # Leave room for two checkpoints and a half: the third checkpoint write (epoch 3) finds the disk full.
    filler = small_disk / "filler"
    filler.write_bytes(bytes(shutil.disk_usage(small_disk).free - int(2.5 * size)))
    capsys.readouterr()
    assert main(["train", *T, "--runs-dir", str(small_disk / "runs")]) == 74
    err = capsys.readouterr().err.strip().splitlines()
    (run,) = (small_disk / "runs").glob("*/seed_0")
    assert err[-1] == (f"sparsetrain: error: {run}/checkpoint.pt: No space left on device; free some space and run "
                       "the same command again: an interrupted run resumes from its last checkpoint")
    assert [line for line in err if not line.startswith("sparsetrain: ")] == []
    assert not (run / "summary.json").exists() and (run / "checkpoint.pt").exists()
    assert list(run.glob(".*.tmp")) == []  # the cut-short write left nothing behind
    filler.unlink()
    assert main(["train", *T, "--runs-dir", str(small_disk / "runs")]) == 0
    assert "resuming an interrupted run" in capsys.readouterr().err
    ours, theirs = (torch.load(r / "masks.pt", weights_only=True) for r in (run, reference))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert _records(run) == _records(reference)


def test_a_damaged_summary_is_a_warning_and_report_and_plot_go_on_with_the_other_runs(tmp_path, monkeypatch, capsys,
                                                                                    caplog):
    monkeypatch.chdir(tmp_path)
    small = [a if a != "hidden=[256]" else "hidden=[16]" for a in T if a not in ("--epochs", "6")]
    for seed in ("0", "1"):
        assert main(["train", *small, "--epochs", "1", "--runs-dir", "runs", "--seed", seed]) == 0
    damaged, intact = sorted(Path("runs").glob("*/seed_*"))
    (damaged / "summary.json").write_text('{"final_acc": 0.5,')
    capsys.readouterr()
    caplog.clear()
    assert main(["report", "--runs-dir", "runs", "--format", "csv"]) == 0
    rows = capsys.readouterr().out.splitlines()[1:]
    assert len(rows) == 1 and ",1," in rows[0]  # the intact run (seed 1) alone
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{damaged.parent.name}/{damaged.name} skipped: {damaged}/summary.json: not valid JSON")
    caplog.clear()
    for png in intact.glob("*.png"):
        png.unlink()
    assert main(["plot", "--runs-dir", "runs", "--no-progress"]) == 0
    assert (intact / "curves.png").exists() and not (damaged / "curves.png").exists()
    assert Path("runs/accuracy_vs_sparsity.png").exists()
    assert len([r for r in caplog.records if r.levelname == "WARNING"]) == 1
    # a damaged config.yaml in a finished run whose summary does not carry its recipe (written by an earlier
    # version): the run is reported, its recipe unknown, and said so
    summary = json.loads((intact / "summary.json").read_text())
    del summary["recipe"]
    (intact / "summary.json").write_text(json.dumps(summary))
    (intact / "config.yaml").write_text("model: {name: [\n")
    capsys.readouterr()
    caplog.clear()
    assert main(["report", "--runs-dir", "runs", "--format", "csv"]) == 0
    (row,) = capsys.readouterr().out.splitlines()[1:]
    assert ",1," in row
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING" and "recipe" in r.getMessage()]
    assert warning.startswith(f"{intact}: recipe unknown (shown as -): {intact}/config.yaml: not valid YAML")
