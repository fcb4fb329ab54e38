"""The pruning-plasticity study: a dense run, and one pruned branch of it per cell, all ordinary Trainer runs.

Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration* (GraNet), NeurIPS 2021,
§3. Protocol: train a dense network with a recipe; at several epochs ``t`` take the dense checkpoint, prune it
with rate ``r`` by weight magnitude (one global threshold, or each layer on its own:
:func:`sparsetrain.analysis.plasticity.magnitude_masks`), and continue training, from the dense run's optimizer
state, learning-rate schedule and data order, to the end of the schedule, either with the mask fixed or with
*neuroregeneration*: GraNet's zero-cost drop-and-regrow (every ΔT steps each layer drops the fraction ``r_t`` of
its active weights with the smallest magnitude and regrows as many inactive ones with the largest dense
gradient, at zero). The result of a cell ``(t, r, regeneration)`` is the final test accuracy ``acc`` and its
change relative to the unpruned (dense) run, ``drop = (acc - acc_dense) / acc_dense``. The paper found
plasticity falls sharply after the learning rate decays, and that neuroregeneration raises it.

Every stage is a :class:`~sparsetrain.experiment.Trainer` run, skipped when finished and resumed when interrupted:

* the **dense run** keeps its full checkpoints after the pruning epochs (``keep_epochs``); a cell gets its
  checkpoint with :meth:`Trainer.checkpoint_at <sparsetrain.experiment.Trainer.checkpoint_at>`, so a dense run
  whose checkpoints exist is never trained again, and one that finished without a checkpoint asked for later is
  replayed from its nearest earlier one.
* each **cell** is a branch of that checkpoint that takes everything but the sparsifier
  (``Branch(take=EVERYTHING - {"sparsifier"})``), with the pruned masks as its method's starting masks
  (``sparse.options.masks``): ``sparse.method=static`` (fixed) or ``granet`` at the masks' sparsity with no
  further pruning (regeneration, every ``regrow_every`` steps).

Layout of a study directory::

    study.json                       the recipe and pruning options (a rerun must match them)
    runs/dense-<hash>/seed_<n>/      the dense run; checkpoints/step_<n>.pt after each pruning epoch
    masks/t<t>-r<r>.pt               the dense checkpoint of epoch t pruned with rate r
    cells/t<t>-r<r>-<regen|fixed>/   one branch per cell (config.yaml, branch.json, metrics.jsonl, summary.json, ...)

Deviations from the paper: the dense network is pruned at the end of an epoch (``t`` counts finished epochs).
Regeneration's drop fraction follows a cosine over the steps after the pruning point (the sparsifier starts
counting at the branch, ``sparsifier_start="zero"``), not GraNet's run-wide schedule, and ΔT counts the steps of
the continued run.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor

from sparsetrain.analysis.plasticity import (
    check_rate,
    format_plasticity,
    magnitude_masks,
    plot_plasticity,
)
from sparsetrain.atomic import write_json, write_text
from sparsetrain.checkpoint_io import load_checkpoint, save_checkpoint
from sparsetrain.experiment import (
    Branch,
    ExperimentConfig,
    RunDir,
    Trainer,
    TrainerCallback,
)
from sparsetrain.experiment.build import build_experiment
from sparsetrain.experiment.lock import DirectoryLock
from sparsetrain.experiment.optim import lr_factor
from sparsetrain.experiment.run_state import EVERYTHING, read_run_checkpoint
from sparsetrain.masks import select_prunable, sparsity_report
from sparsetrain.selection import check_scope
from sparsetrain.validation import check_fraction, check_int

__all__ = [
    "PlasticityCell",
    "PlasticityStudy",
    "plasticity_cells",
    "lr_decay_epochs",
    "default_prune_epochs",
    "run_plasticity",
    "write_outputs",
]

logger = logging.getLogger(__name__)


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
    rate_list = sorted({check_rate(r, "rates") for r in rates})
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



class PlasticityStudy:
    """The stages of one plasticity study in ``out_dir``: the dense run, then one branch of it per cell.

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

    def masks_path(self, cell: PlasticityCell) -> Path:
        """``masks/t<t>-r<r>.pt``: the pruned masks a cell starts from (shared by its fixed and regenerating runs)."""
        return self.out_dir / "masks" / f"t{cell.epoch}-r{cell.rate:g}.pt"

    def cell_dir(self, cell: PlasticityCell) -> Path:
        """``cells/<cell name>``."""
        return self.out_dir / "cells" / cell.name

    # -- stages ---------------------------------------------------------------------------------------------
    def _dense_trainer(self, epochs: Iterable[int] = (), callback: TrainerCallback | None = None) -> Trainer:
        return Trainer(self.config, self.out_dir / "runs", keep_epochs=epochs, callback=callback, plots=False)

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
        """Train (or resume, or skip) the dense run, keeping its checkpoint after each epoch in ``prune_epochs``.

        A checkpoint asked for after the dense run finished without it is replayed from the run's nearest earlier
        checkpoint (:meth:`~sparsetrain.experiment.Trainer.checkpoint_at`; on CPU bit-identical).

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
        trainer = self._dense_trainer(wanted, callback)
        summary = trainer.fit()
        for epoch in wanted:
            trainer.checkpoint_at(epoch=epoch)
        return summary

    def dense_checkpoint(self, epoch: int, callback: TrainerCallback | None = None) -> Path:
        """The dense run's full checkpoint after ``epoch``, with the least training.

        Kept already: returned. Not reached yet: the dense run trains to it and stops there (a later
        :meth:`train_dense` goes on). Passed without keeping it: replayed from the nearest earlier checkpoint.

        Raises:
            ValueError: an epoch outside ``[1, epochs - 1]``.
        """
        (epoch,) = self._check_epochs([epoch])
        return self._dense_trainer((epoch,), callback).checkpoint_at(epoch=epoch)

    def _pruned_masks(self, cell: PlasticityCell, checkpoint: Path) -> dict[str, Tensor]:
        """The cell's masks: the dense weights of ``checkpoint`` pruned by magnitude (computed once, then read)."""
        path = self.masks_path(cell)
        if not path.exists():
            model = build_experiment(self.config, sparsifier=False).model
            model.load_state_dict(read_run_checkpoint(checkpoint)["model"])
            masks = magnitude_masks(select_prunable(model), cell.rate, self.scope)
            save_checkpoint({name: mask.cpu() for name, mask in masks.items()}, path)
        return load_checkpoint(path)

    def cell_config(self, cell: PlasticityCell, masks: Mapping[str, Tensor]) -> ExperimentConfig:
        """The recipe of ``cell``'s branch: its masks fixed (static) or regenerating (GraNet, no further pruning)."""
        options: dict[str, Any] = {"masks": str(self.masks_path(cell).resolve())}
        overrides: dict[str, Any] = {"sparse.method": "static", "sparse.sparsity": sparsity_report(masks).sparsity}
        if cell.regeneration:
            options.update(prune_end=0, drop_fraction=self.drop_fraction)
            overrides.update({"sparse.method": "granet", "sparse.update_every": self.regrow_every})
        return self.config.with_overrides({**overrides, "sparse.options": options})

    def train_cell(self, cell: PlasticityCell, callback: TrainerCallback | None = None) -> dict[str, Any]:
        """Prune the dense checkpoint of ``cell.epoch`` and train it to the end (skipped when finished).

        The dense checkpoint comes from :meth:`dense_checkpoint` (trained to, or replayed, if it is missing).

        Args:
            cell: the cell.
            callback: a :class:`~sparsetrain.experiment.TrainerCallback`.

        Returns:
            The cell's result row (see :meth:`rows`).
        """
        self._check_identity()
        cell_dir = self.cell_dir(cell)
        if not (cell_dir / "summary.json").exists():
            checkpoint = self.dense_checkpoint(cell.epoch, callback)
            masks = self._pruned_masks(cell, checkpoint)
            branch = Branch(checkpoint=checkpoint, take=EVERYTHING - {"sparsifier"}, sparsifier_start="zero")
            Trainer(self.cell_config(cell, masks), run_dir=cell_dir, branch=branch, callback=callback,
                    plots=False).fit()
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


