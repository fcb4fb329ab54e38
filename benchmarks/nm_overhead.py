"""N:M training overhead: a training step of a dense loop against the same loop under a 2:4 / 1:4 pattern.

SR-STE recomputes its N:M mask from ``|W|`` after every optimizer step (``sparsetrain.nm.nm_mask``: about M
element-wise passes over each weight) and moves the pruned values in and out of a side buffer around the step;
the other methods pay the mask only at their topology updates (RigL within groups here, every ΔT = 100 steps).
The table gives the median time per optimizer step (interleaved repeats, one torch thread) and its ratio to the
dense loop with the same optimizer, and, separately, the time of one ``nm_mask`` over all the model's weights.

    python benchmarks/nm_overhead.py [--repeats 5] [--steps 200]
"""

from __future__ import annotations

import argparse
import statistics

import torch
from torch import nn

from _common import table, time_training_steps, timeit, write_doc
from sparsetrain import SRSTE, RigL, Static
from sparsetrain.nm import nm_mask

UPDATE_EVERY = 100
BATCH = 128


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


#: row -> (method class or None for dense, pattern)
ROWS = {
    "dense": (None, None),
    "static 2:4": (Static, "2:4"),
    "RigL 2:4 (within groups, ΔT = 100)": (RigL, "2:4"),
    "SR-STE 2:4": (SRSTE, "2:4"),
    "SR-STE 1:4": (SRSTE, "1:4"),
    "SR-STE 2:8": (SRSTE, "2:8"),
}


def time_row(row: str, steps: int) -> float:
    """Seconds per optimizer step over ``steps`` steps (a multiple of ΔT: RigL's updates are included)."""
    method, pattern = ROWS[row]
    torch.manual_seed(0)
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True)
    sparsifier = None
    if method is not None:
        options = {"stop_at": 1.0, "update_every": UPDATE_EVERY} if method is RigL else {}
        sparsifier = method(model, optimizer, pattern=pattern, total_steps=steps + UPDATE_EVERY, **options)
    x, y = torch.randn(BATCH, 784), torch.randint(0, 10, (BATCH,))
    return time_training_steps(model, optimizer, sparsifier, x, y, steps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per row (median)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (a multiple of 100)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    times: dict[str, list[float]] = {row: [] for row in ROWS}
    for _ in range(args.repeats):
        for row in ROWS:
            times[row].append(time_row(row, args.steps))
    medians = {row: statistics.median(values) for row, values in times.items()}
    rows = [(row, f"{medians[row] * 1e3:.2f}", f"{medians[row] / medians['dense']:.2f}x") for row in ROWS]
    weights = [p.detach() for p in mlp().parameters() if p.dim() == 2]
    masks = [(pattern, timeit(lambda p=pattern: [nm_mask(w.abs(), p) for w in weights], repeats=20))
             for pattern in ("2:4", "1:4", "2:8")]
    body = (f"MLP 784-1024-1024-10 (1.86 M weights), batch {BATCH}, SGD (foreach, momentum 0.9), 1 thread, "
            f"median of {args.repeats} interleaved repeats of {args.steps} steps.\n\n"
            + table(["loop", "ms / step", "vs dense"], rows)
            + "\n\nOne `nm_mask(|W|)` over the three weight matrices (what SR-STE adds to every step, with the "
              "buffer moves):\n\n"
            + table(["pattern", "ms"], [(p, f"{t * 1e3:.2f}") for p, t in masks]))
    write_doc("nm_overhead", "N:M training overhead (CPU)", body)


if __name__ == "__main__":
    main()
