"""The training loop of one run: train, evaluate every epoch, checkpoint, resume exactly, summarise.

The loop is the library's two-line contract in a plain PyTorch loop: ``optimizer.step()`` then
``sparsifier.step()`` on every minibatch, with ``total_steps = epochs * steps_per_epoch``. Around it: evaluation
on the validation and test splits after every epoch; a checkpoint after every epoch and, on SIGINT/SIGTERM (see
:mod:`.signals`), after the current step, holding every part of the run's state (:mod:`.run_state`), so a resume
continues the very same computation (on CPU the final masks and metrics are bit-identical); at the end
``masks.pt``, the plots and ``summary.json``, which marks the run finished (:mod:`.summary`).

Every study is such a run. A run may start from parts of another run's checkpoint and/or given weights (a
:class:`~.branch.Branch`: lottery levels and their controls, plasticity cells, replays), keep full checkpoints at
requested steps or epochs (``checkpoints/step_<n>.pt``, never rotated, readable as branch sources), stop early
without finishing (:meth:`Trainer.fit_until`), and give its checkpoint at any step with the least training
(:meth:`Trainer.checkpoint_at`; a run past that step is replayed, see :mod:`.replay`).

What the topology does is recorded as it happens: one line of ``topology.jsonl`` per update
(:mod:`.topology_log`), and with ``train.log`` the run's figures go to TensorBoard and/or MLflow (:mod:`.tracking`);
a resumed run continues the same logs.

One process per run, and crash safety: the run directory is locked from before the first write until the run is
done, and put in order before each session's first step (:mod:`.run_setup`: leftovers of a crash removed, logs
truncated to the checkpoint a resume starts from). The checkpoint keeps its predecessor as ``checkpoint.prev.pt``;
a checkpoint that cannot be read is reported in one warning naming the file, set aside as ``checkpoint.bad.pt``,
and the run resumes from ``checkpoint.prev.pt``. Anything wrong with the inputs of a resume (an unreadable or
foreign checkpoint, a different config or branch) raises before a file is touched.

Data parallel (under torchrun, see :mod:`.parallel`): every rank runs this loop on its shard; DDP averages the
gradients; evaluation is split across ranks and summed; after every topology update the ranks compare mask
checksums (:func:`sparsetrain.distributed.assert_masks_identical`); only rank 0 writes files, and the other
ranks wait for it where they would read them. SIGINT/SIGTERM on any rank stops every rank at the same step.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsetrain.atomic import sync_file
from sparsetrain.checkpoint_io import CheckpointError, save_checkpoint
from sparsetrain.distributed import assert_masks_identical
from sparsetrain.topology import TopologyEvent

from .branch import Branch, read_branch_record, start_branch
from .build import Experiment, attach_sparsifier, build_experiment, sparsifier_step
from .callback import TrainerCallback
from .checkpoint import capture_rng, restore_rng
from .config import ConfigError, ExperimentConfig
from .epoch import epoch_record, optimizer_step
from .loggers import tracking_session
from .lock import DirectoryLock
from .metrics import RunningSums, append_metrics
from .rundir import RunDir
from .replay import replay_to_step
from .run_setup import check_run_dir, check_trackers, hold_run_lock, prepare_run_dir
from .run_state import (
    CHECKPOINT_VERSION,
    EVERYTHING,
    check_counts,
    check_resumable,
    kept_steps,
    loop_state,
    object_state,
    plan_start,
    read_run_checkpoint,
    restore_objects,
    step_at,
)
from .signals import StopRequest, TrainingInterrupted
from .summary import finish_run
from .topology_log import append_event
from .trace import DensityTrace, run_masks, run_report, run_weights
from .tracking import RunTracker

__all__ = ["Trainer", "TrainerCallback", "CHECKPOINT_VERSION"]

logger = logging.getLogger(__name__)


class Trainer:
    """Train one run (one config, one seed) in its run directory, from step 0 or from a branch.

    Args:
        config: the experiment config.
        runs_dir: the runs directory; the run lives in ``runs_dir/<method>-<hash>/seed_<n>`` unless ``run_dir``
            names it. It is also where the dense baseline is looked up for the summary (default "runs" without
            ``run_dir``; none looked up with ``run_dir`` unless given).
        run_dir: the run directory itself, for studies that own their layout.
        branch: start from another run's checkpoint and/or given weights (see :class:`~.branch.Branch`);
            recorded in ``branch.json``, which a resume must match.
        keep_steps: optimizer steps after which a full checkpoint is kept as ``checkpoints/step_<n>.pt`` (0: the
            state before the first step).
        keep_epochs: epochs after which one is kept (the end-of-epoch state, at step ``epoch * steps_per_epoch``).
        callback: progress hooks.
        plots: write the run's PNG plots at the end.

    Raises:
        TypeError, ValueError: an argument of the wrong type, or a negative step or epoch.

    Usage::

        trainer = Trainer(config, "runs")
        trainer.prepare()        # builds everything; raises ConfigError on a bad config
        summary = trainer.fit()  # trains, resumes, or returns the finished run's summary

        level = Trainer(config, run_dir="lottery/level_3", branch=Branch(checkpoint=rewind, take={"model",
                        "position", "data"}))   # config.sparse: static, options.masks = the level's masks.pt
    """

    def __init__(self, config: ExperimentConfig, runs_dir: str | Path | None = None, *,
                 run_dir: str | Path | None = None, branch: Branch | None = None, keep_steps: Iterable[int] = (),
                 keep_epochs: Iterable[int] = (), callback: TrainerCallback | None = None,
                 plots: bool = True) -> None:
        self.config = config.canonical()
        if run_dir is None:
            self.runs_dir: Path | None = Path(runs_dir if runs_dir is not None else "runs")
            self.run = RunDir.for_config(self.runs_dir, self.config)
        else:
            self.runs_dir = Path(runs_dir) if runs_dir is not None else None
            self.run = RunDir(Path(run_dir))
        if branch is not None and not isinstance(branch, Branch):
            raise TypeError(f"branch={branch!r} is not allowed: expected a Branch or None")
        self.branch = branch
        self._keep_asked = (check_counts("keep_steps", keep_steps), check_counts("keep_epochs", keep_epochs))
        self._keep: set[int] = set()
        self.callback = callback or TrainerCallback()
        self.plots = plots
        self.exp: Experiment | None = None
        self._rng_after_build: dict[str, Any] = {}
        self._origin: dict[str, Any] | None = None  # the branch source's loop entries, for a fresh start
        self._branch_start: dict[str, Any] | None = None  # set once the branch's source is built in
        self.step = 0
        self.epoch = 0
        self.resumed_from: int | None = None
        self._batch_in_epoch = 0
        self._epoch_loader_state: Tensor | None = None
        self._running = RunningSums(torch.device("cpu"))
        self._elapsed = 0.0
        self._clock = time.perf_counter()
        self._lr = 0.0
        self._sparsity = 0.0
        self._trace = DensityTrace()
        self._damaged: list[Path] = []
        self._tracker = RunTracker()  # the session's loggers (train.log), open while training
        self._saved_step: int | None = None
        self._trained = False  # this object's experiment has trained (a fresh start must build it again)
        self._lock = DirectoryLock(self.run.path, f"run {self.run.path}")

    # -- set-up --------------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.exp.total_steps if self.exp is not None else 0

    def status(self) -> str:
        """The run directory's status: "new", "interrupted" or "finished"."""
        return self.run.status()

    def prepare(self) -> Experiment:
        """Build data, model, optimizer and sparsifier, and a branch's starting point (idempotent).

        Raises:
            ConfigError: the config is rejected by the data, model or method; a tracker of ``train.log`` is not
                installed; the run directory holds a different config, or a different branch; or the branch's
                source does not fit.
            CheckpointError: the branch's source cannot be read.
        """
        if self.exp is None:
            check_trackers(self.config)
            check_run_dir(self.run, self.config, self.branch)
            self._build(source=not (self.run.checkpoint_file.exists() or self.run.previous_checkpoint_file.exists()))
        return self.exp

    def _build(self, source: bool) -> None:
        """Build the run at step 0; a branch's source is built in unless a resume will replace every part."""
        self._origin = self._branch_start = None
        self.step = self.epoch = self._batch_in_epoch = 0
        if self.branch is None:
            self.exp = build_experiment(self.config)
        else:
            exp = build_experiment(self.config, sparsifier=False)
            if source:
                self._origin, self._branch_start = start_branch(exp, self.branch)
            else:  # as the branch started: the sparsifier's schedules span what they spanned then
                attach_sparsifier(exp, (read_branch_record(self.run) or {}).get("sparsifier_total_steps"))
            self.exp = exp
        if self.exp.sparsifier is not None and self.exp.parallel.is_main:
            self.exp.sparsifier.subscribe(self._record_topology)
        # A fresh run starts from the generator states right after the build, whatever ran in between.
        self._rng_after_build = capture_rng()
        self._trained = False

    def step_of(self, *, step: int | None = None, epoch: int | None = None) -> int:
        """The optimizer step of ``step`` or of the end of ``epoch`` (see :func:`~.run_state.step_at`)."""
        return step_at(self.prepare(), step=step, epoch=epoch)

    # -- the loop ------------------------------------------------------------------------------------------------
    def fit(self, *, restart: bool = False) -> dict[str, Any]:
        """Train to the end (resuming from the checkpoint if there is one) and return the summary.

        Args:
            restart: ignore an existing checkpoint and train from scratch (a finished run is kept regardless).

        Returns:
            The summary dict (also in summary.json).

        Raises:
            TrainingInterrupted: SIGINT/SIGTERM arrived; a checkpoint was written first.
            CheckpointError: no checkpoint of the run can be read, or the one read does not fit this run.
            ConfigError: the checkpoint was written by another config or number of processes.
        """
        finished = self.run.read_summary()
        if finished is not None:
            check_run_dir(self.run, self.config, self.branch)
            return finished
        with self.locked():
            finished = self.run.read_summary()  # another process may have finished it while we waited to lock
            if finished is not None:
                return finished
            self._open(restart)
            self._loop(until=None)
            par = self.exp.parallel
            par.barrier()  # rank 0's last metrics line is on disk before any rank reads the records
            summary = self._finish()
            par.barrier()  # and its summary.json, before any rank moves on
        self.callback.on_end(self, summary)
        return summary

    def fit_until(self, *, step: int | None = None, epoch: int | None = None, restart: bool = False) -> int:
        """Train (or resume) up to ``step`` or the end of ``epoch`` and stop there, checkpointed, unfinished.

        A later :meth:`fit` resumes from there. Kept checkpoints are written on the way as usual.

        Args:
            step / epoch: where to stop (exactly one).
            restart: as in :meth:`fit`.

        Returns:
            The step reached.

        Raises:
            ValueError: the run is past that point already (see :meth:`checkpoint_at`).
            TrainingInterrupted, CheckpointError, ConfigError: as in :meth:`fit`.
        """
        target = self.step_of(step=step, epoch=epoch)
        if self.run.read_summary() is not None:
            if target == self.total_steps:
                return target
            raise ValueError(f"{self.run.path} has finished (step {self.total_steps}), past step {target}: "
                             f"checkpoint_at(step={target}) replays it")
        with self.locked():
            self._open(restart)
            if self.step > target:
                raise ValueError(f"{self.run.path} is at step {self.step}, past step {target}: checkpoint_at(step="
                                 f"{target}) replays it")
            self._train_until(target)
        return self.step

    def checkpoint_at(self, *, step: int | None = None, epoch: int | None = None) -> Path:
        """The full checkpoint of this run at ``step`` (or the end of ``epoch``), with the least training.

        * ``checkpoints/step_<n>.pt`` exists: it is returned.
        * the run has not reached step n (new, or interrupted before it): the run itself trains on to n, keeps
          the checkpoint there and stops (:meth:`fit_until`); a later :meth:`fit` continues from n.
        * the run is past n (finished, or interrupted later): it is replayed in ``<run>/replay/`` from its nearest
          checkpoint at or before n, or from its start, and the replay's checkpoint at n is kept (:mod:`.replay`).

        Args:
            step / epoch: which state (exactly one).

        Returns:
            The kept checkpoint file, readable as a branch source.

        Raises:
            ValueError: ``step`` / ``epoch`` not allowed; ConfigError: a data-parallel run (replays run in one
                process); and what :meth:`fit` raises.
        """
        target = self.step_of(step=step, epoch=epoch)
        kept = self.run.kept_checkpoint(target)
        if kept.exists():
            return kept
        assert self.exp is not None
        if self.exp.parallel.distributed:
            raise ConfigError("checkpoint_at is not allowed in a data-parallel run: call it from one process")
        self._keep.add(target)
        with self.locked():
            if self.run.read_summary() is None:
                self._open(restart=False)
                if self.step <= target:
                    self._train_until(target)
                    return kept
            return self._replay(target)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """Hold the run directory's lock (re-entrant; in a data-parallel run rank 0 holds it for every rank).

        The CLI takes it before it announces a run, :meth:`fit` before the first file of the run is written.

        Raises:
            DirectoryLocked: another process trains this run (on every rank).
        """
        with hold_run_lock(self._lock, self.prepare().parallel):
            yield

    def _train_until(self, target: int) -> None:
        """Train the opened session to step ``target`` and leave it checkpointed there."""
        self._loop(until=target)
        if self._saved_step != self.step:
            self._save_checkpoint()

    def _replay(self, target: int) -> Path:
        """Replay this run up to ``target`` from its nearest checkpoint (see :meth:`checkpoint_at`)."""

        def train_to(where: Path, branch: Branch | None) -> Path:
            # a replay reproduces a state; it logs nothing to the trackers (its topology.jsonl goes with its dir)
            replay = Trainer(self.config.with_overrides({"train.log": []}), run_dir=where, branch=branch,
                             keep_steps=(target,), callback=self.callback, plots=False)
            replay.fit_until(step=target)
            return replay.run.kept_checkpoint(target)

        return replay_to_step(self.run, target, self.branch, train_to)

    def _open(self, restart: bool) -> None:
        """Set up training: resume from the run's checkpoint, or start fresh (step 0, or the branch's start)."""
        exp = self.prepare()
        par = exp.parallel
        # Rank 0 decides (it is the rank that writes); the others follow, so every rank loads the same file.
        kind, detail, state = (None, None, None)
        if par.is_main:
            kind, detail, state, self._damaged = plan_start(self.run, restart)
        kind, detail = par.broadcast((kind, detail))
        if kind == "error":
            raise CheckpointError(detail)
        if kind != "resume" and (self._trained or (self.branch is not None and self._branch_start is None)):
            # this object trained already, or prepare() expected a resume and left the branch's source unread
            self._build(source=True)
            exp = self.exp
        self._keep |= kept_steps(exp, *self._keep_asked)
        if kind == "resume":
            self._load(state if state is not None else read_run_checkpoint(Path(detail)), Path(detail))
        if par.is_main:
            prepare_run_dir(self.run, self.config, resume=kind == "resume", step=self.step, epoch=self.epoch,
                            damaged=self._damaged, branch=self.branch, branch_start=self._branch_start)
        if kind != "resume":
            self._begin()
        par.barrier()

    def _begin(self) -> None:
        """A fresh start: step 0 with the generators as the build left them, or the branch's starting point."""
        assert self.exp is not None
        self._running = RunningSums(self.exp.device)
        self.resumed_from = self._saved_step = None
        parts = self.branch.parts if self.branch is not None and self._origin is not None else frozenset()
        if parts:
            assert self._origin is not None
            self._adopt(self._origin, parts)
        restore_rng(self._rng_after_build)
        if "position" not in parts:  # the trace starts here
            self._trace = DensityTrace()
            self._sparsity = self._trace.record(self.step, run_masks(self.exp))
        elif "sparsifier" not in parts:  # the source's trace goes on with this run's own masks
            self._sparsity = self._trace.branch(self.step, run_masks(self.exp))

    def elapsed(self) -> float:
        """Training wall time in seconds, summed over every session of this run."""
        return self._elapsed + time.perf_counter() - self._clock

    def _loop(self, until: int | None) -> None:
        """Train epoch after epoch to the end, or to step ``until`` (checkpointed there)."""
        exp = self.exp
        assert exp is not None
        self._clock = time.perf_counter()
        self._trained = True
        with StopRequest() as stop, self._tracking():
            self.callback.on_start(self)
            if self.step in self._keep and not self.run.kept_checkpoint(self.step).exists():
                self._save_checkpoint(rolling=False)  # e.g. step 0, before the first step
            while self.epoch < exp.config.train.epochs and (until is None or self.step < until):
                if not self._train_epoch(stop, until):
                    self._save_checkpoint()  # stopped at `until` part-way through the epoch
                    break
                record = self._end_epoch()
                self.callback.on_epoch(self, record)
                if exp.parallel.any(stop.requested):
                    raise TrainingInterrupted(stop.signal_name or "SIGINT", self.step, self.epoch,
                                              self.run.checkpoint_file)

    @contextlib.contextmanager
    def _tracking(self) -> Iterator[None]:
        """The loggers of ``train.log`` (rank 0), open for one training session and closed however it ends."""
        assert self.exp is not None
        kinds = self.config.train.log if self.exp.parallel.is_main else []
        try:
            with tracking_session(kinds, self.run, self.config.to_dict(), resume_step=self.resumed_from,
                                  runs_dir=self.runs_dir) as self._tracker:
                yield
        finally:
            self._tracker = RunTracker()

    def _record_topology(self, event: TopologyEvent) -> None:
        """A topology update of this run (rank 0): one line of topology.jsonl, and its figures to the loggers."""
        append_event(self.run.topology_file, event, sync=False)  # synced before the next checkpoint
        self._tracker.log_topology(event)

    def _train_epoch(self, stop: StopRequest, until: int | None = None) -> bool:
        """Train the rest of the epoch; False when it stopped part-way at step ``until``."""
        exp = self.exp
        assert exp is not None
        loader = exp.train_loader
        loader.sampler.set_epoch(self.epoch)  # the distributed sampler's order depends on the epoch
        if self._batch_in_epoch == 0:
            self._epoch_loader_state = loader.generator.get_state()
        else:  # resume part-way: replay this epoch's order and skip what was already trained
            loader.generator.set_state(self._epoch_loader_state)
            loader.sampler.skip = self._batch_in_epoch * loader.batch_size
        exp.model.train()
        for inputs, targets in loader:
            self._train_step(inputs, targets)
            self.callback.on_step(self)
            part_way = self._batch_in_epoch < exp.steps_per_epoch
            if part_way and until is not None and self.step >= until:
                return False  # the caller checkpoints here (and keeps it, if asked)
            if part_way and self.step in self._keep:
                self._save_checkpoint(rolling=False)
            # every rank must stop at the same step (a signal may reach them a step apart)
            if exp.parallel.any(stop.requested) and part_way:
                self._save_checkpoint()
                raise TrainingInterrupted(stop.signal_name or "SIGINT", self.step, self.epoch,
                                          self.run.checkpoint_file)
        return True

    def _train_step(self, inputs: Tensor, targets: Tensor) -> None:
        exp = self.exp
        assert exp is not None
        self._lr = float(exp.optimizer.param_groups[0]["lr"])  # the schedule moves it after the step
        loss, logits = optimizer_step(exp, inputs, targets)
        self.step += 1
        self._batch_in_epoch += 1
        if exp.sparsifier is not None and sparsifier_step(exp):
            self._sparsity = self._trace.record(self.step, run_masks(exp))
            if exp.parallel.distributed:  # one small all-gather per update catches diverging ranks at once
                assert_masks_identical(exp.sparsifier, group=exp.parallel.control)
        exp.scheduler.step()
        self._running.add(loss, logits, targets)
        self._tracker.log_step(self.step, loss, self._lr, self._sparsity)

    def _end_epoch(self) -> dict[str, Any]:
        exp = self.exp
        assert exp is not None
        self.epoch += 1
        record = epoch_record(exp, self._running, epoch=self.epoch, step=self.step, mask_sparsity=self._sparsity,
                              lr=self._lr, elapsed=self.elapsed)
        if exp.parallel.is_main:
            append_metrics(self.run.metrics_file, record)
            self._tracker.log_epoch(record, *run_weights(exp))
        self._batch_in_epoch = 0
        self._running = RunningSums(exp.device)
        self._save_checkpoint()  # and the kept one, if this step is asked for
        return record

    def running(self) -> dict[str, float | None]:
        """The current epoch's mean training loss and accuracy, and the masks' sparsity (for a progress bar)."""
        loss, acc = self._running.means()
        return {"loss": loss, "acc": acc, "sparsity": self._sparsity, "lr": self._lr}

    def measured_sparsity(self) -> float:
        """Sparsity measured from the weights of the sparsified tensors (the prunable ones for dense runs)."""
        assert self.exp is not None
        return run_report(self.exp).sparsity

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict; a collective call in a data-parallel run (every rank's running sums)."""
        exp = self.exp
        assert exp is not None
        running = self._running.state()
        running_ranks = exp.parallel.gather(running) if exp.parallel.distributed else None
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self._batch_in_epoch,
            **object_state(exp),
            "rng": capture_rng(),
            "epoch_loader_state": self._epoch_loader_state,
            "running": running,
            "running_ranks": running_ranks,
            "trace": self._trace.state_dict(),
            "elapsed": self.elapsed(),
            "lr": self._lr,
        }

    def _save_checkpoint(self, *, rolling: bool = True) -> None:
        """Write the rolling checkpoint (unless ``rolling`` is False) and, at a kept step, the kept one."""
        exp = self.exp
        assert exp is not None
        state = self._checkpoint()
        if rolling:
            self._saved_step = self.step
        if not exp.parallel.is_main:
            return
        sync_file(self.run.topology_file)  # every update up to this step on disk before the checkpoint is
        if rolling:
            save_checkpoint(state, self.run.checkpoint_file, keep_previous=self.run.previous_checkpoint_file)
            logger.debug("checkpoint at step %d written to %s", self.step, self.run.checkpoint_file)
        if self.step in self._keep:
            save_checkpoint(state, self.run.kept_checkpoint(self.step))
            logger.info("%s: checkpoint at step %d kept", self.run.name, self.step)

    def _load(self, state: dict[str, Any], path: Path) -> None:
        """Resume: take every part of the run's own checkpoint ``state`` (read from ``path``)."""
        exp = self.exp
        assert exp is not None
        check_resumable(state, self.config, exp.parallel.world_size, path)
        try:
            restore_objects(exp, state, EVERYTHING, path)
            self._adopt(loop_state(state), EVERYTHING)
        except CheckpointError as exc:
            raise CheckpointError(f"{exc}; retrain with --restart") from None
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"{path} does not fit this run ({type(exc).__name__}: {detail}); retrain with "
                                  "--restart") from None
        self._elapsed = float(state["elapsed"])
        restore_rng(state["rng"])
        self.resumed_from = self._saved_step = self.step

    def _adopt(self, loop: dict[str, Any], parts: frozenset[str]) -> None:
        """Take the loop's ``parts`` (position, data order, random generators) of a checkpoint's loop entries."""
        exp = self.exp
        assert exp is not None
        if "position" in parts:
            self.epoch, self.step = int(loop["epoch"]), int(loop["step"])
            self._batch_in_epoch = int(loop["batch_in_epoch"])
            ranks = loop.get("running_ranks")
            self._running = RunningSums(exp.device, ranks[exp.parallel.rank] if ranks else loop["running"])
            self._trace = DensityTrace(copy.deepcopy(loop["trace"]))
            self._sparsity = self._trace.last_sparsity
            self._lr = float(loop["lr"])
        if "data" in parts:
            self._epoch_loader_state = loop["epoch_loader_state"]
        elif self._batch_in_epoch:  # part-way through an epoch in this run's own data order
            self._epoch_loader_state = exp.train_loader.generator.get_state()
        if "rng" in parts:
            self._rng_after_build = loop["rng"]

    # -- the end -------------------------------------------------------------------------------------------------
    def _finish(self) -> dict[str, Any]:
        assert self.exp is not None
        return finish_run(self.exp, self.run, self.config, runs_dir=self.runs_dir, trace=self._trace,
                          elapsed=self.elapsed, resumed=self.resumed_from is not None,
                          branched=self.branch is not None, plots=self.plots)
