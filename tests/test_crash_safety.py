"""Crash safety of ``sparsetrain train``: SIGKILL at 20 seeded random moments, then resume; damaged checkpoints;
a branch run (a lottery-style rewind of another run) killed and resumed.

The killed runs are real command-line runs (``sparsetrain.cli.main`` in a child process). The children are
forked from a ``forkserver`` that has torch and sparsetrain imported already, so a child starts in milliseconds
instead of the seconds a fresh interpreter needs to import torch, and 20 kills fit in well under a minute.
"""

import multiprocessing
import multiprocessing.forkserver
import os
import random
import shutil
import sys
import time
import zipfile
from pathlib import Path

import pytest
import torch

# imported here so that the forkserver, which preloads this module, has them before it forks
import sparsetrain.data
import sparsetrain.experiment.trainer
import sparsetrain.models  # noqa: F401
from sparsetrain.cli import main
from sparsetrain.atomic import WRITE_DELAY_ENV
from sparsetrain.experiment import Branch, ExperimentConfig, RunDir, Trainer

ARGS = ["train", "--data", "synthetic", "--data-option", "n_train=192", "--data-option", "n_test=512",
        "--data-option", "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]",
        "--method", "granet", "--sparsity", "0.8", "--epochs", "6", "--batch-size", "16", "--update-every", "4",
        "--no-baseline", "--no-progress", "--no-plots", "--runs-dir", "runs"]
KILLS = 20
WRITE_DELAY = 0.01  # seconds each atomic write waits between its temporary file and the rename
AIMED_WRITE_DELAY = 0.05  # the same for the runs killed on purpose inside a write
SUMMARY_KEYS = ("final_acc", "best_acc", "best_epoch", "sparsity", "itop_rate", "masks_checksum", "layers",
                "density_trace", "flops", "total_steps")
DAMAGE_WORDS = ("damaged", "could not be read", "corrupt", "Traceback")


def _child(argv, cwd, env, log):
    """Entry point of a forked child: ``sparsetrain train`` in ``cwd``, output to ``log``."""
    os.chdir(cwd)
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    sys.exit(main(argv))


def _branch_child(cwd, source, config, log, env):
    """Entry point of a forked child: the weights, position and data order of ``source`` trained on the masks of
    ``config`` (a static method with a masks file) in ``cwd/branch``."""
    os.chdir(cwd)
    os.environ.update(env)
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    os.dup2(fd, 1)
    os.dup2(fd, 2)
    branch = Branch(checkpoint=source, take={"model", "position", "data"})
    Trainer(ExperimentConfig.from_dict(config), run_dir="branch", branch=branch, plots=False).fit()
    sys.exit(0)


@pytest.fixture(scope="module")
def forkserver():
    """A forkserver that has imported this module (torch, sparsetrain) before it forks any child."""
    context = multiprocessing.get_context("forkserver")
    # torch imports dynamo/inductor lazily on the first optimizer step (two seconds): preload them too
    context.set_forkserver_preload(["test_crash_safety", "torch._dynamo", "torch._inductor.config"])
    here = Path(__file__).resolve().parent
    saved = os.environ.get("PYTHONPATH")
    # the server process starts from a fresh interpreter: it finds the modules through PYTHONPATH only
    os.environ["PYTHONPATH"] = os.pathsep.join([str(here.parent / "src"), str(here), saved or ""])
    try:
        multiprocessing.forkserver.ensure_running()
    finally:
        if saved is None:
            del os.environ["PYTHONPATH"]
        else:
            os.environ["PYTHONPATH"] = saved
    ready = context.Process(target=os.getpid)  # returns once the server has imported everything
    ready.start()
    ready.join()
    return context


def _start(context, cwd, log, delay):
    env = {WRITE_DELAY_ENV: str(delay) if delay else ""}
    process = context.Process(target=_child, args=(ARGS, str(cwd), env, str(log)))
    process.start()
    return process


def _run_dir(cwd):
    found = list((Path(cwd) / "runs").glob("*/seed_0"))
    return found[0] if found else None


def _temp_files(cwd, run=None):
    run = run or _run_dir(cwd)
    return {p.name for p in run.iterdir() if p.name.endswith(".tmp")} if run is not None and run.exists() else set()


def _kill_after(process, seconds):
    process.join(seconds)
    process.kill()
    process.join()


def _kill_at_write(process, cwd, nth, run=None):
    """SIGKILL while the ``nth`` atomic write (counted by its temporary file) waits before its rename."""
    seen = set()
    while process.is_alive():
        seen |= _temp_files(cwd, run)
        if len(seen) >= nth:
            break
        time.sleep(0.001)
    process.kill()
    process.join()


