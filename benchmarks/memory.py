"""Peak memory of a training run with each method against dense.

Each configuration runs in a fresh subprocess (so peaks do not leak between runs) that trains the MLP
784-1024-1024-10 (batch 128, SGD with momentum) for a few hundred steps at 90% sparsity, ΔT = 100, and reports
its peak resident set size (``ru_maxrss``) and the bytes the sparsifier itself holds (masks, cached
multipliers, SNFS momentum, ITOP record).

    python benchmarks/memory.py [--steps 300]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys

from _common import table, write_doc

METHODS = ["dense", "static", "set", "rigl", "snfs", "gmp", "granet"]


def child(method: str, steps: int) -> None:
    import torch
    from torch import nn

    import sparsetrain

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(784, 1024), nn.ReLU(), nn.Linear(1024, 1024), nn.ReLU(), nn.Linear(1024, 10))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    sparsifier = None
    if method != "dense":
        sparsifier = sparsetrain.METHODS[method](model, optimizer, sparsity=0.9, total_steps=steps, update_every=100)
    x, y = torch.randn(128, 784), torch.randint(0, 10, (128,))
    for _ in range(steps):
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        if sparsifier is not None:
            sparsifier.step()
        optimizer.zero_grad()
    held = 0
    if sparsifier is not None:
        tensors = [*sparsifier.masks.values(), *sparsifier.ever_active.values(),
                   *sparsifier.enforcer._multipliers.values(), *getattr(sparsifier, "momentum", {}).values()]
        held = sum(t.numel() * t.element_size() for t in tensors)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    print(json.dumps({"peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, "held": held,
                      "weights": weights}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300, help="training steps per run")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, args.steps)
        return
    results = {}
    for method in METHODS:
        out = subprocess.run([sys.executable, __file__, "--child", method, "--steps", str(args.steps)],
                             check=True, capture_output=True, text=True).stdout
        results[method] = json.loads(out.strip().splitlines()[-1])
        print(method, results[method], flush=True)
    dense = results["dense"]["peak_rss"]
    mib = 1024 * 1024
    rows = [[m, f"{r['peak_rss'] / mib:.1f}", f"{r['peak_rss'] / dense:.3f}", f"{r['held'] / mib:.2f}",
             f"{r['held'] / r['weights']:.2f}"] for m, r in results.items()]
    body = (
        f"MLP 784-1024-1024-10 ({results['dense']['weights'] / mib:.1f} MiB of float32 weights), batch 128, SGD "
        f"with momentum, 90% sparsity, ΔT = 100, {args.steps} steps; one fresh process per method. Peak RSS "
        "includes the Python interpreter and torch itself (about the same in every row).\n\n"
        + table(["method", "peak RSS (MiB)", "ratio to dense", "sparsifier state (MiB)",
                 "state / weight bytes"], rows)
        + "\n\nThe sparsifier holds each mask as bool (1 byte per weight) and the ITOP record (`ever_active`, "
        "bool); SNFS adds its dense-gradient momentum. The masked-gradient path (`fused_step=False`, or an "
        "optimizer the fused kernel does not serve) also keeps a copy of the masks in the weights' dtype "
        "(multiplying by it is about twice as fast as by bool masks, see `Sparsifier._current_multipliers`); "
        "with the fused masked step (the default, used here with foreach SGD) that copy is freed."
    )
    write_doc("memory", "Peak memory of a training run, by method", body)


if __name__ == "__main__":
    main()
