"""The state of a run in its checkpoint, in parts that a resume takes whole and a branch takes a subset of.

A run checkpoint (``checkpoint.pt``, or a kept ``checkpoints/step_<n>.pt``) is one weights-only-loadable dict.
Its contents fall into six *parts*, the vocabulary of :class:`~sparsetrain.experiment.branch.Branch`:

``model``
    the model's ``state_dict`` (weights and buffers such as batch-norm statistics).
``optimizer``
    the optimizer's state (momentum, Adam moments, its learning rates) and the fp16 GradScaler's.
``position``
    where the run is on its timeline: optimizer step, epoch, batch within the epoch, the running sums of the
    epoch's training loss and accuracy, and the density trace so far. The learning-rate schedule is a function
    of the step, so taking the position also sets the schedule to it (the one of the *taking* run's config).
``data``
    the data order: the training loader's generator and its state at the start of the current epoch, so the
    rest of the epoch, and every later one, draws the same batches.
``rng``
    the global random generators (torch CPU and CUDA, numpy, Python), restored right before training.
``sparsifier``
    the sparsifier's state (masks, its step counter, generator, method state).

A resume takes every part of its own run's checkpoint (and the wall time so far); on CPU it continues
bit-identically. :func:`object_state` / :func:`restore_objects` handle the parts held by the experiment's objects,
:func:`loop_state` the parts the trainer's loop holds.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Collection, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from sparsetrain.checkpoint_io import CheckpointError

from .build import Experiment, rewrap_sparse_layers
from .checkpoint import load_checkpoint
from .config import ConfigError, ExperimentConfig
from .rundir import RunDir

__all__ = ["CHECKPOINT_VERSION", "DAMAGED_CHECKPOINT", "PARTS", "EVERYTHING", "read_run_checkpoint", "plan_start",
           "check_resumable", "check_position", "check_counts", "kept_steps", "nearest_checkpoint", "step_at",
           "object_state", "restore_objects", "loop_state", "set_schedule_position"]

logger = logging.getLogger(__name__)

CHECKPOINT_VERSION = 1
#: Where a run's unreadable checkpoint is set aside when its predecessor is resumed instead.
DAMAGED_CHECKPOINT = "checkpoint.bad.pt"

#: The parts of a run checkpoint (see the module docstring).
PARTS = ("model", "optimizer", "position", "data", "rng", "sparsifier")
EVERYTHING = frozenset(PARTS)

#: Checkpoint keys the training loop holds (not the experiment's objects).
_LOOP_KEYS = ("step", "epoch", "batch_in_epoch", "epoch_loader_state", "running", "running_ranks", "trace", "lr",
              "rng", "elapsed", "world_size")


def read_run_checkpoint(path: str | Path) -> dict[str, Any]:
    """A run checkpoint's dict (CRC-checked, weights-only).

    Raises:
        FileNotFoundError: no such file.
        CheckpointError: the file is damaged, or not a sparsetrain run checkpoint; the message names it.
    """
    state = load_checkpoint(path)
    if "version" not in state or "model" not in state:
        raise CheckpointError(f"checkpoint {str(path)!r} is not a sparsetrain run checkpoint (keys: "
                              f"{list(state)[:6]})")
    return state


def plan_start(run: RunDir, restart: bool) -> tuple[str, str | None, dict[str, Any] | None, list[Path]]:
    """How a run starts: ``("fresh", None, None, [])``, ``("resume", path, state, damaged)`` or ``("error", message,
    None, [])``.

    The run's ``checkpoint.pt`` is tried, then ``checkpoint.prev.pt``. A checkpoint that cannot be read is reported
    (one warning naming it) and listed in ``damaged``, to be set aside as :data:`DAMAGED_CHECKPOINT` once the
    other has been loaded; nothing is written here.

    Args:
        run: the run directory.
        restart: ignore its checkpoints (always "fresh").
    """
    if restart:
        return ("fresh", None, None, [])
    candidates = [f for f in (run.checkpoint_file, run.previous_checkpoint_file) if f.exists()]
    failures: list[tuple[Path, CheckpointError]] = []
    for path in candidates:
        try:
            state = read_run_checkpoint(path)
        except CheckpointError as exc:
            failures.append((path, exc))
            continue
        for _, exc in failures:
            logger.warning("%s; resuming from %s (epoch %s) instead; the damaged file is kept as %s", exc, path,
                           state.get("epoch"), DAMAGED_CHECKPOINT)
        return ("resume", str(path), state, [bad for bad, _ in failures])
    if failures:
        for path, exc in failures:
            logger.info("%s", exc)
        names = " and ".join(path.name for path, _ in failures)
        message = (f"no readable checkpoint in {run.path}: {names} cannot be read (truncated, corrupt or not torch "
                   "checkpoints); rerun with --restart to train this run from scratch")
        return ("error", message, None, [])
    return ("fresh", None, None, [])


def check_resumable(state: Mapping[str, Any], config: ExperimentConfig, world_size: int, path: str | Path) -> None:
    """Check that a run's own checkpoint can resume it: its version, config and number of processes.

    Raises:
        ConfigError: another version, config or number of processes.
        CheckpointError: the checkpoint's config cannot be read.
    """
    if state.get("version") != CHECKPOINT_VERSION:
        raise ConfigError(f"{path}: checkpoint version {state.get('version')!r} is not supported (expected "
                          f"{CHECKPOINT_VERSION}); retrain with --restart")
    try:
        saved = ExperimentConfig.from_dict(state["config"])
    except (ConfigError, KeyError, TypeError) as exc:
        raise CheckpointError(f"{path}: the checkpoint's config cannot be read ({exc}); retrain with --restart")
    theirs, ours = saved.non_default(), config.non_default()
    if theirs != ours:
        differ = sorted(k for k in theirs.keys() | ours.keys() if theirs.get(k) != ours.get(k))
        raise ConfigError(f"{path} was written by a different config ({', '.join(differ)} differ); retrain with "
                          "--restart")
    world = int(state.get("world_size", 1))
    if world != world_size:
        raise ConfigError(f"{path} was written by a {world}-process run and cannot resume with {world_size}: rerun "
                          f"with --nproc {world}, or --restart")


def object_state(exp: Experiment) -> dict[str, Any]:
    """The checkpoint entries held by the experiment's objects (model, optimizer, schedule, sparsifier, loader)."""
    return {
        "model": exp.model.state_dict(),
        "optimizer": exp.optimizer.state_dict(),
        "scheduler": exp.scheduler.state_dict(),  # informational: a restore sets the schedule from the step
        "scaler": exp.scaler.state_dict() if exp.scaler is not None else None,
        "sparsifier": exp.sparsifier.state_dict() if exp.sparsifier is not None else None,
        "loader_generator": exp.train_loader.generator.get_state(),
        "world_size": exp.parallel.world_size,
    }


