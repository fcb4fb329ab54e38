"""One self-contained HTML page for a runs directory or a study: tables, plots, configs and links, by recipe.

``sparsetrain report --html OUT`` writes it. The page needs no network and no other file: every image is a PNG
data URI, every table and config is in the page, and there is no script. Links to a run's own files
(checkpoint, masks, metrics, event files) are relative to the page, so they work while the page sits beside the
runs.

What is found under the given directories (searched a few levels deep):

* **studies**: a directory with ``reproduction.md`` (``sparsetrain reproduce``) or ``plasticity.md``
  (``sparsetrain plasticity``): the report itself, its tables rendered, its images embedded;
* **runs** (``<name>/seed_<n>`` with ``config.yaml`` and ``summary.json``), grouped by recipe (the same data,
  model, optimizer and training schedule, i.e. one dense baseline): the table of ``sparsetrain report``, the
  accuracy-vs-sparsity plot of the group, then per run its plots (those in its directory, or drawn for the page
  when it has none), per-layer and per-epoch tables, config and files;
* **lottery runs** (a directory holding ``level_<k>`` directories): the table of ticket and controls against the
  weights remaining, the curve, the config and files.

The tables come from the report functions of the command line (:mod:`sparsetrain.experiment.report`,
:mod:`sparsetrain.studies.lottery.report`)
in their markdown form, rendered by a small converter that knows the markdown those functions and the study
reports write (headings, paragraphs, lists, pipe tables, images, ``code`` and ``**bold**``).
"""

from __future__ import annotations

import base64
import datetime
import html
import logging
import os
import re
import tempfile
import urllib.parse
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from sparsetrain.atomic import write_text
from sparsetrain.experiment.config import ConfigError
from sparsetrain.experiment.report import collect_rows, format_layers, format_rows, layer_rows
from sparsetrain.experiment.rundir import RunDir

from .lottery import format_lottery_rows, lottery_curve, lottery_run_rows, plot_curve

__all__ = ["write_html_report", "render_html_report"]

logger = logging.getLogger(__name__)

#: Directory names never searched: a run's or study's internals.
_SKIP = {"tensorboard", "mlartifacts", "masks", "cells", "reinit", "random", "__pycache__"}
_DEPTH = 5
_STUDY_FILES = ("reproduction.md", "plasticity.md")
#: A run's plots in the order shown (others after them, by name).
_RUN_PLOTS = ("curves.png", "density.png", "layers.png", "topology.png", "itop.png")
_EPOCH_KEYS = ("epoch", "step", "train_loss", "train_acc", "val_acc", "test_acc", "sparsity", "itop_rate", "lr")


@dataclass
class _Found:
    runs: list[RunDir] = field(default_factory=list)
    lotteries: list[Path] = field(default_factory=list)
    studies: list[Path] = field(default_factory=list)


def _discover(roots: Sequence[Path]) -> _Found:
    found = _Found()
    seen: set[Path] = set()
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            here = Path(dirpath)
            depth = len(here.relative_to(root).parts)
            resolved = here.resolve()
            if resolved in seen:
                dirnames[:] = []
                continue
            seen.add(resolved)
            names = set(filenames)
            levels = [d for d in dirnames if re.fullmatch(r"level_\d+", d)]
            if any(name in names for name in _STUDY_FILES):
                found.studies.append(here)
            if here.name.startswith("seed_") and {"config.yaml", "summary.json"} <= names:
                found.runs.append(RunDir(here))
                dirnames[:] = []
            elif levels:
                found.lotteries.append(here)
                dirnames[:] = []
            else:
                dirnames[:] = sorted(d for d in dirnames if d not in _SKIP) if depth < _DEPTH else []
    found.runs.sort(key=lambda r: str(r.path))
    found.lotteries.sort()
    found.studies.sort()
    return found


# -- pieces of HTML -----------------------------------------------------------------------------------------------
def _esc(text: Any) -> str:
    return html.escape(str(text), quote=True)


def _image(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}"><figcaption>{_esc(alt)}</figcaption></figure>'


def _inline(text: str, base: Path | None) -> str:
    """Escape one line of markdown and render its images, ``code`` and ``**bold**``."""
    out = []
    for part in re.split(r"(!\[[^\]]*\]\([^)]+\))", text):
        image = re.fullmatch(r"!\[([^\]]*)\]\(([^)]+)\)", part)
        if image:
            path = (base / image.group(2)) if base is not None else None
            if path is not None and path.is_file() and path.suffix.lower() == ".png":
                out.append(_image(path, image.group(1)))
            else:
                out.append(f"<em>[image not found: {_esc(image.group(2))}]</em>")
            continue
        escaped = _esc(part)
        escaped = re.sub(r"`([^`]+)`", r"<code>\1</code>", escaped)
        escaped = re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", escaped)
        out.append(escaped)
    return "".join(out)


