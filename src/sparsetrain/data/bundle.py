"""The containers every dataset loader returns: `ArrayDataset`, `DatasetBundle` and `DataError`.

Datasets here are small enough to live in memory as tensors, so a split is one input tensor and one
label tensor, with an optional per-sample transform (used for train-time augmentation only).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

import torch
from torch.utils.data import Dataset

DatasetKind = Literal["image", "sequence", "tokens"]
DATASET_KINDS: tuple[str, ...] = ("image", "sequence", "tokens")


class DataError(ValueError):
    """A dataset file is missing or malformed; the message names the path and the layout expected."""


class ArrayDataset(Dataset):
    """A map-style dataset over in-memory tensors.

    `inputs` and `targets` are public so that small datasets can be used full-batch (for example moved to
    a GPU once) without going through a DataLoader. `transform`, when set, is applied to each input in
    `__getitem__` only; `inputs` always holds the untransformed (already normalised) tensors.
    """

    def __init__(
        self,
        inputs: torch.Tensor,
        targets: torch.Tensor,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        """Wrap `inputs` (N, ...) and `targets` (N,) as a dataset.

        Args:
            inputs: tensor whose first dimension indexes samples.
            targets: int64 class labels, one per sample.
            transform: optional callable applied to one input at a time (e.g. random crop and flip).

        Raises:
            ValueError: if the first dimensions differ or `targets` is not one-dimensional.
        """
        if targets.dim() != 1:
            raise ValueError(f"targets must be one-dimensional, got shape {tuple(targets.shape)}")
        if inputs.shape[0] != targets.shape[0]:
            raise ValueError(
                f"inputs and targets must have the same length, got {inputs.shape[0]} and {targets.shape[0]}"
            )
        self.inputs = inputs
        self.targets = targets
        self.transform = transform

    def __len__(self) -> int:
        return int(self.targets.shape[0])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.inputs[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, self.targets[index]


@dataclass
class DatasetBundle:
    """The three splits of a dataset plus what a model needs to know about it.

    Attributes:
        name: registry name of the dataset (e.g. "mnist1d").
        train: training split (with augmentation, if asked for).
        val: held-out split carved reproducibly from the original training set (may be empty).
        test: the dataset's own test split.
        input_shape: shape of one input sample, e.g. (1, 40), (1, 28, 28), (3, 32, 32) or (seq_len,).
        num_classes: number of target classes.
        kind: "image" (C, H, W), "sequence" (C, L) or "tokens" (L,) of int64 token ids.
        vocab_size: number of distinct token ids for "tokens" data, None otherwise.
    """

    name: str
    train: ArrayDataset
    val: ArrayDataset
    test: ArrayDataset
    input_shape: tuple[int, ...]
    num_classes: int
    kind: DatasetKind
    vocab_size: int | None = None

    def __post_init__(self) -> None:
        if self.kind not in DATASET_KINDS:
            raise ValueError(f"kind must be one of {DATASET_KINDS}, got {self.kind!r}")
        if (self.kind == "tokens") != (self.vocab_size is not None):
            raise ValueError(
                f"vocab_size must be set exactly for kind='tokens', got kind={self.kind!r}, "
                f"vocab_size={self.vocab_size!r}"
            )