def _kill_between_writes(process, cwd, nth):
    """SIGKILL once the ``nth`` atomic write has been renamed and no other has begun: in the training (or
    evaluation) that follows it, the phase that random moments reach least when the writes are slowed down."""
    seen = set()
    while process.is_alive():
        current = _temp_files(cwd)
        seen |= current
        if len(seen) >= nth and not current:
            break
        time.sleep(0.001)
    process.kill()
    process.join()


def _result(run):
    import json

    metrics = [{k: v for k, v in json.loads(line).items() if k != "time"}
               for line in (run / "metrics.jsonl").read_text().splitlines()]
    summary = json.loads((run / "summary.json").read_text())
    masks = torch.load(run / "masks.pt", weights_only=True)
    topology = (run / "topology.jsonl").read_text() if (run / "topology.jsonl").exists() else None
    return metrics, {k: summary[k] for k in SUMMARY_KEYS}, masks, topology


def _same(a, b):
    assert a[0] == b[0]
    assert a[1] == b[1]
    assert a[2].keys() == b[2].keys() and all(torch.equal(a[2][k], b[2][k]) for k in a[2])
    assert a[3] == b[3]  # every topology update logged once, in order, as in the uninterrupted run


def test_sigkill_at_20_random_moments_then_resume_matches_an_uninterrupted_run(tmp_path, forkserver):
    reference_dir = tmp_path / "reference"
    reference_dir.mkdir()
    process = _start(forkserver, reference_dir, tmp_path / "reference.log", WRITE_DELAY)
    process.join()
    assert process.exitcode == 0, (tmp_path / "reference.log").read_text()
    reference = _result(_run_dir(reference_dir))
    # The kill times are drawn over the length of a run measured warm (the first run also pays one-off costs:
    # kernel builds, data caches), so that most kills land inside the run rather than after it.
    timing_dir = tmp_path / "timing"
    timing_dir.mkdir()
    start = time.monotonic()
    process = _start(forkserver, timing_dir, tmp_path / "timing.log", WRITE_DELAY)
    process.join()
    duration = time.monotonic() - start
    assert process.exitcode == 0, (tmp_path / "timing.log").read_text()
    _same(_result(_run_dir(timing_dir)), reference)
    writes = 6 + 3  # a checkpoint per epoch, config.yaml, masks.pt, summary.json
    assert len(reference[0]) == 6

    rng = random.Random(1234)
    phases = []
    for trial in range(KILLS):
        cwd = tmp_path / f"trial{trial}"
        cwd.mkdir()
        log = cwd / "log.txt"
        if trial % 4 == 3:  # aim a quarter of the kills into an atomic write's window
            _kill_at_write(_start(forkserver, cwd, log, AIMED_WRITE_DELAY), cwd, rng.randint(1, writes))
        elif trial % 4 == 1:  # and a quarter between writes: after config.yaml or an epoch's checkpoint
            _kill_between_writes(_start(forkserver, cwd, log, WRITE_DELAY), cwd, rng.randint(1, 6))
        else:
            _kill_after(_start(forkserver, cwd, log, WRITE_DELAY), rng.uniform(0.0, duration))
        run = _run_dir(cwd)
        phases.append("before the run dir" if run is None else "write" if _temp_files(cwd) else
                      "finished" if (run / "summary.json").exists() else "train/eval")
        if trial % 2 == 1:  # kill the resume as well: truncation, clean-up and checkpoint rotation are not safe ground
            _kill_after(_start(forkserver, cwd, log, WRITE_DELAY), rng.uniform(0.0, duration))
        resumed = _start(forkserver, cwd, log, 0)
        resumed.join()
        text = log.read_text()
        assert resumed.exitcode == 0, text
        assert not any(word in text for word in DAMAGE_WORDS), text  # no torn file was ever met
        run = _run_dir(cwd)
        _same(_result(run), reference)
        assert not [p.name for p in run.iterdir() if p.name.endswith(".tmp") or p.name == "checkpoint.bad.pt"]
    assert phases.count("write") >= KILLS // 4 - 1, phases  # one aimed kill may miss on a busy machine
    assert phases.count("train/eval") >= KILLS // 4 - 2, phases  # two aimed kills may miss on a busy machine


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    """A finished run of ARGS (in-process) to damage copies of."""
    root = tmp_path_factory.mktemp("finished")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(ARGS) == 0
    finally:
        os.chdir(cwd)
    return _run_dir(root)


