"""Benchmark: N:M sparsity on CPU: the compact N:M export's size, and whether an N:M kernel beats dense.

1. One 1024 x 1024 float32 weight pruned N:M by magnitude (2:4, 1:4, 2:8, 4:8, 1:8): the bytes of every
   encoding of that tensor (N:M, bitmask, CSR, COO, dense) and what ``export_sparse`` picks; beside it, the
   same sparsity at unstructured (random) positions and its best encoding.
2. Whole models (LeNet-300-100, CIFAR ResNet-20), every prunable weight pruned N:M by magnitude (layers whose
   reduction dim is not a multiple of M kept dense, and counted): dense safetensors, ``export_sparse``, and
   the same models pruned unstructured by magnitude to the same per-layer counts; each file read back and
   checked bit-identical.
3. Square Linear 1024/2048/4096 at batch 128: dense ``F.linear`` against ``NMLinear`` (its native N:M kernel)
   and ``SparseLinear`` (the CSR kernel) on the same N:M weight, with the ideal M/N.

Run from the repository root:  python benchmarks/nm_inference.py [--repeats 7] [--threads 1 [2]]
Writes docs/benchmarks/nm_inference.md.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import safetensors.torch
import torch
import torch.nn.functional as F
from torch import nn

from _common import table, write_doc
from sparse_inference import time_interleaved

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sparsetrain.masks import select_prunable
from sparsetrain.models import build_model
from sparsetrain.nm import NMPattern, nm_layouts, nm_mask, nm_masks
from sparsetrain.sparse import NMLinear, SparseLinear, export_sparse, load_sparse
from sparsetrain.sparse.encoding import encode
from sparsetrain.topk import topk_mask

PATTERNS = ("2:4", "1:4", "2:8", "4:8", "1:8")
SPEED_PATTERNS = ("2:4", "1:4", "2:8", "1:8")
SIZES = (1024, 2048, 4096)
BATCH = 128
PAYS = 1.1  # a speed-up that counts as paying: clear of the run-to-run noise of a shared machine


def kib(n: int) -> str:
    return f"{n / 1024:,.1f}"


def same(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bit-identical (dtype, shape and bytes)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.reshape(-1).view(torch.uint8),
                                                                        b.reshape(-1).view(torch.uint8))


def nm_pruned(weight: torch.Tensor, pattern: str) -> torch.Tensor:
    """``weight`` with the N:M mask of its magnitudes baked in as +0.0."""
    return torch.where(nm_mask(weight.abs(), pattern), weight, torch.zeros(()))


def section_tensor() -> str:
    gen = torch.Generator().manual_seed(0)
    weight = torch.randn(1024, 1024, generator=gen)
    rows = []
    for pattern in PATTERNS:
        p = NMPattern.parse(pattern)
        t = nm_pruned(weight, pattern)
        sizes = {e: encode(t, e, nm_dim=1).nbytes for e in ("nm", "bitmask", "csr", "coo", "dense")}
        picked = encode(t, nm_dim=1)
        unstructured = weight.clone().view(-1)
        unstructured[torch.randperm(unstructured.numel(), generator=gen)[: round(p.sparsity * t.numel())]] = 0.0
        loose = encode(unstructured.view(1024, 1024), nm_dim=1)
        rows.append([pattern, f"{p.sparsity:.1%}", kib(sizes["dense"]), f"**{kib(sizes['nm'])}**",
                     kib(sizes["bitmask"]), kib(sizes["csr"]), kib(sizes["coo"]),
                     f"{picked.encoding}" + (f" ({picked.nm.pattern})" if picked.nm else ""),
                     f"{kib(loose.nbytes)} ({loose.encoding})"])
    return table(["pattern", "sparsity", "dense KiB", "N:M KiB", "bitmask KiB", "CSR KiB", "COO KiB",
                  "export picks", "unstructured, same sparsity: KiB (encoding)"], rows)


def prune_model(model: nn.Module, pattern: str, unstructured: bool) -> tuple[int, int]:
    """Prune every prunable weight N:M (or unstructured to the same count) in place; returns (dense, total)."""
    params = select_prunable(model)
    layouts = nm_layouts(model, params, pattern)
    masks = nm_masks({n: p.detach().abs() for n, p in params.items()}, layouts, pattern)
    with torch.no_grad():
        for name, param in params.items():
            mask = masks[name]
            if unstructured:
                mask = topk_mask(param.abs(), int(mask.sum()))
            param.copy_(torch.where(mask, param, torch.zeros(())))
    dense = sum(1 for layout in layouts.values() if not layout.patterned)
    return dense, len(layouts)


def section_models() -> str:
    rows = []
    specs = (("LeNet-300-100", "lenet300", (784,)), ("ResNet-20 (CIFAR)", "resnet20", (3, 32, 32)))
    with tempfile.TemporaryDirectory() as tmp:
        for label, name, shape in specs:
            for pattern in ("2:4", "1:4", "2:8"):
                sizes, checks, kept_dense = {}, [], ""
                for kind in ("nm", "unstructured"):
                    torch.manual_seed(0)
                    model = build_model(name, shape, 10)
                    dense, total = prune_model(model, pattern, kind == "unstructured")
                    kept_dense = f"{dense} of {total}"
                    if kind == "nm":
                        plain = Path(tmp) / "dense.safetensors"
                        safetensors.torch.save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                                                    str(plain))
                        sizes["dense"] = plain.stat().st_size
                    info = export_sparse(model, Path(tmp) / f"{kind}.safetensors")
                    sizes[kind] = info.bytes_written
                    back = load_sparse(info.path)
                    checks.append(all(same(back[k], v) for k, v in model.state_dict().items()))
                    if kind == "nm":
                        nm_layers = sum(1 for e in info.encodings.values() if e == "nm")
                rows.append([label, pattern, kept_dense, kib(sizes["dense"]), f"**{kib(sizes['nm'])}**",
                             f"{sizes['nm'] / sizes['dense']:.1%}", str(nm_layers), kib(sizes["unstructured"]),
                             f"{sizes['nm'] / sizes['unstructured']:.2f}",
                             "bit-identical" if all(checks) else "**MISMATCH**"])
    return table(["model", "pattern", "weights kept dense", "dense safetensors KiB", "N:M export KiB",
                  "vs dense", "tensors stored N:M", "unstructured export KiB", "N:M / unstructured",
                  "round trip"], rows)


def section_speed(repeats: int, threads: int) -> str:
    torch.set_num_threads(threads)
    rows = []
    speedups: dict[str, list[tuple[float, float]]] = {pattern: [] for pattern in SPEED_PATTERNS}
    for size in SIZES:
        for pattern in SPEED_PATTERNS:
            p = NMPattern.parse(pattern)
            torch.manual_seed(size)
            layer = nn.Linear(size, size)
            with torch.no_grad():
                layer.weight.copy_(nm_pruned(layer.weight, pattern))
            nm_layer, csr_layer = NMLinear.from_dense(layer, pattern), SparseLinear.from_dense(layer)
            x = torch.randn(BATCH, size)
            weight, bias = layer.weight.detach(), layer.bias.detach()
            with torch.inference_mode():
                reference = F.linear(x, weight, bias)
                for fast in (nm_layer, csr_layer):
                    torch.testing.assert_close(fast(x), reference, rtol=1e-4, atol=1e-3)
                timing = time_interleaved({"dense": lambda: F.linear(x, weight, bias), "nm": lambda: nm_layer(x),
                                           "csr": lambda: csr_layer(x)}, repeats)
            rows.append([size, pattern, f"{timing['dense'] * 1e3:.3f}", f"{timing['nm'] * 1e3:.3f}",
                         f"**{timing.speedup('nm'):.2f}x**", f"{timing.best_speedup('nm'):.2f}x",
                         f"{timing['csr'] * 1e3:.3f}", f"{timing.speedup('csr'):.2f}x", f"{p.m / p.n:g}x"])
            speedups[pattern].append((timing.speedup("nm"), timing.speedup("csr")))
            print(*rows[-1], flush=True)
    summary = []
    for pattern, pairs in speedups.items():
        low, high = min(a for a, _ in pairs), max(a for a, _ in pairs)
        csr_low, csr_high = min(c for _, c in pairs), max(c for _, c in pairs)
        verdict = "pays at every size" if low > PAYS else ("does not pay" if high < PAYS else "pays at some sizes")
        summary.append(f"- {pattern}: NMLinear {low:.2f}x-{high:.2f}x over sizes {SIZES[0]}-{SIZES[-1]} "
                       f"(CSR {csr_low:.2f}x-{csr_high:.2f}x): **{verdict}** (threshold {PAYS}x)")
    return table(["size", "pattern", "dense ms", "NMLinear ms", "NMLinear speed-up", "best-run", "CSR ms",
                  "CSR speed-up", "ideal M/N"], rows) + "\n\n" + "\n".join(summary)


NOTES = """## Notes