def _table(lines: Sequence[str], base: Path | None) -> str:
    def cells(line: str) -> list[str]:
        return [c.strip() for c in line.strip().strip("|").split("|")]

    header, aligns = cells(lines[0]), cells(lines[1])
    right = [a.endswith(":") for a in aligns]
    head = "".join(f"<th>{_inline(c, base)}</th>" for c in header)
    body = []
    for line in lines[2:]:
        row = cells(line)
        body.append("<tr>" + "".join(f'<td class="{"num" if right[i] else "txt"}">{_inline(c, base)}</td>'
                                     if i < len(right) else f"<td>{_inline(c, base)}</td>"
                                     for i, c in enumerate(row)) + "</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def _list(lines: Sequence[str], base: Path | None) -> str:
    out, depth_stack = [], []
    for line in lines:
        indent = len(line) - len(line.lstrip(" "))
        while depth_stack and indent < depth_stack[-1]:
            out.append("</li></ul>")
            depth_stack.pop()
        if not depth_stack or indent > depth_stack[-1]:
            out.append("<ul>")
            depth_stack.append(indent)
        else:
            out.append("</li>")
        out.append(f"<li>{_inline(line.strip()[2:], base)}")
    out += ["</li></ul>"] * len(depth_stack)
    return "".join(out)


def markdown_html(text: str, base: Path | None = None) -> str:
    """Render the markdown of this project's reports (see the module docstring) as HTML.

    Args:
        text: the markdown.
        base: the directory its image links are relative to (images are embedded; None leaves them out).
    """
    blocks: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.strip()
        if not stripped:
            i += 1
            continue
        heading = re.match(r"(#{1,6})\s+(.*)", stripped)
        if heading:
            level = min(len(heading.group(1)) + 2, 6)  # inside a section of the page (<h1> title, <h2> sections)
            blocks.append(f"<h{level}>{_inline(heading.group(2), base)}</h{level}>")
            i += 1
            continue
        group = [line]
        kind = "table" if stripped.startswith("|") else "list" if re.match(r"[-*]\s", stripped) else "p"
        i += 1
        while i < len(lines) and lines[i].strip():
            nxt = lines[i].strip()
            if kind == "table" and not nxt.startswith("|"):
                break
            if kind == "list" and not re.match(r"\s*[-*]\s", lines[i]):
                break
            if kind == "p" and (nxt.startswith(("|", "#")) or re.match(r"[-*]\s", nxt)):
                break
            group.append(lines[i])
            i += 1
        if kind == "table" and len(group) >= 2:
            blocks.append(_table(group, base))
        elif kind == "list":
            blocks.append(_list(group, base))
        else:
            blocks.append(f"<p>{_inline(' '.join(g.strip() for g in group), base)}</p>")
    return "\n".join(blocks)


def _links(directory: Path, page_dir: Path) -> str:
    """Relative links to the files (and event-file folders) of a run or study directory."""
    items = []
    for path in sorted(directory.iterdir()):
        if path.is_file() or path.name in ("tensorboard", "mlartifacts") or re.fullmatch(r"level_\d+", path.name):
            href = urllib.parse.quote(Path(os.path.relpath(path, page_dir)).as_posix())
            size = f" ({path.stat().st_size / 1024:,.1f} KiB)" if path.is_file() else "/"
            items.append(f'<li><a href="{href}">{_esc(path.name)}</a>{size}</li>')
    return f'<ul class="files">{"".join(items)}</ul>' if items else "<p>(no files)</p>"


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_-]+", "-", text).strip("-")


