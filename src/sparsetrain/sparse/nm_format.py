"""The compact N:M encoding of one tensor: kept values plus their in-group positions packed in bits.

A tensor follows an N:M pattern along its reduction dim ``dim`` when no group of M consecutive entries along
``dim`` (groups as in :func:`sparsetrain.nm.as_groups`) holds more than N nonzeros. It is then stored as:

* ``values``: exactly N entries per group, groups in :func:`~sparsetrain.nm.as_groups` order and, inside a
  group, by increasing position. A group with fewer than N nonzeros stores its lowest-index zeros too, so every
  group has N (the layout NVIDIA's 2:4 kernels use: a kept weight may be zero);
* ``positions``: the in-group position of each value, ``ceil(log2 M)`` bits each (2 bits for M = 4), packed
  little-endian into ``uint8`` like the bitmask encoding; positions rise strictly within a group.

Size: ``N/M`` values per element plus ``N*ceil(log2 M)/M`` index bits per element. Against a bitmask (1 bit
per element, same values): 1:4 and 2:8 are smaller (0.5 and 0.75 bits), 2:4 is the same (1 bit), 4:8 is
larger (1.5 bits). Against CSR (16 bits per nonzero at these widths) it is always smaller. The pattern is
found by :func:`find_pattern` among :data:`GROUP_SIZES` and kept only when the file gets smaller (see
:func:`sparsetrain.sparse.encoding.encode`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from sparsetrain.nm import NMPattern, as_groups, from_groups

GROUP_SIZES: tuple[int, ...] = (2, 4, 8, 16, 32)
"""Group sizes M tried when looking for a pattern in a tensor (N is then the largest group count)."""


@dataclass(frozen=True)
class NMSpec:
    """How a tensor is grouped in the N:M encoding.

    Attributes:
        pattern: the N:M pattern (at most N nonzeros per group of M).
        dim: the dimension the groups run along.
    """

    pattern: NMPattern
    dim: int

    def to_json(self) -> dict[str, object]:
        """``{"pattern": "2:4", "dim": 1}`` for a file's metadata."""
        return {"pattern": str(self.pattern), "dim": self.dim}

    @classmethod
    def from_json(cls, value: object, ndim: int) -> NMSpec:
        """Parse :meth:`to_json`'s form for a tensor of ``ndim`` dims.

        Raises:
            ValueError: the object is not ``{"pattern": "N:M", "dim": int}`` with a dim in range.
        """
        if not isinstance(value, dict) or set(value) != {"pattern", "dim"}:
            raise ValueError(f"'nm' must be an object with keys 'pattern' and 'dim', got {value!r}")
        dim = value["dim"]
        if isinstance(dim, bool) or not isinstance(dim, int) or not 0 <= dim < ndim:
            raise ValueError(f"'nm' dim must be an int in [0, {ndim}), got {dim!r}")
        return cls(NMPattern.parse(value["pattern"]), dim)


def position_bits(m: int) -> int:
    """Bits per stored position for groups of ``m``: ``ceil(log2 m)`` (at least 1)."""
    return max(1, (m - 1).bit_length())


def nm_nbytes(numel: int, pattern: NMPattern, itemsize: int) -> int:
    """Bytes of the ``values`` and ``positions`` parts for a tensor of ``numel`` elements.

    Args:
        numel: number of elements (a multiple of ``pattern.m``).
        pattern: the pattern.
        itemsize: bytes per value.

    Returns:
        Exact byte count (a ``zero_signs`` part, when needed, comes on top).
    """
    stored = numel // pattern.m * pattern.n
    return stored * itemsize + (stored * position_bits(pattern.m) + 7) // 8


