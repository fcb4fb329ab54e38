"""Pruning plasticity, the pure parts: the magnitude masks a dense network is pruned with, and the study's
tables and plot (Liu et al., *Sparse Training via Boosting Pruning Plasticity with Neuroregeneration*, NeurIPS
2021, §3).

The study that trains (a dense run, then one pruned branch per cell, for each seed and learning-rate schedule) is
:mod:`sparsetrain.studies.plasticity`; its rows are what :func:`summarize_plasticity`, :func:`format_plasticity`
and :func:`plot_plasticity` read. A row is one cell of one seed: ``schedule`` ("recipe": the dense recipe's
learning-rate schedule; "late-decay": the learning-rate control, the same run with its decays moved later),
``seed``, ``epoch`` (t), ``step``, ``lr`` (right after t), ``rate`` (r), ``regeneration``, ``acc``, ``dense_acc``
(the unpruned run of the same seed and schedule), ``drop`` (``(acc - dense_acc) / dense_acc``), ``diff`` and
``sparsity``.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from sparsetrain.atomic import write_figure
from sparsetrain.selection import Budget, check_scope, keep_top
from sparsetrain.tables import Column, render
from sparsetrain.validation import check_choice, check_number

from .significance import difference

__all__ = ["PLASTICITY_COLUMNS", "SUMMARY_COLUMNS", "SCHEDULES", "FACTORS", "check_rate", "magnitude_masks",
           "summarize_plasticity", "format_plasticity", "contrast_plasticity", "format_contrast", "plot_plasticity"]

#: The learning-rate schedules of a study: the recipe's, and the control with the decays moved later.
SCHEDULES = ("recipe", "late-decay")

#: The keys of a study row (one cell of one seed), in CSV order.
PLASTICITY_COLUMNS = ("schedule", "seed", "epoch", "step", "lr", "rate", "regeneration", "acc", "dense_acc", "drop",
                      "diff", "sparsity")

#: The keys of a summary row (one cell over its seeds), see :func:`summarize_plasticity`.
SUMMARY_COLUMNS = ("schedule", "epoch", "lr", "rate", "regeneration", "n", "acc", "acc_std", "dense_acc", "drop",
                   "drop_std")


def check_rate(rate: Any, name: str = "rate") -> float:
    """A pruning rate: a number in (0, 1).

    Raises:
        ValueError / TypeError: anything else (the message names ``name``).
    """
    return check_number(name, rate, "(0, 1)", "a pruning rate must be a number")


@torch.no_grad()
def magnitude_masks(params: Mapping[str, Tensor], rate: float, scope: str = "global") -> dict[str, Tensor]:
    """Masks that prune the fraction ``rate`` of the nonzero weights with the smallest magnitude.

    The counts are those of GraNet's plasticity test (official code, ``CIFAR/sparselearning/core.py``,
    ``Masking.init``): ``prune_global`` (lines 135-164) keeps ``int(N * (1 - rate))`` of the ``N`` nonzero
    weights over all tensors, ``prune_uniform`` (lines 118-133) removes ``ceil(rate * n)`` of each tensor's ``n``
    nonzero weights. Deviation: the official code keeps every weight ``>=`` the global threshold (more than the
    count on ties) and breaks per-tensor ties by ``torch.sort``'s order; here counts are exact and ties go to the
    lowest index (:func:`sparsetrain.selection.keep_top`). Without ties the masks are the same.

    Args:
        params: ``{name: weight}`` (e.g. :func:`sparsetrain.masks.select_prunable` of the model).
        rate: fraction of the nonzero weights to prune, in (0, 1).
        scope: "global" (one threshold over all tensors) or "layer" (each tensor on its own).

    Returns:
        ``{name: bool mask}`` on the weights' devices; weights that are zero already stay pruned.

    Raises:
        ValueError: ``rate`` or ``scope`` is not allowed, or ``params`` is empty.
    """
    rate = check_rate(rate)
    scope = check_scope(scope)
    if not params:
        raise ValueError("params must hold at least one tensor, got none")
    nonzero = {name: p.detach() != 0 for name, p in params.items()}
    counts = {name: int(torch.count_nonzero(mask)) for name, mask in nonzero.items()}
    if scope == "global":
        wanted = Budget({}, int(sum(counts.values()) * (1.0 - rate)))
    else:
        wanted = Budget({name: n - math.ceil(rate * n) for name, n in counts.items()})
    return keep_top({name: p.detach().abs() for name, p in params.items()}, wanted, eligible=nonzero)


def _mean_std(values: Sequence[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize_plasticity(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (schedule, t, r, regeneration): mean and sample standard deviation over the seeds.

    Args:
        rows: study rows (one per cell and seed; see the module docstring).

    Returns:
        Rows with the keys of :data:`SUMMARY_COLUMNS` (``n``: seeds with a result; ``acc`` / ``drop`` means,
        ``acc_std`` / ``drop_std`` standard deviations, 0 for one seed; ``dense_acc``: mean of the seeds' dense
        runs), ordered by schedule (:data:`SCHEDULES`), t, r, regeneration.
    """
    groups: dict[tuple[str, int, float, bool], list[Mapping[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[(row.get("schedule", SCHEDULES[0]), row["epoch"], row["rate"], row["regeneration"])].append(row)
    order = {name: i for i, name in enumerate(SCHEDULES)}
    summary = []
    for (schedule, epoch, rate, regen), members in sorted(groups.items(),
                                                          key=lambda kv: (order.get(kv[0][0], 99), *kv[0][1:])):
        done = [r for r in members if r.get("acc") is not None]
        acc, acc_std = _mean_std([r["acc"] for r in done])
        drop, drop_std = _mean_std([r["drop"] for r in done if r.get("drop") is not None])
        dense, _ = _mean_std([r["dense_acc"] for r in done if r.get("dense_acc") is not None])
        summary.append({"schedule": schedule, "epoch": epoch, "lr": members[0].get("lr"), "rate": rate,
                        "regeneration": regen, "n": len(done), "acc": acc, "acc_std": acc_std, "dense_acc": dense,
                        "drop": drop, "drop_std": drop_std})
    return summary


def _percent(value: float) -> str:
    return f"{100 * value:.2f}"


def format_plasticity(rows: Sequence[Mapping[str, Any]], fmt: str = "markdown") -> str:
    """The study as a markdown table over seeds (:func:`summarize_plasticity`) or a CSV of every seed's row.

    Args:
        rows: the study rows (one per cell and seed).
        fmt: "markdown" (mean ± std over the seeds, accuracies and changes in %) or "csv" (the rows as they are,
            :data:`PLASTICITY_COLUMNS`, raw numbers).

    Returns:
        The text.
    """
    if fmt == "csv":
        return render(PLASTICITY_COLUMNS, rows, "csv")
    if fmt != "markdown":
        raise ValueError(f"fmt={fmt!r} is not allowed; choose 'markdown' or 'csv'")

    def plus_minus(mean_key: str, std_key: str, signed: bool) -> Any:
        def text(row: Mapping[str, Any]) -> str:
            if row[mean_key] is None:
                return "-"
            mean = f"{100 * row[mean_key]:+.2f}" if signed else _percent(row[mean_key])
            return f"{mean} ± {_percent(row[std_key])}"
        return text

    summary = summarize_plasticity(rows)
    for row in summary:
        row["acc_text"] = plus_minus("acc", "acc_std", False)(row)
        row["drop_text"] = plus_minus("drop", "drop_std", True)(row)
    columns = [Column("schedule", "LR schedule", align="left"), Column("epoch", "t (epoch)"),
               Column("lr", "lr after t", ".4g"), Column("rate", "r", "g"),
               Column("regeneration", format=lambda v: "yes" if v else "no", align="left"),
               Column("n", "seeds"), Column("acc_text", "accuracy %"), Column("dense_acc", "dense %", _percent),
               Column("drop_text", "relative change %")]
    return render(columns, summary, "markdown")


#: The factors :func:`contrast_plasticity` isolates: ``factor -> (value a, value b, the keys held equal)``.
FACTORS: dict[str, tuple[Any, Any, tuple[str, ...]]] = {
    "regeneration": (True, False, ("schedule", "epoch", "rate")),
    "schedule": ("recipe", "late-decay", ("epoch", "rate", "regeneration")),
}


def contrast_plasticity(rows: Sequence[Mapping[str, Any]], factor: str) -> list[dict[str, Any]]:
    """The effect of one factor on the relative change, everything else equal, with the significance rule
    (:mod:`sparsetrain.analysis.significance`).

    ``factor="regeneration"``: with minus without regeneration, per (schedule, t, r). ``factor="schedule"``: the
    recipe's learning-rate schedule minus the control's (decays moved later), per (t, r, regeneration): the cost
    of pruning in the recipe's learning-rate phase rather than before the decays, at the same pruning point and
    remaining budget.

    Args:
        rows: the study rows (one per cell and seed).
        factor: a key of :data:`FACTORS`.

    Returns:
        One row per pair with both sides measured: the held keys, ``a`` / ``a_std`` and ``b`` / ``b_std`` (mean and
        std of ``drop`` over seeds), ``diff`` (``a - b``), ``noise`` (combined std) and ``verdict`` ("beyond
        noise", "within noise", or the one-seed note).
    """
    a_value, b_value, held = FACTORS[check_choice("factor", factor, tuple(FACTORS))]
    index = {tuple(r[k] for k in (*held, factor)): r for r in summarize_plasticity(rows)}
    result = []
    for key, a in index.items():
        b = index.get((*key[:-1], b_value))
        if key[-1] != a_value or b is None or a["drop"] is None or b["drop"] is None:
            continue
        diff = difference(a["drop"], a["drop_std"], a["n"], b["drop"], b["drop_std"], b["n"])
        result.append({**dict(zip(held, key)), "a": a["drop"], "a_std": a["drop_std"], "b": b["drop"],
                       "b_std": b["drop_std"], "diff": diff.diff, "noise": diff.noise, "verdict": diff.words})
    return result


def format_contrast(rows: Sequence[Mapping[str, Any]], factor: str) -> str:
    """A markdown table of :func:`contrast_plasticity` rows (relative changes in %, mean ± std over seeds)."""
    held = FACTORS[check_choice("factor", factor, tuple(FACTORS))][2]
    titles = {"regeneration": ("with regeneration %", "fixed mask %"),
              "schedule": ("recipe's LR schedule %", "decays moved later %")}[factor]
    names = {"schedule": Column("schedule", "LR schedule", align="left"), "epoch": Column("epoch", "t (epoch)"),
             "rate": Column("rate", "r", "g"),
             "regeneration": Column("regeneration", format=lambda v: "yes" if v else "no", align="left")}

    table = [{**row, "a_text": f"{100 * row['a']:+.2f} ± {100 * row['a_std']:.2f}",
              "b_text": f"{100 * row['b']:+.2f} ± {100 * row['b_std']:.2f}"} for row in rows]
    columns = [*(names[k] for k in held), Column("a_text", titles[0]), Column("b_text", titles[1]),
               Column("diff", "difference (% points)", lambda v: f"{100 * v:+.2f}"),
               Column("verdict", align="left")]
    return render(columns, table, "markdown")


def plot_plasticity(rows: Sequence[Mapping[str, Any]], path: str | Path, *,
                    lr_decays: Mapping[str, Sequence[float]] | Sequence[float] = (),
                    title: str = "pruning plasticity") -> Path:
    """Relative accuracy change against t (mean ± std over seeds as error bars), one panel per LR schedule.

    One line per (r, regeneration): solid with regeneration, dashed with the mask fixed; each panel marks its
    schedule's learning-rate decays as vertical lines.

    Args:
        rows: the study rows (one per cell and seed).
        path: the PNG to write.
        lr_decays: epochs where the learning rate decays, per schedule (``{"recipe": [...], "late-decay": [...]}``;
            a plain sequence is the recipe's).
        title: figure title.

    Returns:
        The path written.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    decays = dict(lr_decays) if isinstance(lr_decays, Mapping) else {SCHEDULES[0]: list(lr_decays)}
    summary = summarize_plasticity(rows)
    schedules = [s for s in SCHEDULES if any(r["schedule"] == s for r in summary)] or [SCHEDULES[0]]
    fig = Figure(figsize=(6.5 * len(schedules), 4.8), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(schedules), sharex=True, sharey=True, squeeze=False)[0]
    rates = sorted({r["rate"] for r in summary})
    colors = ["tab:blue", "tab:orange", "tab:green", "tab:red", "tab:purple", "tab:brown"]
    for ax, schedule in zip(axes, schedules):
        for i, rate in enumerate(rates):
            for regen in (False, True):
                points = sorted((r["epoch"], 100 * r["drop"], 100 * r["drop_std"]) for r in summary
                                if r["schedule"] == schedule and r["rate"] == rate and r["regeneration"] == regen
                                and r["drop"] is not None)
                if points:
                    xs, ys, es = zip(*points)
                    ax.errorbar(xs, ys, yerr=es, linestyle="-" if regen else "--", marker="o" if regen else "s",
                                capsize=3, color=colors[i % len(colors)],
                                label=f"r = {rate:g}, {'regeneration' if regen else 'fixed mask'}")
        for j, decay in enumerate(decays.get(schedule, [])):
            ax.axvline(decay, color="grey", linestyle=":", linewidth=1.5, label="LR decay" if j == 0 else None)
        ax.axhline(0.0, color="black", linewidth=0.8)
        ax.set(xlabel="t: epoch at which the dense network is pruned",
               title="the recipe's LR schedule" if schedule == "recipe" else "control: LR decays moved later")
        ax.grid(alpha=0.3)
    epochs = sorted({r["epoch"] for r in summary})
    if epochs:  # integer epochs as ticks, with room around a single one (no 1.900-2.100 axis)
        axes[0].set_xticks(epochs if len(epochs) <= 12 else epochs[::-(-len(epochs) // 12)])
        axes[0].set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    axes[0].set_ylabel("accuracy change vs dense, % (relative; mean ± std)")
    if summary:
        axes[-1].legend(fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    return write_figure(fig, path)
