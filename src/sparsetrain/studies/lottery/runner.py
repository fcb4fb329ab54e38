"""``run_lottery``: iterative magnitude pruning with rewinding on disk, every stage an ordinary Trainer run.

Frankle & Carbin (ICLR 2019, *The Lottery Ticket Hypothesis*); Frankle et al. (ICML 2020, *Linear Mode
Connectivity and the Lottery Ticket Hypothesis*, rewinding to step k). Every stage trains with the recipe of one
:class:`~sparsetrain.experiment.ExperimentConfig` through :class:`~sparsetrain.experiment.Trainer`, the library's
one training loop:

* **level 0** is the dense run of the recipe; it keeps its checkpoint at the rewind step k
  (``keep_steps=[k]``): the rewind point.
* **level L >= 1** prunes the previous level's final weights by magnitude (:func:`sparsetrain.lottery.prune_round`
  for the geometric schedule, :func:`~sparsetrain.lottery.prune_to_sparsity` for target sparsities; the dense
  weights in the one-shot variant; the weights at ``rank_step`` of that run instead of its final ones if asked,
  from its kept checkpoint there, replayed if missing; each layer's bias ranked with its weight with
  ``prune_biases``) and trains the ticket as a branch of the rewind point: the
  weights, the learning-rate schedule's position and the data order at step k, with a fresh optimizer
  (``Branch(take={"model", "position", "data"})``; OpenLTH saves only the weights at the rewind step), and the
  ticket as a fixed mask (``sparse.method=static``, ``sparse.options.masks=<the ticket>``), for the remaining
  steps.
* the **reinit** control takes the position and data order of the rewind point and a fresh initialisation of
  the weights (:func:`sparsetrain.lottery.reinitialize`, seeded); the **random** control the rewind weights with
  a random mask of the ticket's per-tensor counts (:func:`sparsetrain.lottery.random_mask_like`).

A stage whose ``summary.json`` exists is skipped; an interrupted one resumes from its last checkpoint as any
Trainer run does (mid-level, bit-identically on CPU). Layout of a lottery directory::

    config.json            the LotteryConfig (a rerun must match it)
    experiment.yaml        the recipe (a rerun must match its identifying fields)
    level_<L>/             L = 0 (dense) .. rounds
        masks.pt           the ticket: name -> bool mask (all True at level 0)
        sparsity.json/.txt per-tensor kept weights, from the mask
        run/               the level's Trainer run directory (config.yaml, metrics.jsonl, checkpoint.pt, masks.pt,
                           summary.json, ...); level 0's keeps checkpoints/step_<k>.pt, the rewind point, and
                           every ticket's run checkpoints/step_<rank_step>.pt, when ranking at a step
        reinit_weights.pt  the "reinit" control's fresh initialisation (L >= 1)
        reinit/            its Trainer run directory
        random_masks.pt    the "random" control's mask (L >= 1)
        random/            its Trainer run directory
    curve.md, curve.png    the metric against weights remaining, written at the end

The masks and weights a stage starts from sit beside its run directory, not in it (the run writes its own
``masks.pt`` at the end). Configs name them by absolute path: a lottery directory moved elsewhere keeps its
finished stages, and an interrupted stage in it is refused as a changed config.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsetrain.atomic import write_json, write_text
from sparsetrain.checkpoint_io import load_checkpoint, save_checkpoint
from sparsetrain.experiment import Branch, ConfigError, ExperimentConfig, Trainer, TrainerCallback
from sparsetrain.experiment.build import Experiment, build_experiment
from sparsetrain.experiment.lock import DirectoryLock
from sparsetrain.experiment.run_state import read_run_checkpoint
from sparsetrain.experiment.rundir import RunDir
from sparsetrain.identity import identity_hash
from sparsetrain.lottery import (
    layer_rates,
    level_count,
    level_sparsities,
    pattern_groups,
    prune_round,
    prune_to_sparsity,
    random_mask_like,
    reinitialize,
    snapshot,
)
from sparsetrain.masks import paired_biases, select_prunable, sparsity_report
from sparsetrain.nm import nm_layouts

from .config import LotteryConfig
from .results import curve_table, lottery_curve, plot_curve

__all__ = ["run_lottery", "level_dir", "lottery_dir", "lottery_identity", "RUN", "StageHook"]

logger = logging.getLogger(__name__)

#: The name of a level's own run directory inside ``level_<L>/`` (its controls are ``reinit/`` and ``random/``).
RUN = "run"

#: ``hook(run_dir, fraction of weights kept, steps to train)``, called before a stage trains.
StageHook = Callable[[Path, float, int], None]


def level_dir(run_dir: str | os.PathLike[str], level: int) -> Path:
    """``run_dir/level_<level>``."""
    return Path(run_dir) / f"level_{level}"


def lottery_identity(config: ExperimentConfig, lottery: LotteryConfig) -> str:
    """The hash naming a lottery run: the recipe's identifying fields and the lottery options, seeds left out (and
    the options added later while at their defaults, :meth:`LotteryConfig.identity`). A model given as
    ``package.module:factory`` is named by that qualified name (``model.name``)."""
    options = lottery.identity()
    if options.get("scope") == "layer":
        options["scope"] = "layerwise"  # hashed under the spelling it had when the first runs were named
    return identity_hash({"experiment": config.non_default(), "lottery": options}, compact=False)


def lottery_dir(runs_dir: str | Path, config: ExperimentConfig, lottery: LotteryConfig) -> Path:
    """``runs_dir/lottery-<hash>/seed_<n>``: the directory ``sparsetrain lottery`` runs ``config`` in.

    Args:
        runs_dir: the runs directory.
        config: the recipe (its non-default identifying fields count; ``train.seed`` names ``seed_<n>``).
        lottery: the lottery options (all fields but the seed count).
    """
    return Path(runs_dir) / f"lottery-{lottery_identity(config, lottery)}" / f"seed_{config.train.seed}"


def _check_or_write(path: Path, mine: dict[str, Any], what: str, theirs_of: Callable[[str], dict[str, Any]]) -> None:
    """Write ``mine`` to ``path``, or check that the one there equals it (a rerun must match)."""
    if not path.exists():
        write_json(mine, path, sort_keys=True)
        return
    theirs = theirs_of(path.read_text())
    if theirs != mine:
        changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
        raise ValueError(f"{path.parent} holds a lottery run with another {what} (fields {changed} differ); use "
                         "another out_dir")


def _check_config(out_dir: Path, lottery: LotteryConfig) -> None:
    """``config.json`` holds ``lottery`` (a run saved with an old spelling of the same options is the same run)."""
    _check_or_write(out_dir / "config.json", json.loads(json.dumps(lottery.to_dict())), "config",
                    lambda text: LotteryConfig.from_dict(json.loads(text)).to_dict())


def _recipe_identity(config: ExperimentConfig) -> dict[str, Any]:
    return {**config.non_default(), "train.seed": config.train.seed}


def _check_recipe(out_dir: Path, config: ExperimentConfig) -> None:
    """``experiment.yaml`` holds a recipe with the same identifying fields and seed as ``config``."""
    path = out_dir / "experiment.yaml"
    if path.exists():
        theirs = _recipe_identity(ExperimentConfig.from_yaml(path.read_text(), str(path)))
        mine = _recipe_identity(config)
        if theirs != mine:
            changed = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(f"{out_dir} holds a lottery run with another recipe (fields {changed} differ); use "
                             "another out_dir")
    else:
        write_text(config.to_yaml(), path)


def _check_layout(out_dir: Path) -> None:
    """Refuse a lottery directory of the layout before stages were Trainer runs (its levels cannot resume)."""
    if (level_dir(out_dir, 0) / "metrics.json").exists() and not (level_dir(out_dir, 0) / RUN).exists():
        raise ValueError(f"{out_dir} holds a lottery run of an older sparsetrain (levels without {RUN}/ "
                         "directories); use another out_dir")


def _save_masks(masks: Mapping[str, Tensor], path: Path, report_dir: Path | None = None) -> None:
    """Save bool masks to ``path`` (and, with ``report_dir``, their ``sparsity.json`` / ``sparsity.txt``)."""
    save_checkpoint({name: mask.detach().to("cpu", torch.bool) for name, mask in masks.items()}, path)
    if report_dir is not None:
        report = sparsity_report(masks)
        write_text(str(report) + "\n", report_dir / "sparsity.txt")
        write_json(report.to_dict(), report_dir / "sparsity.json", sort_keys=True)


class _Lottery:
    """One lottery run's stages on disk; each is skipped when finished and resumed when interrupted."""

    def __init__(self, config: ExperimentConfig, lottery: LotteryConfig, out_dir: Path,
                 callback: TrainerCallback | None, on_stage: StageHook | None, plots: bool) -> None:
        self.recipe = config.dense_baseline()
        self.lottery = lottery
        self.dir = out_dir
        self.callback = callback
        self.on_stage = on_stage
        self.plots = plots
        self._exp: Experiment | None = None

    @property
    def exp(self) -> Experiment:
        """The recipe's experiment at initialisation, built once (tensor names, shapes, steps, a model to copy)."""
        if self._exp is None:
            self._exp = build_experiment(self.recipe, sparsifier=False)
        return self._exp

    def names(self) -> list[str]:
        """The pruned weights (``include`` / ``exclude`` over the default selection), in model order."""
        return list(select_prunable(self.exp.model, include=self.lottery.include, exclude=self.lottery.exclude))

    def units(self) -> dict[str, tuple[str, ...]]:
        """With ``prune_biases``: weight name -> (the weight, its bias), ranked together; otherwise none."""
        if not self.lottery.prune_biases:
            return {}
        return {weight: (weight, bias) for weight, bias in paired_biases(self.exp.model, self.names()).items()}

    def mask_names(self) -> list[str]:
        """Every masked tensor: the pruned weights and, with ``prune_biases``, their biases (in model order)."""
        masked = set(self.names()) | {bias for _, bias in self.units().values()}
        return [name for name, _ in self.exp.model.named_parameters() if name in masked]

    def layouts(self) -> dict[str, Any] | None:
        """Each tensor's N:M layout (None without a pattern)."""
        if self.lottery.pattern is None:
            return None
        selected = select_prunable(self.exp.model, include=self.lottery.include, exclude=self.lottery.exclude)
        return nm_layouts(self.exp.model, selected, self.lottery.pattern)

    # -- stages ---------------------------------------------------------------------------------------------
    def train(self, run_dir: Path, config: ExperimentConfig, masks: Mapping[str, Tensor] | None = None, *,
              branch: Branch | None = None, keep_steps: tuple[int, ...] = ()) -> dict[str, Any]:
        """Train (or resume, or skip) one stage: a Trainer run in ``run_dir``."""
        trainer = Trainer(config, run_dir=run_dir, branch=branch, keep_steps=keep_steps, callback=self.callback,
                          plots=self.plots)
        finished = trainer.run.read_summary()
        if finished is not None:
            logger.info("%s: finished already, skipped", run_dir)
            return finished
        if self.on_stage is not None:
            kept = 1.0 if masks is None else 1.0 - sparsity_report(masks).sparsity
            start = self.lottery.rewind_step if branch is not None else 0
            self.on_stage(run_dir, kept, self.exp.total_steps - start)
        return trainer.fit()

    def rank_steps(self) -> tuple[int, ...]:
        """The step whose weights the next level ranks, kept by every ticket's run (none: the final weights)."""
        return () if self.lottery.rank_step is None else (self.lottery.rank_step,)

    def dense(self) -> Path:
        """Level 0: the dense run; returns its checkpoint at the rewind step."""
        where = level_dir(self.dir, 0)
        if not (where / "masks.pt").exists():
            params = dict(self.exp.model.named_parameters())
            _save_masks({name: torch.ones(params[name].shape, dtype=torch.bool) for name in self.mask_names()},
                        where / "masks.pt", where)
        k = self.lottery.rewind_step
        self.train(where / RUN, self.recipe, keep_steps=(k, *self.rank_steps()))
        rewind = RunDir(where / RUN).kept_checkpoint(k)
        if rewind.exists():
            return rewind
        # e.g. the checkpoint was deleted: replayed from the run's nearest earlier checkpoint
        return Trainer(self.recipe, run_dir=where / RUN, plots=False).checkpoint_at(step=k)

    def ticket_stage(self, level: int, rewind: Path) -> tuple[Path, ExperimentConfig, Branch | None]:
        """The run directory, recipe and branch of ``level``'s ticket (level 0: the dense run)."""
        where = level_dir(self.dir, level)
        if level == 0:
            return where / RUN, self.recipe, None
        masks = load_checkpoint(where / "masks.pt")
        return (where / RUN, self.sparse_recipe(where / "masks.pt", masks),
                Branch(checkpoint=rewind, take={"model", "position", "data"}))

    def ranking_weights(self, level: int, rewind: Path) -> dict[str, Tensor]:
        """The weights of ``level``'s ticket that the next level ranks: at ``rank_step`` (kept, or replayed), or
        final."""
        run_dir, config, branch = self.ticket_stage(level, rewind)
        step = self.lottery.rank_step
        if step is None:
            return read_run_checkpoint(run_dir / "checkpoint.pt")["model"]
        kept = RunDir(run_dir).kept_checkpoint(step)
        if not kept.exists():
            kept = Trainer(config, run_dir=run_dir, branch=branch, plots=False).checkpoint_at(step=step)
        return read_run_checkpoint(kept)["model"]

    def masks_for(self, level: int, rewind: Path) -> dict[str, Tensor]:
        """The ticket of ``level`` (pruned from the weights of the level before, or of level 0 in one shot)."""
        where = level_dir(self.dir, level)
        if (where / "masks.pt").exists():
            return load_checkpoint(where / "masks.pt")
        lottery = self.lottery
        source = 0 if lottery.one_shot else level - 1
        weights = self.ranking_weights(source, rewind)
        previous = self.masks_for(source, rewind)
        names, units = self.names(), self.units()
        output = lottery.output_layer or names[-1]
        rates = layer_rates(names, lottery.prune_rate or 0.0, lottery.output_rate, lottery.output_layer)
        targets = level_sparsities(lottery.schedule, lottery.rounds, final_sparsity=lottery.final_sparsity,
                                   sparsities=lottery.sparsities)
        if targets is None:
            masks = prune_round(weights, previous, rates, scope=lottery.scope,
                                separate=(output,) if lottery.output_rate is not None else (), levels=level - source,
                                units=units, pattern=lottery.pattern, layouts=self.layouts())
        else:
            own = {}
            if lottery.output_rate is not None:
                numel = sum(previous[name].numel() for name in units.get(output, (output,)))
                own[output] = level_count(numel, lottery.output_rate, level)
            masks = prune_to_sparsity(weights, previous, targets[level - 1], scope=lottery.scope, separate=own,
                                      units=units)
        _save_masks(masks, where / "masks.pt", where)
        logger.info("level %d: %d of %d weights kept", level, sum(int(m.sum()) for m in masks.values()),
                    sum(m.numel() for m in masks.values()))
        return masks

    def sparse_recipe(self, masks_file: Path, masks: Mapping[str, Tensor]) -> ExperimentConfig:
        """The recipe with ``masks_file`` as a fixed mask (static), at the masks' sparsity."""
        return self.recipe.with_overrides({"sparse.method": "static",
                                           "sparse.sparsity": sparsity_report(masks).sparsity,
                                           "sparse.options": {"masks": str(masks_file.resolve())}}).pinned_storage()

    def level(self, level: int, rewind: Path) -> None:
        """Level ``level`` >= 1: the ticket, then its controls, each a branch of the rewind point."""
        where = level_dir(self.dir, level)
        masks = self.masks_for(level, rewind)
        rewound = Branch(checkpoint=rewind, take={"model", "position", "data"})
        self.train(where / RUN, self.sparse_recipe(where / "masks.pt", masks), masks, branch=rewound,
                   keep_steps=self.rank_steps())
        seed = self.lottery.seed + 1_000 * level
        for control in self.lottery.controls:
            if control == "reinit":
                weights = where / "reinit_weights.pt"
                if not weights.exists():
                    model = self.exp.model
                    model.load_state_dict(read_run_checkpoint(rewind)["model"])
                    save_checkpoint(snapshot(reinitialize(model, seed)), weights)
                branch = Branch(checkpoint=rewind, take={"position", "data"}, weights=weights)
                config = self.sparse_recipe(where / "masks.pt", masks)
            else:
                masks_file = where / "random_masks.pt"
                if not masks_file.exists():
                    layouts = self.layouts()
                    groups = None if layouts is None else pattern_groups(masks, self.lottery.pattern, layouts)
                    _save_masks(random_mask_like(masks, seed, groups), masks_file)
                config, branch = self.sparse_recipe(masks_file, masks), rewound
            self.train(where / control, config, masks, branch=branch)


