"""A lottery jackpot searched in a finished harness run (what ``sparsetrain jackpot`` runs).

The run's model is rebuilt from its ``config.yaml`` (data and model as the harness builds them), its trained
weights are read from ``checkpoint.pt`` (``"model"``), and :func:`~sparsetrain.lottery.find_jackpot` (Chen et
al. 2021) searches a mask at the given sparsity on the run's training batches, in order from the seeded loader.
Accuracy before (the magnitude mask at that sparsity) and after (the jackpot) is measured on the test split.
The result goes to ``<run>/jackpot-<sparsity>/``: ``masks.pt`` (name -> bool mask) and ``jackpot.json``. No file
of the run itself is written and no weight changes (``find_jackpot`` works on a copy).
"""

from __future__ import annotations

import itertools
import logging
from pathlib import Path
from typing import Any

import torch

from sparsetrain.atomic import write_json
from sparsetrain.checkpoint_io import save_checkpoint
from sparsetrain.experiment.build import build_experiment
from sparsetrain.experiment.checkpoint import load_checkpoint
from sparsetrain.experiment.config import DENSE
from sparsetrain.experiment.rundir import RunDir
from sparsetrain.lottery.jackpot import find_jackpot
from sparsetrain.nm import NMPattern

__all__ = ["jackpot_dir", "run_jackpot"]

logger = logging.getLogger(__name__)


def jackpot_dir(run_dir: str | Path, sparsity: float, pattern: str | None = None) -> Path:
    """``<run_dir>/jackpot-<sparsity>`` (sparsity written with ``%g``, e.g. ``jackpot-0.9``), or
    ``<run_dir>/jackpot-<N>of<M>`` for an N:M search (e.g. ``jackpot-2of4``)."""
    if pattern is not None:
        parsed = NMPattern.parse(pattern)
        return Path(run_dir) / f"jackpot-{parsed.n}of{parsed.m}"
    return Path(run_dir) / f"jackpot-{sparsity:g}"


def run_jackpot(
    run_dir: str | Path,
    *,
    sparsity: float = 0.9,
    steps: int = 100,
    lr: float = 0.1,
    max_changes: int | None = None,
    batches: int | None = None,
    distribution: str | None = None,
    scope: str | None = None,
    pattern: str | None = None,
    device: str | None = None,
) -> dict[str, Any]:
    """Search a jackpot mask in the trained weights of a harness run and write it next to the run.

    Args:
        run_dir: a run directory ``runs/<name>/seed_<n>`` with ``config.yaml`` and ``checkpoint.pt``.
        sparsity: target sparsity in [0, 1).
        steps: score-update steps of the search.
        lr: learning rate of the scores.
        max_changes: the short restriction (mask entries that may flip per step); None: no restriction.
        batches: use only the first this many training batches (cycled); None: the whole training split.
        distribution: "uniform" (default), "er" or "erk"; scope: "layer" (default) or "global" (as
            :func:`find_jackpot`).
        pattern: ``"N:M"``: search an N:M mask (the sparsity is then 1 - N/M; swaps pair within groups).
        device: overrides the run's ``train.device`` (default: the run's own).

    Returns:
        The record written to ``jackpot.json``: ``accuracy_before`` / ``accuracy_after`` / ``loss_before`` /
        ``loss_after`` (test split), ``iou_with_magnitude``, ``changes`` (entries flipped in all), the options,
        ``run``, ``checkpoint_step``, ``run_finished`` and ``out`` (the output directory).

    Raises:
        FileNotFoundError: ``run_dir`` is not a directory or holds no ``checkpoint.pt``.
        ValueError: a bad option (``ConfigError`` for a config the data or model rejects).
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no such directory")
    run = RunDir(path)
    if not run.checkpoint_file.is_file():
        raise FileNotFoundError(f"run_dir={str(run_dir)!r}: no checkpoint.pt here; is this a trained run "
                                "directory (runs/<name>/seed_<n>)?")
    if batches is not None and (isinstance(batches, bool) or not isinstance(batches, int)):
        raise TypeError(f"batches={batches!r} is not allowed: an int >= 1 or None")
    if batches is not None and batches < 1:
        raise ValueError(f"batches={batches!r} is not allowed: an int >= 1 or None")
    config = run.read_config()
    overrides: dict[str, Any] = {"sparse.method": DENSE}  # the architecture only; the weights hold the sparsity
    if device is not None:
        overrides["train.device"] = device
    exp = build_experiment(config.with_overrides(overrides))
    state = load_checkpoint(run.checkpoint_file, map_location=exp.device)
    if not isinstance(state.get("model"), dict):
        raise ValueError(f"{run.checkpoint_file}: no 'model' state dict in this checkpoint")
    exp.model.load_state_dict(state["model"])
    train_batches = list(itertools.islice(iter(exp.train_loader), batches))
    masks, info = find_jackpot(exp.model, None if pattern is not None else sparsity, train_batches, steps=steps,
                               lr=lr, max_changes_per_step=max_changes, distribution=distribution, scope=scope,
                               pattern=pattern, eval_data=exp.test_loader, seed=config.train.seed)
    if pattern is not None:
        parsed = NMPattern.parse(pattern)
        sparsity = 1.0 - parsed.n / parsed.m  # the pattern's; layers it cannot hold stay dense (mask_sparsity)
    out = jackpot_dir(path, sparsity, pattern)
    out.mkdir(parents=True, exist_ok=True)
    save_checkpoint({n: m.cpu() for n, m in masks.items()}, out / "masks.pt")
    kept = sum(int(torch.count_nonzero(m)) for m in masks.values())
    total = sum(m.numel() for m in masks.values())
    record: dict[str, Any] = {
        "run": run.name, "checkpoint_step": state.get("step"), "run_finished": run.status() == "finished",
        "sparsity": sparsity, "mask_sparsity": 1.0 - kept / total if total else 0.0, "steps": steps, "lr": lr,
        "max_changes": max_changes, "batches": len(train_batches), "pattern": pattern,
        "distribution": info["distribution"], "scope": info["scope"],
        "accuracy_before": info["accuracy_before"], "loss_before": info["loss_before"],
        "accuracy_after": info["accuracy_after"], "loss_after": info["loss_after"],
        "iou_with_magnitude": info["iou_with_magnitude"], "changes": int(sum(info["changes_per_step"])),
        "eval_split": "test",
    }
    write_json(record, out / "jackpot.json")
    record["out"] = str(out)
    logger.info("%s: jackpot at sparsity %g: accuracy %.4f -> %.4f (IoU %.4f)", run.name, sparsity,
                record["accuracy_before"], record["accuracy_after"], record["iou_with_magnitude"])
    return record
