"""``run_lottery``: the IMP pipeline on disk, one directory per level, every stage skipped when its output exists.

Layout of a run directory::

    config.json            the LotteryConfig (a rerun must match it)
    init.pt                the initial weights (step 0), saved once; a resumed run starts from them
    rewind.pt              the rewind point: the weights at step k (k = 0: a copy of init.pt)
    level_<L>/             L = 0 (dense) .. rounds
        masks.pt           name -> bool mask (the ticket)
        sparsity.json/.txt per-tensor kept weights, from the mask
        model.pt           weights after training (level L+1 prunes them)
        metrics.json       what the train function returned; written last: it marks the level as done
        reinit/            the same mask on a fresh random initialisation (masks.pt, sparsity.*, metrics.json)
        random/            a random mask with the ticket's per-tensor counts, from the rewind point

Stages write their files atomically and check for them first, so a stopped run, rerun with the same
arguments, resumes at the stage it was in (OpenLTH's rule).
"""

from __future__ import annotations

import copy
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import write_json, write_text
from ..checkpoint_io import save_checkpoint
from ..experiment.lock import DirectoryLock
from ..masks import select_prunable, sparsity_report
from .config import LotteryConfig
from .controls import random_mask_like
from .imp import layer_rates, prune_round
from .rewind import load, reinitialize, rewind, snapshot
from .train import TrainFn

__all__ = ["run_lottery", "level_dir"]

logger = logging.getLogger(__name__)


def level_dir(run_dir: str | os.PathLike[str], level: int) -> Path:
    """``run_dir/level_<level>``."""
    return Path(run_dir) / f"level_{level}"


def _write_json(obj: Any, path: Path) -> None:
    write_json(obj, path, sort_keys=True, default=_jsonable)


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"metrics value {value!r} of type {type(value).__name__} is not JSON-serialisable")


def _save_masks(masks: Mapping[str, Tensor], where: Path) -> None:
    report = sparsity_report(masks)
    save_checkpoint({name: mask.detach().to("cpu", torch.bool) for name, mask in masks.items()}, where / "masks.pt")
    write_text(str(report) + "\n", where / "sparsity.txt")
    _write_json(report.to_dict(), where / "sparsity.json")


class _Run:
    """One lottery run's state on disk; each method is one stage that skips itself when its output exists."""

    def __init__(self, model: nn.Module, config: LotteryConfig, train_fn: TrainFn, out_dir: Path,
                 reinit_fn: Callable[[nn.Module, int], None] | None) -> None:
        self.config = config
        self.train_fn = train_fn
        self.dir = out_dir
        self.reinit_fn = reinit_fn
        self.model = copy.deepcopy(model)
        self.names = list(select_prunable(self.model, include=config.include, exclude=config.exclude))
        self.rates = layer_rates(self.names, config.prune_rate, config.output_rate, config.output_layer)
        self.output = config.output_layer or self.names[-1]

    # -- set-up ---------------------------------------------------------------------------------------------
    def check_config(self) -> None:
        path = self.dir / "config.json"
        mine = self.config.to_dict()
        if path.exists():
            theirs = LotteryConfig.from_dict(json.loads(path.read_text())).to_dict()  # old spellings read as new
            if theirs != json.loads(json.dumps(mine)):
                changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise ValueError(f"{self.dir} holds a lottery run with another config (fields {changed} differ); "
                                 "use another out_dir")
        else:
            _write_json(mine, path)

    def initial_state(self) -> dict[str, Tensor]:
        path = self.dir / "init.pt"
        if not path.exists():
            save_checkpoint(snapshot(self.model), path)
        return load(path)

    # -- stages ---------------------------------------------------------------------------------------------
    def masks_for(self, level: int) -> dict[str, Tensor]:
        where = level_dir(self.dir, level)
        if (where / "masks.pt").exists():
            return load(where / "masks.pt")
        if level == 0:
            params = dict(self.model.named_parameters())
            masks = {name: torch.ones(params[name].shape, dtype=torch.bool) for name in self.names}
        else:
            source = 0 if self.config.one_shot else level - 1
            weights = load(level_dir(self.dir, source) / "model.pt")
            previous = self.masks_for(source)
            masks = prune_round(weights, previous, self.rates, scope=self.config.scope,
                                separate=(self.output,) if self.config.output_rate is not None else (),
                                levels=level - source)
        _save_masks(masks, where)
        logger.info("level %d: %d of %d weights kept", level, sum(int(m.sum()) for m in masks.values()),
                    sum(m.numel() for m in masks.values()))
        return masks

    def train(self, where: Path, start: Mapping[str, Tensor], masks: Mapping[str, Tensor], *, seed: int,
              start_step: int, save_model: bool = True,
              on_step: Callable[[int, nn.Module], None] | None = None) -> dict[str, Any]:
        if (where / "metrics.json").exists():
            logger.info("%s: done already, skipped", where)
            return json.loads((where / "metrics.json").read_text())
        model = rewind(self.model, start, masks)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            metrics = dict(self.train_fn(model, masks, where, start_step=start_step, on_step=on_step))
        if save_model:
            save_checkpoint(snapshot(model), where / "model.pt")
        _write_json(metrics, where / "metrics.json")
        return metrics

    def rewind_point(self, init: Mapping[str, Tensor]) -> None:
        """Level 0: the dense run; it saves the rewind point at step k on the way."""
        path = self.dir / "rewind.pt"
        k = self.config.rewind_step
        where = level_dir(self.dir, 0)
        if k == 0 and not path.exists():
            save_checkpoint(dict(init), path)
        if (where / "metrics.json").exists() and not path.exists():
            raise RuntimeError(f"{where} is done but {path} is missing; delete {where}/metrics.json to retrain")

        def save_at_k(step: int, model: nn.Module) -> None:
            if step == k:
                save_checkpoint(snapshot(model), path)

        self.train(where, init, self.masks_for(0), seed=self.config.seed, start_step=0,
                   on_step=save_at_k if k > 0 else None)
        if not path.exists():
            raise RuntimeError(f"rewind_step={k}: the train function never reported step {k} through on_step "
                               "(does it call on_step(step, model) after each optimizer step, and train that "
                               "long?)")

    def controls(self, level: int, masks: Mapping[str, Tensor], rewind_state: Mapping[str, Tensor]) -> None:
        seed = self.config.seed + 1_000 * level
        base = level_dir(self.dir, level)
        for control in self.config.controls:
            where = base / control
            if (where / "metrics.json").exists():
                continue
            if control == "reinit":
                fresh = copy.deepcopy(self.model)
                fresh.load_state_dict(rewind_state)
                if self.reinit_fn is None:
                    reinitialize(fresh, seed)
                else:
                    self.reinit_fn(fresh, seed)
                start, control_masks = snapshot(fresh), masks
            else:
                start, control_masks = rewind_state, random_mask_like(masks, seed)
            _save_masks(control_masks, where)
            self.train(where, start, control_masks, seed=self.config.seed + level, save_model=False,
                       start_step=self.config.rewind_step)


