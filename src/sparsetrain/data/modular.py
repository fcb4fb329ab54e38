"""Procedural modular arithmetic `a ∘ b mod p` as token sequences, the grokking benchmark.

Power et al., "Grokking: Generalization beyond overfitting on small algorithmic datasets" (2022);
Nanda et al., "Progress measures for grokking via mechanistic interpretability" (ICLR 2023), whose
input format we follow: each sample is the three tokens `[a, b, =]`, with `a, b` in `0..p-1` and the
`=` token id `p` (so `vocab_size = p + 1`), and the label is `(a ∘ b) mod p` (`num_classes = p`).
The operation is fixed per dataset, so it is not a token. All pairs are enumerated and a seeded random
`train_fraction` of them is the training set, the rest the test set (default 0.3, as in Nanda et al. and
"Grokking Tickets", Minegishi et al. 2023). Note that `get_dataset` then carves `val_fraction` of the
training pairs into `val`; pass `val_fraction=0` to train on exactly `train_fraction` of all pairs.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data.registry import RawSplits, register_dataset

OPERATIONS: dict[str, Callable[[np.ndarray, np.ndarray, int], np.ndarray]] = {
    "add": lambda a, b, p: (a + b) % p,
    "sub": lambda a, b, p: (a - b) % p,
    "mul": lambda a, b, p: (a * b) % p,
    # Division by b is multiplication by its inverse b^(p-2) (Fermat), defined for b != 0 and prime p.
    "div": lambda a, b, p: (a * np.array([pow(int(v), p - 2, p) for v in b], dtype=np.int64)) % p,
}


def _is_prime(n: int) -> bool:
    return n >= 2 and all(n % k for k in range(2, int(n**0.5) + 1))


def modular_pairs(p: int, operation: str) -> tuple[np.ndarray, np.ndarray]:
    """Enumerate every `[a, b, =]` sequence for `operation` mod `p` with its label.

    Args:
        p: the modulus (>= 2; must be prime for "div").
        operation: one of "add", "sub", "mul", "div" ("div" skips b = 0).

    Returns:
        (tokens, labels): int64 arrays of shape (N, 3) and (N,), in row-major (a, b) order.

    Raises:
        ValueError: if `p` or `operation` is invalid.
    """
    if operation not in OPERATIONS:
        raise ValueError(f"operation must be one of {sorted(OPERATIONS)}, got {operation!r}")
    if not isinstance(p, int) or isinstance(p, bool) or p < 2:
        raise ValueError(f"p must be an int >= 2, got {p!r}")
    if operation == "div" and not _is_prime(p):
        raise ValueError(f"operation 'div' needs a prime p (every b != 0 invertible), got p={p}")
    a, b = np.meshgrid(np.arange(p, dtype=np.int64), np.arange(p, dtype=np.int64), indexing="ij")
    a, b = a.ravel(), b.ravel()
    if operation == "div":
        a, b = a[b != 0], b[b != 0]
    labels = OPERATIONS[operation](a, b, p).astype(np.int64)
    tokens = np.stack([a, b, np.full_like(a, p)], axis=1)
    return tokens, labels


@register_dataset("modular")
def load_modular(
    *,
    data_dir: Path | None,
    cache_dir: Path,
    seed: int,
    p: int = 97,
    train_fraction: float = 0.3,
    operation: str = "add",
) -> RawSplits:
    """Modular arithmetic tokens `[a, b, =]` -> `(a ∘ b) mod p`, split train/test at random by `seed`.

    Args:
        p: the modulus (default 97).
        train_fraction: share of all pairs in the training set, in (0, 1) (default 0.3).
        operation: "add" (default), "sub", "mul" or "div".
    """
    if not 0.0 < train_fraction < 1.0:
        raise ValueError(f"train_fraction must be in (0, 1), got {train_fraction!r}")
    tokens, labels = modular_pairs(p, operation)
    order = np.random.default_rng(seed).permutation(len(labels))
    n_train = min(max(round(train_fraction * len(labels)), 1), len(labels) - 1)
    train, test = np.sort(order[:n_train]), np.sort(order[n_train:])
    return RawSplits(
        train_inputs=tokens[train],
        train_targets=labels[train],
        test_inputs=tokens[test],
        test_targets=labels[test],
        prepare=lambda x: torch.from_numpy(np.ascontiguousarray(x, dtype=np.int64)),
        input_shape=(3,),
        num_classes=p,
        kind="tokens",
        vocab_size=p + 1,
    )
