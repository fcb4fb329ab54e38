"""Per-tensor storage encodings for compressed export: dense, packed bitmask, CSR, COO and N:M.

This module owns how *one* tensor whose pruned entries are exactly zero is turned into a few small
tensors ("parts") that a safetensors file can hold, and back, bit for bit.

Every compressed encoding stores the same ``values`` part: the nonzero entries in row-major (flat)
order, in the tensor's own dtype. They differ only in how the positions of those entries are stored:

* ``bitmask``: one bit per element, packed little-endian into ``uint8`` (``numpy.packbits``):
  ``ceil(numel / 8)`` bytes, independent of the sparsity.
* ``csr``: the tensor viewed as 2-D ``(shape[0], numel / shape[0])``; ``crow`` row pointers
  (``rows + 1`` entries) and one column index per nonzero, each in the smallest signed integer dtype
  that holds its largest value (``int16`` for up to 32,768 columns, else ``int32``/``int64``).
* ``coo``: one flat index per nonzero, in the smallest integer dtype that holds ``numel - 1``.

* ``nm``: for a tensor that follows an N:M pattern along its reduction dim, N values per group of M
  (a few may be zeros) and their in-group positions in ``ceil(log2 M)`` bits each; see
  :mod:`sparsetrain.sparse.nm_format`. Only considered when the caller names the reduction dim
  (``nm_dim``; :func:`~sparsetrain.sparse.export_sparse` does, per layer type).

Choice rule (:func:`choose_encoding`): the encoding whose *index* bytes are fewest wins (values cost
the same in all three), ties broken in the order bitmask, csr, coo; if the compressed total is not
smaller than the dense tensor, the tensor is stored dense. For a float32 ``1024 x 1024`` weight this
gives bitmask below ~93.75 % sparsity (1 bit per element beats 16 bits per nonzero while
density > 1/16) and CSR with int16 columns above it. When ``nm_dim`` is given and the tensor follows
a pattern, the N:M encoding is used if its total (values included, which may hold a few zeros) is at
most that choice's total: on a tie (2:4 against a bitmask) N:M wins, as it also carries the pattern.

Zero is decided by value (``t == 0``), so a ``-0.0`` (which ``weight * mask`` produces for negative
weights) counts as pruned. To stay bit-identical, the signs of the zeros are then kept in an extra
``zero_signs`` part (one packed bit per zero, only written when some zero is negative).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from sparsetrain.nm import as_groups
from sparsetrain.sparse import nm_format
from sparsetrain.sparse.nm_format import NMSpec

ENCODINGS: tuple[str, ...] = ("dense", "bitmask", "csr", "coo", "nm")
"""All encodings a file may name; the unstructured ones are listed in tie-break order after dense."""

COMPRESSIBLE_DTYPES: frozenset[torch.dtype] = frozenset(
    {
        torch.float16,
        torch.bfloat16,
        torch.float32,
        torch.float64,
        torch.uint8,
        torch.int8,
        torch.int16,
        torch.int32,
        torch.int64,
        torch.bool,
    }
)
"""Dtypes whose zeros can be dropped; any other dtype (complex, float8, ...) is always stored dense."""

_SIGNED_ZERO_DTYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


class EncodingError(ValueError):
    """Raised when stored parts do not describe a valid tensor (a corrupt or foreign file)."""


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor as stored in an export file.

    Attributes:
        encoding: one of :data:`ENCODINGS`.
        shape: shape of the original tensor.
        dtype: dtype of the original tensor.
        parts: part name -> tensor to write (``values`` always; ``mask``, ``crow``/``col``,
            ``index``, ``positions`` and ``zero_signs`` depending on the encoding).
        nm: the grouping of the ``nm`` encoding (None for the others).
    """

    encoding: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    parts: dict[str, Tensor]
    nm: NMSpec | None = None

    @property
    def nbytes(self) -> int:
        """Bytes of tensor data the parts occupy (the file adds a small JSON header)."""
        return sum(p.numel() * p.element_size() for p in self.parts.values())


def smallest_index_dtype(max_value: int) -> torch.dtype:
    """Smallest signed integer dtype (int16, int32 or int64) that can hold ``max_value``.

    Args:
        max_value: largest index that has to be stored (>= 0).

    Returns:
        ``torch.int16``, ``torch.int32`` or ``torch.int64``.
    """
    if max_value < 0:
        raise ValueError(f"max_value must be >= 0, got {max_value}")
    if max_value <= torch.iinfo(torch.int16).max:
        return torch.int16
    if max_value <= torch.iinfo(torch.int32).max:
        return torch.int32
    return torch.int64


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def csr_view_shape(shape: tuple[int, ...]) -> tuple[int, int]:
    """The 2-D ``(rows, cols)`` view a tensor of ``shape`` gets in the CSR encoding.

    Args:
        shape: tensor shape (at least one element).

    Returns:
        ``(shape[0], numel // shape[0])`` for tensors of 2 or more dims, ``(1, numel)`` otherwise.
    """
    numel = math.prod(shape)
    if len(shape) >= 2 and shape[0] > 0:
        return shape[0], numel // shape[0]
    return 1, numel