- Why 2:4 does not pay on a CPU: dense float32 `F.linear` runs near the core's peak (about two 16-wide
  multiply-adds per cycle, register-blocked so each loaded input vector serves several outputs). The N:M
  kernel does half the multiply-adds at 2:4, but each needs its own load of a 16-wide row of the packed input
  (plus the weight and its position), about one per cycle: break-even sits near 50 % sparsity, which is
  where 2:4 is. Sparser patterns cut the multiply-adds further and pay (summary lines under each table).
- Against CSR on the same weight, the N:M kernel is faster because the pattern makes blocking over inputs
  free: every row has N weights in every run of M inputs, so rows are taken in blocks of 64 and inputs in
  blocks of 256 (a 64 KiB slice of the packed input that stays near L1) with no per-block row pointers; the
  CSR kernel reads a random row of the whole packed input (L2) for every nonzero. The gap grows with the size.
- What ships: `convert()` builds `NMLinear` for float32 CPU weights that fit and fill 1:8, 1:4 or 2:8
  (`sparsetrain.sparse.nm_linear.CPU_PATTERNS`, `MIN_FILL` = 0.9); a 2:4 weight stays on the older rules
  (dense below `min_sparsity` = 0.75). On CUDA, 2:4 float16/bfloat16 weights become torch's semi-structured
  tensors instead; that path is not measured here (no GPU on this machine).
