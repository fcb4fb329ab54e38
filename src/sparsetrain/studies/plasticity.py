"""The pruning-plasticity study: a dense run, and one pruned branch of it per cell, all ordinary Trainer runs.

Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration* (GraNet), NeurIPS 2021,
§3. Protocol: train a dense network with a recipe; at several epochs ``t`` take the dense checkpoint, prune it
with rate ``r`` by weight magnitude (one global threshold, or each layer on its own:
:func:`sparsetrain.analysis.plasticity.magnitude_masks`), and continue training, from the dense run's optimizer
state, learning-rate schedule and data order, to the end of the schedule, either with the mask fixed or with
GraNet's *zero-cost neuroregeneration*. The result of a cell ``(t, r, regeneration)`` is the final test accuracy
``acc`` and its change relative to the unpruned (dense) run, ``drop = (acc - acc_dense) / acc_dense``. The paper
found plasticity falls sharply after the learning rate decays, and that neuroregeneration raises it.

Neuroregeneration as GraNet's official code runs it (VITA-Group/GraNet, ``CIFAR/sparselearning/core.py`` and
``CIFAR/main.py``):

* **Pruning.** ``Masking.init`` with ``--sparse-init prune_global`` (core.py lines 135-164: one ``topk``
  threshold over all layers, ``int(N * (1 - pruning_rate))`` weights kept, momentum zeroed by ``apply_mask``) or
  ``prune_uniform`` (lines 118-133: ``ceil(pruning_rate * n)`` of each layer removed after a sort). The counts are
  those of :func:`~sparsetrain.analysis.plasticity.magnitude_masks`; the pruned weights and their optimizer state
  are zeroed when the cell's sparsifier attaches.
* **Regeneration.** Training continues through ``Masking.step`` (core.py lines 335-346 with ``--method DST``):
  every ``update_frequency`` optimizer steps, counted over the whole run (``self.steps % prune_every_k_steps``),
  ``truncate_weights`` (lines 537-563) drops ``ceil(prune_rate * nonzeros)`` of each layer's active weights by
  magnitude (``magnitude_death``, lines 584-592) and regrows as many inactive ones by the dense gradient of the
  current minibatch (``gradient_growth``, lines 617-624), at zero; a weight dropped and regrown in the same update
  keeps its value. ``prune_rate`` is ``CosineDecay(0.5, len(train_loader) * epochs)`` (main.py line 274; core.py
  lines 27-36, ``eta_min`` 0.005) stepped once per optimizer step (core.py line 338): the run-wide cosine, not one
  restarted at the pruning point. Here that is :class:`~sparsetrain.methods.granet.GraNet` on the pruned masks
  with no further pruning (``prune_end=0``), its step counter continuing the dense run's
  (``Branch(sparsifier_start="branch")``), so its drop fraction at step ``s`` of a ``T``-step run is
  ``0.005 + 0.2475 (1 + cos(pi s / T))`` and updates fall on the run's multiples of ΔT.
* **Cadence.** ΔT is the same fraction of the run as GraNet's CIFAR recipe: 1,000 optimizer steps
  (``--update-frequency 1000``, CIFAR/scripts/script) of 160 epochs x 352 batches (main.py line 169 holds out
  ``--valid_split 0.1`` of the 50,000 training images; batch 128): :data:`GRANET_UPDATE_FRACTION` = 1/56.32 of
  the run, rounded to whole steps (:func:`regrowth_interval`). ``regrow_every`` overrides it (steps, or a fraction
  of the run).

Where the released code leaves a gap: ``main.py`` loads a dense checkpoint with ``--resume`` as weights only, with
a fresh optimizer and learning-rate schedule from epoch 1, and no driver passes the gradients (``grad_dict``) that
the ``prune_and_grow_*`` modes (core.py lines 166-244) need. Read on a dense checkpoint, those modes regrow, per
layer, as many weights as were pruned among the zero positions, which are exactly the pruned ones: the network
would leave the pruning step dense again (its smallest weights and their momentum reset to zero), with no sparsity
left to study. We run the zero-cost reading instead (the paper's "regenerate the same number of connections as
pruned", GraNet's own update): the cell keeps its pruned count and regenerates through ``truncate_weights`` at
the run's cadence, the first time at the first multiple of ΔT after the pruning point; and a cell continues the
dense run exactly (optimizer state, learning-rate schedule, data order), so that t is a point *of that run*.

Every stage is a :class:`~sparsetrain.experiment.Trainer` run, skipped when finished and resumed when interrupted:

* the **dense run** keeps its full checkpoints after the pruning epochs (``keep_epochs``); a cell gets its
  checkpoint with :meth:`Trainer.checkpoint_at <sparsetrain.experiment.Trainer.checkpoint_at>`, so a dense run
  whose checkpoints exist is never trained again, and one that finished without a checkpoint asked for later is
  replayed from its nearest earlier one.
* each **cell** is a branch of that checkpoint that takes everything but the sparsifier
  (``Branch(take=EVERYTHING - {"sparsifier"}, sparsifier_start="branch")``), with the pruned masks as its
  method's starting masks (``sparse.options.masks``): ``sparse.method=static`` (fixed) or ``granet`` (regeneration).

The **learning-rate control** (:func:`late_decay_config`) is the same study on the recipe with its decays moved
later: the same pruning points and remaining budget, but pruned before the decays. Comparing a cell with its
control separates the learning-rate phase from the shrinking training budget. :func:`run_plasticity` runs the
recipe and the control for several seeds.

Layout of a study directory (:func:`run_plasticity`)::

    recipe/seed_<n>/                   one PlasticityStudy: the recipe's schedule, one seed
        study.json                     the recipe and pruning options (a rerun must match them)
        runs/dense-<hash>/seed_<n>/    the dense run; checkpoints/step_<n>.pt after each pruning epoch
        masks/t<t>-r<r>.pt             the dense checkpoint of epoch t pruned with rate r
        cells/t<t>-r<r>-<regen|fixed>/ one branch per cell (config.yaml, branch.json, metrics.jsonl, ...)
    late-decay/seed_<n>/               the same for the learning-rate control
    plasticity.md  plasticity.csv  plasticity.png

Deviation from the paper: the dense network is pruned at the end of an epoch (``t`` counts finished epochs).
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
    SCHEDULES,
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
from sparsetrain.schedules import check_point
from sparsetrain.selection import check_scope
from sparsetrain.validation import check_choice, check_fraction

__all__ = [
    "GRANET_UPDATE_FRACTION",
    "DEFAULT_RATES",
    "PlasticityCell",
    "PlasticityStudy",
    "plasticity_cells",
    "lr_decay_epochs",
    "default_prune_epochs",
    "regrowth_interval",
    "late_decay_config",
    "study_dir",
    "plasticity_studies",
    "run_plasticity",
    "write_outputs",
]

logger = logging.getLogger(__name__)

#: GraNet's ΔT as a fraction of its CIFAR run: 1,000 of 160 epochs x 352 optimizer steps (see the module docstring).
GRANET_UPDATE_FRACTION = 1000 / (160 * 352)

#: The pruning rates a study uses unless told otherwise: up to 0.95 and 0.98, where a small network needs the
#: capacity it loses.
DEFAULT_RATES = (0.5, 0.8, 0.95, 0.98)


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


def _check_regrow_every(name: str, value: Any) -> int | float:
    """ΔT: an int (steps, >= 1) or a float in (0, 1] (a fraction of the run)."""
    check_point(name, value)
    if value == 0:
        raise ValueError(f"{name}={value!r} is not allowed: ΔT must be at least one step (an int >= 1) or a "
                         "fraction of the run in (0, 1]")
    return value


def regrowth_interval(regrow_every: int | float, total_steps: int) -> int:
    """ΔT in optimizer steps: ``regrow_every`` itself (an int), or that fraction of ``total_steps`` rounded, at
    least 1 (a float; :data:`GRANET_UPDATE_FRACTION` is GraNet's).

    Raises:
        ValueError / TypeError: ``regrow_every`` is neither an int >= 1 nor a float in (0, 1].
    """
    _check_regrow_every("regrow_every", regrow_every)
    if isinstance(regrow_every, float):
        return max(1, round(regrow_every * total_steps))
    return regrow_every


def late_decay_config(config: ExperimentConfig, milestones: Sequence[float]) -> ExperimentConfig:
    """The learning-rate control of a recipe: the same run with its multistep decays moved to ``milestones``.

    Args:
        config: the recipe (``optim.lr_schedule`` "multistep").
        milestones: the control's decay points, fractions of the run, one per decay of the recipe and each at
            or after the recipe's.

    Returns:
        The control's recipe.

    Raises:
        ValueError: the recipe has no multistep schedule, or ``milestones`` do not move its decays later.
    """
    if config.optim.lr_schedule != "multistep":
        raise ValueError(f"late_decay={list(milestones)!r} needs a multistep learning rate (optim.lr_schedule="
                         f"multistep), the recipe has {config.optim.lr_schedule!r}")
    late = [float(m) for m in milestones]
    recipe = list(config.optim.milestones)
    if len(late) != len(recipe) or any(b < a for a, b in zip(recipe, late)):
        raise ValueError(f"late_decay={late!r} is not allowed: one milestone per decay of the recipe "
                         f"({recipe!r}), each at or after the recipe's")
    return config.with_overrides({"optim.milestones": late})


class PlasticityStudy:
    """The stages of one plasticity study (one recipe, one seed) in ``out_dir``: the dense run, then its branches.

    Args:
        config: the recipe (an :class:`~sparsetrain.experiment.ExperimentConfig`); its sparse section is ignored
            (the dense run trains without a sparsifier). A multistep learning rate shows the decays' effect.
        out_dir: the study directory (created).
        scope: "global" or "layer" magnitude pruning.
        regrow_every: ΔT of neuroregeneration: optimizer steps (an int) or a fraction of the run (a float in
            (0, 1]); default GraNet's (:data:`GRANET_UPDATE_FRACTION`).
        drop_fraction: neuroregeneration's drop fraction at step 0 of the run (GraNet: 0.5), cosine-decayed over
            the whole run to 0.005.
        schedule: the label of this study's learning-rate schedule in its rows: "recipe" or "late-decay" (the
            control, :func:`late_decay_config`).

    Raises:
        ValueError: an argument is not allowed, or ``out_dir`` holds a study with another recipe or options.
    """

    def __init__(self, config: ExperimentConfig, out_dir: str | Path, *, scope: str = "global",
                 regrow_every: int | float = GRANET_UPDATE_FRACTION, drop_fraction: float = 0.5,
                 schedule: str = "recipe") -> None:
        self.config = config.dense_baseline()
        self.out_dir = Path(out_dir)
        self.scope = check_scope(scope)
        self.regrow_every = _check_regrow_every("regrow_every", regrow_every)
        self.drop_fraction = check_fraction("drop_fraction", drop_fraction)
        self.schedule = check_choice("schedule", schedule, SCHEDULES)
        self.dense_run = RunDir.for_config(self.out_dir / "runs", self.config)

    # -- files ----------------------------------------------------------------------------------------------
    def _identity(self) -> dict[str, Any]:
        return {"config": self.config.non_default(), "seed": self.config.train.seed, "scope": self.scope,
                "regrow_every": self.regrow_every, "drop_fraction": self.drop_fraction,
                "regeneration": "granet-run-wide"}

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

    def _pruned_masks(self, cell: PlasticityCell, state: Mapping[str, Any]) -> dict[str, Tensor]:
        """The cell's masks: the dense weights of checkpoint ``state`` pruned by magnitude (computed once, then
        read)."""
        path = self.masks_path(cell)
        if not path.exists():
            model = build_experiment(self.config, sparsifier=False).model
            model.load_state_dict(state["model"])
            masks = magnitude_masks(select_prunable(model), cell.rate, self.scope)
            save_checkpoint({name: mask.cpu() for name, mask in masks.items()}, path)
        return load_checkpoint(path)

    def update_every(self, total_steps: int) -> int:
        """ΔT in optimizer steps for a run of ``total_steps`` (:func:`regrowth_interval`)."""
        return regrowth_interval(self.regrow_every, total_steps)

    def cell_config(self, cell: PlasticityCell, masks: Mapping[str, Tensor], total_steps: int) -> ExperimentConfig:
        """The recipe of ``cell``'s branch: its masks fixed (static) or regenerating (GraNet, no further pruning,
        ΔT from :meth:`update_every` of the dense run's ``total_steps``)."""
        options: dict[str, Any] = {"masks": str(self.masks_path(cell).resolve())}
        overrides: dict[str, Any] = {"sparse.method": "static", "sparse.sparsity": sparsity_report(masks).sparsity}
        if cell.regeneration:
            options.update(prune_end=0, drop_fraction=self.drop_fraction)
            overrides.update({"sparse.method": "granet", "sparse.update_every": self.update_every(total_steps)})
        return self.config.with_overrides({**overrides, "sparse.options": options}).pinned_storage()

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
            state = read_run_checkpoint(checkpoint)
            total_steps = int(state["step"]) // int(state["epoch"]) * self.config.train.epochs
            masks = self._pruned_masks(cell, state)
            branch = Branch(checkpoint=checkpoint, take=EVERYTHING - {"sparsifier"}, sparsifier_start="branch")
            Trainer(self.cell_config(cell, masks, total_steps), run_dir=cell_dir, branch=branch, callback=callback,
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
        return {"schedule": self.schedule, "seed": self.config.train.seed, "epoch": cell.epoch, "step": step,
                "lr": lr, "rate": cell.rate, "regeneration": cell.regeneration, "acc": acc, "dense_acc": dense_acc,
                "drop": drop, "diff": diff, "sparsity": summary.get("sparsity")}

    def rows(self) -> list[dict[str, Any]]:
        """The rows of every finished cell, by t, r, regeneration.

        Each row: ``schedule`` (this study's label), ``seed``, ``epoch`` (t), ``step`` (optimizer steps before
        pruning), ``lr`` (learning rate right after t), ``rate``, ``regeneration``, ``acc`` (final test accuracy),
        ``dense_acc`` (the dense run's), ``drop`` (``(acc - dense_acc) / dense_acc``), ``diff``
        (``acc - dense_acc``), ``sparsity`` (measured at the end).
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


def study_dir(out_dir: str | Path, schedule: str, seed: int) -> Path:
    """``<out_dir>/<schedule>/seed_<n>``: the directory of one study of :func:`run_plasticity`."""
    return Path(out_dir) / check_choice("schedule", schedule, SCHEDULES) / f"seed_{seed}"


def plasticity_studies(config: ExperimentConfig, out_dir: str | Path, *, seeds: Sequence[int] | None = None,
                       late_decay: Sequence[float] | None = None, scope: str = "global",
                       regrow_every: int | float = GRANET_UPDATE_FRACTION,
                       drop_fraction: float = 0.5) -> list[PlasticityStudy]:
    """The studies of :func:`run_plasticity`: each seed with the recipe's schedule, then each with the control's.

    Raises:
        ValueError: an argument is not allowed (see :class:`PlasticityStudy`, :func:`late_decay_config`).
    """
    seed_list = list(dict.fromkeys(seeds if seeds is not None else [config.train.seed]))
    if not seed_list or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seed_list):
        raise ValueError(f"seeds={seeds!r} is not allowed: at least one int >= 0")
    recipes = [("recipe", config)]
    if late_decay is not None:
        recipes.append(("late-decay", late_decay_config(config, late_decay)))
    return [PlasticityStudy(recipe.with_overrides({"train.seed": seed}), study_dir(out_dir, schedule, seed),
                            scope=scope, regrow_every=regrow_every, drop_fraction=drop_fraction, schedule=schedule)
            for schedule, recipe in recipes for seed in seed_list]


def run_plasticity(config: ExperimentConfig, out_dir: str | Path, *, prune_epochs: Sequence[int] | None = None,
                   rates: Sequence[float] = DEFAULT_RATES, regeneration: Sequence[bool] = (False, True),
                   seeds: Sequence[int] | None = None, late_decay: Sequence[float] | None = None,
                   scope: str = "global", regrow_every: int | float = GRANET_UPDATE_FRACTION,
                   drop_fraction: float = 0.5, callback: TrainerCallback | None = None) -> list[dict[str, Any]]:
    """Run (or resume) a pruning-plasticity study over seeds, with its learning-rate control, and write its table
    and plot into ``out_dir``.

    Args:
        config: the dense recipe (:class:`~sparsetrain.experiment.ExperimentConfig`).
        out_dir: the study directory (layout in the module docstring).
        prune_epochs: the points t; default :func:`default_prune_epochs` (before and after each LR decay).
        rates: pruning rates r.
        regeneration: which settings to run (False: mask fixed; True: GraNet neuroregeneration).
        seeds: one study per seed (default: the config's ``train.seed``).
        late_decay: the learning-rate control's milestones (:func:`late_decay_config`); None: no control.
        scope: "global" or "layer" magnitude pruning.
        regrow_every: neuroregeneration's ΔT: steps (int) or a fraction of the run (float); default GraNet's.
        drop_fraction: neuroregeneration's drop fraction at step 0 of the run (cosine-decayed over the run).
        callback: a :class:`~sparsetrain.experiment.TrainerCallback`.

    Returns:
        The rows of every seed and schedule (see :meth:`PlasticityStudy.rows`); ``plasticity.md`` (mean ± std
        over seeds), ``plasticity.csv`` (every row) and ``plasticity.png`` are written into ``out_dir``.

    Raises:
        ValueError: an argument is not allowed (see :func:`plasticity_studies`, :meth:`PlasticityStudy.cells`).
        sparsetrain.experiment.lock.DirectoryLocked: another process is running this study.
    """
    studies = plasticity_studies(config, out_dir, seeds=seeds, late_decay=late_decay, scope=scope,
                                 regrow_every=regrow_every, drop_fraction=drop_fraction)
    epochs = tuple(prune_epochs) if prune_epochs is not None else default_prune_epochs(studies[0].config)
    for study in studies:  # every study's cells checked before anything is trained
        study.cells(epochs, rates, regeneration)
    # One process per study directory (every seed and schedule below it), before anything is written.
    with DirectoryLock(out_dir, f"plasticity study {Path(out_dir)}"):
        rows = [row for study in studies for row in study.run(epochs, rates, regeneration, callback)]
        write_outputs(out_dir, rows, studies)
    return rows


def write_outputs(out_dir: str | Path, rows: Sequence[Mapping[str, Any]],
                  studies: Sequence[PlasticityStudy]) -> list[Path]:
    """Write ``plasticity.md``, ``plasticity.csv`` and ``plasticity.png`` of ``rows`` into ``out_dir``.

    Args:
        out_dir: the directory.
        rows: the rows of every study (one per cell and seed).
        studies: the studies (their recipes give the learning-rate decays of the plot).

    Returns:
        The paths written.
    """
    out = Path(out_dir)
    md = out / "plasticity.md"
    write_text(format_plasticity(rows, "markdown") + "\n", md)
    csv_path = out / "plasticity.csv"
    write_text(format_plasticity(rows, "csv"), csv_path)
    config = studies[0].config
    decays = {study.schedule: lr_decay_epochs(study.config) for study in studies}
    png = plot_plasticity(rows, out / "plasticity.png", lr_decays=decays,
                          title=f"pruning plasticity: {config.model.name} on {config.data.name}, "
                                f"{studies[0].scope} magnitude pruning")
    return [md, csv_path, png]