def index_bytes(encoding: str, shape: tuple[int, ...], nnz: int) -> int:
    """Bytes the position information of a compressed encoding takes (values excluded).

    Args:
        encoding: ``"bitmask"``, ``"csr"`` or ``"coo"``.
        shape: tensor shape.
        nnz: number of nonzero entries.

    Returns:
        Exact byte count of the index parts the encoding writes.
    """
    numel = math.prod(shape)
    if encoding == "bitmask":
        return (numel + 7) // 8
    if encoding == "csr":
        rows, cols = csr_view_shape(shape)
        crow = (rows + 1) * _itemsize(smallest_index_dtype(nnz))
        col = nnz * _itemsize(smallest_index_dtype(max(cols - 1, 0)))
        return crow + col
    if encoding == "coo":
        return nnz * _itemsize(smallest_index_dtype(max(numel - 1, 0)))
    raise ValueError(f"encoding must be one of 'bitmask', 'csr', 'coo', got {encoding!r}")


def _unstructured_nbytes(encoding: str, shape: tuple[int, ...], nnz: int, dtype: torch.dtype,
                         n_negative_zeros: int) -> int:
    """Total bytes of ``encoding`` (dense, bitmask, csr or coo), signs of zeros included."""
    numel = math.prod(shape)
    if encoding == "dense":
        return numel * _itemsize(dtype)
    signs = (numel - nnz + 7) // 8 if n_negative_zeros else 0
    return index_bytes(encoding, shape, nnz) + nnz * _itemsize(dtype) + signs


def choose_encoding(shape: tuple[int, ...], nnz: int, dtype: torch.dtype, n_negative_zeros: int = 0) -> str:
    """Pick the smallest encoding for a tensor (see the module docstring for the rule).

    Args:
        shape: tensor shape.
        nnz: number of nonzero entries.
        dtype: tensor dtype.
        n_negative_zeros: number of ``-0.0`` entries (they cost a ``zero_signs`` part).

    Returns:
        One of :data:`ENCODINGS`.
    """
    numel = math.prod(shape)
    if dtype not in COMPRESSIBLE_DTYPES or numel == 0 or len(shape) == 0:
        return "dense"
    best = min(("bitmask", "csr", "coo"), key=lambda e: index_bytes(e, shape, nnz))  # min keeps first on ties
    if _unstructured_nbytes(best, shape, nnz, dtype, n_negative_zeros) >= numel * _itemsize(dtype):
        return "dense"
    return best


def _pack_bits(bits: Tensor) -> Tensor:
    packed = np.packbits(bits.reshape(-1).numpy(), bitorder="little")
    return torch.from_numpy(packed)


def _unpack_bits(packed: Tensor, count: int, what: str) -> Tensor:
    if packed.dtype != torch.uint8 or packed.dim() != 1 or packed.numel() != (count + 7) // 8:
        raise EncodingError(
            f"{what}: expected a 1-D uint8 tensor of {(count + 7) // 8} bytes, "
            f"got dtype {packed.dtype} and shape {tuple(packed.shape)}"
        )
    bits = np.unpackbits(packed.numpy(), bitorder="little")
    if bits[count:].any():
        raise EncodingError(f"{what}: padding bits after the last element are set")
    return torch.from_numpy(bits[:count].astype(bool))


def _encode_nm(t: Tensor, spec: NMSpec, keep_zero_signs: bool) -> EncodedTensor:
    """The ``nm`` encoding of ``t`` (contiguous, CPU) under ``spec``."""
    shape = tuple(t.shape)
    stored = nm_format.stored_entries(t, spec)
    parts: dict[str, Tensor] = {
        "values": as_groups(t, spec.dim, spec.pattern.m)[stored].clone(),
        "positions": _pack_bits(nm_format.encode_positions(stored, spec)),
    }
    if keep_zero_signs and t.dtype in _SIGNED_ZERO_DTYPES:
        flat = t.reshape(-1)
        unstored = ~nm_format.stored_flat(stored, shape, spec)
        negative = (flat == 0) & torch.signbit(flat) & unstored
        if bool(negative.any()):
            parts["zero_signs"] = _pack_bits(negative[unstored])
    return EncodedTensor("nm", shape, t.dtype, parts, spec)


