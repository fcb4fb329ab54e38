"""The masks of sparse storage: what ``sparsifier.masks`` and ``sparsifier.ever_active`` are on the "sparse" and
"auto" backends (:mod:`sparsetrain.sparse.backend`).

A held layer has no bool mask, only its index set, so :class:`SparseMasks` builds a mask from it when asked and
counts without building one; :class:`PackedMasks` records the positions ever active (ITOP) in a fraction of a bool
tensor's memory. Both are read-only ``Mapping[str, Tensor]``s, so a method reads them as it reads the dense path's
dict of masks.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping
from typing import Protocol

import torch
from torch import Tensor

from sparsetrain.masks import FlatMask
from sparsetrain.sparse.trainable import TrainableSparseLinear
from sparsetrain.streaming_topk import union_sorted

__all__ = ["SparseMasks", "PackedMasks", "active_positions", "as_bool"]


class Storage(Protocol):
    """What :class:`SparseMasks` reads of its storage (a :class:`~sparsetrain.sparse.backend.SparseEnforcer`)."""

    @property
    def params(self) -> Mapping[str, Tensor]:
        """name -> the sparsified tensor (a meta-device stand-in of the dense shape for a held layer)."""

    @property
    def layers(self) -> Mapping[str, TrainableSparseLinear]:
        """name -> the layer holding that weight sparse."""

    @property
    def dense_masks(self) -> Mapping[str, Tensor]:
        """name -> bool mask of the tensors on the masked-dense path."""


class SparseMasks(Mapping[str, Tensor]):
    """``sparsifier.masks`` on sparse storage: name -> bool mask, built from a held layer's index set when asked
    (a new tensor on each access) and the stored mask of a tensor on the masked-dense path."""

    def __init__(self, enforcer: Storage) -> None:
        self._enforcer = enforcer

    def __getitem__(self, name: str) -> Tensor:
        layer = self._enforcer.layers.get(name)
        return layer.mask() if layer is not None else self._enforcer.dense_masks[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._enforcer.params)

    def __len__(self) -> int:
        return len(self._enforcer.params)

    def count(self, name: str) -> int:
        """Active entries of ``name``, without building its mask."""
        layer = self._enforcer.layers.get(name)
        return layer.nnz if layer is not None else int(torch.count_nonzero(self._enforcer.dense_masks[name]))

    def numel(self, name: str) -> int:
        """Entries of ``name`` (active or not), without building its mask."""
        return self._enforcer.params[name].numel()

    def positions(self, name: str) -> Tensor:
        """The active flat positions (int64, increasing) of ``name``."""
        layer = self._enforcer.layers.get(name)
        return layer.flat_indices() if layer is not None else active_positions(self._enforcer.dense_masks[name])



_BIT_VALUES = torch.tensor([1, 2, 4, 8, 16, 32, 64, 128], dtype=torch.uint8)
_POPCOUNT = torch.tensor([bin(i).count("1") for i in range(256)], dtype=torch.int64)
_COUNT_CHUNK = 1 << 22
#: Positions set per pass when a record is in bits (bounds the temporaries of an update of a large layer).
_SET_CHUNK = 1 << 16
#: A record keeps sorted positions while they take fewer bytes than one bit per entry (int64: 64 bits each).
_POSITIONS_PER_BIT = 64


class PackedMasks(Mapping[str, Tensor]):
    """name -> bool mask of the positions ever active (``sparsifier.ever_active`` on sparse storage), stored
    compactly: the sorted positions while they are fewer than one in 64 entries (a very sparse layer, e.g. 99.9%),
    else one bit per entry (8x smaller than a bool tensor). Positions are only ever added."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]], devices: Mapping[str, torch.device]) -> None:
        self.shapes = {name: tuple(shape) for name, shape in shapes.items()}
        self.devices = dict(devices)
        #: name -> int64 increasing positions, or uint8 packed bits.
        self.store: dict[str, Tensor] = {name: torch.empty(0, dtype=torch.int64) for name in self.shapes}

    def add(self, name: str, positions: Tensor) -> None:
        """Mark the flat ``positions`` (int64, increasing) of ``name`` active."""
        if positions.numel() == 0:
            return
        positions = positions.to("cpu")
        stored = self.store[name]
        numel = math.prod(self.shapes[name])
        if stored.dtype == torch.int64:
            merged = union_sorted(stored, positions)
            if merged.numel() * _POSITIONS_PER_BIT < numel:
                self.store[name] = merged
                return
            self.store[name] = torch.zeros(-(-numel // 8), dtype=torch.uint8)
            positions = merged
        bits = self.store[name]
        for chunk in positions.split(_SET_CHUNK):  # a few temporaries of the chunk's size, never of the layer's
            byte = chunk >> 3
            bit = _BIT_VALUES.index_select(0, chunk & 7)
            bytes_hit, owner = torch.unique_consecutive(byte, return_inverse=True)
            # Distinct positions set distinct bits of a byte, so their sum is their bitwise or.
            packed = torch.zeros(bytes_hit.shape[0], dtype=torch.int32).index_add_(0, owner, bit.to(torch.int32))
            bits[bytes_hit] = bits.index_select(0, bytes_hit) | packed.to(torch.uint8)

    def __getitem__(self, name: str) -> Tensor:
        stored = self.store[name]
        if stored.dtype == torch.int64:
            return FlatMask(self.shapes[name], stored).to_bool(self.devices[name])
        numel = math.prod(self.shapes[name])
        unpacked = (stored.unsqueeze(1) & _BIT_VALUES).ne(0).reshape(-1)[:numel]
        return unpacked.view(self.shapes[name]).to(self.devices[name])

    def __iter__(self) -> Iterator[str]:
        return iter(self.shapes)

    def __len__(self) -> int:
        return len(self.shapes)

    def numel(self, name: str) -> int:
        """Entries of ``name`` (active or not), without unpacking it."""
        return math.prod(self.shapes[name])

    def count(self, name: str) -> int:
        """Active entries of ``name``, without unpacking it."""
        stored = self.store[name]
        if stored.dtype == torch.int64:
            return int(stored.numel())
        return sum(int(_POPCOUNT.index_select(0, stored[i:i + _COUNT_CHUNK].long()).sum())
                   for i in range(0, stored.shape[0], _COUNT_CHUNK))


def active_positions(mask: Tensor | FlatMask) -> Tensor:
    """The active flat positions (int64, increasing) of a bool mask or a FlatMask."""
    if isinstance(mask, FlatMask):
        return mask.positions
    return mask.reshape(-1).nonzero().squeeze(1)


def as_bool(mask: Tensor | FlatMask, device: torch.device) -> Tensor:
    """``mask`` as a bool tensor on ``device`` (a bool mask is returned as it is)."""
    return mask.to_bool(device) if isinstance(mask, FlatMask) else mask