def run_lottery(
    config: ExperimentConfig,
    lottery: LotteryConfig,
    out_dir: str | os.PathLike[str],
    *,
    stop_after: int | None = None,
    callback: TrainerCallback | None = None,
    on_stage: StageHook | None = None,
    plots: bool = True,
) -> list[dict[str, Any]]:
    """Iterative magnitude pruning with rewinding and its controls (Frankle & Carbin 2019; Frankle et al. 2020).

    Every stage is a :class:`~sparsetrain.experiment.Trainer` run of ``config``'s recipe (see the module
    docstring): level 0 the dense run, each level ``L >= 1`` its ticket (pruned by magnitude to the level's
    sparsity under ``lottery.schedule``: ``prune_rate`` of the remaining weights per round, a linear rise or a list
    of targets; ``output_rate`` for the output layer) trained from the rewind point, and the controls. Finished
    stages are skipped and an interrupted one resumes where it stopped.

    Args:
        config: the recipe: data, model, optimizer, schedule and training (``train.seed`` seeds training); its
            sparse section is not used (the lottery chooses the masks).
        lottery: the lottery options (see :class:`LotteryConfig`; ``lottery.seed`` seeds the controls).
        out_dir: the lottery directory (created; one holding the same config and recipe is resumed).
        stop_after: stop after this level (for staged runs); None runs every level.
        callback: progress hooks passed to every stage's Trainer.
        on_stage: ``on_stage(run_dir, kept, steps)`` before a stage trains, with the fraction of weights it keeps
            and the steps it trains.
        plots: write every stage's plots, and ``curve.png`` at the end (``curve.md`` is always written, when its
            rows changed).

    Returns:
        :func:`~sparsetrain.studies.lottery.lottery_curve` of the run: one row per finished level.

    Raises:
        TypeError: ``config`` or ``lottery`` of the wrong type.
        ValueError: ``out_dir`` holds a lottery run with another config or recipe, or of an older layout.
        sparsetrain.experiment.ConfigError: the recipe is rejected by the data, model or optimizer, or
            ``lottery.output_layer`` / ``rewind_step`` / ``rank_step`` do not fit the model or the run (nothing is
            written).
        sparsetrain.experiment.lock.DirectoryLocked: another process is running this lottery run.
        sparsetrain.experiment.TrainingInterrupted: SIGINT/SIGTERM stopped a stage (a checkpoint was written).
    """
    if not isinstance(config, ExperimentConfig):
        raise TypeError(f"config must be an ExperimentConfig (the recipe), got {type(config).__name__}")
    if not isinstance(lottery, LotteryConfig):
        raise TypeError(f"lottery must be a LotteryConfig, got {type(lottery).__name__}")
    out = Path(out_dir)
    run = _Lottery(config, lottery, out, callback, on_stage, plots)
    try:  # options that depend on the model and the run, checked before a file is written
        lottery.check_run(run.names(), run.exp.total_steps)
    except ValueError as exc:
        raise ConfigError(f"lottery: {exc}") from None
    with DirectoryLock(out, f"lottery run {out}"):  # one process per lottery run
        _check_config(out, lottery)
        _check_recipe(out, run.recipe)
        _check_layout(out)
        rewind = run.dense()
        last = lottery.rounds if stop_after is None else min(lottery.rounds, stop_after)
        for level in range(1, last + 1):
            run.level(level, rewind)
        rows = lottery_curve(out)
        table = curve_table(rows) + "\n"
        if (out / "curve.md").exists() and (out / "curve.md").read_text() == table and \
                ((out / "curve.png").exists() or not plots or not rows):
            return rows  # nothing new: a rerun of a finished run writes nothing
        write_text(table, out / "curve.md")
        if plots and rows:
            try:
                plot_curve(rows, out / "curve.png", title=f"{out.parent.name}/{out.name}: ticket and controls")
            except Exception as exc:  # a plotting failure must not lose the run
                logger.warning("curve.png not written: %s: %s", type(exc).__name__, exc)
        return rows