def set_schedule_position(scheduler: torch.optim.lr_scheduler.LambdaLR, step: int) -> None:
    """Put the learning-rate schedule at optimizer step ``step`` and its optimizer's learning rates with it.

    The schedule is a ``LambdaLR``: its rate at a step is a pure function of the step, computed here exactly as
    ``step`` calls of ``scheduler.step()`` would leave it.
    """
    with warnings.catch_warnings():  # setting the schedule before any optimizer step is intended
        warnings.simplefilter("ignore", UserWarning)
        scheduler.last_epoch = step - 1
        scheduler.step()


def restore_objects(exp: Experiment, state: Mapping[str, Any], parts: Collection[str], path: str | Path) -> None:
    """Load ``parts`` of a run checkpoint into the experiment's objects; the schedule goes to the taken step.

    Args:
        exp: the experiment; its sparsifier must be attached when ``"sparsifier"`` is in ``parts``.
        state: the checkpoint dict (:func:`read_run_checkpoint`).
        parts: a subset of :data:`PARTS`.
        path: the checkpoint file, for messages.

    Raises:
        ConfigError: the sparsifier part is asked for but this run or the checkpoint has none.
        CheckpointError: the state does not fit the objects (another architecture, optimizer or method).
    """
    if "sparsifier" in parts:
        if exp.sparsifier is None and state.get("sparsifier") is not None:
            raise ConfigError(f"{path} holds a sparsifier state but this run has none (sparse.method=dense): "
                              "leave 'sparsifier' out of take")
        if exp.sparsifier is not None and state.get("sparsifier") is None:
            raise ConfigError(f"{path} holds no sparsifier state (a dense run): leave 'sparsifier' out of take")
    try:
        if "model" in parts:
            exp.model.load_state_dict(state["model"])
        if "optimizer" in parts:
            exp.optimizer.load_state_dict(state["optimizer"])
            if exp.scaler is not None and state.get("scaler") is not None:
                exp.scaler.load_state_dict(state["scaler"])
        set_schedule_position(exp.scheduler, int(state["step"]) if "position" in parts else 0)
        if "sparsifier" in parts and exp.sparsifier is not None:
            exp.sparsifier.load_state_dict(state["sparsifier"])
        if "data" in parts:
            exp.train_loader.generator.set_state(state["loader_generator"])
    except (KeyError, RuntimeError, ValueError, TypeError) as exc:
        detail = " ".join(str(exc).split())[:300]
        raise CheckpointError(f"{path} does not fit this run ({type(exc).__name__}: {detail})") from None
    if "model" in parts:
        rewrap_sparse_layers(exp)  # the held layers took the checkpoint's active counts


