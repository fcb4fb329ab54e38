"""PNG plots of runs: training curves, density schedule, per-layer density, accuracy vs sparsity across runs.

Figures are drawn on ``matplotlib.figure.Figure`` with the Agg canvas, never through ``pyplot``: no global
backend is changed, nothing opens a window, and it works on a machine without a display.

Per run (in the run directory): ``curves.png`` (loss and accuracy per epoch), ``density.png`` (the density of
the sparsified weights over optimizer steps, overall and per layer) and ``layers.png`` (final density per
layer, measured from the weights); with a ``topology.jsonl``, ``topology.png`` (per-layer density and churn at
every topology update, as heatmaps over optimizer steps) and ``itop.png`` (the ITOP rate over steps). Across
runs: ``accuracy_vs_sparsity.png`` (final test accuracy against target sparsity, one line per method and N:M
pattern, mean ± std over seeds, the dense baseline as a dashed line; one panel per recipe).
"""

from __future__ import annotations

import logging
import statistics
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from sparsetrain.atomic import write_figure
from sparsetrain.topology import TopologyEvent

from .report import method_label
from .rundir import RunDir, readable_summaries
from .topology_log import read_events

__all__ = ["plot_run", "plot_runs", "plot_curves", "plot_density", "plot_layers", "plot_topology", "plot_itop",
           "plot_accuracy_vs_sparsity", "FIGSIZE", "DPI"]

logger = logging.getLogger(__name__)

FIGSIZE = (8.0, 4.5)
DPI = 100