def _flip_a_tensor_byte(path):
    with zipfile.ZipFile(path) as archive:
        record = max(archive.infolist(), key=lambda info: info.compress_size)
    data = bytearray(path.read_bytes())
    offset = record.header_offset
    name_len = int.from_bytes(data[offset + 26:offset + 28], "little")
    extra_len = int.from_bytes(data[offset + 28:offset + 30], "little")
    data[offset + 30 + name_len + extra_len + record.compress_size // 2] ^= 0x40
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("damage", ["truncated", "one flipped bit in a tensor", "empty"])
def test_damaged_checkpoint_falls_back_to_the_previous_one(finished_run, tmp_path, monkeypatch, caplog, damage):
    run = tmp_path / "runs" / finished_run.parent.name / "seed_0"
    shutil.copytree(finished_run, run)
    (run / "summary.json").unlink()  # as if killed right after the last checkpoint
    (run / "masks.pt").unlink()
    checkpoint = run / "checkpoint.pt"
    if damage == "truncated":
        checkpoint.write_bytes(checkpoint.read_bytes()[: checkpoint.stat().st_size // 2])
    elif damage == "empty":
        checkpoint.write_bytes(b"")
    else:
        _flip_a_tensor_byte(checkpoint)
    monkeypatch.chdir(tmp_path)
    with caplog.at_level("WARNING"):
        assert main(ARGS) == 0
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    relative = f"runs/{run.parent.name}/seed_0/"
    assert "\n" not in warnings[0] and f"checkpoint '{relative}checkpoint.pt'" in warnings[0]
    assert f"resuming from {relative}checkpoint.prev.pt (epoch 5)" in warnings[0]
    assert (run / "checkpoint.bad.pt").exists()
    _same(_result(run), _result(finished_run))  # epoch 6 trained again from epoch 5: the same result


def test_only_the_previous_checkpoint_left_after_a_crash_between_the_renames(finished_run, tmp_path, monkeypatch):
    run = tmp_path / "runs" / finished_run.parent.name / "seed_0"
    shutil.copytree(finished_run, run)
    for name in ("summary.json", "masks.pt", "checkpoint.pt"):
        (run / name).unlink()
    monkeypatch.chdir(tmp_path)
    assert main(ARGS) == 0
    _same(_result(run), _result(finished_run))


def test_a_branch_killed_at_random_moments_resumes_to_the_same_result(finished_run, tmp_path, forkserver):
    source_run = tmp_path / "source"
    shutil.copytree(finished_run, source_run)
    config = RunDir(source_run).read_config()
    source = Trainer(config, run_dir=source_run).checkpoint_at(epoch=2)  # replayed: the run has finished
    branch = config.with_overrides({"sparse.method": "static",
                                    "sparse.options.masks": str(source_run / "masks.pt")}).to_dict()

    def start(cwd, delay):
        cwd.mkdir(exist_ok=True)
        env = {WRITE_DELAY_ENV: str(delay) if delay else ""}
        process = forkserver.Process(target=_branch_child,
                                     args=(str(cwd), str(source), branch, str(cwd / "log"), env))
        process.start()
        return process

    begin = time.monotonic()
    reference = start(tmp_path / "reference", WRITE_DELAY)
    reference.join()
    duration = time.monotonic() - begin
    assert reference.exitcode == 0, (tmp_path / "reference" / "log").read_text()
    expected = _result(tmp_path / "reference" / "branch")
    writes = 4 + 4  # branch.json, config.yaml, a checkpoint for each of the 4 epochs left, masks.pt, summary.json
    rng = random.Random(99)
    cut = 0
    for trial in range(6):
        cwd = tmp_path / f"trial{trial}"
        if trial % 2:  # inside an atomic write's window
            _kill_at_write(start(cwd, AIMED_WRITE_DELAY), cwd, rng.randint(1, writes), cwd / "branch")
        else:
            _kill_after(start(cwd, WRITE_DELAY), rng.uniform(0.0, duration))
        cut += (cwd / "branch" / "config.yaml").exists() and not (cwd / "branch" / "summary.json").exists()
        resumed = start(cwd, 0)
        resumed.join()
        assert resumed.exitcode == 0, (cwd / "log").read_text()
        _same(_result(cwd / "branch"), expected)
        assert not [p.name for p in (cwd / "branch").iterdir() if p.name.endswith(".tmp")]
    assert cut >= 2  # at least two kills hit the branch part-way
