"""Pruning plasticity: how well a network pruned at training time t recovers by training on to the end.

Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration* (GraNet), NeurIPS 2021,
§3. Protocol: train a dense network with a recipe; at several epochs ``t`` take the dense checkpoint, prune a
copy with rate ``r`` by weight magnitude (one global threshold, or each layer on its own), and continue training
the copy, from the dense run's optimizer state, learning-rate schedule and data order, to the end of the
schedule, either with the mask fixed or with *neuroregeneration*: GraNet's zero-cost drop-and-regrow (every ΔT
steps each layer drops the fraction ``r_t`` of its active weights with the smallest magnitude and regrows as
many inactive ones with the largest dense gradient, at zero; ``r_t`` cosine-decays from ``drop_fraction`` to
0.005 over the remaining steps). The result of a cell ``(t, r, regeneration)`` is the final test accuracy
``acc`` and its change relative to the unpruned (dense) run, ``drop = (acc - acc_dense) / acc_dense``. The
paper found plasticity falls sharply after the learning rate decays, and that neuroregeneration raises it.

Every stage is resumable and skipped when its output exists (the OpenLTH rule): the dense run is an ordinary
harness run (:class:`~sparsetrain.experiment.Trainer`) whose checkpoints at the chosen epochs are copied once
to ``dense_checkpoints/epoch_<t>.pt``; each cell is a harness run directory of its own under ``cells/``.
Layout of a study directory::

    study.json                 the recipe and pruning options (a rerun must match them)
    runs/dense-<hash>/seed_<n> the dense run
    dense_checkpoints/         epoch_<t>.pt, the dense run's full checkpoint after epoch t
    cells/t<t>-r<r>-<regen|fixed>/  one continued run per cell (config.yaml, metrics.jsonl, summary.json, ...)

Deviations from the paper: the dense network is pruned at the end of an epoch (``t`` counts finished epochs);
the regrowth cadence is ``regrow_every`` optimizer steps of the continued run.
"""

from __future__ import annotations

import json
import logging
import math
import re
import shutil
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsetrain.atomic import copy_file, write_figure, write_json, write_text
from sparsetrain.experiment.build import Experiment, build_experiment
from sparsetrain.experiment.checkpoint import load_checkpoint
from sparsetrain.experiment.config import ExperimentConfig
from sparsetrain.experiment.lock import DirectoryLock
from sparsetrain.experiment.optim import lr_factor
from sparsetrain.experiment.rundir import RunDir
from sparsetrain.experiment.trainer import Trainer, TrainerCallback
from sparsetrain.masks import select_prunable
from sparsetrain.methods.granet import GraNet
from sparsetrain.methods.static import Static
from sparsetrain.selection import SCOPES, budget, check_scope, keep_top
from sparsetrain.tables import Column, render
from sparsetrain.validation import check_fraction, check_int, check_number

__all__ = [
    "PlasticityCell",
    "PlasticityStudy",
    "Regenerating",
    "SCOPES",
    "magnitude_masks",
    "plasticity_cells",
    "lr_decay_epochs",
    "default_prune_epochs",
    "run_plasticity",
    "format_plasticity",
    "plot_plasticity",
]

logger = logging.getLogger(__name__)

_COLUMNS = ("epoch", "step", "lr", "rate", "regeneration", "acc", "dense_acc", "drop", "diff", "sparsity")


def _check_rate(rate: Any, name: str = "rate") -> float:
    return check_number(name, rate, "(0, 1)", "a pruning rate must be a number")


@torch.no_grad()
def magnitude_masks(params: Mapping[str, Tensor], rate: float, scope: str = "global") -> dict[str, Tensor]:
    """Masks that prune the fraction ``rate`` of the weights with the smallest magnitude, exact counts.

    Args:
        params: ``{name: weight}`` (e.g. :func:`sparsetrain.masks.select_prunable` of the model).
        rate: fraction to prune, in (0, 1).
        scope: "global" (one threshold over all tensors: ``round((1 - rate) * N)`` weights kept in total) or
            "layer" (each tensor keeps ``round((1 - rate) * n)`` of its own).

    Returns:
        ``{name: bool mask}`` on the weights' devices; ties are broken by the lowest index.

    Raises:
        ValueError: ``rate`` or ``scope`` is not allowed, or ``params`` is empty.
    """
    rate = _check_rate(rate)
    scope = check_scope(scope)
    if not params:
        raise ValueError("params must hold at least one tensor, got none")
    magnitudes = {name: p.detach().abs() for name, p in params.items()}
    return keep_top(magnitudes, budget(magnitudes, rate, scope=scope))