def run_lottery(
    model: nn.Module,
    config: LotteryConfig,
    train_fn: TrainFn,
    out_dir: str | os.PathLike[str],
    *,
    reinit_fn: Callable[[nn.Module, int], None] | None = None,
    stop_after: int | None = None,
) -> list[dict[str, Any]]:
    """Iterative magnitude pruning with rewinding and its controls (Frankle & Carbin 2019; Frankle et al. 2020).

    Level 0 trains the dense ``model`` (saving the rewind point at step ``config.rewind_step``). Each level
    ``L >= 1`` prunes ``config.prune_rate`` of the remaining weights (``output_rate`` for the output layer) of
    the previous level's trained weights by magnitude, rewinds the survivors to the rewind point, retrains, and
    trains the controls. The caller's ``model`` is not modified (the run works on a copy, started from
    ``init.pt`` when resuming).

    Args:
        model: the network at initialisation.
        config: the experiment (see :class:`LotteryConfig`).
        train_fn: trains a masked model and returns metrics (see :class:`~sparsetrain.lottery.train.TrainFn`
            and :func:`~sparsetrain.lottery.train.make_train_fn`).
        out_dir: the run directory (created; an existing one with the same config is resumed).
        reinit_fn: ``reinit_fn(model, seed)`` re-initialises a model in place for the "reinit" control; default
            :func:`~sparsetrain.lottery.rewind.reinitialize` (every module's ``reset_parameters``).
        stop_after: stop after this level (for staged runs); None runs every level.

    Returns:
        :func:`~sparsetrain.lottery.results.lottery_curve` of the run: one row per finished level.

    Raises:
        sparsetrain.experiment.lock.DirectoryLocked: another process is running this lottery run.
    """
    from .results import lottery_curve

    if not isinstance(config, LotteryConfig):
        raise TypeError(f"config must be a LotteryConfig, got {type(config).__name__}")
    if not callable(train_fn):
        raise TypeError(f"train_fn={train_fn!r} is not callable")
    run = _Run(model, config, train_fn, Path(out_dir), reinit_fn)
    with DirectoryLock(run.dir, f"lottery run {run.dir}"):  # one process per lottery run
        run.check_config()
        init = run.initial_state()
        run.rewind_point(init)
        rewind_state = load(run.dir / "rewind.pt")
        last = config.rounds if stop_after is None else min(config.rounds, stop_after)
        for level in range(1, last + 1):
            masks = run.masks_for(level)
            run.train(level_dir(run.dir, level), rewind_state, masks, seed=config.seed + level,
                      start_step=config.rewind_step)
            run.controls(level, masks, rewind_state)
        return lottery_curve(run.dir)
