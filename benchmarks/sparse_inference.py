"""Benchmark: dense nn.Linear vs sparsetrain.sparse.SparseLinear (CSR) on CPU, and what backs the defaults.

Sections (all timings: median over interleaved repeats; every variant of a row is timed in the same
loop, one after another, so a slow spell of the machine hits all of them alike):

1. kernel variants at 95 / 99 % sparsity: SparseLinear's native kernel (``native/spmm.c``, its main
   path) beside the torch CSR layouts / orientations / index widths (its fallback path and alternatives);
2. square Linear 1024/2048/4096 at batch 128, sparsity 50..99 %: SparseLinear (native kernel) beside its
   torch CSR path, the `sparselab` package's forward kernel when it is installed, and the ideal 1/density;
3. the break-even sparsity per size (sets ``DEFAULT_MIN_SPARSITY``);
4. small layers (sets ``DEFAULT_MIN_NUMEL``);
5. an end-to-end MLP 784-4096-4096-10 converted with ``convert()``;
6. one 3x3 convolution: im2col + CSR matmul vs dense ``conv2d``.

Run from the repository root:  python benchmarks/sparse_inference.py
Writes docs/benchmarks/sparse_inference.md. Uses torch's default thread count.
"""

from __future__ import annotations

import argparse
import ctypes
import math
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from _common import machine_info, write_text
import torch.nn.functional as F
from torch import nn

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sparsetrain.sparse import (
    DEFAULT_MIN_NUMEL,
    DEFAULT_MIN_SPARSITY,
    SparseLinear,
    convert,
)

warnings.filterwarnings("ignore", message=".*[Ss]parse.*")

try:  # optional comparison: pip install --no-deps sparselab
    import sparselab
except ImportError as err:  # pragma: no cover - depends on the machine
    sparselab = None
    SPARSELAB_ERROR = f"import failed: {err}"
else:
    SPARSELAB_ERROR = ""

BATCH = 128
SIZES = (1024, 2048, 4096)
SPARSITIES = (0.5, 0.7, 0.9, 0.95, 0.98, 0.99)
BREAK_EVEN_GRID = (0.5, 0.6, 0.7, 0.75, 0.8, 0.85, 0.9)


class Timing(dict[str, float]):
    """Median seconds per call of each variant, plus the per-repeat samples behind them."""

    def __init__(self, samples: dict[str, list[float]]) -> None:
        super().__init__({k: statistics.median(v) for k, v in samples.items()})
        self.samples = samples

    def speedup(self, name: str) -> float:
        """Median over repeats of dense / variant, each ratio from one back-to-back pair of calls."""
        return statistics.median(d / v for d, v in zip(self.samples["dense"], self.samples[name]))

    def best_speedup(self, name: str) -> float:
        """Ratio of the minima: the least disturbed call of each."""
        return min(self.samples["dense"]) / min(self.samples[name])


def clock() -> Callable[[], float]:
    """CPU time of this thread when torch runs on 1 thread (immune to preemption), else wall time."""
    return time.thread_time if torch.get_num_threads() == 1 else time.perf_counter


#: Calls per timed block. A block of back-to-back calls measures a layer's sustained speed, as in a model that
#: runs it batch after batch. With single calls alternating with a dense GEMM, each sparse call pays for the
#: dense call just before it (caches, core clock) -- reported separately as "after a dense call".
CALLS_PER_BLOCK = 10


def time_interleaved(fns: dict[str, Callable[[], object]], repeats: int, warmup: int = 2,
                     calls: int = CALLS_PER_BLOCK) -> Timing:
    """Time each function ``repeats`` times, round-robin, so that neighbours share the machine's state.

    Each sample is the mean over a block of ``calls`` consecutive calls of one function.
    """
    now = clock()
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    samples: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = now()
            for _ in range(calls):
                fn()
            samples[name].append((now() - start) / calls)
    return Timing(samples)


def sparse_linear(n_out: int, n_in: int, sparsity: float, seed: int = 0) -> nn.Linear:
    """A Linear whose weights are zeroed (exactly +0.0) at uniformly random positions."""
    gen = torch.Generator().manual_seed(seed)
    layer = nn.Linear(n_in, n_out)
    with torch.no_grad():
        n_zero = round(sparsity * layer.weight.numel())
        flat = layer.weight.view(-1)
        flat[torch.randperm(flat.numel(), generator=gen)[:n_zero]] = 0.0
    return layer


