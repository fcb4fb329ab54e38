"""Truly sparse training: the full training step on sparse storage against dense, sparselab and SparseProp.

Times the whole step (forward, backward, SGD with momentum, ``sparsifier.step()`` with its topology update every
ΔT = 100 steps) of

* an MLP 784-4096-4096-10 at batch 128, every Linear sparse, and
* the GPT-style model of ``sparsetrain.models.gpt`` (d_model 512, 2 blocks, 64 tokens, batch 16), the Linear
  layers of its MLP blocks sparse (attention and embeddings stay dense: ``nn.MultiheadAttention`` reads its weights
  directly, not through a Linear module),

at 90/95/98/99% sparsity, on 1 and 2 threads, as a ratio to the dense step measured in the same process, beside
the ideal ratio (the density). Each thread count runs in its own process (``OMP_NUM_THREADS`` must be set before the
OpenMP libraries load). Implementations, interleaved repeat by repeat so that drift on a shared machine hits all:

* dense: ``nn.Linear``, no sparsifier;
* sparsetrain: the library's methods on sparse storage (``backend="sparse"``: every sparsified Linear held by a
  :class:`~sparsetrain.sparse.TrainableSparseLinear`), uniform per-layer sparsity, ``total_steps`` 10^6 so that the
  schedules stay at their start (the largest drop fractions, the costliest updates): **RigL** (drop fraction 0.3,
  growth by the dense gradient, computed one layer at a time in row blocks on update steps only), **SET** (random
  growth), **Static** (no update) and **GraNet-ST** (``initial_sparsity`` = the sparsity: its global magnitude
  pruning keeps the count, its gradient regrowth swaps r_t = 0.5 of each layer);
* sparselab 0.2.2: ``sparselab.SparseLinear`` with its own ``sparselab.RigL`` (drop fraction 0.3, update_freq 100);
* SparseProp (``sparseprop`` 0.1.14): ``sparseprop.modules.SparseLinear``; it has no regrowth, so its rows are
  static sparse training (no topology update at all).

Both peers are optional and live only in the benchmark's own environment (see docs/benchmarks/sparse_training.md
for the install commands); without them their columns say so. Peak memory of a training run (one process per
implementation and sparsity, glibc told to return freed memory, the peak reset after the model is built) completes
the doc. A second doc holds the single-layer break-even (the rule of ``backend="auto"``), where the time goes at 99%,
and a sparse-convolution measurement (ResNet-20-size layers: dense conv2d vs SparseProp's sparse convolution vs
im2col + the sparse Linear kernels):

    PYTHONPATH=src .bench-venv/bin/python benchmarks/sparse_training.py --clock thread --repeats 3 --no-conv \
        --no-breakeven                                                  # docs/benchmarks/sparse_training.md
    PYTHONPATH=src .bench-venv/bin/python benchmarks/sparse_training.py --no-timing --no-memory --case mlp \
        --doc sparse_training_extras                                    # docs/benchmarks/sparse_training_extras.md

The last line printed gives the MLP step ratios to dense at 90/95/99% on 1 thread.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SPARSITIES = (0.9, 0.95, 0.98, 0.99)
UPDATE_EVERY = 100
DROP_FRACTION = 0.3  # RigL's initial drop fraction (alpha), the largest of its cosine schedule: the costliest updates
METHODS = ("rigl", "set", "static", "granet-st")
#: The library's methods timed per case: all four on the MLP; RigL alone on the GPT-style model (its step is about
#: 20 times the MLP's at 99%, and the methods differ only in their update step, which the MLP rows already show).
CASE_METHODS = {"mlp": METHODS, "gpt": ("rigl",)}
METHOD_NAMES = {"rigl": "RigL", "set": "SET", "static": "Static", "granet-st": "GraNet-ST"}
IMPLEMENTATIONS = ("dense", *METHODS, "sparselab", "sparseprop")
PEERS = {"sparselab": "sparselab 0.2.2", "sparseprop": "SparseProp (sparseprop 0.1.14)"}


# ---------------------------------------------------------------------------------------------------------------
# Child side: models, implementations, timing (imports torch only here, after OMP_NUM_THREADS is set)
# ---------------------------------------------------------------------------------------------------------------


def _peer(name: str) -> object | None:
    try:
        return __import__(name)
    except ImportError:
        return None


def build_case(case: str):  # noqa: ANN201 - returns (model, inputs, targets, [(parent, attribute)])
    """The dense model, a fixed batch and the Linear layers to sparsify, as (parent module, attribute name)."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    if case == "mlp":
        model = nn.Sequential(nn.Linear(784, 4096), nn.ReLU(), nn.Linear(4096, 4096), nn.ReLU(),
                              nn.Linear(4096, 10))
        slots = [(model, name) for name, module in model.named_children() if isinstance(module, nn.Linear)]
        return model, torch.randn(128, 784), torch.randint(0, 10, (128,)), slots
    from sparsetrain.models.gpt import GPT

    model = GPT((64,), 10, vocab_size=128, n_layer=2, n_head=8, d_model=512)
    slots = [(block.mlp, name) for block in model.blocks for name in ("0", "2")]
    return model, torch.randint(0, 128, (16, 64)), torch.randint(0, 10, (16,)), slots