def encode(
    tensor: Tensor,
    encoding: str | None = None,
    *,
    min_sparsity: float = 0.0,
    keep_zero_signs: bool = True,
    nm_dim: int | None = None,
) -> EncodedTensor:
    """Encode a tensor; pruned entries are the ones equal to zero.

    Args:
        tensor: any tensor (it is detached, moved to CPU and made contiguous).
        encoding: force an encoding from :data:`ENCODINGS` (``"nm"`` needs ``nm_dim`` and a tensor
            that follows a pattern); ``None`` picks the smallest (module docstring).
        min_sparsity: when picking, store dense if the fraction of zeros is below this.
        keep_zero_signs: store which zeros are ``-0.0`` (needed for a bit-identical round trip
            when there are any); if False they come back as ``+0.0`` (equal in value).
        nm_dim: the tensor's reduction dim, along which an N:M pattern is looked for; None never
            uses the ``nm`` encoding.

    Returns:
        The :class:`EncodedTensor`; ``decode`` of its parts gives back ``tensor`` bit for bit
        (up to the sign of zeros when ``keep_zero_signs`` is False).
    """
    if encoding is not None and encoding not in ENCODINGS:
        raise ValueError(f"encoding must be one of {ENCODINGS} or None, got {encoding!r}")
    t = tensor.detach().to("cpu").contiguous()
    shape = tuple(t.shape)
    if encoding == "dense" or t.dtype not in COMPRESSIBLE_DTYPES or t.numel() == 0 or t.dim() == 0:
        if encoding not in (None, "dense"):
            raise ValueError(f"tensor of dtype {t.dtype} and shape {shape} can only be stored dense")
        return EncodedTensor("dense", shape, t.dtype, {"values": t})
    spec = nm_format.find_pattern(t, nm_dim) if nm_dim is not None and encoding in (None, "nm") else None
    if encoding == "nm":
        if spec is None:
            raise ValueError(f"tensor of shape {shape} follows no N:M pattern (M in {nm_format.GROUP_SIZES}) "
                             f"along nm_dim={nm_dim}")
        return _encode_nm(t, spec, keep_zero_signs)
    flat = t.reshape(-1)
    zero = flat == 0
    nonzero = ~zero
    nnz = int(nonzero.sum())
    signed = keep_zero_signs and t.dtype in _SIGNED_ZERO_DTYPES
    negative_zeros = zero & torch.signbit(flat) if signed else None
    n_negative = int(negative_zeros.sum()) if negative_zeros is not None else 0
    if encoding is not None:
        chosen = encoding
    elif t.numel() - nnz < min_sparsity * t.numel():
        chosen = "dense"
    else:
        chosen = choose_encoding(shape, nnz, t.dtype, n_negative)
        if spec is not None:
            candidate = _encode_nm(t, spec, keep_zero_signs)
            if candidate.nbytes <= _unstructured_nbytes(chosen, shape, nnz, t.dtype, n_negative) and (
                candidate.nbytes < t.numel() * t.element_size()
            ):
                return candidate
    if chosen == "dense":
        return EncodedTensor("dense", shape, t.dtype, {"values": t})
    parts: dict[str, Tensor] = {"values": flat[nonzero].clone()}
    if chosen == "bitmask":
        parts["mask"] = _pack_bits(nonzero)
    else:
        positions = torch.nonzero(nonzero).reshape(-1)
        if chosen == "csr":
            rows, cols = csr_view_shape(shape)
            counts = nonzero.reshape(rows, cols).sum(dim=1)
            crow = torch.zeros(rows + 1, dtype=torch.int64)
            torch.cumsum(counts, dim=0, out=crow[1:])
            parts["crow"] = crow.to(smallest_index_dtype(nnz))
            parts["col"] = (positions % cols).to(smallest_index_dtype(max(cols - 1, 0)))
        else:
            parts["index"] = positions.to(smallest_index_dtype(max(t.numel() - 1, 0)))
    if negative_zeros is not None and n_negative:
        parts["zero_signs"] = _pack_bits(negative_zeros[zero])
    return EncodedTensor(chosen, shape, t.dtype, parts)


def _int_part(parts: Mapping[str, Tensor], name: str, length: int, what: str) -> Tensor:
    part = parts[name]
    if part.dtype not in (torch.int16, torch.int32, torch.int64) or part.dim() != 1 or part.numel() != length:
        raise EncodingError(
            f"{what}: part {name!r} must be a 1-D int16/int32/int64 tensor of length {length}, "
            f"got dtype {part.dtype} and shape {tuple(part.shape)}"
        )
    return part.to(torch.int64)


