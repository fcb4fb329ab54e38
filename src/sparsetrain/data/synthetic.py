"""A seeded random-teacher classification set: fast, learnable, any input shape; meant for tests.

Inputs are standard normal; the label is the argmax of a fixed random one-hidden-layer tanh network (the
"teacher"), whose logits are centred per class over the drawn samples so that classes are roughly
balanced. The same `seed` gives the same inputs, teacher and labels.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from sparsetrain.data.registry import RawSplits, register_dataset

TEACHER_HIDDEN = 32


@register_dataset("synthetic")
def load_synthetic(
    *,
    data_dir: Path | None,
    cache_dir: Path,
    seed: int,
    n_train: int = 512,
    n_test: int = 256,
    input_shape: Sequence[int] = (1, 8, 8),
    num_classes: int = 4,
) -> RawSplits:
    """Random-teacher classification data.

    Args:
        n_train: number of training samples (>= 1).
        n_test: number of test samples (>= 1).
        input_shape: per-sample shape, (C, L) for kind "sequence" or (C, H, W) for kind "image".
        num_classes: number of classes (>= 2).
    """
    shape = tuple(int(v) for v in input_shape)
    if len(shape) not in (2, 3) or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, L) or (C, H, W) with positive sizes, got {input_shape!r}")
    for name, value, low in (("n_train", n_train, 1), ("n_test", n_test, 1), ("num_classes", num_classes, 2)):
        if not isinstance(value, int) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an int >= {low}, got {value!r}")

    rng = np.random.default_rng(seed)
    features = math.prod(shape)
    inputs = rng.standard_normal((n_train + n_test, features)).astype(np.float32)
    w_hidden = rng.standard_normal((features, TEACHER_HIDDEN)) / math.sqrt(features)
    w_out = rng.standard_normal((TEACHER_HIDDEN, num_classes)) / math.sqrt(TEACHER_HIDDEN)
    logits = np.tanh(inputs @ w_hidden) @ w_out
    labels = np.argmax(logits - logits.mean(axis=0), axis=1).astype(np.int64)
    inputs = inputs.reshape(-1, *shape)
    return RawSplits(
        train_inputs=inputs[:n_train],
        train_targets=labels[:n_train],
        test_inputs=inputs[n_train:],
        test_targets=labels[n_train:],
        prepare=lambda x: torch.from_numpy(np.ascontiguousarray(x)),
        input_shape=shape,
        num_classes=num_classes,
        kind="image" if len(shape) == 3 else "sequence",
    )
