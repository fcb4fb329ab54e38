"""The training loop of one run: train, evaluate every epoch, checkpoint, resume exactly, summarise.

The loop is the library's two-line contract in a plain PyTorch loop: ``optimizer.step()`` then
``sparsifier.step()`` on every minibatch, with ``total_steps = epochs * steps_per_epoch``. Around it:

* evaluation on the held-out validation split and on the test split after every epoch;
* a checkpoint after every epoch, and after the current step on SIGINT/SIGTERM (see :mod:`.signals`), holding
  the model, optimizer, sparsifier, LR scheduler and GradScaler states, every random generator (torch, CUDA,
  numpy, Python, the DataLoader's), the position (epoch, step, batch within the epoch) and the epoch's running
  sums. Resuming from it continues the very same computation: on CPU the final masks and metrics are
  bit-identical to an uninterrupted run;
* at the end: ``masks.pt``, the plots and ``summary.json`` (written last; it marks the run finished).

A finished run is never retrained (:meth:`Trainer.fit` returns its summary); an interrupted one resumes.

Crash safety: every file is written atomically (temporary file, fsync, rename), the checkpoint keeps its
predecessor as ``checkpoint.prev.pt``, and a resume truncates ``metrics.jsonl`` to the checkpointed epochs, so a
run killed at any moment (SIGKILL included) resumes to the same masks and metrics as an uninterrupted one. A
checkpoint that cannot be read (truncated, corrupt) is reported in one warning naming the file, set aside as
``checkpoint.bad.pt``, and the run resumes from ``checkpoint.prev.pt``. Anything wrong with the inputs of a
resume (an unreadable or foreign checkpoint, a different config) raises before a file is touched.

Data parallel (under torchrun, see :mod:`.parallel`): every rank runs this loop on its shard; the gradients are
averaged by DistributedDataParallel; evaluation is split across ranks and summed, so every rank gets the same
record; after every topology update the ranks compare mask checksums
(:func:`sparsetrain.distributed.assert_masks_identical`); only rank 0 writes files, and the other ranks wait for
it where they would read them. SIGINT/SIGTERM on any rank stops every rank at the same step. There is no
gradient accumulation: one minibatch, one optimizer step.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

import sparsetrain
from sparsetrain.atomic import remove_temp_files, write_text
from sparsetrain.checkpoint_io import CheckpointError, save_checkpoint
from sparsetrain.distributed import assert_masks_identical, masks_checksum
from sparsetrain.masks import sparsity_report

from .build import Experiment, build_experiment
from .checkpoint import capture_rng, load_checkpoint, restore_rng
from .config import DENSE, ConfigError, ExperimentConfig
from .flops import dense_gradient_steps, run_flops
from .itop import itop_by_layer
from .metrics import append_metrics, best_epoch, truncate_metrics, write_summary
from .rundir import RunDir, dense_reference
from .signals import StopRequest, TrainingInterrupted

__all__ = ["Trainer", "TrainerCallback", "CHECKPOINT_VERSION"]

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
DAMAGED_CHECKPOINT = "checkpoint.bad.pt"


class TrainerCallback:
    """Hooks for a progress display; every method is optional. The trainer never prints."""

    def on_start(self, trainer: Trainer) -> None:
        """Training (re)starts at ``trainer.step`` of ``trainer.total_steps``."""

    def on_step(self, trainer: Trainer) -> None:
        """After every optimizer step (``trainer.running()`` gives loss, accuracy and sparsity)."""

    def on_epoch(self, trainer: Trainer, record: dict[str, Any]) -> None:
        """After every epoch's evaluation, with its metrics record."""

    def on_end(self, trainer: Trainer, summary: dict[str, Any]) -> None:
        """After the summary is written."""