def csr32(weight: torch.Tensor) -> torch.Tensor:
    csr = weight.to_sparse_csr()
    return torch.sparse_csr_tensor(csr.crow_indices().int(), csr.col_indices().int(), csr.values(), csr.shape)


def sparselab_threads(count: int) -> None:
    """sparselab ships its own OpenMP runtime, which torch.set_num_threads does not reach."""
    libs = Path(sparselab.__file__).resolve().parent.parent / "sparselab.libs"
    for lib in libs.glob("libgomp*"):
        ctypes.CDLL(str(lib)).omp_set_num_threads(count)


def sparselab_forward(layer: nn.Linear) -> Callable[[torch.Tensor], torch.Tensor] | None:
    """sparselab's forward kernel (``spmm(PaddedCSR, x.T)``) plus bias, or None if unavailable."""
    if sparselab is None:
        return None
    sparselab_threads(torch.get_num_threads())
    padded = sparselab.PaddedCSR.from_dense(layer.weight.detach())
    bias = layer.bias.detach()
    return lambda x: sparselab.spmm(padded, x.t().contiguous()).t() + bias


def check_close(got: torch.Tensor, want: torch.Tensor, what: str) -> None:
    if not torch.allclose(got, want, rtol=1e-4, atol=1e-4):
        raise AssertionError(f"{what}: max abs diff {(got - want).abs().max().item():.3g}")


def fmt_ms(seconds: float) -> str:
    return f"{seconds * 1e3:.3f}"


