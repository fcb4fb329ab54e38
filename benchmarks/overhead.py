"""Masking overhead: time a training step of a dense loop against the same loop with GraNet and RigL.

Both methods run at 90% sparsity with ΔT = 100, and the timed window spans whole update periods, so the cost of
the topology updates is included in the average. Configurations are interleaved repeat by repeat so that drift
on a shared machine hits them alike; the table reports the median per-step time and its ratio to dense.

    python benchmarks/overhead.py [--repeats 5] [--steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch import nn

from _common import table, write_doc
from topology_update import time_update
from sparsetrain import GraNet, RigL, build_model

SPARSITY = 0.9
UPDATE_EVERY = 100


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


CASES = {
    "MLP 784-1024-1024-10, batch 128": (mlp, (784,), 128),
    "ResNet-20 (CIFAR), batch 64": (lambda: build_model("resnet20", (3, 32, 32), 10), (3, 32, 32), 64),
}


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    if name == "SGD":
        return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    # fused=True: torch's foreach AdamW is about 2x slower on CPU when most state entries are exactly zero (its
    # vectorised sqrt is ~4x slower on zeros), which would charge a PyTorch kernel effect to the masking.
    return torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=5e-4, fused=True)


def time_run(case: str, method: str, optimizer_name: str, steps: int) -> float:
    """Seconds per optimizer step, averaged over ``steps`` steps (a multiple of ΔT, so updates are included)."""
    build, input_shape, batch = CASES[case]
    torch.manual_seed(0)
    model = build()
    optimizer = make_optimizer(optimizer_name, model)
    sparsifier = None
    if method == "GraNet":
        # A pruning window over the timed steps, so both global pruning and regrowth updates are timed.
        sparsifier = GraNet(model, optimizer, sparsity=SPARSITY, total_steps=steps + UPDATE_EVERY,
                            update_every=UPDATE_EVERY, prune_end=steps)
    elif method == "RigL":
        sparsifier = RigL(model, optimizer, sparsity=SPARSITY, total_steps=steps + UPDATE_EVERY,
                          update_every=UPDATE_EVERY, stop_at=1.0)
    x = torch.randn(batch, *input_shape)
    y = torch.randint(0, 10, (batch,))
    loss_fn = nn.CrossEntropyLoss()

    def train_step() -> None:
        loss_fn(model(x), y).backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):  # warm-up outside the timed window; 5 steps never reach an update step
        train_step()
    start = time.perf_counter()
    for _ in range(steps):
        train_step()
    return (time.perf_counter() - start) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per configuration (median)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (a multiple of 100)")
    parser.add_argument("--quick", action="store_true", help="MLP with SGD only, 2 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = list(CASES)[:1] if args.quick else list(CASES)
    optimizers = ["SGD"] if args.quick else ["SGD", "AdamW (fused)"]
    repeats = 2 if args.quick else args.repeats
    rows = []
    for case in cases:
        for optimizer_name in optimizers:
            times: dict[str, list[float]] = {"dense": [], "GraNet": [], "RigL": []}
            for _ in range(repeats):
                for method in times:
                    times[method].append(time_run(case, method, optimizer_name, args.steps))
            dense = statistics.median(times["dense"])
            for method, values in times.items():
                median = statistics.median(values)
                rows.append([case, optimizer_name, method, f"{median * 1000:.2f}", f"{median / dense:.3f}",
                             f"{(median / dense - 1) * 100:+.1f}%"])
                print(rows[-1], flush=True)
    update = time_update(repeats, with_reference=False)
    body = (
        f"Sparsity {SPARSITY}, ΔT = {UPDATE_EVERY}; {args.steps} timed steps per run (update steps included), "
        f"median of {repeats} interleaved repeats.\n\n"
        + table(["model", "optimizer", "method", "ms / step", "ratio to dense", "overhead"], rows)
        + f"\n\nOne GraNet topology update over ResNet-50's {update['tensors']} prunable tensors "
        f"({update['weights']:,} weights): **{update['fast'] * 1000:.0f} ms** (median of {repeats}); "
        "`benchmarks/topology_update.py` compares it with a sort-based reference."
    )
    write_doc("overhead", "Masking overhead per training step", body)


if __name__ == "__main__":
    main()