- The 2-core machine is shared: with 1 thread the clock is the calling thread's CPU time, so preemption is
  not counted (cache and memory-bandwidth contention is); 2-thread wall-clock rows are only meaningful on an
  idle machine (see the load average in the header)."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=7, help="interleaved timing repeats per row")
    parser.add_argument("--threads", type=int, nargs="+", default=[1], help="torch thread counts to time")
    args = parser.parse_args()
    start = time.perf_counter()
    parts = [
        "Weights pruned by magnitude with `sparsetrain.nm` (stored as `+0.0`); files written by "
        "`export_sparse` with its defaults.",
        "## 1. One 1024 x 1024 float32 weight: bytes per encoding\n\n" + section_tensor() + "\n\n"
        "Every encoding holds the same tensor. N:M stores N values per group of M and each value's "
        "position in ceil(log2 M) bits; a bitmask stores 1 bit per element and the nonzeros; CSR int32 "
        "row pointers and int16 columns. Per element, the index costs N·ceil(log2 M)/M bits against the "
        "bitmask's 1: 0.5 (1:4), 0.75 (2:8), 0.375 (1:8), 1 (2:4: a tie, which goes to N:M, the layout that "
        "carries the pattern) and 1.5 (4:8: the bitmask is smaller and is picked). The last column prunes "
        "the same weight to the same sparsity at random positions: without the pattern, the best "
        "unstructured encoding pays for the positions it cannot predict.",
        "## 2. Whole models: every prunable weight N:M\n\n" + section_models() + "\n\n"
        "Weights kept dense: tensors whose reduction dim is not a multiple of M (ResNet-20's 3-channel "
        "first convolution; LeNet-300-100's 300- and 100-input layers under M = 8). *Unstructured* prunes "
        "each tensor by magnitude to the same count of weights, so both files hold the same number of "
        "nonzeros; the ratio is the N:M file's size over it.",
    ]
    for threads in args.threads:
        clock = "CPU time of the calling thread" if threads == 1 else "wall-clock"
        parts.append(f"## 3. Square Linear at batch {BATCH}, {threads} thread(s): dense vs N:M kernel vs CSR\n\n"
                     + section_speed(args.repeats, threads) + "\n\n"
                     f"Timings ({clock}): {args.repeats} interleaved repeats of blocks of back-to-back calls "
                     "(`time_interleaved` of `benchmarks/sparse_inference.py`); speed-up = median of the "
                     "dense / variant ratios of neighbouring blocks, best-run = ratio of the minima. The "
                     "same N:M weight is given to `NMLinear` (native N:M kernel) and to `SparseLinear` (CSR "
                     "kernel).")
    parts.append(NOTES)
    parts.append(f"Wall time of this run: {time.perf_counter() - start:.0f} s.")
    write_doc("nm_inference", "N:M sparsity on CPU: compact export size and inference speed", "\n\n".join(parts))


if __name__ == "__main__":
    main()