def _number(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


# -- sections -----------------------------------------------------------------------------------------------------
def _study_section(directory: Path, page_dir: Path) -> str:
    parts = [f'<section id="study-{_slug(str(directory))}"><h2>Study: {_esc(directory)}</h2>']
    for name in _STUDY_FILES:
        path = directory / name
        if path.exists():
            parts.append(markdown_html(path.read_text(encoding="utf-8"), directory))
    parts.append(f"<details><summary>files</summary>{_links(directory, page_dir)}</details></section>")
    return "".join(parts)


def _recipe(run: RunDir) -> tuple[str, str]:
    """(key, title) of a run's recipe: its dense baseline's name, and the data, model and schedule in words."""
    try:
        config = run.read_config()
    except ConfigError:
        return "unknown", "runs whose config cannot be read"
    o, t = config.optim, config.train
    title = (f"{config.data.name} / {config.model.name}: {o.name} lr {o.lr:g} ({o.lr_schedule}), {t.epochs} epochs, "
             f"batch {t.batch_size}")
    return config.dense_baseline().run_name(), title


def _run_plots(run: RunDir, summary: Mapping[str, Any], scratch: Path) -> list[Path]:
    pngs = {p.name: p for p in run.path.glob("*.png")}
    if "curves.png" not in pngs:  # a run trained without plots: draw them for the page only
        from sparsetrain.experiment.plots import plot_run

        out = scratch / _slug(run.name)
        out.mkdir(parents=True, exist_ok=True)
        pngs = {p.name: p for p in plot_run(run, summary=summary, out_dir=out)}
    return [pngs[n] for n in _RUN_PLOTS if n in pngs] + [pngs[n] for n in sorted(pngs) if n not in _RUN_PLOTS]


def _epoch_table(records: Sequence[Mapping[str, Any]]) -> str:
    keys = [k for k in _EPOCH_KEYS if any(r.get(k) is not None for r in records)]
    if not records or not keys:
        return "<p>(no metrics.jsonl records)</p>"
    head = "".join(f"<th>{_esc(k)}</th>" for k in keys)
    body = "".join("<tr>" + "".join(f'<td class="num">{_esc(_number(r.get(k)))}</td>' for k in keys) + "</tr>"
                   for r in records)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _run_section(run: RunDir, summary: Mapping[str, Any], page_dir: Path, scratch: Path) -> str:
    label = (f"{run.name}: {summary.get('method')} at target sparsity {_number(summary.get('target_sparsity'))}, "
             f"final test accuracy {_number(summary.get('final_acc'))}")
    figures = "".join(_image(p, f"{run.name}: {p.name}") for p in _run_plots(run, summary, scratch))
    config = run.config_file.read_text(encoding="utf-8") if run.config_file.exists() else "(no config.yaml)"
    return (f'<details class="run" id="run-{_slug(run.name)}"><summary>{_esc(label)}</summary>'
            f'<div class="figures">{figures}</div>'
            f"<h4>Per layer</h4>{markdown_html(format_layers(layer_rows(summary), 'markdown'))}"
            f"<h4>Per epoch (metrics.jsonl)</h4>{_epoch_table(run.read_metrics())}"
            f"<details><summary>config.yaml</summary><pre>{_esc(config)}</pre></details>"
            f"<h4>Files</h4>{_links(run.path, page_dir)}</details>")


def _recipe_sections(runs: Sequence[RunDir], page_dir: Path, scratch: Path) -> list[str]:
    from sparsetrain.experiment.plots import plot_accuracy_vs_sparsity

    by_path = {r.path.resolve(): r for r in runs}
    rows_by_run: dict[Path, dict[str, Any]] = {}
    for runs_dir in sorted({r.path.parent.parent for r in runs}):
        for row in collect_rows(runs_dir):
            path = (runs_dir / row["run"] / f"seed_{row['seed']}").resolve()
            if path in by_path:
                rows_by_run[path] = row
    groups: dict[str, list[RunDir]] = defaultdict(list)
    titles: dict[str, str] = {}
    for run in runs:
        key, title = _recipe(run)
        groups[key].append(run)
        titles[key] = title
    sections = []
    for index, key in enumerate(sorted(groups, key=lambda k: titles[k])):
        members = groups[key]
        summaries = {r.path: r.read_summary() or {} for r in members}
        rows = [rows_by_run[r.path.resolve()] for r in members if r.path.resolve() in rows_by_run]
        rows.sort(key=lambda r: (r["method"] != "dense", str(r["method"]), r["target"] or 0.0, r["seed"] or 0))
        figure = plot_accuracy_vs_sparsity(summaries.values(), scratch / f"recipe-{index}.png")
        details = "".join(_run_section(r, summaries[r.path], page_dir, scratch) for r in members)
        sections.append(
            f'<section id="recipe-{_slug(key)}"><h2>Recipe: {_esc(titles[key])}</h2>'
            f"<p>{len(members)} run(s); dense baseline <code>{_esc(key)}</code>.</p>"
            f"{markdown_html(format_rows(rows, 'markdown')) if rows else ''}"
            f"{_image(figure, f'accuracy vs sparsity: {titles[key]}')}"
            f"<h3>Runs</h3>{details}</section>")
    return sections


def _lottery_section(path: Path, page_dir: Path, scratch: Path) -> str:
    rows = lottery_run_rows(path)
    name = f"{path.parent.name}/{path.name}"
    parts = [f'<section id="lottery-{_slug(name)}"><h2>Lottery run: {_esc(name)}</h2>']
    if rows:
        parts.append(markdown_html(format_lottery_rows(rows, "markdown")))
        curve = path / "curve.png"
        if not curve.exists():
            curve = plot_curve(lottery_curve(path), scratch / f"curve-{_slug(name)}.png")
        parts.append(_image(curve, f"{name}: test accuracy against weights remaining"))
    else:
        parts.append("<p>(no finished level yet)</p>")
    for config_name in ("experiment.yaml", "config.json", "config.yaml"):
        config = path / config_name
        if config.exists():
            parts.append(f"<details><summary>{_esc(config_name)}</summary>"
                         f"<pre>{_esc(config.read_text(encoding='utf-8'))}</pre></details>")
            break
    parts.append(f"<h4>Files</h4>{_links(path, page_dir)}</section>")
    return "".join(parts)


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",sans-serif;margin:2em auto;max-width:1200px;padding:0 1em;
color:#222}
h1{font-size:1.6em}h2{border-bottom:1px solid #ccc;padding-bottom:.2em;margin-top:2em}
table{border-collapse:collapse;margin:.8em 0;font-size:.85em}
th,td{border:1px solid #ccc;padding:.25em .6em}th{background:#f3f3f3}td.num{text-align:right;
font-variant-numeric:tabular-nums}
figure{display:inline-block;margin:.5em;vertical-align:top}img{max-width:100%;border:1px solid #eee}
.figures figure{width:48%}.figures img{width:100%}
figcaption{font-size:.75em;color:#666}
pre{background:#f7f7f7;padding:.6em;overflow-x:auto;font-size:.8em}
details.run{border:1px solid #ddd;border-radius:4px;padding:.3em .8em;margin:.4em 0}
details>summary{cursor:pointer}details.run>summary{font-weight:600}
ul.files{columns:2;font-size:.85em}nav li{margin:.1em 0}
"""


def render_html_report(sources: str | Path | Iterable[str | Path], *, page_dir: str | Path,
                       title: str | None = None) -> str:
    """The HTML text of the report on ``sources`` (see the module docstring).

    Args:
        sources: one or more directories: a runs directory, a study or reproduction directory, a results directory.
        page_dir: the directory the page will be saved in (file links are relative to it).
        title: the page title (default: names the sources).

    Returns:
        The page.

    Raises:
        FileNotFoundError: a source is not a directory.
    """
    roots = [Path(sources)] if isinstance(sources, (str, Path)) else [Path(s) for s in sources]
    for root in roots:
        if not root.is_dir():
            raise FileNotFoundError(f"sources: {str(root)!r} is not a directory")
    page_dir = Path(page_dir)
    found = _discover(roots)
    title = title or f"sparsetrain report: {', '.join(str(r) for r in roots)}"
    with tempfile.TemporaryDirectory(prefix="sparsetrain-html-") as tmp:
        scratch = Path(tmp)
        studies = [_study_section(d, page_dir) for d in found.studies]
        recipes = _recipe_sections(found.runs, page_dir, scratch) if found.runs else []
        lotteries = [_lottery_section(p, page_dir, scratch) for p in found.lotteries]
    toc = []
    for label, sections in (("Studies", studies), ("Recipes", recipes), ("Lottery runs", lotteries)):
        entries = "".join(
            f'<li><a href="#{m.group(1)}">{m.group(2)}</a></li>'
            for m in (re.search(r'<section id="([^"]+)"><h2>(.*?)</h2>', s) for s in sections) if m)
        if entries:
            toc.append(f"<li>{label}<ul>{entries}</ul></li>")
    generated = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    summary = (f"{len(found.runs)} run(s) in {len(recipes)} recipe(s), {len(found.lotteries)} lottery run(s), "
               f"{len(found.studies)} study report(s). Generated {generated}.")
    body = "\n".join([*studies, *recipes, *lotteries]) or "<p>Nothing found: no finished runs, lottery runs or study " \
                                                          "reports under these directories.</p>"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_esc(title)}</title>'
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1><p>{_esc(summary)}</p>"
            f'<nav><ul>{"".join(toc)}</ul></nav>\n{body}\n</body></html>\n')


def write_html_report(sources: str | Path | Iterable[str | Path], out: str | Path, *, title: str | None = None) -> Path:
    """Write the self-contained HTML report on ``sources`` to ``out`` (atomically).

    Args:
        sources: one or more directories (runs, studies, results).
        out: the HTML file to write.
        title: the page title.

    Returns:
        The path written.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    page = render_html_report(sources, page_dir=out.parent.resolve(), title=title)
    write_text(page, out)
    logger.info("HTML report written to %s (%.1f MiB)", out, out.stat().st_size / 2**20)
    return out