class Trainer:
    """Train one run (one config, one seed) in its run directory.

    Args:
        config: the experiment config.
        runs_dir: the runs directory; the run lives in ``runs_dir/<method>-<hash>/seed_<n>``.
        callback: progress hooks.
        plots: write the run's PNG plots at the end.

    Usage::

        trainer = Trainer(config, "runs")
        trainer.prepare()        # builds everything; raises ConfigError on a bad config
        summary = trainer.fit()  # trains, resumes, or returns the finished run's summary
    """

    def __init__(self, config: ExperimentConfig, runs_dir: str | Path = "runs", *,
                 callback: TrainerCallback | None = None, plots: bool = True) -> None:
        self.config = config.canonical()
        self.runs_dir = Path(runs_dir)
        self.run = RunDir.for_config(self.runs_dir, self.config)
        self.callback = callback or TrainerCallback()
        self.plots = plots
        self.exp: Experiment | None = None
        self._rng_after_build: dict[str, Any] = {}
        self.step = 0
        self.epoch = 0
        self.resumed_from: int | None = None
        self._batch_in_epoch = 0
        self._epoch_loader_state: Tensor | None = None
        self._loss_sum: Tensor | None = None
        self._correct: Tensor | None = None
        self._count = 0
        self._elapsed = 0.0
        self._clock = time.perf_counter()
        self._lr = 0.0
        self._sparsity = 0.0
        self._trace: dict[str, Any] = {"steps": [], "sparsity": [], "layers": {}}
        self._damaged: list[Path] = []

    # -- set-up --------------------------------------------------------------------------------------------------
    @property
    def total_steps(self) -> int:
        return self.exp.total_steps if self.exp is not None else 0

    def status(self) -> str:
        """The run directory's status: "new", "interrupted" or "finished"."""
        return self.run.status()

    def prepare(self) -> Experiment:
        """Build data, model, optimizer and sparsifier (idempotent).

        Raises:
            ConfigError: the config is rejected by the data, model or method; or the run directory holds a
                different config.
        """
        if self.exp is None:
            if self.run.config_file.exists():
                saved = self.run.read_config()
                if saved.non_default() != self.config.non_default():
                    raise ConfigError(f"{self.run.path} holds a different config (hash collision?); move it away "
                                      "or use another --runs-dir")
            self.exp = build_experiment(self.config)
            # A fresh run starts from the generator states right after the build, whatever ran in between.
            self._rng_after_build = capture_rng()
        return self.exp

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
            return finished
        exp = self.prepare()
        par = exp.parallel
        # Rank 0 decides (it is the rank that writes); the others follow, so every rank loads the same file.
        kind, detail, state = self._plan(restart) if par.is_main else (None, None, None)
        kind, detail = par.broadcast((kind, detail))
        if kind == "error":
            raise CheckpointError(detail)
        if kind == "resume":
            self._load(state if state is not None else self._read(Path(detail)), Path(detail))
        if par.is_main:
            self.run.path.mkdir(parents=True, exist_ok=True)
            remove_temp_files(self.run.path)  # left by writes a crash cut short
            for bad in self._damaged:
                os.replace(bad, self.run.path / DAMAGED_CHECKPOINT)
            write_text(self.config.to_yaml(), self.run.config_file)
            if kind == "resume":
                kept = truncate_metrics(self.run.metrics_file, self.epoch)
                logger.info("resuming %s at step %d (epoch %d, %d metric records)", self.run.name, self.step,
                            self.epoch, kept)
            else:
                # A restart forgets the old run at once: a crash before the first new checkpoint must not resume it.
                for old in (self.run.checkpoint_file, self.run.previous_checkpoint_file, self.run.metrics_file):
                    old.unlink(missing_ok=True)
        if kind != "resume":
            restore_rng(self._rng_after_build)
            self._begin_trace()
        self._init_running(reset=self.resumed_from is None)
        par.barrier()

        self._clock = time.perf_counter()
        with StopRequest() as stop:
            self.callback.on_start(self)
            while self.epoch < exp.config.train.epochs:
                self._train_epoch(stop)
                record = self._end_epoch()
                self.callback.on_epoch(self, record)
                if par.any(stop.requested):
                    raise TrainingInterrupted(stop.signal_name or "SIGINT", self.step, self.epoch,
                                              self.run.checkpoint_file)
        par.barrier()  # rank 0's last metrics line is on disk before any rank reads the records
        summary = self._finish()
        par.barrier()  # and its summary.json, before any rank moves on
        self.callback.on_end(self, summary)
        return summary

    def _plan(self, restart: bool) -> tuple[str, str | None, dict[str, Any] | None]:
        """What :meth:`fit` does: ("fresh", None, None), ("resume", path, state) or ("error", message, None).

        A checkpoint that cannot be read is reported (one warning naming it), to be set aside as checkpoint.bad.pt,
        and the previous one is tried; nothing is written here.
        """
        if restart:
            return ("fresh", None, None)
        candidates = [f for f in (self.run.checkpoint_file, self.run.previous_checkpoint_file) if f.exists()]
        failures: list[tuple[Path, CheckpointError]] = []
        for path in candidates:
            try:
                state = self._read(path)
            except CheckpointError as exc:
                failures.append((path, exc))
                continue
            for bad, exc in failures:
                logger.warning("%s; resuming from %s (epoch %s) instead; the damaged file is kept as %s", exc,
                               path, state.get("epoch"), DAMAGED_CHECKPOINT)
            self._damaged = [bad for bad, _ in failures]  # set aside once the state has been loaded
            return ("resume", str(path), state)
        if failures:
            for path, exc in failures:
                logger.info("%s", exc)
            names = " and ".join(path.name for path, _ in failures)
            message = (f"no readable checkpoint in {self.run.path}: {names} cannot be read (truncated, corrupt or "
                       "not torch checkpoints); rerun with --restart to train this run from scratch")
            return ("error", message, None)
        return ("fresh", None, None)

    def _read(self, path: Path) -> dict[str, Any]:
        """A checkpoint file's dict (CRC-checked, weights-only); CheckpointError names the file if it is damaged."""
        state = load_checkpoint(path)
        if "version" not in state or "model" not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} is not a sparsetrain run checkpoint (keys: "
                                  f"{list(state)[:6]})")
        return state

    def elapsed(self) -> float:
        """Training wall time in seconds, summed over every session of this run."""
        return self._elapsed + time.perf_counter() - self._clock

    def _train_epoch(self, stop: StopRequest) -> None:
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
            # every rank must stop at the same step (a signal may reach them a step apart)
            if exp.parallel.any(stop.requested) and self._batch_in_epoch < exp.steps_per_epoch:
                self._save_checkpoint()
                raise TrainingInterrupted(stop.signal_name or "SIGINT", self.step, self.epoch,
                                          self.run.checkpoint_file)

    def _autocast(self) -> contextlib.AbstractContextManager:
        exp = self.exp
        assert exp is not None
        dtype = exp.autocast_dtype
        if dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=exp.device.type, dtype=dtype)

    def _train_step(self, inputs: Tensor, targets: Tensor) -> None:
        exp = self.exp
        assert exp is not None
        inputs = inputs.to(exp.device, non_blocking=True)
        targets = targets.to(exp.device, non_blocking=True)
        exp.optimizer.zero_grad(set_to_none=True)
        with self._autocast():
            logits = exp.train_model(inputs)
            loss = exp.loss_fn(logits, targets)
        clip = exp.config.optim.grad_clip
        self._lr = float(exp.optimizer.param_groups[0]["lr"])
        if exp.scaler is not None:
            exp.scaler.scale(loss).backward()
            if clip is not None:
                exp.scaler.unscale_(exp.optimizer)
                torch.nn.utils.clip_grad_norm_(exp.model.parameters(), clip)
            exp.scaler.step(exp.optimizer)
            exp.scaler.update()
        else:
            loss.backward()
            if clip is not None:
                torch.nn.utils.clip_grad_norm_(exp.model.parameters(), clip)
            exp.optimizer.step()
        self.step += 1
        self._batch_in_epoch += 1
        if exp.sparsifier is not None and exp.sparsifier.step():
            self._record_trace()
            if exp.parallel.distributed:  # one small all-gather per update catches diverging ranks at once
                assert_masks_identical(exp.sparsifier, group=exp.parallel.control)
        exp.scheduler.step()
        with torch.no_grad():
            n = targets.numel()
            self._loss_sum += loss.detach().double() * n
            self._correct += (logits.detach().argmax(-1) == targets).sum()
            self._count += n

    def _end_epoch(self) -> dict[str, Any]:
        exp = self.exp
        assert exp is not None
        self.epoch += 1
        exp.parallel.sync_buffers(exp.model)  # evaluate rank 0's model everywhere (batch-norm statistics)
        val_loss, val_acc = self._evaluate(exp.val_loader)
        test_loss, test_acc = self._evaluate(exp.test_loader)
        train_loss, train_acc = self._running_means(across_ranks=True)
        record = {
            "epoch": self.epoch, "step": self.step, "train_loss": train_loss, "train_acc": train_acc,
            "val_loss": val_loss, "val_acc": val_acc, "test_loss": test_loss, "test_acc": test_acc,
            "sparsity": self.measured_sparsity(), "lr": self._lr,
            "itop_rate": exp.sparsifier.itop_rate() if exp.sparsifier is not None else None,
            "itop_layers": itop_by_layer(exp.sparsifier),
            "time": self.elapsed(),
        }
        if exp.parallel.is_main:
            append_metrics(self.run.metrics_file, record)
        self._batch_in_epoch = 0
        self._init_running(reset=True)
        self._save_checkpoint()
        return record

    @torch.no_grad()
    def _evaluate(self, loader: torch.utils.data.DataLoader | None) -> tuple[float | None, float | None]:
        """Mean loss (without label smoothing) and accuracy over ``loader``."""
        exp = self.exp
        assert exp is not None
        if loader is None:
            return None, None
        was_training = exp.model.training
        exp.model.eval()
        loss_sum = torch.zeros((), dtype=torch.float64, device=exp.device)
        correct = torch.zeros((), dtype=torch.int64, device=exp.device)
        count = torch.zeros((), dtype=torch.int64, device=exp.device)
        for inputs, targets in loader:
            inputs = inputs.to(exp.device, non_blocking=True)
            targets = targets.to(exp.device, non_blocking=True)
            with self._autocast():
                logits = exp.model(inputs)
            loss_sum += torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum").double()
            correct += (logits.argmax(-1) == targets).sum()
            count += targets.numel()
        exp.model.train(was_training)
        exp.parallel.all_sum([loss_sum, correct, count])  # each rank evaluated its share: the same totals everywhere
        if int(count) == 0:
            return None, None
        return float(loss_sum) / int(count), int(correct) / int(count)

    # -- running values ------------------------------------------------------------------------------------------
    def _init_running(self, reset: bool) -> None:
        device = self.exp.device if self.exp is not None else torch.device("cpu")
        if reset or self._loss_sum is None:
            self._loss_sum = torch.zeros((), dtype=torch.float64, device=device)
            self._correct = torch.zeros((), dtype=torch.int64, device=device)
            self._count = 0

    def _running_means(self, across_ranks: bool = False) -> tuple[float | None, float | None]:
        loss_sum, correct, count = self._loss_sum, self._correct, self._count
        if across_ranks and self.exp is not None and self.exp.parallel.distributed:
            assert loss_sum is not None and correct is not None
            loss_sum, correct = loss_sum.clone(), correct.clone()
            total = torch.tensor(count, dtype=torch.int64, device=loss_sum.device)
            self.exp.parallel.all_sum([loss_sum, correct, total])
            count = int(total)
        if not count:
            return None, None
        return float(loss_sum) / count, int(correct) / count

    def running(self) -> dict[str, float | None]:
        """The current epoch's mean training loss and accuracy, and the masks' sparsity (for a progress bar)."""
        loss, acc = self._running_means()
        return {"loss": loss, "acc": acc, "sparsity": self._sparsity, "lr": self._lr}

    def measured_sparsity(self) -> float:
        """Sparsity measured from the weights of the sparsified tensors (the prunable ones for dense runs)."""
        return self._report().sparsity

    def _report(self) -> sparsetrain.SparsityReport:
        exp = self.exp
        assert exp is not None
        if exp.sparsifier is not None:
            return exp.sparsifier.report()
        return sparsity_report(sparsetrain.select_prunable(exp.model))

    def _masks(self) -> dict[str, Tensor]:
        exp = self.exp
        assert exp is not None
        if exp.sparsifier is not None:
            return {n: m.detach().cpu().clone() for n, m in exp.sparsifier.masks.items()}
        return {n: (p.detach() != 0).cpu() for n, p in sparsetrain.select_prunable(exp.model).items()}

    # -- density trace (for the schedule plot and training FLOPs) ----------------------------------------------
    def _begin_trace(self) -> None:
        self._trace = {"steps": [], "sparsity": [], "layers": {}}
        self._record_trace()

    def _record_trace(self) -> None:
        masks = self._masks()
        total = sum(m.numel() for m in masks.values())
        active = {n: int(torch.count_nonzero(m)) for n, m in masks.items()}
        self._sparsity = 1.0 - sum(active.values()) / total if total else 0.0
        self._trace["steps"].append(self.step)
        self._trace["sparsity"].append(self._sparsity)
        for name, mask in masks.items():
            self._trace["layers"].setdefault(name, []).append(active[name] / mask.numel())

    def _density_history(self) -> list[tuple[int, dict[str, float]]]:
        layers = self._trace["layers"]
        return [(step, {name: values[i] for name, values in layers.items()})
                for i, step in enumerate(self._trace["steps"])]

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def _checkpoint(self) -> dict[str, Any]:
        """The checkpoint dict; a collective call in a data-parallel run (every rank's running sums)."""
        exp = self.exp
        assert exp is not None
        running = {"loss_sum": float(self._loss_sum), "correct": int(self._correct), "count": self._count}
        running_ranks = exp.parallel.gather(running) if exp.parallel.distributed else None
        return {
            "version": CHECKPOINT_VERSION,
            "config": self.config.to_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "batch_in_epoch": self._batch_in_epoch,
            "model": exp.model.state_dict(),
            "optimizer": exp.optimizer.state_dict(),
            "scheduler": exp.scheduler.state_dict(),
            "scaler": exp.scaler.state_dict() if exp.scaler is not None else None,
            "sparsifier": exp.sparsifier.state_dict() if exp.sparsifier is not None else None,
            "rng": capture_rng(),
            "loader_generator": exp.train_loader.generator.get_state(),
            "epoch_loader_state": self._epoch_loader_state,
            "running": running,
            "running_ranks": running_ranks,
            "world_size": exp.parallel.world_size,
            "trace": self._trace,
            "elapsed": self.elapsed(),
            "lr": self._lr,
        }

    def _save_checkpoint(self) -> None:
        exp = self.exp
        assert exp is not None
        state = self._checkpoint()
        if exp.parallel.is_main:
            save_checkpoint(state, self.run.checkpoint_file, keep_previous=self.run.previous_checkpoint_file)
            logger.debug("checkpoint at step %d written to %s", self.step, self.run.checkpoint_file)

    def _load(self, state: dict[str, Any], path: Path | None = None) -> None:
        exp = self.exp
        assert exp is not None
        path = path or self.run.checkpoint_file
        if state.get("version") != CHECKPOINT_VERSION:
            raise ConfigError(f"{path}: checkpoint version {state.get('version')!r} is not supported (expected "
                              f"{CHECKPOINT_VERSION}); retrain with --restart")
        try:
            saved = ExperimentConfig.from_dict(state["config"])
        except (ConfigError, KeyError, TypeError) as exc:
            raise CheckpointError(f"{path}: the checkpoint's config cannot be read ({exc}); retrain with --restart")
        theirs, ours = saved.non_default(), self.config.non_default()
        if theirs != ours:
            differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
            raise ConfigError(f"{path} was written by a different config ({', '.join(differ)} differ); retrain "
                              "with --restart")
        world = int(state.get("world_size", 1))
        if world != exp.parallel.world_size:
            raise ConfigError(f"{path} was written by a {world}-process run and cannot resume with "
                              f"{exp.parallel.world_size}: rerun with --nproc {world}, or --restart")
        try:
            self._restore(state)
        except (KeyError, RuntimeError, ValueError, TypeError) as exc:
            detail = " ".join(str(exc).split())[:300]
            raise CheckpointError(f"{path} does not fit this run ({type(exc).__name__}: {detail}); retrain with "
                                  "--restart") from None

    def _restore(self, state: dict[str, Any]) -> None:
        exp = self.exp
        assert exp is not None
        exp.model.load_state_dict(state["model"])
        exp.optimizer.load_state_dict(state["optimizer"])
        exp.scheduler.load_state_dict(state["scheduler"])
        if exp.scaler is not None and state["scaler"] is not None:
            exp.scaler.load_state_dict(state["scaler"])
        if exp.sparsifier is not None:
            exp.sparsifier.load_state_dict(state["sparsifier"])
        exp.train_loader.generator.set_state(state["loader_generator"])
        self._epoch_loader_state = state["epoch_loader_state"]
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self._batch_in_epoch = int(state["batch_in_epoch"])
        ranks = state.get("running_ranks")
        running = ranks[exp.parallel.rank] if ranks else state["running"]
        device = exp.device
        self._loss_sum = torch.tensor(running["loss_sum"], dtype=torch.float64, device=device)
        self._correct = torch.tensor(running["correct"], dtype=torch.int64, device=device)
        self._count = int(running["count"])
        self._trace = state["trace"]
        self._sparsity = self._trace["sparsity"][-1] if self._trace["sparsity"] else 0.0
        self._elapsed = float(state["elapsed"])
        self._lr = float(state["lr"])
        restore_rng(state["rng"])
        self.resumed_from = self.step

    # -- the end -------------------------------------------------------------------------------------------------
    def _finish(self) -> dict[str, Any]:
        exp = self.exp
        assert exp is not None
        config = self.config
        par = exp.parallel
        masks = self._masks()
        # The final cross-rank check; each rank logs its own checksum (equal to that of masks.pt).
        checksum = assert_masks_identical(masks, group=par.control) if par.distributed else masks_checksum(masks)
        logger.info("%s: rank %d of %d: final masks checksum %s", self.run.name, par.rank, par.world_size, checksum)
        if par.is_main:
            save_checkpoint(masks, self.run.masks_file)
        records = self.run.read_metrics()
        last = records[-1] if records else {}
        best = best_epoch(records) or {}
        report = self._report()
        update_steps = self._trace["steps"][1:]
        flops = run_flops(exp.model, exp.bundle.input_shape, token_inputs=exp.bundle.vocab_size is not None,
                          masks=masks, density_history=self._density_history(), total_steps=exp.total_steps,
                          dense_grad_steps=dense_gradient_steps(config.sparse.method, update_steps, exp.total_steps),
                          batch_size=config.train.batch_size)
        summary: dict[str, Any] = {
            "run": self.run.name,
            "method": config.sparse.method,
            "data": config.data.name,
            "model": config.model.name,
            "seed": config.train.seed,
            "config_hash": config.config_hash(),
            "target_sparsity": 0.0 if config.sparse.method == DENSE else config.sparse.sparsity,
            "sparsity": report.sparsity,
            "mask_sparsity": self._trace["sparsity"][-1] if self._trace["sparsity"] else 0.0,
            "final_acc": last.get("test_acc"),
            "final_val_acc": last.get("val_acc"),
            "best_acc": best.get("test_acc"),
            "best_val_acc": best.get("val_acc"),
            "best_epoch": best.get("epoch"),
            "max_test_acc": max((r["test_acc"] for r in records if r.get("test_acc") is not None), default=None),
            "final_train_loss": last.get("train_loss"),
            "itop_rate": exp.sparsifier.itop_rate() if exp.sparsifier is not None else None,
            "itop_layers": itop_by_layer(exp.sparsifier),
            "epochs": config.train.epochs,
            "total_steps": exp.total_steps,
            "wall_time": self.elapsed(),
            "device": str(exp.device),
            "resumed": self.resumed_from is not None,
            "world_size": par.world_size,
            "masks_checksum": checksum,
            "flops": flops,
            "layers": report.to_dict(),
            "density_trace": {"steps": self._trace["steps"],
                              "density": [1.0 - s for s in self._trace["sparsity"]],
                              "layers": {n: v for n, v in self._trace["layers"].items()}},
            "dense": self._dense_reference(),
        }
        if not par.is_main:
            return summary
        if self.plots:
            try:
                from .plots import plot_run

                plot_run(self.run, summary=summary, records=records)
            except Exception as exc:  # a plotting failure must not lose the run
                logger.warning("plots not written: %s: %s", type(exc).__name__, exc)
        write_summary(self.run.summary_file, summary)
        logger.info("%s finished: final test acc %s, sparsity %.4f", self.run.name, summary["final_acc"],
                    summary["sparsity"])
        return summary

    def _dense_reference(self) -> dict[str, Any] | None:
        """The dense baseline with the same data, model and recipe: same seed if finished, else any seed."""
        if self.config.sparse.method == DENSE:
            return None
        return dense_reference(self.runs_dir, self.config)
