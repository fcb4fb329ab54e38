"""Reproducible, seeded index splits (stratified by label) used to carve validation and test sets."""

from __future__ import annotations

import numpy as np


def stratified_split(labels: np.ndarray, held_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split sample indices into a kept part and a held-out part, preserving class proportions.

    The held-out part has exactly `round(held_fraction * n)` samples. Each class contributes in proportion
    to its size; the rounding remainder goes to the classes with the largest fractional quotas (ties to the
    smaller label), so the result depends only on `labels`, `held_fraction` and `seed`.

    Args:
        labels: one-dimensional integer array of class labels.
        held_fraction: share of samples to hold out, in [0, 1).
        seed: seed of the numpy generator that shuffles each class.

    Returns:
        (kept, held): sorted int64 index arrays that partition `range(len(labels))`.

    Raises:
        ValueError: if `held_fraction` is outside [0, 1) or `labels` is not one-dimensional.
    """
    if not 0.0 <= held_fraction < 1.0:
        raise ValueError(f"held_fraction must be in [0, 1), got {held_fraction!r}")
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be one-dimensional, got shape {labels.shape}")
    n = labels.shape[0]
    n_held = round(held_fraction * n)
    classes, counts = np.unique(labels, return_counts=True)
    quotas = counts * (n_held / n) if n else counts.astype(float)
    per_class = np.floor(quotas).astype(np.int64)
    remainder = n_held - int(per_class.sum())
    # Stable sort on the negated fractional part: largest first, ties resolved by class order.
    order = np.argsort(-(quotas - per_class), kind="stable")
    per_class[order[:remainder]] += 1

    rng = np.random.default_rng(seed)
    held_parts = []
    for cls, count in zip(classes, per_class, strict=True):
        members = np.flatnonzero(labels == cls)
        held_parts.append(rng.permutation(members)[:count])
    held = np.sort(np.concatenate(held_parts)) if held_parts else np.zeros(0, dtype=np.int64)
    mask = np.ones(n, dtype=bool)
    mask[held] = False
    return np.flatnonzero(mask).astype(np.int64), held.astype(np.int64)
