"""Time one GraNet topology update over a ResNet-50-size parameter set against a sort-based reference.

The update is a global magnitude prune to the cubic-schedule sparsity, then per-layer drop-and-regrow by
gradient. The reference (``sparsetrain.reference``) finds every threshold with a full ``torch.sort``. Both run
on the same weights, gradients and masks, and the masks they produce are asserted identical.

    python benchmarks/topology_update.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import os

import torch

from _common import table, timeit, write_doc
from sparsetrain import GraNet, build_model, native
from sparsetrain.reference import reference_granet_update


def time_update(repeats: int, with_reference: bool = True) -> dict:
    """Time one GraNet update on ResNet-50's prunable tensors (and the sort-based reference, asserting equal masks)."""
    torch.manual_seed(0)
    model = build_model("resnet50", (3, 224, 224), 1000)
    total_steps, step = 100_000, 20_000
    sparsifier = GraNet(model, None, sparsity=0.9, total_steps=total_steps, update_every=1000, initial_sparsity=0.5)
    for param in sparsifier.params.values():
        param.grad = torch.randn_like(param)
    start_masks = {n: m.clone() for n, m in sparsifier.masks.items()}
    n_weights = sum(p.numel() for p in sparsifier.params.values())
    s_t = sparsifier.target_sparsity(step)
    fraction = sparsifier.current_drop_fraction(step)
    global_count = round((1 - s_t) * n_weights)

    def fast() -> dict:
        sparsifier.masks = {n: m.clone() for n, m in start_masks.items()}
        sparsifier.update(step)
        return sparsifier.masks

    def reference() -> dict:
        weights = {n: p.detach() for n, p in sparsifier.params.items()}
        grads = {n: p.grad for n, p in sparsifier.params.items()}
        return reference_granet_update(weights, grads, start_masks, global_count, fraction)

    result = {"tensors": len(sparsifier.params), "weights": n_weights, "s_t": s_t, "fraction": fraction}
    if with_reference:
        fast_masks, ref_masks = fast(), reference()
        assert all(torch.equal(fast_masks[n], ref_masks[n]) for n in ref_masks), "fast and reference masks differ"
        result["reference"] = timeit(reference, repeats)
    result["fast"] = timeit(fast, repeats)
    if with_reference:
        # The same update without the C selection kernels (no compiler, or SPARSETRAIN_NATIVE=0).
        os.environ["SPARSETRAIN_NATIVE"] = "0"
        try:
            torch_masks = fast()
            assert all(torch.equal(torch_masks[n], ref_masks[n]) for n in ref_masks), "torch path masks differ"
            result["torch"] = timeit(fast, repeats)
        finally:
            del os.environ["SPARSETRAIN_NATIVE"]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed repeats per implementation (median)")
    parser.add_argument("--threads", type=int, nargs="+", default=None,
                        help="torch CPU thread counts to measure (default: torch's own)")
    args = parser.parse_args()
    rows, speedups = [], []
    for threads in args.threads or [torch.get_num_threads()]:
        torch.set_num_threads(threads)
        r = time_update(args.repeats)
        t_fast, t_ref = r["fast"], r["reference"]
        speedups.append(f"{t_ref / t_fast:.1f}x with {threads} thread(s)")
        t_torch = r["torch"]
        rows += [
            [str(threads), "sort-based reference", f"{t_ref * 1000:.0f}", "1.00", ""],
            [str(threads), "sparsetrain (GraNet.update)", f"{t_fast * 1000:.0f}", f"{t_fast / t_ref:.3f}",
             f"**{t_ref / t_fast:.1f}x**"],
            [str(threads), "sparsetrain, PyTorch path (`SPARSETRAIN_NATIVE=0`)", f"{t_torch * 1000:.0f}",
             f"{t_torch / t_ref:.3f}", f"{t_ref / t_torch:.1f}x"],
        ]
        print(rows[-3:], flush=True)
    body = (
        f"One GraNet update (global prune 0.50 -> sparsity {r['s_t']:.4f}, then per-layer drop-and-regrow with "
        f"r_t = {r['fraction']:.4f}) over ResNet-50's {r['tensors']} prunable tensors ({r['weights']:,} weights). "
        f"Median of {args.repeats} repeats; masks asserted identical. The selections run in "
        f"`native/select.c` ({'built' if native.try_load('select') is not None else 'NOT available: torch path'}); "
        "the last row of each thread count is the pure-PyTorch selection used without a C compiler.\n\n"
        + table(["threads", "implementation", "time (ms)", "time / reference", "speed-up"], rows)
        + f"\n\nSpeed-up of the default path: {', '.join(speedups)} (target: at least 8x, i.e. at most 1/8 of the "
        "reference's time)."
    )
    write_doc("topology_update", "Topology update: GraNet on a ResNet-50-size parameter set", body)


if __name__ == "__main__":
    main()