def find_pattern(t: Tensor, dim: int) -> NMSpec | None:
    """The N:M pattern (M from :data:`GROUP_SIZES`) that stores ``t`` in the fewest bytes, if any.

    For each M dividing ``t.shape[dim]``, N is the largest number of nonzeros in a group (at least 1); M is a
    candidate when N < M. Ties go to the smaller M.

    Args:
        t: a tensor with at least 2 dims.
        dim: the dimension the groups run along.

    Returns:
        The cheapest :class:`NMSpec`, or None when no M fits.
    """
    if t.dim() < 2 or t.numel() == 0 or not 0 <= dim < t.dim():
        return None
    nonzero = t != 0
    best: tuple[int, NMSpec] | None = None
    for m in GROUP_SIZES:
        if t.shape[dim] % m:
            continue
        n = max(1, int(as_groups(nonzero, dim, m).sum(dim=1).max()))
        if n >= m:
            continue
        spec = NMSpec(NMPattern(n, m), dim)
        size = nm_nbytes(t.numel(), spec.pattern, t.element_size())
        if best is None or size < best[0]:
            best = (size, spec)
    return None if best is None else best[1]


def fits(t: Tensor, spec: NMSpec) -> bool:
    """Whether ``t`` can be grouped by ``spec`` and no group holds more than N nonzeros."""
    m = spec.pattern.m
    if t.dim() < 2 or not 0 <= spec.dim < t.dim() or t.shape[spec.dim] % m:
        return False
    return bool((as_groups(t != 0, spec.dim, m).sum(dim=1) <= spec.pattern.n).all())


def stored_entries(t: Tensor, spec: NMSpec) -> Tensor:
    """Bool ``[groups, M]``: the N entries stored per group (its nonzeros, then its lowest-index zeros).

    Raises:
        ValueError: a group holds more than N nonzeros.
    """
    n, m = spec.pattern.n, spec.pattern.m
    nonzero = as_groups(t != 0, spec.dim, m)
    counts = nonzero.sum(dim=1, keepdim=True)
    if bool((counts > n).any()):
        raise ValueError(f"the tensor does not follow {spec.pattern} along dim {spec.dim}: a group holds "
                         f"{int(counts.max())} nonzeros")
    zero_rank = torch.cumsum(~nonzero, dim=1) - 1
    return nonzero | (~nonzero & (zero_rank < n - counts))


def encode_positions(stored: Tensor, spec: NMSpec) -> Tensor:
    """The in-group position of every stored entry, as a flat bool tensor of bits (little-endian per position).

    Args:
        stored: bool ``[groups, M]`` from :func:`stored_entries`.
        spec: the grouping.

    Returns:
        ``groups * N * position_bits(M)`` bits, to be packed.
    """
    positions = stored.nonzero()[:, 1]
    shifts = torch.arange(position_bits(spec.pattern.m))
    return ((positions.unsqueeze(1) >> shifts) & 1).bool().reshape(-1)


def decode_positions(bits: Tensor, shape: tuple[int, ...], spec: NMSpec) -> Tensor:
    """Flat indices (into ``shape``, row-major) of the stored values, in the order of the ``values`` part.

    Args:
        bits: the unpacked ``positions`` part, ``groups * N * position_bits(M)`` bools.
        shape: the tensor's shape.
        spec: the grouping.

    Returns:
        int64 flat indices, one per stored value.

    Raises:
        ValueError: the tensor cannot be grouped so, or positions are out of range or do not rise in a group.
    """
    n, m = spec.pattern.n, spec.pattern.m
    numel = math.prod(shape)
    if len(shape) < 2 or not 0 <= spec.dim < len(shape) or shape[spec.dim] % m:
        raise ValueError(f"shape {shape} cannot be grouped by {m} along dim {spec.dim}")
    b = position_bits(m)
    weights = torch.pow(2, torch.arange(b))
    positions = (bits.reshape(-1, b).long() * weights).sum(dim=1).reshape(-1, n)
    if bool((positions >= m).any()):
        raise ValueError(f"in-group position out of range [0, {m})")
    if n > 1 and not bool((positions.diff(dim=1) > 0).all()):
        raise ValueError("in-group positions must rise strictly within each group")
    index = as_groups(torch.arange(numel).reshape(shape), spec.dim, m)
    return index.gather(1, positions).reshape(-1)


def stored_flat(stored: Tensor, shape: tuple[int, ...], spec: NMSpec) -> Tensor:
    """:func:`stored_entries` back in the tensor's own layout, flattened (bool, ``numel``)."""
    return from_groups(stored, shape, spec.dim).reshape(-1)