class Regenerating(GraNet):
    """GraNet's zero-cost neuroregeneration on a given mask, at its sparsity, with no further pruning.

    Every ``update_every`` optimizer steps each tensor drops ``ceil(r_t * active)`` of its active weights by
    magnitude and regrows as many inactive ones by dense-gradient magnitude (at zero, with zero optimizer state);
    ``r_t`` cosine-decays from ``drop_fraction`` to ``drop_fraction_final`` over ``total_steps``. It is
    :class:`~sparsetrain.GraNet` started from ``masks=`` (so ``initial_sparsity = sparsity``: no pruning
    schedule), with ``update_every`` 100 by default; every GraNet option applies.
    """

    option_defaults = {"update_every": 100, "prune_end": 0}


@dataclass(frozen=True)
class PlasticityCell:
    """One point of the study: prune after epoch ``epoch`` with rate ``rate``, with or without regeneration."""

    epoch: int
    rate: float
    regeneration: bool

    @property
    def name(self) -> str:
        """Directory name, e.g. ``t5-r0.5-regen`` or ``t5-r0.5-fixed``."""
        return f"t{self.epoch}-r{self.rate:g}-{'regen' if self.regeneration else 'fixed'}"


def plasticity_cells(prune_epochs: Iterable[int], rates: Iterable[float],
                     regeneration: Iterable[bool] = (False, True)) -> list[PlasticityCell]:
    """Every ``(t, r, regeneration)`` combination, ordered by t, then r, then regeneration.

    Raises:
        ValueError: an epoch below 1, a rate outside (0, 1), a non-bool regeneration, or an empty list.
    """
    epochs = sorted(set(prune_epochs))
    rate_list = sorted({_check_rate(r, "rates") for r in rates})
    regen = list(dict.fromkeys(regeneration))
    for t in epochs:
        if isinstance(t, bool) or not isinstance(t, int) or t < 1:
            raise ValueError(f"prune_epochs: {t!r} is not allowed: an epoch is an int >= 1 (pruning after it)")
    for value in regen:
        if not isinstance(value, bool):
            raise TypeError(f"regeneration: {value!r} is not allowed: True or False")
    if not epochs or not rate_list or not regen:
        raise ValueError("prune_epochs, rates and regeneration must each hold at least one value")
    return [PlasticityCell(t, r, g) for t in epochs for r in rate_list for g in regen]


def lr_decay_epochs(config: ExperimentConfig) -> list[float]:
    """Epochs at which a multistep learning rate decays (``milestone * epochs``); none for other schedules.

    Args:
        config: an :class:`~sparsetrain.experiment.ExperimentConfig`.
    """
    if config.optim.lr_schedule != "multistep":
        return []
    return [m * config.train.epochs for m in config.optim.milestones]


