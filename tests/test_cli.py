"""The command line end to end on tiny synthetic data: train, report, plot, bad options, SIGKILL and resume.

Everything runs in-process through ``main([...])`` except what needs a process of its own: the run killed with
SIGKILL and the one stopped with SIGTERM (``python -m sparsetrain``, as a user starts it).
"""

import csv
import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest
import torch

from sparsetrain.cli import main

SRC = str(Path(__file__).resolve().parents[1] / "src")

TINY = ["--data", "synthetic", "--data-option", "n_train=256", "--data-option", "n_test=64",
        "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
        "--epochs", "2", "--batch-size", "32", "--update-every", "3", "--no-progress"]


def _png(path):
    image = matplotlib.image.imread(path)
    colours = np.unique(image.reshape(-1, image.shape[-1]), axis=0)
    return image.shape, len(colours)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two sparse runs (GraNet, RigL) and their shared dense baseline, trained through main()."""
    root = tmp_path_factory.mktemp("runs")
    runs_dir = str(root / "runs")
    assert main(["train", *TINY, "--runs-dir", runs_dir, "--method", "granet", "--sparsity", "0.8"]) == 0
    assert main(["train", *TINY, "--runs-dir", runs_dir, "--method", "rigl", "--sparsity", "0.9",
                 "--set", "sparse.options.drop_fraction=0.2", "--no-plots"]) == 0
    return Path(runs_dir)


def test_train_writes_runs_named_by_method_and_hash_with_a_shared_dense_baseline(runs):
    names = sorted(p.name for p in runs.iterdir() if p.is_dir())
    assert [n.split("-")[0] for n in names] == ["dense", "granet", "rigl"]
    for name in names:
        files = set(os.listdir(runs / name / "seed_0"))
        assert {"config.yaml", "metrics.jsonl", "summary.json", "masks.pt", "checkpoint.pt"} <= files
        plots = {"curves.png", "density.png", "layers.png"}
        assert plots <= files if not name.startswith("rigl") else not plots & files  # rigl ran with --no-plots
        # the topology updates of the dynamic runs, logged as they happened, and plotted with the run's plots
        assert ("topology.jsonl" in files) == (not name.startswith("dense"))
        assert ({"topology.png", "itop.png"} <= files) == name.startswith("granet")
    rigl = json.loads(next(runs.glob("rigl-*/seed_0/summary.json")).read_text())
    dense = json.loads(next(runs.glob("dense-*/seed_0/summary.json")).read_text())
    assert rigl["dense"]["final_acc"] == dense["final_acc"]
    assert rigl["target_sparsity"] == 0.9 and rigl["sparsity"] >= 0.9 - 1 / 256  # 256 weights: nearest count


def test_report_lists_every_run_in_three_formats(runs, capsys):
    assert main(["report", "--runs-dir", str(runs), "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["method"] for r in rows] == ["dense", "granet", "rigl"]
    summaries = {json.loads(p.read_text())["method"]: json.loads(p.read_text()) for p in runs.glob("*/seed_0/summary.json")}
    for row in rows:
        s = summaries[row["method"]]
        assert float(row["final_acc"]) == s["final_acc"] and float(row["target"]) == s["target_sparsity"]
        assert float(row["dense_acc"]) == summaries["dense"]["final_acc"]
        assert row["model"] == "mlp" and row["data"] == "synthetic"
    assert main(["report", "--runs-dir", str(runs), "--format", "markdown"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("| run | method | model | data |") and len(lines) == 2 + 3
    assert main(["report", "--runs-dir", str(runs)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:4] == ["run", "method", "model", "data"] and len(table) == 2 + 3
    assert f"{summaries['rigl']['final_acc']:.4f}" in table[-1]


def test_plot_writes_pngs_that_are_real_images(runs, capsys):
    assert main(["plot", "--runs-dir", str(runs), "--no-progress"]) == 0
    written = capsys.readouterr().out.split()
    assert str(runs / "accuracy_vs_sparsity.png") in written
    # curves, density and layers of every run; topology and itop of the two with topology updates (topology.jsonl)
    assert len(written) == 3 * 3 + 2 * 2 + 1
    assert sorted(Path(p).parent.parent.name.split("-")[0] for p in written if p.endswith(("topology.png",
                                                                                          "itop.png"))) == \
        ["granet", "granet", "rigl", "rigl"]
    for path in written:
        shape, colours = _png(path)
        assert shape[:2] == (450, 800) or path.endswith("topology.png"), path
        assert colours > 10, path  # lines, text and axes, not a blank canvas


def test_rerun_of_a_finished_run_skips_it(runs, capsys):
    metrics = next(runs.glob("granet-*/seed_0/metrics.jsonl"))
    before = (metrics.read_text(), metrics.stat().st_mtime_ns)
    assert main(["train", *TINY, "--runs-dir", str(runs), "--method", "granet", "--sparsity", "0.8"]) == 0
    err = capsys.readouterr().err
    assert err.count("already finished") == 2 and "skipping" in err  # the run and its dense baseline
    assert (metrics.read_text(), metrics.stat().st_mtime_ns) == before


@pytest.mark.parametrize("args, words", [
    (["train", "--sparsity", "1.5"], ["sparse.sparsity=1.5", "[0, 1)"]),
    (["train", "--method", "magic"], ["sparse.method='magic'", "granet"]),
    (["train", "--epochs", "two"], ["--epochs", "train.epochs='two'", "int"]),
    (["train", "--set", "sparse.sparsty=0.9"], ["sparse.sparsty", "sparsity"]),
    (["train", "--set", "sparse.sparsity"], ["--set", "KEY=VALUE"]),
    (["train", "--optimizer", "adamx"], ["optim.name='adamx'", "sgd, adam, adamw"]),
    (["train", "--bogus"], ["unrecognized arguments: --bogus", "sparsetrain train --help"]),
    (["train", *TINY, "--method-option", "drop_fraction=3"], ["drop_fraction=3", "(0, 1]"]),
    (["train", *TINY, "--model-option", "depth=2"], ["model:", "depth"]),
    (["report", "--format", "xml"], ["--format", "xml"]),
    (["frobnicate"], ["frobnicate"]),
])
def test_bad_options_exit_2_with_one_line(tmp_path, capsys, args, words):
    runs_dir = tmp_path / "runs"
    extra = ["--runs-dir", str(runs_dir)] if args[0] == "train" else []
    assert main([*args, *extra]) == 2
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("sparsetrain: error: "), captured.err
    for word in words:
        assert word in lines[0]
    assert not runs_dir.exists()  # nothing was trained, not even the dense baseline


def test_bad_yaml_config_exits_2_without_traceback(tmp_path, monkeypatch, capsys):
    config = tmp_path / "bad.yaml"
    config.write_text("sparse:\n  sparsity: 0.9\n  distribution: diagonal\n")
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--config", str(config)]) == 2
    err = capsys.readouterr().err
    assert err.strip().splitlines() == [
        "sparsetrain: error: sparse.distribution='diagonal' is not allowed; choose one of uniform, er, erk"]
    assert "Traceback" not in err and sorted(p.name for p in tmp_path.iterdir()) == ["bad.yaml"]


def test_help_lists_every_option_with_its_default(capsys):
    from sparsetrain.experiment.config import iter_fields

    with pytest.raises(SystemExit) as info:
        main(["train", "--help"])
    assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for field in iter_fields():
        assert field.flag in text
    for flag in ("--config", "--set", "--runs-dir", "--seeds", "--resume", "--baseline"):
        assert flag in text
    assert "(default: granet)" in text and "(default: 0.9)" in text and "(default: mnist1d)" in text
    for command in ("report", "plot"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        assert "--runs-dir" in capsys.readouterr().out


def test_sigkill_after_first_checkpoint_then_resume_matches_uninterrupted(tmp_path, monkeypatch, capsys):
    """The killed run is a real process (SIGKILL); its resume and the uninterrupted run go through main()."""
    args = ["train", "--data", "synthetic", "--data-option", "n_train=512", "--data-option", "n_test=64",
            "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[32]",
            "--method", "granet", "--sparsity", "0.8", "--epochs", "8", "--batch-size", "16",
            "--update-every", "10", "--no-baseline", "--no-progress", "--no-plots"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    killed = subprocess.Popen([sys.executable, "-m", "sparsetrain", *args, "--runs-dir", "cut"], cwd=tmp_path,
                              env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    checkpoints = list((tmp_path / "cut").glob("*/seed_0/checkpoint.pt"))
    while not checkpoints and killed.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
        checkpoints = list((tmp_path / "cut").glob("*/seed_0/checkpoint.pt"))
    killed.send_signal(signal.SIGKILL)
    killed.wait()
    assert killed.returncode == -signal.SIGKILL
    run = checkpoints[0].parent
    assert not (run / "summary.json").exists()
    epochs_at_kill = torch.load(run / "checkpoint.pt", weights_only=True)["epoch"]
    assert 1 <= epochs_at_kill < 8

    monkeypatch.chdir(tmp_path)
    assert main([*args, "--runs-dir", "cut"]) == 0
    assert "resuming an interrupted run" in capsys.readouterr().err
    assert main([*args, "--runs-dir", "straight"]) == 0
    other = tmp_path / "straight" / run.parent.name / "seed_0"

    def metrics(path):
        return [{k: v for k, v in json.loads(line).items() if k != "time"}
                for line in (path / "metrics.jsonl").read_text().splitlines()]

    assert len(metrics(run)) == 8
    assert metrics(run) == metrics(other)
    masks_a = torch.load(run / "masks.pt", weights_only=True)
    masks_b = torch.load(other / "masks.pt", weights_only=True)
    assert masks_a.keys() == masks_b.keys() and all(torch.equal(masks_a[k], masks_b[k]) for k in masks_a)
    summary_a, summary_b = (json.loads((p / "summary.json").read_text()) for p in (run, other))
    for key in ("final_acc", "best_acc", "sparsity", "itop_rate", "layers", "density_trace"):
        assert summary_a[key] == summary_b[key], key
    assert summary_a["resumed"] and not summary_b["resumed"]


def test_sigterm_writes_a_checkpoint_and_exits_143(tmp_path):
    args = ["train", "--data", "synthetic", "--data-option", "n_train=4096", "--data-option", "input_shape=[1, 12]",
            "--model", "mlp", "--epochs", "50", "--batch-size", "4", "--no-baseline", "--runs-dir", "runs"]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", "")}
    process = subprocess.Popen([sys.executable, "-m", "sparsetrain", *args], cwd=tmp_path, env=env,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline, seen = time.monotonic() + 120, ""
    while "epoch 1/50" not in seen and process.poll() is None and time.monotonic() < deadline:
        seen += process.stderr.readline()  # wait for the first epoch's line (no bar in a pipe): training has started
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 143, err[-2000:]
    assert "interrupted by SIGTERM" in err and "Run the same command again to resume" in err
    assert "Traceback" not in err
    (checkpoint,) = (tmp_path / "runs").glob("*/seed_0/checkpoint.pt")
    state = torch.load(checkpoint, weights_only=True)
    assert 0 < state["step"] < 50 * 1024 and state["batch_in_epoch"] == state["step"] % 922


def test_resume_a_run_directory_by_path(tmp_path, capsys):
    from test_experiment_trainer import StopAt, tiny

    from sparsetrain.experiment import Trainer, TrainingInterrupted

    config = tiny("gmp")
    with pytest.raises(TrainingInterrupted):
        Trainer(config, tmp_path / "runs", callback=StopAt(5), plots=False).fit()
    run = tmp_path / "runs" / config.run_name() / "seed_0"
    assert main(["train", "--resume", str(run), "--no-progress", "--no-plots"]) == 0
    captured = capsys.readouterr()
    assert "resuming an interrupted run at step 5" in captured.err
    assert json.loads((run / "summary.json").read_text())["resumed"] is True
    assert "gmp-" in captured.out and "dense" not in captured.out  # a resumed run trains no baseline
    assert main(["train", "--resume", str(run), "--epochs", "9"]) == 2
    assert "change the run's identity" in capsys.readouterr().err


def test_train_results_read_as_the_readme_shows():
    from sparsetrain.experiment.report import format_results

    dense = {"method": "dense", "seed": 0, "sparsity": 0.0, "target_sparsity": 0.0, "final_acc": 0.947,
             "best_acc": 0.941, "wall_time": 6.07, "run": "dense-90654191/seed_0"}
    granet = {"method": "granet", "seed": 0, "sparsity": 0.90006, "target_sparsity": 0.9, "final_acc": 0.827,
              "best_acc": 0.831, "wall_time": 6.1, "run": "granet-44136fa3/seed_0"}
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text().splitlines()
    start = readme.index("results (test accuracy; runs in runs/):")
    shown = [line.replace("  ...  ", "  6.1s  ") for line in readme[start:start + 4]]
    assert format_results([dense, granet], "runs").splitlines() == shown
    alone = format_results([granet | {"dense": {"final_acc": 0.9}}], "runs").splitlines()
    assert alone[-1] == "granet at 90% sparsity: 0.8270 vs dense 0.9000 (-0.0730), seed 0"


def test_train_with_a_pattern_names_it_in_the_report_and_the_plot_labels(tmp_path, capsys):
    runs_dir = tmp_path / "runs"
    assert main(["train", *TINY, "--runs-dir", str(runs_dir), "--method", "rigl", "--pattern", "2:4"]) == 0
    out = capsys.readouterr().out
    assert "rigl 2:4 at 50% sparsity" in out
    summary = json.loads(next(runs_dir.glob("rigl-*/seed_0/summary.json")).read_text())
    assert summary["pattern"] == "2:4" and summary["target_sparsity"] == 0.5
    config = (next(runs_dir.glob("rigl-*/seed_0/config.yaml"))).read_text()
    assert "pattern: '2:4'" in config or "pattern: 2:4" in config
    assert main(["report", "--runs-dir", str(runs_dir)]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0].split()[:3] == ["run", "method", "pattern"] and table[-1].split()[2] == "2:4"
    assert table[-2].split()[2] == "-"  # the dense baseline: unstructured
    from sparsetrain.experiment.report import method_label
    assert method_label(summary) == "rigl 2:4" and method_label({"method": "rigl"}) == "rigl"
