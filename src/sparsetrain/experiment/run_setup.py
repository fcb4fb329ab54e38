"""A run directory made ready for a training session: its lock, the checks that it is this run's, its files in order.

One process per run: the process that trains a run holds an OS-level lock on its directory (:mod:`.lock`) from
before its first write until it is done (:func:`hold_run_lock`); a second process on the same run raises
:class:`~.lock.DirectoryLocked` naming the holder's PID and writes nothing. The kernel drops the lock of a killed
process, so a resume is never blocked. In a data-parallel run rank 0 holds it for every rank.

Crash safety: every file of a run is written atomically (temporary file, fsync, rename). Before the first step of a
session, :func:`prepare_run_dir` removes the temporary files a crash left, sets aside a checkpoint that could not be
read (as ``checkpoint.bad.pt``), writes ``config.yaml`` (and a branch's ``branch.json``), and either truncates
``metrics.jsonl`` to the checkpointed epochs and ``topology.jsonl`` to the checkpointed step (a resume) or removes
the old run's checkpoints and logs at once (a fresh start), so a run killed at any moment (SIGKILL included)
resumes to the same masks and metrics as an uninterrupted one.

Anything wrong with a run's inputs (a tracker that is not installed, a directory that holds another config or
another branch) raises before a file is touched (:func:`check_trackers`, :func:`check_run_dir`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sparsetrain.atomic import remove_temp_files, write_text

from .branch import Branch, check_branch_record, write_branch_record
from .config import ConfigError, ExperimentConfig
from .lock import DirectoryLock, DirectoryLocked
from .loggers import check_installed, discard_logs
from .metrics import truncate_metrics
from .rundir import RunDir
from .run_state import DAMAGED_CHECKPOINT
from .topology_log import truncate_events

if TYPE_CHECKING:
    from .parallel import Parallel

__all__ = ["check_trackers", "check_run_dir", "hold_run_lock", "prepare_run_dir"]

logger = logging.getLogger(__name__)


def check_trackers(config: ExperimentConfig) -> None:
    """Check that every experiment tracker of ``train.log`` is installed.

    Raises:
        ConfigError: one is not (the message names its extra).
    """
    for kind in config.train.log:
        try:
            check_installed(kind)
        except ImportError as exc:
            raise ConfigError(f"train.log={config.train.log!r}: {exc}") from None


def check_run_dir(run: RunDir, config: ExperimentConfig, branch: Branch | None) -> None:
    """Check that the run directory, if it exists, holds this config and this branch (or none).

    Raises:
        ConfigError: it holds a different config, or a different branch.
    """
    if run.config_file.exists():
        saved = run.read_config()
        if saved.non_default() != config.non_default():
            raise ConfigError(f"{run.path} holds a different config (hash collision?); move it away "
                              "or use another --runs-dir")
    check_branch_record(run, branch)


@contextlib.contextmanager
def hold_run_lock(lock: DirectoryLock, parallel: Parallel) -> Iterator[None]:
    """Hold ``lock`` on rank 0 for every rank of ``parallel`` (a collective call: every rank learns the outcome).

    Raises:
        DirectoryLocked: another process holds it (raised on every rank).
    """
    refused = None
    if parallel.is_main:
        try:
            lock.acquire()
        except DirectoryLocked as exc:
            refused = str(exc)
    refused = parallel.broadcast(refused)
    if refused is not None:
        raise DirectoryLocked(refused)
    try:
        yield
    finally:
        if parallel.is_main:
            lock.release()


def prepare_run_dir(run: RunDir, config: ExperimentConfig, *, resume: bool, step: int, epoch: int,
                    damaged: Sequence[Path] = (), branch: Branch | None = None,
                    branch_start: dict[str, Any] | None = None) -> None:
    """Put the run directory in order before a session's first step (rank 0 only: the rank that writes).

    Args:
        run: the run directory (created if missing).
        config: the run's config, written to ``config.yaml``.
        resume: the session resumes at ``step`` / ``epoch`` (the logs are truncated there); else it starts fresh
            and the old run's checkpoints and logs are removed at once, so a crash before the first new checkpoint
            cannot resume the old run.
        step / epoch: where a resume starts.
        damaged: unreadable checkpoints to set aside as ``checkpoint.bad.pt``.
        branch / branch_start: the run's branch and its starting point (what :func:`~.branch.start_branch` gave);
            a fresh start of a branch records both in ``branch.json``, before ``config.yaml``, so that a branch's
            directory never lacks it.
    """
    run.path.mkdir(parents=True, exist_ok=True)
    remove_temp_files(run.path)  # left by writes a crash cut short
    if run.checkpoints_dir.is_dir():
        remove_temp_files(run.checkpoints_dir)
    for bad in damaged:
        os.replace(bad, run.path / DAMAGED_CHECKPOINT)
    if not resume and branch is not None:
        assert branch_start is not None  # set by the build of a fresh start
        write_branch_record(run, {"source": branch.identity(run.path), **branch_start})
    write_text(config.to_yaml(), run.config_file)
    if resume:
        kept = truncate_metrics(run.metrics_file, epoch)
        truncate_events(run.topology_file, step)
        logger.info("resuming %s at step %d (epoch %d, %d metric records)", run.name, step, epoch, kept)
        return
    for old in (run.checkpoint_file, run.previous_checkpoint_file, run.metrics_file, run.topology_file):
        old.unlink(missing_ok=True)
    shutil.rmtree(run.checkpoints_dir, ignore_errors=True)
    discard_logs(run)
