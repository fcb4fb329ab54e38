"""One process per run directory: the OS-level lock, with real processes."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sparsetrain.experiment.lock import LOCK_FILE, DirectoryLock, DirectoryLocked

SRC = str(Path(__file__).resolve().parents[1] / "src")
TINY = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=32", "--data-option",
        "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]", "--batch-size", "32",
        "--no-progress", "--no-plots", "--no-baseline", "--runs-dir", "runs"]
HOLD = """
import sys, time
from sparsetrain.experiment.lock import DirectoryLock
lock = DirectoryLock(sys.argv[1], "run x")
lock.acquire()
print("held", flush=True)
time.sleep(60)
"""


def _env(**extra):
    return {**os.environ, "PYTHONPATH": SRC, "OMP_NUM_THREADS": "1", **extra}


def _holder(directory):
    process = subprocess.Popen([sys.executable, "-c", HOLD, str(directory)], env=_env(), stdout=subprocess.PIPE,
                               text=True)
    assert process.stdout.readline().strip() == "held"
    return process


def test_a_second_process_is_refused_with_the_holders_pid_and_a_killed_holder_frees_the_lock(tmp_path):
    holder = _holder(tmp_path)
    try:
        with pytest.raises(DirectoryLocked, match=rf"^run x is in use by another process \(PID {holder.pid}\); "):
            DirectoryLock(tmp_path, "run x").acquire()
        holder.send_signal(signal.SIGKILL)
        holder.wait()
        with DirectoryLock(tmp_path) as lock:  # the kernel released it: no stale lock, no waiting
            assert lock.held and (tmp_path / LOCK_FILE).read_text().strip() == str(os.getpid())
        assert not (tmp_path / LOCK_FILE).exists()
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_is_reentrant_in_one_object_and_exclusive_between_objects(tmp_path):
    first = DirectoryLock(tmp_path / "new")  # the directory is created
    with first:
        with first:
            assert first.held
        assert first.held
        with pytest.raises(DirectoryLocked):  # flock: two open files of one process exclude each other too
            DirectoryLock(tmp_path / "new").acquire()
    assert not first.held and not (tmp_path / "new" / LOCK_FILE).exists()


def _train(cwd, *args, **env):
    return subprocess.Popen([sys.executable, "-m", "sparsetrain", "train", *TINY, *args], cwd=cwd,
                            env=_env(**env), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_train_commands_on_one_run_one_trains_the_other_exits_2_touching_nothing(tmp_path):
    # The first is slowed inside every file write, so the second starts while it writes its checkpoint.
    first = _train(tmp_path, "--epochs", "20", SPARSETRAIN_TEST_WRITE_DELAY="0.3")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/seed_0/.*.tmp")) and time.monotonic() < deadline:
        assert first.poll() is None, first.communicate()
        time.sleep(0.01)
    (run,) = tmp_path.glob("runs/*/seed_0")
    second = _train(tmp_path, "--epochs", "20")
    _, err = second.communicate(timeout=120)
    out, first_err = first.communicate(timeout=300)
    assert first.returncode == 0, first_err
    assert second.returncode == 2
    assert err.splitlines() == [f"sparsetrain: error: run {run.relative_to(tmp_path)} is in use by another process "
                                f"(PID {first.pid}); wait for it to finish or stop it, then run the command again"]
    epochs = [json.loads(line)["epoch"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert epochs == list(range(1, 21))
    assert (run / "summary.json").exists() and not (run / LOCK_FILE).exists()


def test_a_run_killed_mid_training_resumes_at_once(tmp_path):
    first = _train(tmp_path, "--epochs", "40", SPARSETRAIN_TEST_WRITE_DELAY="0.05")
    deadline = time.monotonic() + 120
    while not list(tmp_path.glob("runs/*/seed_0/checkpoint.pt")) and time.monotonic() < deadline:
        time.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait()
    second = _train(tmp_path, "--epochs", "40")
    _, err = second.communicate(timeout=300)
    assert second.returncode == 0, err
    assert "resuming an interrupted run" in err
