"""A lottery train function from the harness's :class:`~sparsetrain.experiment.ExperimentConfig`.

The data, model, optimizer and LR schedule of every level come from the config, built by the harness
(:func:`sparsetrain.experiment.build.build_experiment`); the loop is the library's two-line contract with a
:class:`~sparsetrain.Static` sparsifier holding the level's mask. Each call builds a fresh optimizer and LR
schedule (both restart every round, as in Frankle & Carbin 2019) and re-seeds the data order, so every level
sees the same batches in the same order. A round that starts at the rewind step k skips the first k batches
and the first k steps of the LR schedule, and trains the remaining ``total_steps - k`` steps (Frankle et al.
2020). ``config.sparse`` plays no part: the lottery chooses the masks.

:func:`run_experiment_lottery` is ``sparsetrain lottery``: the run in ``<runs_dir>/lottery-<hash>/seed_<n>``
(:func:`lottery_dir`), with the recipe saved beside it and its curve written at the end.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import write_text
from ..identity import identity_hash
from ..methods.static import Static
from .config import LotteryConfig
from .results import curve_table, plot_curve
from .runner import run_lottery
from .train import TrainFn

__all__ = ["experiment_lottery", "lottery_dir", "run_experiment_lottery"]

logger = logging.getLogger(__name__)


def experiment_lottery(config: Any) -> tuple[nn.Module, TrainFn, int]:
    """The initial model, a train function and the steps per run, all from a harness config.

    Args:
        config: a :class:`sparsetrain.experiment.ExperimentConfig`; its ``sparse`` section is not used.

    Returns:
        ``(model, train_fn, total_steps)``: the model as the harness builds it (seeded by ``train.seed``, on
        ``train.device``), a :class:`~sparsetrain.lottery.train.TrainFn` whose metrics are ``accuracy`` /
        ``loss`` (test split), ``val_accuracy`` / ``val_loss``, ``train_loss`` (mean over the run), ``steps`` and
        ``sparsity`` (measured from the weights), and ``total_steps`` (epochs x steps per epoch).

    Raises:
        sparsetrain.experiment.ConfigError: the config is rejected by the data, model or optimizer, or asks for
            fp16 (no GradScaler here; use bf16 or fp32).
    """
    from ..experiment.build import build_experiment
    from ..experiment.config import DENSE, ConfigError
    from ..experiment.optim import build_optimizer, build_scheduler

    if config.train.precision == "fp16":
        raise ConfigError("train.precision='fp16' is not allowed for lottery runs; use bf16 or fp32")
    dense = config.with_overrides({"sparse.method": DENSE})
    exp = build_experiment(dense)
    autocast_dtype = exp.autocast_dtype

    def autocast() -> contextlib.AbstractContextManager:
        if autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=exp.device.type, dtype=autocast_dtype)

    @torch.no_grad()
    def evaluate(model: nn.Module, loader: Any) -> tuple[float | None, float | None]:
        if loader is None:
            return None, None
        model.eval()
        loss_sum, correct, count = 0.0, 0, 0
        for inputs, targets in loader:
            inputs, targets = inputs.to(exp.device), targets.to(exp.device)
            with autocast():
                logits = model(inputs)
            loss_sum += float(torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum"))
            correct += int((logits.argmax(-1) == targets).sum())
            count += targets.numel()
        model.train()
        return (loss_sum / count, correct / count) if count else (None, None)

    def train(model: nn.Module, masks: Mapping[str, Tensor], level_dir: Path, *, start_step: int = 0,
              on_step: Callable[[int, nn.Module], None] | None = None) -> dict[str, Any]:
        model.to(exp.device)
        optimizer = build_optimizer(config.optim, model)
        scheduler = build_scheduler(config.optim, optimizer, exp.total_steps, exp.steps_per_epoch)
        with warnings.catch_warnings():  # advancing the schedule to step k before any optimizer step is intended
            warnings.simplefilter("ignore", UserWarning)
            for _ in range(start_step):
                scheduler.step()
        sparsifier = Static(model, optimizer, masks=masks, total_steps=exp.total_steps)
        loader = exp.train_loader
        loader.generator.manual_seed(config.train.seed)  # the same data order at every level
        model.train()
        step, seen, loss_sum, count = 0, 0, 0.0, 0
        clip = config.optim.grad_clip
        while step < exp.total_steps:
            for inputs, targets in loader:
                seen += 1
                if seen <= start_step:  # the rewound run continues the data order from step k
                    step = seen
                    continue
                inputs, targets = inputs.to(exp.device), targets.to(exp.device)
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = exp.loss_fn(model(inputs), targets)
                loss.backward()
                if clip is not None:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
                optimizer.step()
                sparsifier.step()
                scheduler.step()
                step += 1
                loss_sum += loss.item()
                count += 1
                if on_step is not None:
                    on_step(step, model)
                if step >= exp.total_steps:
                    break
        sparsifier.export()
        test_loss, test_acc = evaluate(model, exp.test_loader)
        val_loss, val_acc = evaluate(model, exp.val_loader)
        measured = sparsifier.report().sparsity
        logger.info("%s/%s: test accuracy %s after %d steps", level_dir.parent.name, level_dir.name, test_acc, count)
        return {"accuracy": test_acc, "loss": test_loss, "val_accuracy": val_acc, "val_loss": val_loss,
                "train_loss": loss_sum / count if count else None, "steps": count, "sparsity": measured}

    return exp.model, train, exp.total_steps


def lottery_dir(runs_dir: str | Path, config: Any, lottery: LotteryConfig) -> Path:
    """``runs_dir/lottery-<hash of the recipe and the lottery options, seeds left out>/seed_<n>``.

    Args:
        runs_dir: the runs directory.
        config: the recipe (an ``ExperimentConfig``; its non-default identifying fields count).
        lottery: the lottery options (all fields but the seed count).
    """
    options = {k: v for k, v in lottery.to_dict().items() if k != "seed"}
    if options.get("scope") == "layer":
        options["scope"] = "layerwise"  # hashed under the spelling it had when the first runs were named
    identity = {"experiment": config.non_default(), "lottery": options}
    return Path(runs_dir) / f"lottery-{identity_hash(identity, compact=False)}" / f"seed_{config.train.seed}"


def run_experiment_lottery(config: Any, lottery: LotteryConfig, runs_dir: str | Path, *,
                           on_start: Callable[[Path], None] | None = None,
                           on_level: Callable[[Path, float, int], None] | None = None) -> tuple[Path, list[dict]]:
    """Run (or resume, or find finished) the lottery run of a harness config in :func:`lottery_dir`.

    Writes ``experiment.yaml`` (the recipe) first, and ``curve.md`` and ``curve.png`` (accuracy vs weights
    remaining) at the end; a plot that fails is logged, never fatal.

    Args:
        config: the recipe (an ``ExperimentConfig`` with ``train.seed`` set; its sparse section is not used).
        lottery: the lottery options.
        runs_dir: the runs directory.
        on_start: called with the run directory once the model is built, before any training.
        on_level: called before each stage trains, with its directory, the fraction of weights it keeps and
            the steps it trains.

    Returns:
        ``(run directory, rows of the curve)`` (:func:`~sparsetrain.lottery.lottery_curve`).
    """
    from ..experiment.config import ConfigError
    from ..masks import select_prunable

    out = lottery_dir(runs_dir, config, lottery)
    model, train_fn, total_steps = experiment_lottery(config)
    try:  # options that depend on the model and the run, checked before a file is written
        lottery.check_run(list(select_prunable(model, include=lottery.include, exclude=lottery.exclude)),
                          total_steps)
    except ValueError as exc:
        raise ConfigError(f"lottery: {exc}") from None
    out.mkdir(parents=True, exist_ok=True)
    write_text(config.canonical().to_yaml(), out / "experiment.yaml")

    def train(model_: nn.Module, masks: Mapping[str, Tensor], level_dir: Path, **kwargs: Any) -> dict[str, Any]:
        if on_level is not None:
            kept = sum(int(m.sum()) for m in masks.values()) / sum(m.numel() for m in masks.values())
            on_level(level_dir, kept, total_steps - kwargs.get("start_step", 0))
        return train_fn(model_, masks, level_dir, **kwargs)

    if on_start is not None:
        on_start(out)
    rows = run_lottery(model, lottery, train, out)
    write_text(curve_table(rows) + "\n", out / "curve.md")
    try:
        plot_curve(rows, out / "curve.png", title=f"{out.parent.name}/{out.name}: ticket and controls")
    except Exception as exc:  # a plotting failure must not lose the run
        logger.warning("curve.png not written: %s: %s", type(exc).__name__, exc)
    return out, rows