def _positions(encoding: str, parts: Mapping[str, Tensor], shape: tuple[int, ...], nnz: int, what: str) -> Tensor:
    """Flat indices (int64, strictly increasing) or a bool mask of the nonzero entries."""
    numel = math.prod(shape)
    if encoding == "bitmask":
        mask = _unpack_bits(parts["mask"], numel, f"{what} mask")
        if int(mask.sum()) != nnz:
            raise EncodingError(f"{what}: mask marks {int(mask.sum())} entries but there are {nnz} values")
        return mask
    if encoding == "csr":
        rows, cols = csr_view_shape(shape)
        crow = _int_part(parts, "crow", rows + 1, what)
        col = _int_part(parts, "col", nnz, what)
        counts = crow.diff()
        if int(crow[0]) != 0 or int(crow[-1]) != nnz or bool((counts < 0).any()):
            raise EncodingError(f"{what}: row pointers must rise from 0 to the number of values ({nnz})")
        if nnz and (int(col.min()) < 0 or int(col.max()) >= cols):
            raise EncodingError(f"{what}: column index out of range [0, {cols})")
        flat = torch.repeat_interleave(torch.arange(rows), counts) * cols + col
    else:
        flat = _int_part(parts, "index", nnz, what)
        if nnz and (int(flat.min()) < 0 or int(flat.max()) >= numel):
            raise EncodingError(f"{what}: flat index out of range [0, {numel})")
    if nnz > 1 and not bool((flat.diff() > 0).all()):
        raise EncodingError(f"{what}: positions must be strictly increasing (sorted, no duplicates)")
    return flat


def _nm_positions(
    parts: Mapping[str, Tensor], shape: tuple[int, ...], nnz: int, nm: NMSpec | None, what: str
) -> Tensor:
    """Flat indices of the ``nm`` encoding's values, checked against the grouping."""
    if nm is None:
        raise EncodingError(f"{what}: the nm encoding needs its pattern and dim")
    numel = math.prod(shape)
    groups = numel // nm.pattern.m
    if groups * nm.pattern.n != nnz:
        raise EncodingError(f"{what}: {nm.pattern} over {numel} elements stores {groups * nm.pattern.n} values, "
                            f"got {nnz}")
    bits = _unpack_bits(parts["positions"], nnz * nm_format.position_bits(nm.pattern.m), f"{what} positions")
    try:
        return nm_format.decode_positions(bits, shape, nm)
    except ValueError as err:
        raise EncodingError(f"{what}: {err}") from None


def decode(
    encoding: str,
    parts: Mapping[str, Tensor],
    shape: tuple[int, ...],
    dtype: torch.dtype,
    what: str = "tensor",
    nm: NMSpec | None = None,
) -> Tensor:
    """Rebuild a tensor from its stored parts, checking that they are consistent.

    Args:
        encoding: one of :data:`ENCODINGS`.
        parts: part name -> stored tensor, as written by :func:`encode`.
        shape: shape of the original tensor.
        dtype: dtype of the original tensor.
        what: name used in error messages.
        nm: the grouping, for the ``nm`` encoding (required there, ignored otherwise).

    Returns:
        The original tensor (contiguous, CPU).

    Raises:
        EncodingError: if a part is missing, has the wrong dtype/shape, or the positions are invalid.
    """
    if encoding not in ENCODINGS:
        raise EncodingError(f"{what}: unknown encoding {encoding!r}; known: {ENCODINGS}")
    needed = {"dense": {"values"}, "bitmask": {"values", "mask"}, "csr": {"values", "crow", "col"},
              "nm": {"values", "positions"}}.get(encoding, {"values", "index"})
    allowed = needed if encoding == "dense" else needed | {"zero_signs"}
    if not needed <= set(parts) or not set(parts) <= allowed:
        raise EncodingError(f"{what}: {encoding} encoding needs parts {sorted(needed)}, got {sorted(parts)}")
    values = parts["values"]
    if values.dtype != dtype:
        raise EncodingError(f"{what}: values have dtype {values.dtype}, metadata says {dtype}")
    if encoding == "dense":
        if tuple(values.shape) != shape:
            raise EncodingError(f"{what}: stored shape {tuple(values.shape)} differs from metadata {shape}")
        return values
    if values.dim() != 1:
        raise EncodingError(f"{what}: values must be 1-D, got shape {tuple(values.shape)}")
    numel = math.prod(shape)
    nnz = values.numel()
    if nnz > numel:
        raise EncodingError(f"{what}: {nnz} values do not fit a tensor of {numel} elements")
    positions = _nm_positions(parts, shape, nnz, nm, what) if encoding == "nm" else _positions(
        encoding, parts, shape, nnz, what
    )
    flat = torch.zeros(numel, dtype=dtype)
    flat[positions] = values
    if "zero_signs" in parts:
        if dtype not in _SIGNED_ZERO_DTYPES:
            raise EncodingError(f"{what}: zero_signs given for dtype {dtype}, which has no signed zero")
        zero = torch.ones(numel, dtype=torch.bool)
        zero[positions] = False
        negative = _unpack_bits(parts["zero_signs"], numel - nnz, f"{what} zero_signs")
        flat[torch.nonzero(zero).reshape(-1)[negative]] = -0.0
    return flat.reshape(shape)