def default_prune_epochs(config: ExperimentConfig) -> tuple[int, ...]:
    """Points before and after each learning-rate decay, plus an early one (5 evenly spaced without decays).

    Args:
        config: an :class:`~sparsetrain.experiment.ExperimentConfig`.

    Returns:
        Sorted epochs in ``[1, epochs - 1]``.
    """
    epochs = config.train.epochs
    if epochs < 2:
        raise ValueError(f"train.epochs={epochs} is too short for a plasticity study: at least 2 epochs")
    decays = lr_decay_epochs(config)
    points = {max(1, epochs // 10)}
    if decays:
        for d in decays:
            points |= {math.floor(d) - 1, math.ceil(d) + 1}
    else:
        points |= {round(epochs * k / 6) for k in range(1, 6)}
    return tuple(sorted(t for t in points if 1 <= t <= epochs - 1))


class _CellTrainer(Trainer):
    """A harness Trainer whose run starts from the dense checkpoint of epoch t, pruned, instead of step 0.

    The harness's own machinery does the rest: the cell's checkpoints hold its sparsifier, so an interrupted cell
    resumes exactly like any run, and a finished one (summary.json) is never retrained.
    """

    def __init__(self, config: ExperimentConfig, cell_dir: Path, checkpoint: Path, cell: PlasticityCell, scope: str,
                 regrow_every: int, drop_fraction: float, callback: TrainerCallback | None = None) -> None:
        super().__init__(config, cell_dir.parent, callback=callback, plots=False)
        self.run = RunDir(cell_dir)
        self._dense_checkpoint = checkpoint
        self._cell = cell
        self._scope = scope
        self._regrow_every = regrow_every
        self._drop_fraction = drop_fraction

    def prepare(self) -> Experiment:
        if self.exp is None:
            exp = build_experiment(self.config)
            state = load_checkpoint(self._dense_checkpoint)
            exp.model.load_state_dict(state["model"])
            exp.optimizer.load_state_dict(state["optimizer"])
            exp.scheduler.load_state_dict(state["scheduler"])
            exp.train_loader.generator.set_state(state["loader_generator"])
            masks = magnitude_masks(select_prunable(exp.model), self._cell.rate, self._scope)
            remaining = exp.total_steps - int(state["step"])
            seed = self.config.train.seed
            if self._cell.regeneration:
                exp.sparsifier = Regenerating(exp.model, exp.optimizer, masks=masks, total_steps=remaining,
                                              update_every=self._regrow_every, drop_fraction=self._drop_fraction,
                                              seed=seed)
            else:
                exp.sparsifier = Static(exp.model, exp.optimizer, masks=masks, total_steps=remaining, seed=seed)
            self.exp = exp
            self.step, self.epoch = int(state["step"]), int(state["epoch"])
            self._lr = float(state["lr"])
            # A fresh cell draws from the random generators where the dense run left them at epoch t.
            self._rng_after_build = state["rng"]
        return self.exp

    def _density_history(self) -> list[tuple[int, dict[str, float]]]:
        history = super()._density_history()
        if history and history[0][0] > 0:  # the dense phase before t counts in the run's training FLOPs
            history.insert(0, (0, {name: 1.0 for name in history[0][1]}))
        return history


class PlasticityStudy:
    """The stages of one plasticity study in ``out_dir``: the dense run, then one continued run per cell.

    Args:
        config: the recipe (an :class:`~sparsetrain.experiment.ExperimentConfig`); its sparse section is ignored
            (the dense run trains without a sparsifier). A multistep learning rate shows the decays' effect.
        out_dir: the study directory (created).
        scope: "global" or "layer" magnitude pruning.
        regrow_every: ΔT of neuroregeneration, in optimizer steps of the continued run.
        drop_fraction: neuroregeneration's initial drop fraction (GraNet: 0.5).

    Raises:
        ValueError: an argument is not allowed, or ``out_dir`` holds a study with another recipe or options.
    """

    def __init__(self, config: ExperimentConfig, out_dir: str | Path, *, scope: str = "global", regrow_every: int = 100,
                 drop_fraction: float = 0.5) -> None:
        self.config = config.dense_baseline()
        self.out_dir = Path(out_dir)
        self.scope = check_scope(scope)
        self.regrow_every = check_int("regrow_every", regrow_every, 1)
        self.drop_fraction = check_fraction("drop_fraction", drop_fraction)
        self.dense_run = RunDir.for_config(self.out_dir / "runs", self.config)

    # -- files ----------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"config": self.config.non_default(), "seed": self.config.train.seed, "scope": self.scope,
                "regrow_every": self.regrow_every, "drop_fraction": self.drop_fraction}

    def _check_identity(self) -> None:
        path = self.out_dir / "study.json"
        mine = json.loads(json.dumps(self._identity()))
        if path.exists():
            theirs = json.loads(path.read_text())
            if theirs != mine:
                changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
                raise ValueError(f"{self.out_dir} holds a plasticity study with another recipe or options "
                                 f"({', '.join(changed)} differ); use another output directory")
        else:
            write_json(mine, path, sort_keys=True)

    def checkpoint_path(self, epoch: int) -> Path:
        """``dense_checkpoints/epoch_<t>.pt``."""
        return self.out_dir / "dense_checkpoints" / f"epoch_{epoch}.pt"

    def cell_dir(self, cell: PlasticityCell) -> Path:
        """``cells/<cell name>``."""
        return self.out_dir / "cells" / cell.name

    # -- stages ---------------------------------------------------------------------------------------------
    def cells(self, prune_epochs: Iterable[int], rates: Iterable[float],
              regeneration: Iterable[bool] = (False, True)) -> list[PlasticityCell]:
        """The cells of :func:`plasticity_cells`, checked against this study's run before anything is trained.

        Raises:
            ValueError: as :func:`plasticity_cells`, or an epoch outside ``[1, epochs - 1]``.
        """
        cells = plasticity_cells(prune_epochs, rates, regeneration)
        self._check_epochs(c.epoch for c in cells)
        return cells

    def _check_epochs(self, prune_epochs: Iterable[int]) -> list[int]:
        epochs = self.config.train.epochs
        wanted = sorted(set(prune_epochs))
        bad = [t for t in wanted if isinstance(t, bool) or not isinstance(t, int) or not 1 <= t <= epochs - 1]
        if bad:
            raise ValueError(f"prune_epochs {bad} are not allowed: each must be an int in [1, {epochs - 1}] "
                             f"(train.epochs={epochs}; pruning after the last epoch leaves nothing to train)")
        return wanted

    def train_dense(self, prune_epochs: Iterable[int], callback: TrainerCallback | None = None) -> dict[str, Any]:
        """Train (or skip) the dense run, saving its checkpoint after each epoch in ``prune_epochs`` once.

        If the dense run finished before a requested checkpoint was saved, it is trained again in a scratch
        directory to save it (the same computation: on CPU bit-identical) and the scratch is removed.

        Args:
            prune_epochs: epochs whose checkpoints the cells need (each in ``[1, epochs - 1]``).
            callback: a :class:`~sparsetrain.experiment.TrainerCallback` for progress.

        Returns:
            The dense run's summary.

        Raises:
            ValueError: an epoch outside ``[1, epochs - 1]``.
        """
        wanted = self._check_epochs(prune_epochs)
        self._check_identity()
        missing = [t for t in wanted if not self.checkpoint_path(t).exists()]
        study = self
        outer = callback or TrainerCallback()

        class SaveAt(TrainerCallback):
            def on_start(self, trainer: Any) -> None:
                outer.on_start(trainer)

            def on_step(self, trainer: Any) -> None:
                outer.on_step(trainer)

            def on_epoch(self, trainer: Any, record: dict[str, Any]) -> None:
                if trainer.epoch in missing:
                    copy_file(trainer.run.checkpoint_file, study.checkpoint_path(trainer.epoch))
                outer.on_epoch(trainer, record)

            def on_end(self, trainer: Any, summary: dict[str, Any]) -> None:
                outer.on_end(trainer, summary)

        summary = Trainer(self.config, self.out_dir / "runs", callback=SaveAt(), plots=False).fit()
        still = [t for t in missing if not self.checkpoint_path(t).exists()]
        if still:
            scratch = self.out_dir / "scratch"
            logger.info("dense run finished without checkpoints at epochs %s: training it again in %s", still,
                        scratch)
            shutil.rmtree(scratch, ignore_errors=True)
            Trainer(self.config, scratch, callback=SaveAt(), plots=False).fit()
            shutil.rmtree(scratch, ignore_errors=True)
        return summary

    def train_cell(self, cell: PlasticityCell, callback: TrainerCallback | None = None) -> dict[str, Any]:
        """Prune the dense checkpoint of ``cell.epoch`` and train it to the end (skipped when finished).

        Args:
            cell: the cell.
            callback: a :class:`~sparsetrain.experiment.TrainerCallback`.

        Returns:
            The cell's result row (see :meth:`rows`).

        Raises:
            FileNotFoundError: the dense checkpoint of ``cell.epoch`` is missing (run :meth:`train_dense`).
        """
        self._check_identity()
        checkpoint = self.checkpoint_path(cell.epoch)
        cell_dir = self.cell_dir(cell)
        if not (cell_dir / "summary.json").exists():
            if not checkpoint.exists():
                raise FileNotFoundError(f"{checkpoint} is missing: train the dense run with epoch {cell.epoch} "
                                        "among its prune_epochs first (PlasticityStudy.train_dense)")
            _CellTrainer(self.config, cell_dir, checkpoint, cell, self.scope, self.regrow_every, self.drop_fraction,
                         callback).fit()
        dense = self.dense_run.read_summary()
        return self._row(cell, json.loads((cell_dir / "summary.json").read_text()), dense)

    def _row(self, cell: PlasticityCell, summary: Mapping[str, Any], dense: Mapping[str, Any] | None) -> dict[str, Any]:
        optim = self.config.optim
        total = int(summary["total_steps"])
        steps_per_epoch = total // self.config.train.epochs
        step = cell.epoch * steps_per_epoch
        warmup = int(round(optim.warmup_epochs * steps_per_epoch))
        lr = optim.lr * lr_factor(step, total, warmup_steps=warmup, schedule=optim.lr_schedule,
                                  milestones=tuple(optim.milestones), gamma=optim.gamma)
        acc = summary.get("final_acc")
        dense_acc = (dense or {}).get("final_acc")
        drop = diff = None
        if acc is not None and dense_acc:
            drop = (acc - dense_acc) / dense_acc
            diff = acc - dense_acc
        return {"epoch": cell.epoch, "step": step, "lr": lr, "rate": cell.rate, "regeneration": cell.regeneration,
                "acc": acc, "dense_acc": dense_acc, "drop": drop, "diff": diff, "sparsity": summary.get("sparsity")}

    def rows(self) -> list[dict[str, Any]]:
        """The rows of every finished cell, by t, r, regeneration.

        Each row: ``epoch`` (t), ``step`` (optimizer steps before pruning), ``lr`` (learning rate right after
        t), ``rate``, ``regeneration``, ``acc`` (final test accuracy), ``dense_acc`` (the dense run's), ``drop``
        (``(acc - dense_acc) / dense_acc``), ``diff`` (``acc - dense_acc``), ``sparsity`` (measured at the end).
        """
        dense = self.dense_run.read_summary()
        rows = []
        root = self.out_dir / "cells"
        pattern = re.compile(r"t(\d+)-r([0-9.e-]+)-(regen|fixed)$")
        for path in sorted(root.iterdir()) if root.is_dir() else []:
            match = pattern.match(path.name)
            if match is None or not (path / "summary.json").exists():
                continue
            cell = PlasticityCell(int(match.group(1)), float(match.group(2)), match.group(3) == "regen")
            rows.append(self._row(cell, json.loads((path / "summary.json").read_text()), dense))
        rows.sort(key=lambda r: (r["epoch"], r["rate"], r["regeneration"]))
        return rows

    def run(self, prune_epochs: Sequence[int], rates: Sequence[float],
            regeneration: Sequence[bool] = (False, True),
            callback: TrainerCallback | None = None) -> list[dict[str, Any]]:
        """Every stage in order (dense run, then each cell); finished stages are skipped.

        Returns:
            :meth:`rows` of the cells asked for.
        """
        cells = self.cells(prune_epochs, rates, regeneration)
        self.train_dense([c.epoch for c in cells], callback)
        wanted = {(c.epoch, c.rate, c.regeneration) for c in cells}
        for cell in cells:
            self.train_cell(cell, callback)
        return [r for r in self.rows() if (r["epoch"], r["rate"], r["regeneration"]) in wanted]


def run_plasticity(config: ExperimentConfig, out_dir: str | Path, *, prune_epochs: Sequence[int] | None = None,
                   rates: Sequence[float] = (0.2, 0.5, 0.8), regeneration: Sequence[bool] = (False, True),
                   scope: str = "global", regrow_every: int = 100, drop_fraction: float = 0.5,
                   callback: TrainerCallback | None = None) -> list[dict[str, Any]]:
    """Run (or resume) a pruning-plasticity study and write its table and plot into ``out_dir``.

    Args:
        config: the dense recipe (:class:`~sparsetrain.experiment.ExperimentConfig`).
        out_dir: the study directory.
        prune_epochs: the points t; default :func:`default_prune_epochs` (before and after each LR decay).
        rates: pruning rates r.
        regeneration: which settings to run (False: mask fixed; True: GraNet neuroregeneration).
        scope: "global" or "layer" magnitude pruning.
        regrow_every: neuroregeneration's ΔT in optimizer steps.
        drop_fraction: neuroregeneration's initial drop fraction.
        callback: a :class:`~sparsetrain.experiment.TrainerCallback`.

    Returns:
        The rows (see :meth:`PlasticityStudy.rows`); ``plasticity.md``, ``plasticity.csv`` and
        ``plasticity.png`` are written into ``out_dir``.

    Raises:
        sparsetrain.experiment.lock.DirectoryLocked: another process is running this study.
    """
    study = PlasticityStudy(config, out_dir, scope=scope, regrow_every=regrow_every, drop_fraction=drop_fraction)
    epochs = tuple(prune_epochs) if prune_epochs is not None else default_prune_epochs(study.config)
    with DirectoryLock(study.out_dir, f"plasticity study {study.out_dir}"):  # one process per study
        rows = study.run(epochs, rates, regeneration, callback)
        write_outputs(study, rows)
    return rows


def write_outputs(study: PlasticityStudy, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write ``plasticity.md``, ``plasticity.csv`` and ``plasticity.png`` of ``rows`` into the study directory.

    Returns:
        The paths written.
    """
    out = study.out_dir
    md = out / "plasticity.md"
    write_text(format_plasticity(rows, "markdown") + "\n", md)
    csv_path = out / "plasticity.csv"
    write_text(format_plasticity(rows, "csv"), csv_path)
    png = plot_plasticity(rows, out / "plasticity.png", lr_decays=lr_decay_epochs(study.config),
                          title=f"pruning plasticity: {study.config.model.name} on {study.config.data.name}, "
                                f"{study.scope} magnitude pruning")
    return [md, csv_path, png]


def format_plasticity(rows: Sequence[Mapping[str, Any]], fmt: str = "markdown") -> str:
    """The rows as a markdown table (accuracies and drops in %) or CSV (raw numbers).

    Args:
        rows: from :meth:`PlasticityStudy.rows`.
        fmt: "markdown" or "csv".

    Returns:
        The text.
    """
    if fmt == "csv":
        return render(_COLUMNS, rows, "csv")
    if fmt != "markdown":
        raise ValueError(f"fmt={fmt!r} is not allowed; choose 'markdown' or 'csv'")

    def percent(value: float) -> str:
        return f"{100 * value:.2f}"

    columns = [Column("epoch", "t (epoch)"), Column("lr", "lr after t", ".4g"), Column("rate", "r", "g"),
               Column("regeneration", format=lambda v: "yes" if v else "no", align="left"),
               Column("acc", "accuracy %", percent), Column("dense_acc", "dense %", percent),
               Column("drop", "relative change %", lambda v: f"{100 * v:+.2f}")]
    return render(columns, rows, "markdown")


def plot_plasticity(rows: Sequence[Mapping[str, Any]], path: str | Path, *, lr_decays: Sequence[float] = (),
                    title: str = "pruning plasticity") -> Path:
    """Relative accuracy change against t, one line per (r, regeneration), LR decays as vertical lines.

    Args:
        rows: from :meth:`PlasticityStudy.rows`.
        path: the PNG to write.
        lr_decays: epochs where the learning rate decays (:func:`lr_decay_epochs`).
        title: figure title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.0, 4.5), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.subplots()
    rates = sorted({r["rate"] for r in rows})
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for i, rate in enumerate(rates):
        for regen in (False, True):
            points = sorted((r["epoch"], 100 * r["drop"]) for r in rows
                            if r["rate"] == rate and r["regeneration"] == regen and r["drop"] is not None)
            if points:
                ax.plot(*zip(*points), "-" if regen else "--", marker="o" if regen else "s",
                        color=colors[i % len(colors)],
                        label=f"r = {rate:g}, {'with regeneration' if regen else 'fixed mask'}")
    for j, decay in enumerate(lr_decays):
        ax.axvline(decay, color="grey", linestyle=":", linewidth=1.5, label="LR decay" if j == 0 else None)
    ax.axhline(0.0, color="black", linewidth=0.8)
    epochs = sorted({r["epoch"] for r in rows})
    if epochs:  # integer epochs as ticks, with room around a single one (no 1.900-2.100 axis)
        ax.set_xticks(epochs if len(epochs) <= 12 else epochs[::-(-len(epochs) // 12)])
        ax.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    ax.set(xlabel="t: epoch at which the dense network is pruned",
           ylabel="accuracy change vs dense, % (relative)", title=title)
    ax.grid(alpha=0.3)
    if rows:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return write_figure(fig, path)
