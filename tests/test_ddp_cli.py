"""``sparsetrain train --nproc 2``: a real two-process data-parallel run on CPU (gloo) through the CLI, and its
resume. The CLI re-launches itself under ``torch.distributed.run``; only rank 0 writes files."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from sparsetrain.cli import main
from sparsetrain.distributed import masks_checksum
from sparsetrain.experiment import RunDir, Trainer

ARGS = ["train", "--data", "synthetic", "--data-option", "n_train=256", "--data-option", "n_test=64",
        "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
        "--method", "rigl", "--sparsity", "0.8", "--epochs", "2", "--batch-size", "32", "--update-every", "3",
        "--no-baseline", "--no-progress", "--no-plots", "-v", "--runs-dir", "runs"]
CHECKSUM = re.compile(r"rank (\d) of 2: final masks checksum ([0-9a-f]{32})")
SRC = str(Path(__file__).resolve().parents[1] / "src")
FILES = {"config.yaml", "metrics.jsonl", "topology.jsonl", "checkpoint.pt", "checkpoint.prev.pt", "masks.pt",
         "summary.json"}


@pytest.fixture(scope="module")
def ddp_run(tmp_path_factory):
    """The run, launched as a user would (``sparsetrain train ... --nproc 2``, through ``main``): the CLI starts
    torchrun, which starts the two ranks; their stderr (file descriptor 2) is collected."""
    root = tmp_path_factory.mktemp("ddp")
    cwd = os.getcwd()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as log:
        os.dup2(log.fileno(), 2)
        try:
            os.chdir(root)
            code = main([*ARGS, "--nproc", "2"])
        finally:
            os.chdir(cwd)
            os.dup2(saved, 2)
            os.close(saved)
        log.seek(0)
        stderr = log.read().decode(errors="replace")
    assert code == 0, stderr[-3000:]
    (run,) = (root / "runs").glob("*/seed_0")
    return run, SimpleNamespace(stderr=stderr)


def _checksums(stderr):
    return dict(CHECKSUM.findall(stderr))


def _metrics(run):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_processes_write_one_run_whose_masks_every_rank_had(ddp_run):
    run, result = ddp_run
    assert [p.name for p in run.parent.parent.iterdir()] == [run.parent.name]  # one run directory
    assert {p.name for p in run.iterdir()} == FILES
    assert [r["epoch"] for r in _metrics(run)] == [1, 2]  # not one line per rank
    # RigL's updates at steps 3, 6, 9 (until 75% of 16 steps), each logged once, by rank 0
    assert [json.loads(line)["step"] for line in (run / "topology.jsonl").read_text().splitlines()] == [3, 6, 9]
    checksums = _checksums(result.stderr)
    assert set(checksums) == {"0", "1"} and len(set(checksums.values())) == 1, result.stderr[-3000:]
    saved = torch.load(run / "masks.pt", weights_only=True)
    summary = json.loads((run / "summary.json").read_text())
    assert masks_checksum(saved) == checksums["0"] == summary["masks_checksum"]
    assert summary["world_size"] == 2 and torch.load(run / "checkpoint.pt", weights_only=True)["world_size"] == 2
    density = sum(int(m.sum()) for m in saved.values()) / sum(m.numel() for m in saved.values())
    assert density == pytest.approx(0.2, abs=1 / 256)
    # the same optimizer-step count as one process with the same global batch: 230 samples / 32 -> 8 per epoch
    assert summary["total_steps"] == 16 and _metrics(run)[-1]["step"] == 16
    assert result.stderr.count("training rigl") == 1  # rank 1 trains silently


def test_sharded_evaluation_equals_one_process_evaluating_the_saved_model(ddp_run):
    run, _ = ddp_run
    trainer = Trainer(RunDir(run).read_config(), run.parent.parent, plots=False)
    exp = trainer.prepare()
    exp.model.load_state_dict(torch.load(run / "checkpoint.pt", weights_only=True)["model"])
    exp.model.eval()
    with torch.no_grad():
        pairs = [(exp.model(x).argmax(-1) == y).sum().item() for x, y in exp.test_loader]
    assert sum(pairs) / len(exp.test_loader.dataset) == _metrics(run)[-1]["test_acc"]


def test_a_data_parallel_run_resumes_on_every_rank_from_the_same_checkpoint(ddp_run, tmp_path, monkeypatch, capfd):
    run, first = ddp_run
    copy = tmp_path / "runs" / run.parent.name / "seed_0"
    shutil.copytree(run, copy)
    for name in ("summary.json", "masks.pt"):  # killed after epoch 1's checkpoint, in epoch 2
        (copy / name).unlink()
    os.replace(copy / "checkpoint.prev.pt", copy / "checkpoint.pt")
    monkeypatch.chdir(tmp_path)
    assert main([*ARGS, "--nproc", "2"]) == 0
    err = capfd.readouterr().err
    assert "resuming an interrupted run at step 8 (epoch 1 of 2 complete)" in err
    assert _checksums(err) == _checksums(first.stderr)
    assert _metrics(copy) == _metrics(run)
    assert json.loads((copy / "summary.json").read_text())["resumed"] is True

    os.replace(copy / "checkpoint.prev.pt", copy / "checkpoint.pt")
    (copy / "summary.json").unlink()
    assert main(ARGS) == 2  # one process cannot continue a two-process run
    line = capfd.readouterr().err.strip().splitlines()[-1]
    assert line.startswith("sparsetrain: error: ") and "written by a 2-process run" in line and "--nproc 2" in line


# -- a rank that dies or hangs: the others stop within a bounded time with one line, and the run resumes ---------
def _rank_pid(rank, timeout=120):
    """The pid of the sparsetrain worker with RANK=<rank> (Linux: read from /proc/<pid>/environ)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                environ = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
                cmdline = open(f"/proc/{entry}/cmdline", "rb").read()
            except OSError:
                continue
            if f"RANK={rank}".encode() in environ and b"sparsetrain" in cmdline and b"distributed.run" not in cmdline:
                return int(entry)
        time.sleep(0.05)
    raise AssertionError(f"no worker with RANK={rank}")


