"""Reproduction benchmark: the comparisons of the GraNet, RigL and lottery-ticket papers at 90/95/98 % sparsity,
3 seeds.

The same code as ``sparsetrain reproduce`` (:mod:`sparsetrain.studies.reproduce`): dense, GMP (per layer and
global), GraNet (s_i = 0 and 0.5), RigL (and RigL trained 3x the epochs), SET, SNFS, static ERK, SNIP, GraSP,
SynFlow and IMP on MNIST-1D (cnn1d, a 512-512 MLP) and the packaged MNIST subset (LeNet-300-100), plus the
pruning-plasticity study (3 seeds, with its learning-rate control); mean ± std tables, accuracy-vs-sparsity plots
and the claims checked like with like, written to docs/results/. Every cell is a run directory under
runs/reproduce/<setting>/, so a rerun skips what has finished (and resumes what was interrupted).

Run from the repository root (about an hour on 2 idle cores; longer when the machine is shared):

    python benchmarks/reproduce.py                # the full grid -> docs/results/
    python benchmarks/reproduce.py --quick        # a subset in a few minutes -> runs/reproduce/quick/results/
    python benchmarks/reproduce.py --report-only  # rewrite the results from finished runs

All options are those of ``sparsetrain reproduce --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from sparsetrain.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["reproduce", *sys.argv[1:]]))
