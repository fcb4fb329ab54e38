"""Shared helpers for the benchmark scripts: machine description, medians, markdown tables, writing docs (with
sparsetrain's own table formatter and atomic writer)."""

from __future__ import annotations

import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs" / "benchmarks"
if str(ROOT / "src") not in sys.path:  # the scripts measure this checkout's package
    sys.path.insert(0, str(ROOT / "src"))

from sparsetrain.atomic import write_text  # noqa: E402
from sparsetrain.tables import Column, render  # noqa: E402


def machine_info() -> dict[str, str]:
    """Cores, CPU model, torch version, threads, date and load average of this machine."""
    cpu = platform.processor() or platform.machine() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": str(os.cpu_count()),
        "torch": torch.__version__,
        "threads": str(torch.get_num_threads()),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load": " ".join(f"{x:.2f}" for x in os.getloadavg()),
    }


def machine() -> str:
    """One line: CPU model, cores, torch version and threads, Python, date, load average."""
    info = machine_info()
    return (f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['threads']} threads), "
            f"Python {platform.python_version()}, {info['date']}, load average {info['load']}")


def timeit(fn: Callable[[], object], repeats: int, warmup: int = 1) -> float:
    """Median wall time of ``fn`` over ``repeats`` runs after ``warmup`` runs (seconds)."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def time_training_steps(model: torch.nn.Module, optimizer: torch.optim.Optimizer, sparsifier: object | None,
                        inputs: torch.Tensor, targets: torch.Tensor, steps: int,
                        clock: Callable[[], float] = time.perf_counter) -> float:
    """Seconds per step of a plain loop (cross-entropy backward, ``optimizer.step()``, ``sparsifier.step()``,
    ``zero_grad``) over ``steps`` steps on one minibatch, after 5 warm-up steps (they never reach a ΔT = 100
    update)."""
    loss_fn = torch.nn.CrossEntropyLoss()

    def train_step() -> None:
        loss_fn(model(inputs), targets).backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()  # type: ignore[attr-defined]
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        train_step()
    start = clock()
    for _ in range(steps):
        train_step()
    return (clock() - start) / steps


def table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A markdown table (every column left-aligned)."""
    return render([Column(h, align="left") for h in header], rows, "markdown")


def write_doc(name: str, title: str, body: str) -> Path:
    """Write ``docs/benchmarks/<name>.md`` with the command and machine, and print the body."""
    command = "python " + " ".join([Path(sys.argv[0]).as_posix().split("/work/main/")[-1], *sys.argv[1:]])
    text = f"# {title}\n\nCommand: `{command}`\n\nMachine: {machine()}\n\n{body}\n"
    path = write_text(text, DOCS / f"{name}.md")
    print(text)
    return path