def loop_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of a run checkpoint that the training loop holds (counters, running sums, trace, RNG...)."""
    return {key: state[key] for key in _LOOP_KEYS if key in state}


def check_position(state: Mapping[str, Any], exp: Experiment, path: str | Path) -> None:
    """Check that a checkpoint's position and data order fit this run's steps per epoch and processes.

    Raises:
        ConfigError: another number of steps per epoch or of processes, or a step past this run's end.
    """
    step, epoch, batch = int(state["step"]), int(state["epoch"]), int(state["batch_in_epoch"])
    if step != epoch * exp.steps_per_epoch + batch:
        raise ConfigError(f"{path} is at step {step} (epoch {epoch}, batch {batch}), which does not fit this run's "
                          f"{exp.steps_per_epoch} steps per epoch: the data or batch size differ")
    if step > exp.total_steps:
        raise ConfigError(f"{path} is at step {step}, past this run's last step {exp.total_steps}")
    world = int(state.get("world_size", 1))
    if world != exp.parallel.world_size:
        raise ConfigError(f"{path} was written by a {world}-process run; its position and data order do not fit a "
                          f"{exp.parallel.world_size}-process run")


def step_at(exp: Experiment, *, step: int | None = None, epoch: int | None = None) -> int:
    """The optimizer step of ``step``, or of the end of ``epoch`` (``epoch * steps_per_epoch``): exactly one.

    Raises:
        ValueError: neither or both given, or not an int in ``[0, total_steps]`` / ``[0, epochs]``.
    """
    if (step is None) == (epoch is None):
        raise ValueError(f"step={step!r}, epoch={epoch!r} is not allowed: give exactly one of them")
    if step is not None:
        if isinstance(step, bool) or not isinstance(step, int) or not 0 <= step <= exp.total_steps:
            raise ValueError(f"step={step!r} is not allowed: an int in [0, {exp.total_steps}]")
        return step
    epochs = exp.config.train.epochs
    if isinstance(epoch, bool) or not isinstance(epoch, int) or not 0 <= epoch <= epochs:
        raise ValueError(f"epoch={epoch!r} is not allowed: an int in [0, {epochs}]")
    return epoch * exp.steps_per_epoch


def nearest_checkpoint(run: RunDir, step: int) -> tuple[int, Path] | None:
    """The run's checkpoint closest to ``step`` at or before it: a kept one, or its ``checkpoint(.prev).pt``.

    Returns:
        ``(its step, its file)``, or None when the run has none at or before ``step``.
    """
    found = {m: path for m, path in run.kept_checkpoints().items() if m <= step}
    for rolling in (run.previous_checkpoint_file, run.checkpoint_file):
        if rolling.exists():
            at = int(read_run_checkpoint(rolling)["step"])
            if at <= step:
                found.setdefault(at, rolling)
    if not found:
        return None
    nearest = max(found)
    return nearest, found[nearest]


def check_counts(name: str, values: Iterable[int]) -> tuple[int, ...]:
    """``values`` (steps or epochs) as a tuple of ints >= 0.

    Raises:
        TypeError: not an iterable of values; ValueError: a value that is not an int >= 0.
    """
    if isinstance(values, (str, int)) or not isinstance(values, Iterable):
        raise TypeError(f"{name}={values!r} is not allowed: expected a list of ints")
    result = tuple(values)
    for value in result:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{name}: {value!r} is not allowed: an int >= 0")
    return result


def kept_steps(exp: Experiment, steps: Iterable[int], epochs: Iterable[int]) -> set[int]:
    """The steps whose checkpoints a run keeps: ``steps`` and the ends of ``epochs``.

    Raises:
        ValueError: one past the run's last step.
    """
    keep = set(steps) | {e * exp.steps_per_epoch for e in epochs}
    late = sorted(k for k in keep if k > exp.total_steps)
    if late:
        raise ValueError(f"keep_steps/keep_epochs ask for step {late[0]}, past the run's last step {exp.total_steps} "
                         f"({exp.config.train.epochs} epochs of {exp.steps_per_epoch})")
    return keep