def _figure(figsize: tuple[float, float] = FIGSIZE) -> Figure:
    fig = Figure(figsize=figsize, dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    return write_figure(fig, path, dpi=DPI)


def plot_curves(records: Sequence[Mapping[str, Any]], path: str | Path, *, title: str = "",
                dense_acc: float | None = None) -> Path:
    """Loss and accuracy per epoch (train, val, test).

    Args:
        records: metrics.jsonl records.
        path: the PNG to write.
        title: figure title.
        dense_acc: the dense baseline's final test accuracy, drawn as a dashed line.

    Returns:
        The path written.
    """
    fig = _figure()
    loss_ax, acc_ax = fig.subplots(1, 2)
    epochs = [r["epoch"] for r in records]
    for split, style in (("train", "-"), ("val", "--"), ("test", ":")):
        losses = [r.get(f"{split}_loss") for r in records]
        accs = [r.get(f"{split}_acc") for r in records]
        if any(v is not None for v in losses):
            loss_ax.plot(epochs, [v if v is not None else float("nan") for v in losses], style, marker=".",
                         label=split)
        if any(v is not None for v in accs):
            acc_ax.plot(epochs, [v if v is not None else float("nan") for v in accs], style, marker=".",
                        label=split)
    if dense_acc is not None:
        acc_ax.axhline(dense_acc, color="black", linestyle="--", linewidth=1, label="dense (test)")
    loss_ax.set(xlabel="epoch", ylabel="loss", title="loss")
    acc_ax.set(xlabel="epoch", ylabel="accuracy", title="accuracy")
    for ax in (loss_ax, acc_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_density(trace: Mapping[str, Any], total_steps: int, path: str | Path, *, title: str = "") -> Path:
    """Density of the sparsified weights over optimizer steps: overall (thick) and per layer (thin).

    Args:
        trace: ``{"steps": [...], "density": [...], "layers": {name: [...]}}`` (summary["density_trace"]);
            each value holds from its step until the next.
        total_steps: the run's last step (the curves extend to it).
        path: the PNG to write.
        title: figure title.

    Returns:
        The path written.
    """
    fig = _figure()
    ax = fig.subplots()
    steps = list(trace.get("steps", [])) or [0]
    end = max(total_steps, steps[-1])
    xs = [*steps, end]
    for name, values in trace.get("layers", {}).items():
        ax.step(xs, [*values, values[-1]], where="post", linewidth=0.8, alpha=0.6, label=name)
    density = list(trace.get("density", [])) or [1.0]
    ax.step(xs, [*density, density[-1]], where="post", color="black", linewidth=2.2, label="overall")
    ax.set(xlabel="optimizer step", ylabel="density (1 - sparsity)", title=title or "density schedule",
           ylim=(0, 1.05), xlim=(0, end))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper right", ncol=2)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_layers(layers: Mapping[str, Any], path: str | Path, *, title: str = "") -> Path:
    """Final density of each sparsified tensor, measured from the weights (horizontal bars).

    Args:
        layers: a SparsityReport dict (summary["layers"]).
        path: the PNG to write.
        title: figure title.

    Returns:
        The path written.
    """
    rows = list(layers.get("layers", []))
    fig = _figure()
    ax = fig.subplots()
    names = [r["name"] for r in rows][::-1]
    densities = [1.0 - r["sparsity"] for r in rows][::-1]
    bars = ax.barh(range(len(rows)), densities, color="tab:blue")
    for bar, row in zip(bars, rows[::-1]):
        width = bar.get_width()
        inside = width > 0.6  # a long bar carries its label inside, so the axis stops at density 1
        ax.text(width - 0.01 if inside else width + 0.01, bar.get_y() + bar.get_height() / 2,
                f"{width:.3f} ({row['nonzeros']:,}/{row['numel']:,})", va="center", ha="right" if inside else "left",
                color="white" if inside else "black", fontsize=7)
    ax.set_yticks(range(len(rows)), names, fontsize=8)
    total = 1.0 - layers.get("sparsity", 0.0)
    ax.axvline(total, color="black", linestyle="--", linewidth=1, label=f"overall {total:.3f}")
    ax.set(xlabel="density (1 - sparsity), measured from the weights", xlim=(0, 1), title=title or "per-layer density")
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, Path(path))


def _step_edges(events: Sequence[TopologyEvent], total_steps: int | None) -> list[float]:
    """Cell edges on the step axis: each update's values hold from its step to the next update (the last one to
    ``total_steps``, or one more interval)."""
    steps = [float(e.step) for e in events]
    gap = steps[-1] - steps[-2] if len(steps) > 1 else 1.0
    end = float(total_steps) if total_steps is not None and total_steps > steps[-1] else steps[-1] + gap
    return [*steps, end]


def _layer_series(events: Sequence[TopologyEvent], key: str) -> dict[str, list[float]]:
    """Each layer's ``key`` (a :class:`~sparsetrain.topology.LayerTopology` field) at every event, NaN where an event
    leaves the layer out; the layers are those of the first event.

    Raises:
        ValueError: no events.
    """
    if not events:
        raise ValueError("events must hold at least one topology event, got none")
    return {name: [getattr(e.layers[name], key) if name in e.layers else float("nan") for e in events]
            for name in events[0].layers}


def plot_topology(events: Sequence[TopologyEvent], path: str | Path, *, total_steps: int | None = None,
                  title: str = "") -> Path:
    """Per-layer density (top) and churn (bottom) at every topology update, as heatmaps over optimizer steps.

    Args:
        events: the run's topology events in step order (topology.jsonl).
        path: the PNG to write.
        total_steps: the run's last step (the last update's cells extend to it).
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no events.
    """
    density, churn = _layer_series(events, "density"), _layer_series(events, "churn")
    names = list(density)
    edges = _step_edges(events, total_steps)
    rows = range(len(names) + 1)
    fig = _figure((FIGSIZE[0], max(FIGSIZE[1], 2.0 + 0.5 * len(names))))
    density_ax, churn_ax = fig.subplots(2, 1, sharex=True)
    for ax, series, label, cmap in ((density_ax, density, "density", "viridis"),
                                    (churn_ax, churn, "churn (1 - IoU)", "magma")):
        mesh = ax.pcolormesh(edges, list(rows), list(series.values()), cmap=cmap, shading="flat", vmin=0.0)
        ax.set_yticks([i + 0.5 for i in range(len(names))], names, fontsize=7)
        ax.invert_yaxis()  # the first layer on top
        ax.set(ylabel="sparsified tensor", title=f"{label} per layer after each topology update")
        fig.colorbar(mesh, ax=ax, label=label, pad=0.01)
    churn_ax.set_xlabel("optimizer step")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_itop(events: Sequence[TopologyEvent], path: str | Path, *, title: str = "") -> Path:
    """The in-time over-parameterization rate over optimizer steps: all sparsified weights (thick), each layer
    (thin), and the overall density for reference (dashed: the rate can only grow away from it by exploring).

    Args:
        events: the run's topology events in step order.
        path: the PNG to write.
        title: figure title.

    Returns:
        The path written.

    Raises:
        ValueError: no events.
    """
    layers = _layer_series(events, "itop")
    fig = _figure()
    ax = fig.subplots()
    steps = [e.step for e in events]
    for name, values in layers.items():
        ax.plot(steps, values, linewidth=0.8, alpha=0.6, label=name)
    ax.plot(steps, [e.itop for e in events], color="black", linewidth=2.2, marker=".", label="ITOP rate (all)")
    ax.plot(steps, [e.density for e in events], color="black", linestyle="--", linewidth=1.2, label="density (all)")
    ax.set(xlabel="optimizer step", ylabel="fraction of the sparsified weights", ylim=(0, 1.05),
           title=title or "in-time over-parameterization: weights ever active")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="best", ncol=2)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_run(run: RunDir, *, summary: Mapping[str, Any] | None = None,
             records: Sequence[Mapping[str, Any]] | None = None, out_dir: str | Path | None = None) -> list[Path]:
    """Write curves.png, density.png and layers.png into the run directory, and topology.png and itop.png when it
    has a topology.jsonl.

    Args:
        run: the run.
        summary: its summary (read from summary.json if None).
        records: its metrics (read from metrics.jsonl if None).
        out_dir: write the PNGs here instead of the run directory.

    Returns:
        The paths written.
    """
    summary = summary if summary is not None else run.read_summary()
    records = records if records is not None else run.read_metrics()
    if summary is None:
        raise ValueError(f"{run.path}: the run has not finished (no summary.json)")
    title = (f"{method_label(summary)} @ {summary['target_sparsity']:.2f} sparsity, {summary['model']} on "
             f"{summary['data']} (seed {summary['seed']})")
    dense = summary.get("dense") or {}
    out = Path(out_dir) if out_dir is not None else run.path
    written = [
        plot_curves(records, out / "curves.png", title=title, dense_acc=dense.get("final_acc")),
        plot_density(summary.get("density_trace", {}), summary.get("total_steps", 0), out / "density.png",
                     title=f"density schedule: {title}"),
        plot_layers(summary.get("layers", {}), out / "layers.png", title=f"final per-layer density: {title}"),
    ]
    events = read_events(run.topology_file)
    if events:
        written += [plot_topology(events, out / "topology.png", total_steps=summary.get("total_steps"),
                                  title=f"topology updates: {title}"),
                    plot_itop(events, out / "itop.png", title=f"ITOP rate: {title}")]
    return written


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def plot_accuracy_vs_sparsity(summaries: Iterable[Mapping[str, Any]], path: str | Path) -> Path:
    """Final test accuracy against target sparsity, one line per method, dense as a dashed line.

    One panel per recipe (data, model and the config outside the sparse section, ``summary["recipe"]``): runs of
    different recipes (other epochs, learning rates...) are never drawn as one curve, and each panel's dense line
    is its own recipe's. Points are the mean over seeds with ± std error bars.

    Args:
        summaries: summary.json dicts of finished runs.
        path: the PNG to write.

    Returns:
        The path written.
    """
    groups: dict[tuple[str, str, str], dict[str, dict[float, list[float]]]] = defaultdict(lambda: defaultdict(
        lambda: defaultdict(list)))
    for s in summaries:
        if s.get("final_acc") is None:
            continue
        key = (str(s["data"]), str(s["model"]), f"recipe {s['recipe']}" if s.get("recipe") else "")
        groups[key][method_label(s)][float(s["target_sparsity"])].append(float(s["final_acc"]))
    panels = sorted(groups) or [("no runs", "", "")]
    fig = _figure((FIGSIZE[0], FIGSIZE[1] * max(1, len(panels)) if len(panels) > 1 else FIGSIZE[1]))
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, key in zip(axes, panels):
        methods = groups.get(key, {})
        for method in sorted(m for m in methods if m != "dense"):
            points = sorted(methods[method].items())
            xs = [x for x, _ in points]
            stats = [_mean_std(v) for _, v in points]
            ax.errorbar(xs, [m for m, _ in stats], yerr=[s for _, s in stats], marker="o", capsize=3, label=method)
        if "dense" in methods:
            mean, _ = _mean_std([a for accs in methods["dense"].values() for a in accs])
            ax.axhline(mean, color="black", linestyle="--", linewidth=1.2, label=f"dense {mean:.3f}")
        ax.set(xlabel="target sparsity", ylabel="final test accuracy", title=" / ".join(k for k in key if k))
        ax.grid(alpha=0.3)
        if methods:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, Path(path))


def plot_runs(runs: Iterable[RunDir], out_dir: str | Path) -> list[Path]:
    """Every finished run's plots (:func:`plot_run`), then ``accuracy_vs_sparsity.png`` across them in ``out_dir``.

    Args:
        runs: run directories; unfinished ones (no summary) are skipped, and so, with a warning, are runs whose
            files cannot be read.
        out_dir: where the across-runs plot goes.

    Returns:
        The paths written, the across-runs plot last.
    """
    summaries = []
    written: list[Path] = []
    for run, summary in readable_summaries(runs):
        try:
            written += plot_run(run, summary=summary)
        except (KeyError, TypeError, ValueError, IndexError) as exc:  # a summary or metrics file of another shape
            logger.warning("%s: plots not written: %s: %s", run.name, type(exc).__name__, exc)
            continue
        summaries.append({**summary, "recipe": run.recipe(summary)})
    written.append(plot_accuracy_vs_sparsity(summaries, Path(out_dir) / "accuracy_vs_sparsity.png"))
    return written