def _launch(cwd, *extra, **env):
    args = [a if a != "2" or i != ARGS.index("--epochs") + 1 else "12" for i, a in enumerate(ARGS) if a != "-v"]
    return subprocess.Popen([sys.executable, "-m", "sparsetrain", *args, "--nproc", "2", *extra], cwd=cwd,
                            env={**os.environ, "PYTHONPATH": SRC, **env}, stderr=subprocess.PIPE, text=True)


def _wait_for_checkpoint(cwd, process):
    while not list(cwd.glob("runs/*/seed_0/checkpoint.prev.pt")):
        assert process.poll() is None, process.communicate()
        time.sleep(0.05)


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' processes through /proc")
@pytest.mark.parametrize("victim", [1, 0])
def test_when_a_rank_is_killed_the_other_stops_with_one_line_naming_it_and_the_run_resumes(victim, tmp_path):
    # slowed inside every file write, so that rank 0 may be killed while it writes a checkpoint
    process = _launch(tmp_path, SPARSETRAIN_TEST_WRITE_DELAY="0.05")
    _wait_for_checkpoint(tmp_path, process)
    os.kill(_rank_pid(victim), signal.SIGKILL)
    killed = time.monotonic()
    _, err = process.communicate(timeout=120)
    assert time.monotonic() - killed < 60
    assert process.returncode == 75 and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sparsetrain: error:")]
    assert len(errors) == 1 and [line for line in err.splitlines() if not line.startswith("sparsetrain: ")] == []
    # a survivor that sees its peer vanish says "has died"; the launcher, when it reaps the killed rank first,
    # says "was killed by SIGKILL": either way one line naming the lost rank (which one wins is a race)
    assert (f"rank {victim} has died" in errors[0] or f"rank {victim} of 2 (pid" in errors[0]
            and "was killed by SIGKILL" in errors[0]), errors[0]
    assert "run the same command again to resume" in errors[0]
    (run,) = tmp_path.glob("runs/*/seed_0")
    assert not (run / "summary.json").exists()
    again = _launch(tmp_path)
    _, err = again.communicate(timeout=300)
    assert again.returncode == 0, err
    assert "resuming an interrupted run" in err
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 13))


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the ranks' processes through /proc")
def test_when_a_rank_hangs_the_other_stops_after_the_collective_timeout(tmp_path):
    process = _launch(tmp_path, SPARSETRAIN_DDP_TIMEOUT="3")
    _wait_for_checkpoint(tmp_path, process)
    pid = _rank_pid(1)
    os.kill(pid, signal.SIGSTOP)
    stopped = time.monotonic()
    try:
        _, err = process.communicate(timeout=120)
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    assert time.monotonic() - stopped < 60
    assert process.returncode in (75, 1) and "Traceback" not in err
    errors = [line for line in err.splitlines() if line.startswith("sparsetrain: error:")]
    assert errors and errors[0].startswith("sparsetrain: error: rank 0 of 2: another rank stopped answering"), err