def section_kernels(repeats: int) -> list[str]:
    lines = [
        "## 1. Kernel variants (batch 128, speed-up over dense `F.linear`)",
        "",
        "All variants get the input as `(batch, in)` row-major, like `nn.Linear`, and include any transpose",
        "they need, except the column marked *chained*, which gets `x` already laid out as `(in, batch)`",
        "(what a SparseLinear receives from a preceding SparseLinear, possibly through an element-wise",
        "activation).",
        "",
        "| size | sparsity | dense ms | **SparseLinear, native kernel** | SparseLinear torch path (int32, slabs) "
        "| torch path, chained | CSR `addmm(b, W, x.T)` int32 | same, int64 idx | `x @ W_csr.T` "
        "| COO `torch.sparse.mm(W, x.T)` |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for n in SIZES:
        for s in (0.95, 0.99):
            layer = sparse_linear(n, n, s)
            x = torch.randn(BATCH, n)
            x_chained = x.t().contiguous().t()  # same values, (in, batch) memory layout
            w, b = layer.weight.detach(), layer.bias.detach()
            w32, w64, w_coo = csr32(w), w.to_sparse_csr(), w.to_sparse().coalesce()
            sparse = SparseLinear.from_dense(layer)
            bcol = b.unsqueeze(1)
            fns = {
                "dense": lambda: F.linear(x, w, b),
                "csr32": lambda: torch.addmm(bcol, w32, x.t().contiguous()).t(),
                "csr64": lambda: torch.addmm(bcol, w64, x.t().contiguous()).t(),
                "native": lambda: sparse(x),
                "ours": lambda: sparse.torch_forward(x),
                "chained": lambda: sparse.torch_forward(x_chained),
                "dense@csr": lambda: torch.mm(x, w32.t()) + b,
                "coo": lambda: (torch.sparse.mm(w_coo, x.t().contiguous()) + bcol).t(),
            }
            want = F.linear(x, w, b)
            for key in fns:
                check_close(fns[key](), want, f"{key} n={n}")
            t = time_interleaved(fns, repeats)
            sp = {k: f"{t.speedup(k):.2f}x" for k in t}
            lines.append(
                f"| {n} | {s:.0%} | {fmt_ms(t['dense'])} | **{sp['native']}** | {sp['ours']} | {sp['chained']} "
                f"| {sp['csr32']} | {sp['csr64']} | {sp['dense@csr']} | {sp['coo']} |"
            )
            print(lines[-1], flush=True)
    return lines + [""]


def section_linear(repeats: int, with_sparselab: bool = True) -> tuple[list[str], dict[int, dict[float, float]]]:
    lines = [
        f"## 2. Square Linear at batch 128, {torch.get_num_threads()} thread(s): dense vs SparseLinear"
        + (" (and sparselab)" if with_sparselab else ""),
        "",
        "SparseLinear = its native kernel (the main path); *torch CSR* = its PyTorch fallback path "
        "(`SparseLinear.torch_forward`, MKL CSR `addmm`).",
        "",
        "| size | sparsity | dense ms | SparseLinear ms | speed-up | best-run speed-up | after a dense call "
        "| ideal 1/density | torch CSR ms | torch CSR speed-up | sparselab ms | sparselab speed-up |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    speedups: dict[int, dict[float, float]] = {}
    for n in SIZES:
        speedups[n] = {}
        x = torch.randn(BATCH, n)
        for s in SPARSITIES:
            layer = sparse_linear(n, n, s)
            sparse = SparseLinear.from_dense(layer)
            fns: dict[str, Callable[[], object]] = {
                "dense": lambda: layer(x),
                "ours": lambda: sparse(x),
                "torch": lambda: sparse.torch_forward(x),
            }
            lab = sparselab_forward(layer) if with_sparselab else None
            if lab is not None:
                fns["lab"] = lambda: lab(x)
                check_close(lab(x), layer(x), f"sparselab n={n} s={s}")
            check_close(sparse(x), layer(x), f"SparseLinear n={n} s={s}")
            t = time_interleaved(fns, repeats)
            single = time_interleaved({"dense": fns["dense"], "ours": fns["ours"]}, repeats, calls=1)
            speedups[n][s] = t.speedup("ours")
            lab_ms = fmt_ms(t["lab"]) if "lab" in t else "n/a"
            lab_sp = f"{t.speedup('lab'):.2f}x" if "lab" in t else "n/a"
            lines.append(
                f"| {n} | {s:.0%} | {fmt_ms(t['dense'])} | {fmt_ms(t['ours'])} | **{speedups[n][s]:.2f}x** "
                f"| {t.best_speedup('ours'):.2f}x | {single.speedup('ours'):.2f}x | {1 / (1 - s):.0f}x | {fmt_ms(t['torch'])} "
                f"| {t.speedup('torch'):.2f}x | {lab_ms} | {lab_sp} |"
            )
            print(lines[-1], flush=True)
    return lines + [""], speedups


def break_even(speedup: dict[float, float]) -> float:
    """Smallest sparsity from which on every measured point is at least as fast as dense.

    Linear interpolation of log(speed-up) between the last slower point and the next one.
    """
    points = sorted(speedup.items())
    slower = [i for i, (_, v) in enumerate(points) if v < 1.0]
    if not slower:
        return points[0][0]
    i = slower[-1]
    if i == len(points) - 1:
        return math.inf
    (s0, v0), (s1, v1) = points[i], points[i + 1]
    return s0 + (s1 - s0) * (0.0 - math.log(v0)) / (math.log(v1) - math.log(v0))


def section_break_even(repeats: int, measured: dict[int, dict[float, float]]) -> tuple[list[str], float]:
    lines = [
        "## 3. Break-even sparsity (batch 128)",
        "",
        "| size | " + " | ".join(f"{s:.1%}" for s in BREAK_EVEN_GRID) + " | break-even |",
        "|---:|" + "---:|" * (len(BREAK_EVEN_GRID) + 1),
    ]
    worst = 0.0
    for n in SIZES:
        x = torch.randn(BATCH, n)
        speedup = dict(measured[n])
        row = []
        for s in BREAK_EVEN_GRID:
            if s not in speedup:
                layer = sparse_linear(n, n, s)
                sparse = SparseLinear.from_dense(layer)
                t = time_interleaved({"dense": lambda: layer(x), "ours": lambda: sparse(x)}, repeats)
                speedup[s] = t.speedup("ours")
            row.append(f"{speedup[s]:.2f}x")
        point = break_even(speedup)
        worst = max(worst, point)
        shown = f"{point:.1%}" if math.isfinite(point) else "not reached"
        lines.append(f"| {n} | " + " | ".join(row) + f" | **{shown}** |")
        print(lines[-1], flush=True)
    default = math.ceil(worst * 20 - 1e-9) / 20 if math.isfinite(worst) else 1.0
    summary = (
        f"Highest break-even: {worst:.1%}; rounded up to a multiple of 5 %: **{default:.2f}**"
        if math.isfinite(worst)
        else "Some size was never faster than dense on this run"
    )
    lines += ["", f"{summary} (library default `DEFAULT_MIN_SPARSITY` = {DEFAULT_MIN_SPARSITY}).", ""]
    return lines, default


def section_small(repeats: int) -> list[str]:
    lines = [
        "## 4. Layer size x batch at 95 % sparsity (fixed per-call cost; backs `DEFAULT_MIN_NUMEL`)",
        "",
        "| out x in | weights | batch | dense us | SparseLinear us | speed-up | torch CSR path us |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    shapes = ((64, 64), (128, 128), (256, 256), (10, 4096), (256, 512), (300, 784), (512, 512), (4096, 4096))
    for n_out, n_in in shapes:
        layer = sparse_linear(n_out, n_in, 0.95)
        sparse = SparseLinear.from_dense(layer)
        for batch in (1, 128):
            x = torch.randn(batch, n_in)
            reps = repeats * 5 if n_out * n_in < 1 << 20 else repeats
            t = time_interleaved(
                {"dense": lambda: layer(x), "ours": lambda: sparse(x), "torch": lambda: sparse.torch_forward(x)}, reps
            )
            lines.append(
                f"| {n_out} x {n_in} | {n_out * n_in} | {batch} | {t['dense'] * 1e6:.0f} | {t['ours'] * 1e6:.0f} "
                f"| {t.speedup('ours'):.2f}x | {t['torch'] * 1e6:.0f} |"
            )
            print(lines[-1], flush=True)
    return lines + ["", f"`DEFAULT_MIN_NUMEL` = {DEFAULT_MIN_NUMEL} weights.", ""]


def mlp(sparsity: float) -> nn.Sequential:
    """784-4096-4096-10 MLP, every weight matrix at ``sparsity`` (random positions, exact zeros)."""
    layers = [sparse_linear(4096, 784, sparsity, 1), sparse_linear(4096, 4096, sparsity, 2)]
    return nn.Sequential(layers[0], nn.ReLU(), layers[1], nn.ReLU(), sparse_linear(10, 4096, sparsity, 3))


def section_mlp(repeats: int) -> tuple[list[str], dict[float, float]]:
    lines = [
        f"## 5. End-to-end MLP 784-4096-4096-10, batch 128, {torch.get_num_threads()} thread(s), "
        "`convert(model)` with defaults",
        "",
        "| sparsity | layers converted | dense ms | converted ms | speed-up | best-run speed-up | ideal 1/density |",
        "|---:|---|---:|---:|---:|---:|---:|",
    ]
    speedups: dict[float, float] = {}
    for s in (0.9, 0.95, 0.98, 0.99):
        model = mlp(s).eval()
        fast = convert(model)
        kinds = "/".join("S" if isinstance(m, SparseLinear) else "D" for m in fast if not isinstance(m, nn.ReLU))
        x = torch.randn(BATCH, 784)
        with torch.inference_mode():
            check_close(fast(x), model(x), f"MLP s={s}")
            t = time_interleaved({"dense": lambda: model(x), "ours": lambda: fast(x)}, repeats)
        speedups[s] = t.speedup("ours")
        lines.append(
            f"| {s:.0%} | {kinds} | {fmt_ms(t['dense'])} | {fmt_ms(t['ours'])} | **{t.speedup('ours'):.2f}x** "
            f"| {t.best_speedup('ours'):.2f}x | {1 / (1 - s):.0f}x |"
        )
        print(lines[-1], flush=True)
    return lines + ["", "S = SparseLinear, D = kept dense (first/second/last layer).", ""], speedups


def section_targets(linear: dict[int, dict[float, float]], mlp_speedups: dict[float, float]) -> list[str]:
    lines = [f"## Targets, {torch.get_num_threads()} thread(s) (median speed-ups from sections 2 and 5)", ""]
    for s, goal in ((0.95, 4.0), (0.99, 10.0)):
        got = ", ".join(f"{n}: {linear[n][s]:.2f}x {'met' if linear[n][s] >= goal else 'MISSED'}" for n in SIZES)
        lines.append(f"- Linear at {s:.0%}, goal >= {goal:.0f}x: {got}")
    got = mlp_speedups[0.95]
    lines.append(f"- MLP 784-4096-4096-10 at 95 %, goal >= 3x: {got:.2f}x {'met' if got >= 3 else 'MISSED'}")
    load, cores = os.getloadavg()[0], os.cpu_count() or 1
    if torch.get_num_threads() > 1 and load > cores:
        lines.append(
            f"- **Unreliable**: load average {load:.1f} on {cores} cores while these were measured; multi-threaded "
            "wall-clock timings of short sparse calls are dominated by preemption (see Notes)."
        )
    return lines + [""]


def section_conv(repeats: int) -> list[str]:
    lines = [
        "## 6. Convolution: im2col + CSR matmul vs dense `conv2d` (3x3, padding 1)",
        "",
        "| batch, C_in->C_out, HxW | sparsity | dense ms | `F.unfold` alone ms | im2col+CSR ms | speed-up |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for batch, c_in, c_out, hw in ((128, 64, 64, 16), (32, 256, 256, 8)):
        x = torch.randn(batch, c_in, hw, hw)
        for s in (0.95, 0.99):
            conv = nn.Conv2d(c_in, c_out, 3, padding=1)
            with torch.no_grad():
                conv.weight.masked_fill_(torch.rand_like(conv.weight) < s, 0.0)
            w = csr32(conv.weight.detach().reshape(c_out, -1))
            bcol = conv.bias.detach().unsqueeze(1)

            def im2col() -> torch.Tensor:
                cols = F.unfold(x, 3, padding=1)  # (batch, c_in * 9, hw * hw)
                cols = cols.permute(1, 0, 2).reshape(c_in * 9, -1)
                out = torch.addmm(bcol, w, cols)  # (c_out, batch * hw * hw)
                return out.view(c_out, batch, hw, hw).permute(1, 0, 2, 3)

            check_close(im2col(), conv(x), f"conv s={s}")
            t = time_interleaved(
                {"dense": lambda: conv(x), "unfold": lambda: F.unfold(x, 3, padding=1), "ours": im2col}, repeats
            )
            lines.append(
                f"| {batch}, {c_in}->{c_out}, {hw}x{hw} | {s:.0%} | {fmt_ms(t['dense'])} | {fmt_ms(t['unfold'])} "
                f"| {fmt_ms(t['ours'])} | {t.speedup('ours'):.2f}x |"
            )
            print(lines[-1], flush=True)
    return lines + [""]


NOTES = """## Notes

- SparseLinear's main path is the native kernel `src/sparsetrain/native/spmm.c` (float32, CPU, no
  autograd graph needed). It reads the row-major `(batch, in)` input directly: the batch is cut into
  tiles of 16/32/64 rows, each tile is packed transposed (16x16 in-register AVX-512 transposes) into a
  per-thread buffer that stays in L2 (`in x tile` floats, at most 256 KiB), and every output row
  accumulates `tile` outputs in registers, one vector FMA per nonzero and 16 batch rows. Results of 16
  output rows are transposed back and stored as contiguous row segments of the `(batch, out)` output,
  bias added there. OpenMP over (tile, row range) work items with `torch.get_num_threads()` threads.
  No transpose of `x` or `y` is materialised and the output is an ordinary contiguous tensor.
- Where the time goes (1 thread, 1024x1024, batch 128): packing and write-back cost about 80 us per call
  whatever the sparsity; the product itself runs at about 2 cycles per 16-wide FMA, bound by reading a
  random 64-256 byte row of the packed tile from L2 for every nonzero. Column-blocking W so the packed
  tile slice fits L1 would cut that traffic at 90-95 % sparsity (not done).
- Sustained speed vs a single call after a dense one: the speed-up columns time blocks of back-to-back
  calls, as a converted model runs a layer batch after batch. Alternating single calls with dense GEMMs
  (column *after a dense call* in section 2) costs the small sparse products up to about twice their
  sustained time: the dense GEMM leaves caches (and, likely, the core clock after heavy AVX-512 work)
  in a state the next short call pays for. The 1024 x 1024 layer at 99 % (10.5K nonzeros) shows it most.
- The torch path (`SparseLinear.torch_forward`, used for float64, autograd, `SPARSETRAIN_NATIVE=0` or
  no C compiler) computes `y.T = W_csr @ x.T` with MKL's CSR `addmm` (int32 indices), batch cut into
  slabs of about 512 KiB of `x.T`; its input transpose alone costs about as much as the product at 99 %.
- Break-even and `DEFAULT_MIN_SPARSITY`: measured at batch 128. At batch 1 dense `F.linear` is
  memory-bound and per-call overheads (tens of microseconds of Python and ctypes) dominate small
  layers (section 4), so small layers should stay dense when serving one sample at a time.
- Convolutions stay dense: `F.unfold` alone costs about as much as or more than the whole dense
  (oneDNN) convolution, so im2col + CSR cannot win (section 6).
- The machine: a 2-core VM (see the load average in the header). 1-thread timings use the calling
  thread's CPU time, so preemption is not counted, but cache and memory-bandwidth contention is. With 2
  OpenMP threads every parallel region waits for a thread that another process may have preempted,
  which hits the short sparse calls (0.1-1 ms) much harder than one long dense GEMM.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=9, help="timed repeats per variant (median reported)")
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks" / "sparse_inference.md")
    parser.add_argument(
        "--threads",
        type=int,
        nargs="*",
        default=[],
        help="torch thread counts; the first runs every section, the others repeat sections 2 and 5 "
        "(default: torch's default only)",
    )
    args = parser.parse_args()
    threads = args.threads or [torch.get_num_threads()]
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads[0])
    torch.manual_seed(0)
    info = machine_info()
    start = time.perf_counter()
    with torch.inference_mode():
        kernels = section_kernels(args.repeats)
        linear, speedups = section_linear(args.repeats)
        be_lines, _ = section_break_even(args.repeats, speedups)
        small = section_small(args.repeats)
        conv = section_conv(max(3, args.repeats // 3))
    mlp_lines, mlp_speedups = section_mlp(args.repeats)
    targets = section_targets(speedups, mlp_speedups)
    extra: list[str] = []
    for count in threads[1:]:
        torch.set_num_threads(count)
        with torch.inference_mode():
            more_linear, more_speedups = section_linear(args.repeats, with_sparselab=False)
        more_mlp, more_mlp_speedups = section_mlp(args.repeats)
        targets += section_targets(more_speedups, more_mlp_speedups)
        extra += more_linear + more_mlp
    info["load_end"] = " ".join(f"{x:.2f}" for x in os.getloadavg())
    lab = (
        f"sparselab {sparselab.__version__} (`pip install --no-deps sparselab`; forward = "
        "`sparselab.spmm(PaddedCSR.from_dense(W), x.T).T + b`)"
        if sparselab is not None
        else f"sparselab not available ({SPARSELAB_ERROR})"
    )
    command = f"python benchmarks/sparse_inference.py --repeats {args.repeats}"
    if args.threads:
        command += " --threads " + " ".join(map(str, args.threads))
    header = [
        "# Sparse inference benchmark",
        "",
        f"Command: `{command}`  ",
        f"Machine: {info['cpu']}, {info['cores']} cores; torch {info['torch']}, "
        f"threads {', '.join(map(str, threads))} (torch default here: {default_threads}); {info['date']}  ",
        f"Load average at start / end: {info['load']} / {info['load_end']}  ",
        f"Comparison: {lab}  ",
        f"Timings: {args.repeats} repeats after 2 warm-up calls, variants interleaved (dense, then each variant, "
        f"back to back), each sample the mean of a block of {CALLS_PER_BLOCK} consecutive calls (a layer's "
        "sustained speed); *speed-up* = median over repeats of the dense/variant ratio of neighbouring blocks, "
        "*best-run* = ratio of the minima, ms columns = medians; *after a dense call* (section 2) = the same "
        "with single calls alternating with dense ones, where each sparse call starts in the state the dense "
        "GEMM left (caches, core clock). Clock: with 1 thread, the CPU time of the "
        "calling thread (`time.thread_time`: all work runs in it, and time spent preempted by other jobs is "
        "not counted); with 2 threads, wall-clock. "
        f"Wall time of this run {time.perf_counter() - start:.0f} s. Weights zeroed at uniformly random positions.",
        "",
    ]
    text = "\n".join(header + targets + kernels + linear + be_lines + small + mlp_lines + conv + extra + [NOTES])
    print(text)
    write_text(text, args.out)


if __name__ == "__main__":
    main()