def random_mask(shape: tuple[int, int], sparsity: float, seed: int):  # noqa: ANN201
    """Exactly round((1 - sparsity) * numel) active positions, uniformly at random."""
    import torch

    numel = shape[0] * shape[1]
    gen = torch.Generator().manual_seed(seed)
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[torch.randperm(numel, generator=gen)[: round((1 - sparsity) * numel)]] = True
    return mask.view(shape)


def shape_stub(linear):  # noqa: ANN001, ANN201
    """A stand-in with a Linear's shapes and bias but no product: times the rest of the model (GPT's ideal)."""
    from torch import nn

    class Stub(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.out_features = linear.out_features
            self.bias = nn.Parameter(linear.bias.detach().clone())

        def forward(self, x):  # noqa: ANN001, ANN202
            repeat = -(-self.out_features // x.shape[-1])
            return x.repeat(*([1] * (x.dim() - 1)), repeat)[..., : self.out_features] + self.bias

    return Stub()


def sparsifier(method: str, model, optimizer, sparsity: float, names: list[str]):  # noqa: ANN001, ANN201
    """The library's method on sparse storage, its schedules at their start (see the module docstring)."""
    import sparsetrain

    common = dict(sparsity=sparsity, total_steps=10**6, update_every=UPDATE_EVERY, include=names, backend="sparse",
                  seed=0)
    if method == "rigl":
        return sparsetrain.RigL(model, optimizer, drop_fraction=DROP_FRACTION, distribution="uniform", **common)
    if method == "set":
        return sparsetrain.SET(model, optimizer, drop_fraction=DROP_FRACTION, distribution="uniform", **common)
    if method == "static":
        return sparsetrain.Static(model, optimizer, distribution="uniform", **common)
    # GraNet's own scope (global) for its pruning; its random start uniform per layer like the others.
    return sparsetrain.GraNet(model, optimizer, initial_sparsity=sparsity, init_distribution="uniform", **common)


def make_trainer(impl: str, case: str, sparsity: float) -> Callable[[], bool] | None:
    """A closure running one training step (True on a topology-update step), or None if the peer is missing."""
    import torch
    from torch import nn

    model, x, y, slots = build_case(case)
    layers = []
    sparselab, sparseprop = _peer("sparselab"), _peer("sparseprop")
    if impl in ("sparselab", "sparseprop") and (sparselab if impl == "sparselab" else sparseprop) is None:
        return None
    names = [f"{name}.weight" for name, module in model.named_modules()
             if any(module is getattr(parent, attr) for parent, attr in slots)]
    for index, (parent, name) in enumerate(slots):
        linear = getattr(parent, name)
        if impl == "dense" or impl in METHODS:
            continue
        mask = random_mask(tuple(linear.weight.shape), sparsity, seed=index)
        if impl == "stub":
            new = shape_stub(linear)
        elif impl == "sparselab":
            new = sparselab.SparseLinear(linear.in_features, linear.out_features, bias=True, sparsity=sparsity)
        else:
            from sparseprop.modules import SparseLinear as SparsePropLinear

            new = SparsePropLinear(linear.weight.detach() * mask, nn.Parameter(linear.bias.detach().clone()))
        setattr(parent, name, new)
        layers.append(new)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    algorithm = ours = None
    if impl == "sparselab":
        algorithm = sparselab.RigL(sparsity=sparsity, drop_fraction=DROP_FRACTION, update_freq=UPDATE_EVERY, seed=0)
        model.apply(algorithm)
    if impl in METHODS:
        ours = sparsifier(impl, model, optimizer, sparsity, names)
    count = 0

    def step() -> bool:
        nonlocal count
        count += 1
        nn.functional.cross_entropy(model(x), y).backward()
        optimizer.step()
        updated = ours.step() if ours is not None else count % UPDATE_EVERY == 0 and algorithm is not None
        if algorithm is not None:
            algorithm.step()
        optimizer.zero_grad(set_to_none=True)
        return updated

    return step


def time_windows(trainers: dict[str, Callable[[], bool]], repeats: int, steps: int, dense_steps: int,
                 clock: Callable[[], float]) -> dict[str, dict[str, list[float]]]:
    """Per implementation: seconds per step of each window (interleaved), and the update steps' own times.

    A sparse window is ``steps`` consecutive steps (a multiple of ΔT: exactly steps / ΔT updates inside); dense
    windows are shorter (no periodic work).
    """
    for step in trainers.values():
        for _ in range(3):
            step()
    samples: dict[str, dict[str, list[float]]] = {impl: {"step": [], "update": []} for impl in trainers}
    for _ in range(repeats):
        for impl, step in trainers.items():
            n = dense_steps if impl in ("dense", "stub") else steps
            total = 0.0
            for _ in range(n):
                start = clock()
                updated = step()
                elapsed = clock() - start
                total += elapsed
                if updated:
                    samples[impl]["update"].append(elapsed)
            samples[impl]["step"].append(total / n)
    return samples


def child_timing(args: argparse.Namespace) -> None:
    import torch

    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" and args.threads == 1 else time.perf_counter
    results = {}
    for case in args.case:
        # One dense model (and one GPT stand-in) per process, timed in every sparsity's windows: the dense step does
        # not depend on the sparsity, and a model built anew per sparsity lands on other memory, which moved its
        # step by up to 15% between sparsities of one process (160 vs 185 ms on the MLP). Ratios use the median of
        # all its windows in the process (main()).
        shared = {impl: make_trainer(impl, case, 0.0) for impl in ("dense", "stub") if impl == "dense" or case == "gpt"}
        for sparsity in args.sparsities:
            trainers = {}
            for impl in IMPLEMENTATIONS + (("stub",) if case == "gpt" else ()):
                if impl in METHODS and impl not in CASE_METHODS[case]:
                    continue
                trainer = shared[impl] if impl in shared else make_trainer(impl, case, sparsity)
                if trainer is not None:
                    trainers[impl] = trainer
            samples = time_windows(trainers, args.repeats, args.steps, args.dense_steps, clock)
            results[f"{case}/{sparsity}"] = samples
            summary = {impl: round(statistics.median(s["step"]) * 1e3, 2) for impl, s in samples.items()}
            print(f"[{args.threads} thread(s)] {case} {sparsity}: ms/step {summary}", file=sys.stderr, flush=True)
            del trainers
    print(json.dumps({"timing": results, "load": os.getloadavg()}))


def _rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def child_memory(args: argparse.Namespace) -> None:
    """Peak resident memory of ``UPDATE_EVERY + 1`` steps (one update included), above the RSS before the model."""
    import gc

    import torch

    from sparsetrain import streaming_topk
    from sparsetrain.sparse import sddmm, spmm

    torch.set_num_threads(args.threads)
    # Imports, the native libraries and the peers are loaded before the baseline; kernel buffers are not.
    spmm.native_available(), sddmm.native_available(), streaming_topk._load(), _peer("sparselab"), _peer("sparseprop")
    probe = torch.zeros(1, requires_grad=True)
    probe.grad = torch.zeros(1)
    torch.optim.SGD([probe], lr=0.1, momentum=0.9).step()  # the optimizer's first use imports ~70 MB of modules
    build_case(args.case[0])
    gc.collect()
    before = _rss_kib("VmRSS")
    step = make_trainer(args.memory_impl, args.case[0], args.sparsities[0])
    if step is None:
        print(json.dumps(None))
        return
    gc.collect()
    built = _rss_kib("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the current RSS
    for _ in range(UPDATE_EVERY + 1):
        step()
    peak = _rss_kib("VmHWM")
    print(json.dumps({"model_mib": (built - before) / 1024, "peak_mib": (peak - before) / 1024}))


# ---------------------------------------------------------------------------------------------------------------
# Break-even: where does sparse storage beat a dense Linear? (the rule of backend="auto")
# ---------------------------------------------------------------------------------------------------------------

BREAK_EVEN_SHAPES = ((128, 128), (256, 256), (512, 512), (784, 300), (1024, 1024), (4096, 4096))
BREAK_EVEN_DENSITIES = (0.5, 0.4, 0.3, 0.2, 0.1, 0.05)


def child_breakeven(args: argparse.Namespace) -> None:
    """One Linear layer's training step (forward, ReLU, backward, SGD with momentum), batch 128: dense
    ``nn.Linear`` against a TrainableSparseLinear at each density.

    The learning rate is 0 (the optimizer does all its arithmetic, the weights stay where they started), so every
    unit keeps a gradient: under ``relu(y).sum()`` a learning rate drives the units off one after another, and the
    sparse layer's backward would then skip the rows of the dead ones, a saving this loss invents and training
    would not have."""
    import torch
    from torch import nn

    from sparsetrain.sparse import TrainableSparseLinear

    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" and args.threads == 1 else time.perf_counter

    def seconds(layer: nn.Module, x, steps: int) -> float:  # noqa: ANN001
        optimizer = torch.optim.SGD(layer.parameters(), lr=0.0, momentum=0.9)

        def window() -> float:
            start = clock()
            for _ in range(steps):
                torch.relu(layer(x)).sum().backward()
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
            return (clock() - start) / steps

        window()
        return statistics.median(window() for _ in range(args.repeats))

    results = {}
    for n_in, n_out in BREAK_EVEN_SHAPES:
        torch.manual_seed(0)
        x = torch.randn(128, n_in, requires_grad=True)
        linear = nn.Linear(n_in, n_out)
        steps = max(3, int(2e7 / (n_in * n_out)))
        dense = seconds(linear, x, steps)
        row = {}
        for density in BREAK_EVEN_DENSITIES:
            mask = random_mask((n_out, n_in), 1 - density, seed=0)
            row[density] = seconds(TrainableSparseLinear.from_linear(linear, mask), x, steps) / dense
        results[f"{n_in}x{n_out}"] = {"dense_ms": dense * 1e3, "ratios": row}
        print(f"[break-even] {n_in}x{n_out}: {row}", file=sys.stderr, flush=True)
    print(json.dumps({"breakeven": results}))


# ---------------------------------------------------------------------------------------------------------------
# Where the time goes at 99%: the parts of the MLP's 4096 x 4096 layer
# ---------------------------------------------------------------------------------------------------------------

FLOOR_SPARSITIES = (0.99, 0.9999)


def child_floor(args: argparse.Namespace) -> None:
    """The pieces of one step of the MLP's middle layer (4096 x 4096, batch 128, 1 thread), best of 7 windows."""
    import torch
    from torch import nn

    from sparsetrain.sparse import TrainableSparseLinear
    from sparsetrain.sparse import trainable

    torch.set_num_threads(1)
    clock = time.thread_time if args.clock == "thread" else time.perf_counter

    def best_ms(fn: Callable[[], object], n: int = 100) -> float:
        fn()
        times = []
        for _ in range(7):
            start = clock()
            for _ in range(n):
                fn()
            times.append((clock() - start) / n)
        return min(times) * 1e3

    results = {}
    torch.manual_seed(0)
    x, dy = torch.randn(128, 4096), torch.randn(128, 4096)
    # The output gradient of the benchmark MLP's middle layer at 99%: about a tenth of the units have one.
    dy_few = torch.zeros_like(dy)
    few = torch.randperm(4096)[:410]
    dy_few[:, few] = dy[:, few]
    linear = nn.Linear(4096, 4096)
    for sparsity in FLOOR_SPARSITIES:
        layer = TrainableSparseLinear.from_linear(linear, random_mask((4096, 4096), sparsity, seed=0))
        layout, values, bias = layer._layout(), layer.weight_values.detach(), layer.bias.detach()
        kernels = trainable._kernels(x, values, bias, layout)
        live = trainable.live_units(dy_few)
        rows = layout.live_rows(kernels, live) if kernels is not None and live is not None else None
        results[str(sparsity)] = {
            "forward product (+ bias)": best_ms(lambda: trainable._product(kernels, x, layout.crow, layout.col,
                                                                          values, bias, 4096)),
            "input gradient (W.T product, values gathered)": best_ms(lambda: trainable._product(
                kernels, dy, layout.t_crow, layout.t_rows, trainable._transpose_values(kernels, values, layout),
                None, 4096)),
            "weight gradient (SDDMM) and bias gradient": best_ms(lambda: trainable._values_grad(
                kernels, x, dy, layout.crow, layout.col, True)),
            "input + weight + bias gradients, 10% of the units live (their rows only)": best_ms(
                lambda: trainable._backward_of_live_units(kernels, x, dy_few, values, layout, rows, True, True, True))
            if rows is not None else float("nan"),
            "ReLU forward": best_ms(lambda: torch.relu(x)),
            "ReLU backward": best_ms(lambda: torch.ops.aten.threshold_backward(dy, x, 0)),
            "dense gradient for growth (RigL update steps)": best_ms(lambda: [
                dy[:, r:r + 64].t() @ x for r in range(0, 4096, 64)], 3),
        }
        print(f"[floor] {sparsity}: {results[str(sparsity)]}", file=sys.stderr, flush=True)
    print(json.dumps({"floor": results}))


# ---------------------------------------------------------------------------------------------------------------
# Convolution: does a sparse convolution pay for training?
# ---------------------------------------------------------------------------------------------------------------

CONV_LAYERS = {"16 ch, 32x32": (16, 32), "32 ch, 16x16": (32, 16), "64 ch, 8x8": (64, 8)}


def child_conv(args: argparse.Namespace) -> None:
    """Forward + backward of one 3x3 convolution (ResNet-20's three widths, batch 128), dense vs sparse ways."""
    import torch
    import torch.nn.functional as F
    from torch import nn

    from sparsetrain.sparse import TrainableSparseLinear

    torch.set_num_threads(args.threads)
    clock = time.thread_time if args.clock == "thread" and args.threads == 1 else time.perf_counter
    sparseprop = _peer("sparseprop")
    results = {}
    for label, (channels, size) in CONV_LAYERS.items():
        x = torch.randn(128, channels, size, size)
        for sparsity in args.sparsities:
            torch.manual_seed(0)
            conv = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
            mask = random_mask((channels, channels * 9), sparsity, seed=0).view(conv.weight.shape)
            with torch.no_grad():
                conv.weight.mul_(mask)
            im2col = TrainableSparseLinear.from_dense(conv.weight.detach().view(channels, -1), mask.view(channels, -1))

            def dense() -> None:
                conv(x.requires_grad_()).sum().backward()

            def unfolded() -> None:
                inp = x.requires_grad_()
                cols = F.unfold(inp, 3, padding=1).transpose(1, 2)  # (batch, positions, channels * 9)
                out = im2col(cols).transpose(1, 2).reshape(128, channels, size, size)
                out.sum().backward()

            variants = {"dense conv2d": dense, "im2col + sparse Linear": unfolded}
            if sparseprop is not None:
                from sparseprop.modules import SparseConv2d

                for over_on in (False, True):
                    layer = SparseConv2d(conv.weight.detach().clone(), padding=1, vectorizing_over_on=over_on)
                    variants["SparseProp, vectorized over " + ("output positions" if over_on else "batch")] = (
                        lambda layer=layer: layer(x.requires_grad_()).sum().backward())
            times: dict[str, list[float]] = {name: [] for name in variants}
            for fn in variants.values():
                fn()
            for _ in range(args.repeats):
                for name, fn in variants.items():
                    start = clock()
                    for _ in range(3):
                        fn()
                    times[name].append((clock() - start) / 3)
            results[f"{label}/{sparsity}"] = {name: statistics.median(v) for name, v in times.items()}
            print(f"[conv] {label} {sparsity}: {results[f'{label}/{sparsity}']}", file=sys.stderr, flush=True)
    print(json.dumps({"conv": results}))


# ---------------------------------------------------------------------------------------------------------------
# Parent side: run the children, write the doc
# ---------------------------------------------------------------------------------------------------------------


def run_child(args: argparse.Namespace, threads: int, extra: list[str], env_extra: dict | None = None) -> object:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads),
               PYTHONPATH=str(ROOT / "src") + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    command = [sys.executable, __file__, "--child", "--threads-child", str(threads), "--repeats", str(args.repeats),
               "--steps", str(args.steps), "--dense-steps", str(args.dense_steps), "--clock", args.clock,
               "--sparsities", *map(str, args.sparsities), *extra]
    out = subprocess.run(command, env=env, check=True, stdout=subprocess.PIPE, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def fmt_ratio(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="thread counts (one process each)")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved timing windows per implementation")
    parser.add_argument("--steps", type=int, default=UPDATE_EVERY, help="steps per sparse window (multiple of 100)")
    parser.add_argument("--dense-steps", type=int, default=10, help="steps per dense window")
    parser.add_argument("--sparsities", type=float, nargs="+", default=list(SPARSITIES))
    parser.add_argument("--case", nargs="+", choices=("mlp", "gpt"), default=["mlp", "gpt"])
    parser.add_argument("--clock", choices=("wall", "thread"), default="wall",
                        help="wall time, or (1-thread runs only) CPU time of the calling thread")
    parser.add_argument("--no-memory", action="store_true", help="skip the peak-memory runs")
    parser.add_argument("--no-conv", action="store_true", help="skip the convolution measurement")
    parser.add_argument("--no-breakeven", action="store_true", help="skip the single-layer break-even measurement")
    parser.add_argument("--no-timing", action="store_true", help="skip the step timing of the cases (and its targets)")
    parser.add_argument("--quick", action="store_true", help="MLP only, 1 thread, 1 repeat, no memory, no conv")
    parser.add_argument("--doc", default="sparse_training", help="write docs/benchmarks/<DOC>.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--threads-child", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--memory-impl", help=argparse.SUPPRESS)
    parser.add_argument("--conv", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--breakeven", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--floor", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.steps % UPDATE_EVERY:
        parser.error(f"--steps must be a multiple of {UPDATE_EVERY}, got {args.steps}")
    if args.child:
        args.threads = args.threads_child
        warnings.filterwarnings("ignore")
        if args.memory_impl:
            child_memory(args)
        elif args.conv:
            child_conv(args)
        elif args.breakeven:
            child_breakeven(args)
        elif args.floor:
            child_floor(args)
        else:
            child_timing(args)
        return
    if args.quick:
        args.case, args.threads, args.repeats = ["mlp"], [1], 1
        args.no_memory = args.no_conv = args.no_breakeven = True
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from _common import table, write_doc

    started = time.perf_counter()
    load_start = " ".join(f"{v:.2f}" for v in os.getloadavg())
    timing = {} if args.no_timing else {threads: run_child(args, threads, ["--case", *args.case])
                                        for threads in args.threads}
    sections = [] if args.no_timing else [
        f"Step = forward + backward + SGD (momentum 0.9) + `sparsifier.step()`, whose topology update runs every "
        f"ΔT = {UPDATE_EVERY} steps (RigL and SET: drop fraction {DROP_FRACTION}, the largest of RigL's schedule; "
        "GraNet-ST: global magnitude pruning at the count it has, then gradient regrowth of r_t = 0.5), for the "
        f"implementations that update; {args.steps} consecutive steps per sparse window (so every window holds "
        f"{args.steps // UPDATE_EVERY} update), {args.dense_steps} per dense window; median of {args.repeats} "
        "windows, implementations "
        "interleaved window by window in one process per thread count; ratio = median step / median dense step of "
        "the same process (one dense model per process, timed in the windows of every sparsity; its median over all "
        "of them is the *dense ms* column, the same on every row). Clock: "
        + ("CPU time of the calling thread on 1 thread (`--clock thread`: time preempted by other jobs is not "
           "counted; every implementation runs on the calling thread there), wall time on 2 threads."
           if args.clock == "thread" else "wall time.")
        + f" Load average at start: {load_start}.",
    ]
    ratios_1: dict[float, float] = {}
    for case in args.case if timing else ():
        methods = CASE_METHODS[case]
        title = ("MLP 784-4096-4096-10, batch 128, every Linear sparse" if case == "mlp" else
                 "GPT-style model (d_model 512, 2 blocks, 8 heads, 64 tokens, batch 16), MLP-block Linears sparse")
        preface = "" if case == "mlp" else (
            "Attention, embeddings and the head stay dense. In brackets, the ideal for this model: the rest of its "
            "step (timed with shape-only stand-ins for the sparse Linears) plus the density times their share.\n\n")
        for threads, result in timing.items():
            rows = []
            pooled = {impl: statistics.median([w for sparsity in args.sparsities
                                               for w in result["timing"][f"{case}/{sparsity}"][impl]["step"]])
                      for impl in ("dense", "stub") if impl in result["timing"][f"{case}/{args.sparsities[0]}"]}
            for sparsity in args.sparsities:
                samples = result["timing"][f"{case}/{sparsity}"]
                median = {impl: statistics.median(s["step"]) for impl, s in samples.items()} | pooled
                dense = median["dense"]
                ratio = {impl: median[impl] / dense if impl in median else None for impl in IMPLEMENTATIONS}
                updates = samples["rigl"]["update"]
                if case == "mlp" and threads == 1:
                    ratios_1[sparsity] = ratio["rigl"]
                ideal = f"{1 - sparsity:.2f}"
                if "stub" in median:  # the rest of the model stays dense: ideal = rest + density x sparse part
                    rest = median["stub"] / dense
                    ideal += f" ({rest + (1 - sparsity) * (1 - rest):.2f})"
                rows.append([f"{sparsity:.0%}", ideal, f"**{fmt_ratio(ratio['rigl'])}**",
                             *(fmt_ratio(ratio[m]) for m in methods[1:]), fmt_ratio(ratio["sparselab"]),
                             fmt_ratio(ratio["sparseprop"]), f"{dense * 1e3:.1f}", f"{median['rigl'] * 1e3:.2f}",
                             f"{statistics.median(updates) * 1e3:.0f}" if updates else "n/a",
                             *(f"{median[p] * 1e3:.2f}" if p in median else "n/a" for p in PEERS)])
            sections.append(
                f"## {title}, {threads} thread(s)\n\n" + preface
                + table(["sparsity", "ideal (density)", "RigL", *(METHOD_NAMES[m] for m in methods[1:]),
                         "sparselab (RigL)", "SparseProp (static)", "dense ms", "RigL ms", "RigL update step ms",
                         "sparselab ms", "SparseProp ms"], rows))
    if 1 in timing and "mlp" in args.case:
        targets = {0.9: 0.25, 0.95: 0.14, 0.99: 0.04}
        lines = []
        for sparsity, goal in targets.items():
            if sparsity not in ratios_1:
                continue
            got = ratios_1[sparsity]
            peers_beaten = all(
                timing[t]["timing"][f"{c}/{s}"].get(p) is None
                or statistics.median(timing[t]["timing"][f"{c}/{s}"]["rigl"]["step"])
                < statistics.median(timing[t]["timing"][f"{c}/{s}"][p]["step"])
                for t in timing for c in args.case for s in args.sparsities for p in PEERS)
            lines.append(f"- {sparsity:.0%}: RigL {got:.3f}x dense, target <= {goal}x: "
                         f"{'met' if got <= goal else 'MISSED'}")
        installed = [p for p in PEERS if any(p in timing[t]["timing"][f"mlp/{s}"] for t in timing
                                             for s in args.sparsities)]
        lines.append(f"- RigL (updates included) faster than every installed peer ({', '.join(installed)}) at every "
                     f"sparsity, thread count and case ({', '.join(args.case)}): {'yes' if peers_beaten else 'NO'}"
                     if installed else
                     "- peers: none installed in this run, so this run does not compare them (see the install "
                     "commands above)")
        sections.insert(1, "## Targets (MLP, 1 thread, RigL with its update steps)\n\n" + "\n".join(lines))
    if not args.no_memory:
        sections.append(memory_section(args, table))
    if not args.no_breakeven:
        sections.append(breakeven_section(args, table))
        sections.append(floor_section(args, table))
    if not args.no_conv:
        sections.append(conv_section(args, table))
    sections.append(f"Wall time of this run: {time.perf_counter() - started:.0f} s; load average at the end: "
                    + " ".join(f"{v:.2f}" for v in os.getloadavg()) + ".")
    title = ("Truly sparse training: break-even, where the time goes, convolutions" if args.no_timing else
             "Truly sparse training: step time and memory against dense and the peers")
    write_doc(args.doc, title,
              INSTALL + "\n\n" + "\n\n".join(sections) + "\n\n" + NOTES)
    if ratios_1:
        print("MLP step ratio to dense (RigL on sparse storage), 1 thread: "
              + ", ".join(f"{s:.0%} {ratios_1[s]:.3f}" for s in (0.9, 0.95, 0.99) if s in ratios_1))


def memory_section(args: argparse.Namespace, table: Callable) -> str:
    """Peak memory of each implementation (MLP, 1 thread) relative to dense."""
    env = {"MALLOC_MMAP_THRESHOLD_": "65536", "MALLOC_TRIM_THRESHOLD_": "0"}
    results = {}
    for sparsity in args.sparsities:
        for impl in IMPLEMENTATIONS:
            if impl == "dense" and results.get("dense") is not None:
                continue
            extra = ["--case", "mlp", "--memory-impl", impl]
            result = run_child(argparse.Namespace(**{**vars(args), "sparsities": [sparsity]}), 1, extra, env)
            results["dense" if impl == "dense" else f"{impl}/{sparsity}"] = result
            print(f"[memory] {impl} {sparsity}: {result}", file=sys.stderr, flush=True)
    dense = results["dense"]["peak_mib"]
    rows = [["dense", "-", f"{results['dense']['model_mib']:.1f}", f"{dense:.1f}", "1.000"]]
    for sparsity in args.sparsities:
        for impl in IMPLEMENTATIONS[1:]:
            result = results.get(f"{impl}/{sparsity}")
            label = f"sparsetrain {METHOD_NAMES[impl]}" if impl in METHODS else impl
            if result is None:
                rows.append([label, f"{sparsity:.0%}", "not installed", "", ""])
                continue
            rows.append([label, f"{sparsity:.0%}", f"{result['model_mib']:.1f}", f"{result['peak_mib']:.1f}",
                         f"{result['peak_mib'] / dense:.3f}"])
    target = ""
    if results.get("rigl/0.95") is not None:
        got = results["rigl/0.95"]["peak_mib"] / dense
        target = f"Target: peak at 95% <= 0.3x dense: RigL {got:.3f}x, {'met' if got <= 0.3 else 'MISSED'}.\n\n"
    return ("## Peak memory (MLP, 1 thread)\n\nOne process per row: memory above the resident set before the model "
            f"was built; *model* = after building it and its optimizer, *peak* = the most resident during "
            f"{UPDATE_EVERY + 1} training steps (one topology update included; the peak is reset after the build, "
            "so a peer that builds its sparse layer from a dense one is not charged for that transient). glibc is "
            "told to unmap freed blocks (`MALLOC_MMAP_THRESHOLD_=65536`, `MALLOC_TRIM_THRESHOLD_=0`) so the "
            "resident set follows live memory. The dense row is the same for every sparsity.\n\n" + target
            + table(["implementation", "sparsity", "model MiB", "peak MiB", "peak / dense peak"], rows))


def breakeven_section(args: argparse.Namespace, table: Callable) -> str:
    """Sparse storage against a dense Linear, one layer, 1 thread: the measurement behind backend="auto"."""
    from sparsetrain.sparse.backend import AUTO_MAX_DENSITY, AUTO_MIN_WEIGHTS

    result = run_child(args, 1, ["--breakeven"])["breakeven"]
    rows = [[shape, f"{values['dense_ms']:.2f}", *(f"{values['ratios'][str(d)]:.2f}" for d in BREAK_EVEN_DENSITIES)]
            for shape, values in result.items()]
    return ("## Break-even: one Linear layer (the rule of `backend=\"auto\"`)\n\n"
            "Forward, ReLU, backward (input and weight gradients) and SGD with momentum (learning rate 0, so that "
            "every unit keeps a gradient and no row of the backward is skipped) of one layer, batch 128, "
            "1 thread: TrainableSparseLinear's step time over dense `nn.Linear`'s (below 1 = sparse storage is "
            f"faster). `backend=\"auto\"` holds a float32 CPU Linear sparse at density <= {AUTO_MAX_DENSITY} with "
            f"at least {AUTO_MIN_WEIGHTS:,} weights, where every row measured here was at least about 10% faster; "
            "the masked-dense path (bool masks, fused optimizer step) costs about what dense does.\n\n"
            + table(["in x out", "dense ms", *(f"density {d}" for d in BREAK_EVEN_DENSITIES)], rows))


def floor_section(args: argparse.Namespace, table: Callable) -> str:
    """The pieces of the MLP's middle layer at 99% (and nearly empty), 1 thread."""
    result = run_child(args, 1, ["--floor"])["floor"]
    names = list(next(iter(result.values())))
    rows = [[name, *(f"{result[str(s)][name]:.3f}" for s in FLOOR_SPARSITIES)] for name in names]
    return ("## Where the time goes at 99% (the MLP's 4096 x 4096 layer, batch 128, 1 thread)\n\n"
            "Milliseconds per call, best of 7 windows. Each product packs its dense operand (batch x 4096) and writes "
            "a dense result, whatever the density: the 99.99% column (1,678 weights) is that fixed cost. The input "
            "and weight gradient rows take every unit live (random output gradients); in the benchmark MLP at 99% "
            "only about 10% of this layer's units have a gradient (the next layer reads few of them), and the "
            "backward then multiplies only their rows of W (the *10% of the units live* row: all three gradients, "
            "the rows' structures kept from the step before). The dense gradient is what RigL's update steps add, "
            "once per ΔT = 100 steps, for this layer alone, every unit live; there too only the live units' rows "
            "are multiplied in the MLP.\n\n"
            + table(["piece", *(f"{s:.2%} sparse" for s in FLOOR_SPARSITIES)], rows))


def conv_section(args: argparse.Namespace, table: Callable) -> str:
    """Convolution forward + backward: dense vs sparse ways, 1 thread."""
    result = run_child(args, 1, ["--conv"])["conv"]
    names = sorted({name for row in result.values() for name in row}, key=lambda n: (n != "dense conv2d", n))
    rows = []
    for key, times in result.items():
        label, sparsity = key.split("/")
        dense = times["dense conv2d"]
        rows.append([label, f"{float(sparsity):.0%}", f"{dense * 1e3:.2f}",
                     *(f"{dense / times[n]:.2f}x" if n in times else "n/a" for n in names[1:])])
    return ("## Sparse convolution for training? (one 3x3 convolution, batch 128, 1 thread)\n\n"
            "Forward + backward (input and weight gradients) of one ResNet-20-size convolution, as the speed-up over "
            "dense `conv2d` (above 1x = faster than dense). *im2col + sparse Linear* = `F.unfold` then "
            "TrainableSparseLinear's kernels on (batch x positions, channels x 9). sparsetrain ships no sparse "
            "convolution: the im2col route was slower than dense at every point measured (unfolding alone costs more "
            "than the dense convolution), and only a direct kernel like SparseProp's pays, on the widest layers at "
            "high sparsity.\n\n"
            + table(["layer", "sparsity", "dense ms", *names[1:]], rows))


INSTALL = """The peers live in a virtual environment used only by this benchmark (never a dependency of the package):

```
python -m venv --system-site-packages .bench-venv
.bench-venv/bin/pip install --no-deps sparselab==0.2.2
.bench-venv/bin/pip install pybind11 wheel
.bench-venv/bin/pip install --no-deps --no-build-isolation sparseprop==0.1.14   # builds its C++ extension
PYTHONPATH=src .bench-venv/bin/python benchmarks/sparse_training.py
```"""

NOTES = """Notes:

- sparsetrain's rows are the library's own methods, `sparsetrain.RigL/SET/Static/GraNet(..., backend="sparse")`, in a
  plain loop (`loss.backward(); optimizer.step(); sparsifier.step()`): each Linear keeps only its active weights
  (values, their gradient and momentum, int32 CSR indices of W and W.T). On RigL's and GraNet's update steps the
  layers keep their inputs and output gradients during the backward; the update computes each layer's dense gradient
  in row blocks of 2^18 scores (at least 64 rows), one layer at a time, and selects the grown positions over the
  blocks, so no layer's dense gradient is held whole; only the rows of units with a nonzero output gradient are
  multiplied (the others are exactly zero: 90% of the middle layer's units at 99%, because the 4096 -> 10 layer
  reads few of them). SET and Static never keep them.
- sparselab's RigL keeps a copy of every layer's input and output gradient at every step (its hooks) and updates row
  by row in Python; SparseProp has no regrowth, so its rows carry no topology update at all.
- The masks are uniform random at every layer (the same per-layer sparsity for every implementation); sparselab draws
  its own random mask at the same sparsity.
- A layer whose output gradient is zero in whole columns runs its backward on the rows of W of the other units
  only (exact: a unit with no gradient over the batch has a zero weight-gradient row and adds nothing to the input
  gradient). In this MLP that is the middle layer: the 4096 -> 10 layer has 40,960 x density weights, so it reads
  at most that many of the middle layer's 4096 units (410 at 99%, 819 at 98%, 2,048 at 95%), and the middle
  layer's backward takes those units' rows only (whenever at most half of the units are live). RigL
  then grows weights into those rows (they are the ones with a gradient): 37% of the middle layer's weights sit in
  them after its first update at 99%. Neither peer skips these rows. A network whose next layers read every unit
  (the GPT rows) gains nothing from it and pays a scan of a few rows of the gradient.
- At 99% the step is no longer proportional to the density: every sparse product packs its dense operand and writes
  a dense result, and ReLU and the loss stay dense (docs/benchmarks/sparse_training_extras.md, "Where the time
  goes"); RigL adds its dense gradient (RigL's own accounting) on each update step. Ideas measured and left out:
  keeping the forward's packed input for the weight gradient (the forward lost what the backward gained), four
  partial sums instead of two in the product kernel (8% slower: it waits on L2), fusing ReLU into the layer (it
  would save the ReLU forward pass, about 0.15 ms of a 4096-wide layer's step, at the price of rewriting the
  model's ReLU modules), and reading a batch-inner (transposed) input in place instead of packing it, the first
  step of handing activations between sparse layers transposed (on the 4096 x 4096 layer at 99%, 1 thread:
  1.09-1.22 ms per forward product against 0.95 ms with the packing: its 512-byte rows read 128 bytes at a time
  fall into a quarter of the L2 cache's sets).
- Each thread count runs with `OMP_NUM_THREADS` set to it, so the peers' OpenMP kernels use the same number of
  threads as torch; left unset, their kernels would use every core even in the 1-thread rows."""


if __name__ == "__main__":
    main()
