"""Masking overhead: time a training step of a dense loop against the same loop with GraNet and RigL.

Both methods run at 90% sparsity with ΔT = 100, and the timed window spans whole update periods, so the cost of
the topology updates is included in the average. Each optimizer implementation (foreach SGD, foreach AdamW, fused
AdamW) is compared with the dense loop using the *same* implementation. The sparse rows use the fused masked step
where it applies (foreach/for-loop SGD and AdamW; ``sparsetrain.fused_step``) and, for comparison, the
masked-gradient path (``fused_step=False``). The "events to topology.jsonl" rows subscribe the writer a training
run uses (:func:`sparsetrain.experiment.topology_log.append_event`, one line per update, not fsync'ed: the Trainer
fsyncs the file before each checkpoint) to the sparsifier, so they time publishing topology events in the loop.
Configurations are interleaved repeat by repeat so that drift on a shared machine hits them alike; the table
reports the median per-step time and its ratio to dense.

    python benchmarks/overhead.py [--repeats 5] [--steps 200] [--quick] [--threads N] [--clock thread]
"""

from __future__ import annotations

import argparse
import functools
import statistics
import tempfile
import time
from pathlib import Path

import torch
from torch import nn

from _common import table, time_training_steps, write_doc
from topology_update import time_update
from sparsetrain import GraNet, RigL, build_model
from sparsetrain.experiment.topology_log import append_event

SPARSITY = 0.9
UPDATE_EVERY = 100


def mlp() -> nn.Module:
    return nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))


CASES = {
    "MLP 784-1024-1024-10, batch 128": (mlp, (784,), 128),
    "ResNet-20 (CIFAR), batch 64": (lambda: build_model("resnet20", (3, 32, 32), 10), (3, 32, 32), 64),
}


OPTIMIZERS = {
    "SGD (foreach)": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=5e-4, foreach=True),
    # torch's foreach AdamW is slower on CPU when most state entries are exactly zero (its MKL sqrt is slower on
    # zeros): the dense row with the same implementation is the fair baseline, fused AdamW shown as well.
    "AdamW (foreach)": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4, foreach=True),
    "AdamW (fused)": lambda params: torch.optim.AdamW(params, lr=1e-3, weight_decay=5e-4, fused=True),
}
# method row -> (class name or None for dense, fused_step, events written to topology.jsonl)
METHOD_ROWS = {
    "dense": (None, False, False),
    "GraNet": ("GraNet", True, False),
    "RigL": ("RigL", True, False),
    "GraNet, events to topology.jsonl": ("GraNet", True, True),
    "RigL, events to topology.jsonl": ("RigL", True, True),
    "GraNet, fused_step=False": ("GraNet", False, False),
    "RigL, fused_step=False": ("RigL", False, False),
}


def make_optimizer(name: str, model: nn.Module) -> torch.optim.Optimizer:
    return OPTIMIZERS[name](model.parameters())


def time_run(case: str, row: str, optimizer_name: str, steps: int, clock=time.perf_counter) -> float:
    """Seconds per optimizer step, averaged over ``steps`` steps (a multiple of ΔT, so updates are included)."""
    build, input_shape, batch = CASES[case]
    torch.manual_seed(0)
    model = build()
    optimizer = make_optimizer(optimizer_name, model)
    sparsifier = None
    method, fused, watched = METHOD_ROWS[row]
    if method == "GraNet":
        # A pruning window over the timed steps, so both global pruning and regrowth updates are timed.
        sparsifier = GraNet(model, optimizer, sparsity=SPARSITY, total_steps=steps + UPDATE_EVERY,
                            update_every=UPDATE_EVERY, prune_end=steps, fused_step=fused)
    elif method == "RigL":
        sparsifier = RigL(model, optimizer, sparsity=SPARSITY, total_steps=steps + UPDATE_EVERY,
                          update_every=UPDATE_EVERY, stop_at=1.0, fused_step=fused)
    scratch = tempfile.TemporaryDirectory()
    if watched:
        sparsifier.subscribe(functools.partial(append_event, Path(scratch.name) / "topology.jsonl", sync=False))
    x = torch.randn(batch, *input_shape)
    y = torch.randint(0, 10, (batch,))
    try:
        return time_training_steps(model, optimizer, sparsifier, x, y, steps, clock)
    finally:
        scratch.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats per configuration (median)")
    parser.add_argument("--steps", type=int, default=200, help="timed steps per run (a multiple of 100)")
    parser.add_argument("--quick", action="store_true", help="MLP only, foreach SGD and AdamW, 2 repeats")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's own)")
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall time, or CPU time of the calling thread (1 thread on a shared machine)")
    parser.add_argument("--case", choices=("all", "mlp", "resnet20"), default="all", help="which model(s) to time")
    parser.add_argument("--optimizer", choices=list(OPTIMIZERS), default=None, help="time only this optimizer")
    parser.add_argument("--doc", default="overhead", help="write docs/benchmarks/<DOC>.md (default: overhead)")
    parser.add_argument("--all-rows", action="store_true",
                        help="also time the fused_step=False rows of ResNet-20 (doubles the run time)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter
    cases = list(CASES)[:1] if args.quick or args.case == "mlp" else list(CASES)
    if args.case == "resnet20":
        cases = list(CASES)[1:]
    optimizers = list(OPTIMIZERS)[:2] if args.quick else list(OPTIMIZERS)
    if args.optimizer:
        optimizers = [args.optimizer]
    repeats = 2 if args.quick else args.repeats
    rows = []
    for case in cases:
        for optimizer_name in optimizers:
            # The fused_step=False rows of the (slow) CNN are left to --all-rows.
            names = [r for r in METHOD_ROWS
                     if not ("fused_step=False" in r and case.startswith("ResNet") and not args.all_rows)]
            times: dict[str, list[float]] = {name: [] for name in names}
            for _ in range(repeats):
                for method in times:
                    times[method].append(time_run(case, method, optimizer_name, args.steps, clock))
            dense = statistics.median(times["dense"])
            for method, values in times.items():
                median = statistics.median(values)
                rows.append([case, optimizer_name, method, f"{median * 1000:.2f}", f"{median / dense:.3f}",
                             f"{(median / dense - 1) * 100:+.1f}%"])
                print(rows[-1], flush=True)
    update = time_update(repeats, with_reference=False)
    body = (
        f"Sparsity {SPARSITY}, ΔT = {UPDATE_EVERY}; {args.steps} timed steps per run (update steps included), "
        f"median of {repeats} interleaved repeats; {torch.get_num_threads()} thread(s), {args.clock} clock. "
        "Sparse rows without a suffix use the fused masked optimizer step (`fused_step=True`, the default; here "
        "it serves every sparsified tensor); `fused_step=False` rows mask the gradients in a separate pass.\n\n"
        + table(["model", "optimizer", "method", "ms / step", "ratio to dense", "overhead"], rows)
        + f"\n\nOne GraNet topology update over ResNet-50's {update['tensors']} prunable tensors "
        f"({update['weights']:,} weights): **{update['fast'] * 1000:.0f} ms** (median of {repeats}); "
        "`benchmarks/topology_update.py` compares it with a sort-based reference."
    )
    write_doc(args.doc, "Masking overhead per training step", body)


if __name__ == "__main__":
    main()
