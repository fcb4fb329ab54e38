"""The native kernels behind :class:`~sparsetrain.sparse.TrainableSparseLinear`'s backward (float32, CPU).

Wraps ``native/sddmm.c`` (compiled on first use by :mod:`sparsetrain.native`; its header comment describes the
kernels): the weight gradient at the active positions only (:func:`native_sddmm`), the CSR structure of the
transpose (:func:`native_csr_transpose`), a gather (:func:`native_gather_or_zero`), the conversions between CSR and
sorted flat positions (:func:`native_csr_from_flat`, :func:`native_csr_flat`), and a topology change
(:func:`native_csr_replace`, :func:`native_gather_or_zero`), and the pieces of a backward over the live output units
only (:func:`checked_live_columns`, :func:`checked_select_rows`, :func:`checked_scatter_or_zero`). The input
gradient is
:func:`sparsetrain.sparse.spmm.native_linear` with the transpose.

Each function returns None whenever the kernel cannot serve the call (kernel unavailable, ``SPARSETRAIN_NATIVE=0``,
or a dtype / device / index width it does not handle); the caller then uses its PyTorch path. The ``checked_*``
functions are the same kernels without those checks, for a caller that made them once per call (the layer's hot
path, where each check costs microseconds): :func:`kernels` gives the library they take.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import Tensor

from sparsetrain import native

__all__ = ["checked_gather_or_zero", "checked_live_columns", "checked_scatter_or_zero", "checked_sddmm",
           "checked_select_rows", "default_tile",
           "kernels", "native_csr_flat", "native_csr_from_flat", "native_csr_replace", "native_csr_transpose",
           "native_gather_or_zero", "native_sddmm"]

logger = logging.getLogger(__name__)



def default_tile(nnz: int, in_features: int) -> int:
    """Widest batch tile of the weight-gradient kernel, in vectors of 16 rows, for a layer of this shape.

    Per tile the kernel packs the whole input (``in_features`` x 16 * tile floats), then does ``tile`` vector
    multiply-adds per nonzero. Measured at batch 128 on one thread (784 x 4096, 4096 x 4096 and 4096 x 10 at 90% and
    99% sparsity): 64-row tiles are fastest with many nonzeros per input feature (about 400), 32-row tiles with
    about 40, and 16-row tiles when there are fewer nonzeros than inputs and the packing is most of the work.
    """
    per_input = nnz / max(in_features, 1)
    return 1 if per_input < 8 else 2 if per_input < 128 else 4

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES: dict[str, native.Signature] = {
    "sddmm_f32": (_INT, [_I64] * 3 + [_P] * 3 + [_I64, _P, _I64, _P, _INT, _P, _INT]),
    "csr_transpose": (_INT, [_I64, _I64] + [_P] * 5),
    "csr_from_flat": (_INT, [_I64, _P, _I64, _I64, _P, _P]),
    "csr_flat": (None, [_I64, _I64, _P, _P, _P]),
    "csr_replace": (_INT, [_I64, _I64, _P, _P, _P, _I64, _P, _P, _P, _P]),
    "gather_or_zero_f32": (None, [_I64, _P, _P, _P, _INT]),
    "live_columns_f32": (_I64, [_I64, _I64, _P, _I64, _I64, _P]),
    "csr_select_rows": (_I64, [_P, _I64, _P, _P, _P]),
    "scatter_or_zero_f32": (None, [_I64, _P, _I64, _P, _P]),
}


def _load() -> ctypes.CDLL | None:
    """The kernel library (built and loaded once per process), or None when native kernels are unavailable."""
    return native.try_load("sddmm", _SIGNATURES)


def _csr_library(crow: Tensor, col: Tensor) -> ctypes.CDLL | None:
    """The library, if built and if the CSR indices are int32 CPU tensors (what every kernel here reads)."""
    if crow.dtype != torch.int32 or col.dtype != torch.int32 or not (crow.is_cpu and col.is_cpu):
        return None
    return _load()


def native_available() -> bool:
    """True when the kernels are built and enabled (``SPARSETRAIN_NATIVE`` not 0)."""
    return _load() is not None


def _rows_ok(t: Tensor) -> bool:
    """A 2-D float32 CPU tensor whose rows the kernels can read in place (unit column stride)."""
    return t.dtype == torch.float32 and t.is_cpu and t.dim() == 2 and t.stride(1) == 1 and t.stride(0) >= t.shape[1]


def native_sddmm(x: Tensor, dy: Tensor, crow: Tensor, col: Tensor, *, tile: int = 0) -> Tensor | None:
    """``(dy.T @ x)`` at the CSR pattern ``(crow, col)`` only: the gradient of a CSR weight's values.

    Args:
        x: layer input ``(batch, in_features)``, float32.
        dy: gradient of the layer output ``(batch, out_features)``, float32.
        crow: int32 CSR row pointers ``(out_features + 1,)``, contiguous.
        col: int32 column indices ``(nnz,)``, contiguous.
        tile: widest batch tile in vectors of 16 rows (1, 2, 4 or 8), or 0 for :func:`default_tile`.

    Returns:
        A new ``(nnz,)`` float32 tensor in CSR order, or None (use the PyTorch path).
    """
    if tile not in (0, 1, 2, 4, 8):
        raise ValueError(f"tile must be 0, 1, 2, 4 or 8, got {tile!r}")
    if not (x.dtype == dy.dtype == torch.float32 and x.is_cpu and dy.is_cpu):
        return None
    library = _csr_library(crow, col)
    if library is None:
        return None
    x = x if _rows_ok(x) else x.contiguous()
    dy = dy if _rows_ok(dy) else dy.contiguous()
    return checked_sddmm(library, x, dy, crow, col, tile)


def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when native kernels are unavailable (for the ``checked_*`` functions)."""
    return _load()


def checked_sddmm(library: ctypes.CDLL, x: Tensor, dy: Tensor, crow: Tensor, col: Tensor, tile: int = 0,
                  bias_grad: Tensor | None = None) -> Tensor | None:
    """:func:`native_sddmm` without its checks, for a caller that made them once (a layer's hot path).

    Args:
        library: from :func:`kernels`.
        x, dy: float32 CPU tensors with unit-stride rows, as for :func:`native_sddmm`.
        crow, col: int32 CPU CSR indices, contiguous.
        tile: as for :func:`native_sddmm`.
        bias_grad: optional contiguous float32 ``(out_features,)`` tensor that receives ``dy.sum(0)`` (summed while
            the kernel reads dy anyway; per output, the batch rows in order).

    Returns:
        A new ``(nnz,)`` float32 tensor in CSR order, or None when the kernel failed (out of memory; ``bias_grad``
        is then undefined).
    """
    (batch, in_features), out_features = x.shape, dy.shape[1]
    dw = torch.empty(col.shape[0], dtype=torch.float32)
    tile = tile or default_tile(col.shape[0], in_features)
    status = library.sddmm_f32(
        batch, in_features, out_features, crow.data_ptr(), col.data_ptr(), x.data_ptr(), max(x.stride(0), 1),
        dy.data_ptr(), max(dy.stride(0), 1), dw.data_ptr(), tile,
        bias_grad.data_ptr() if bias_grad is not None else None, torch.get_num_threads(),
    )
    if status != 0:
        logger.warning("native sddmm failed (out of memory?); using the PyTorch path for this call")
        return None
    return dw


def native_csr_transpose(crow: Tensor, col: Tensor, n_cols: int) -> tuple[Tensor, Tensor, Tensor] | None:
    """The CSR structure of the transpose, and the order of its entries in the input's value order.

    Args:
        crow: int32 CSR row pointers of a ``(rows, n_cols)`` matrix.
        col: int32 column indices, sorted within each row.
        n_cols: the matrix's column count.

    Returns:
        ``(t_crow, t_rows, perm)``, all int32: the transpose's row pointers ``(n_cols + 1,)``, its column indices
        (the input's rows, ascending within each of its rows), and ``perm`` with ``values_t = values[perm]``; or
        None (use the PyTorch path).
    """
    library = _csr_library(crow, col)
    if library is None:
        return None
    crow, col = crow.contiguous(), col.contiguous()
    t_crow = torch.empty(n_cols + 1, dtype=torch.int32)
    t_rows = torch.empty_like(col)
    perm = torch.empty_like(col)
    status = library.csr_transpose(crow.shape[0] - 1, n_cols, crow.data_ptr(), col.data_ptr(), t_crow.data_ptr(),
                                   t_rows.data_ptr(), perm.data_ptr())
    if status != 0:
        return None
    return t_crow, t_rows, perm


def native_csr_from_flat(flat: Tensor, rows: int, in_features: int) -> tuple[Tensor, Tensor] | None:
    """int32 CSR row pointers and column indices of a ``rows x in_features`` matrix from its active positions.

    Args:
        flat: int64 flat positions ``row * in_features + col``, strictly increasing.
        rows: the matrix's row count.
        in_features: its column count.

    Returns:
        ``(crow, col)``, or None (kernels unavailable, or a tensor they do not handle).

    Raises:
        ValueError: the positions are not strictly increasing or not below ``rows * in_features``.
    """
    if flat.dtype != torch.int64 or not flat.is_cpu:
        return None
    library = _load()
    if library is None:
        return None
    flat = flat.contiguous()
    crow = torch.empty(rows + 1, dtype=torch.int32)
    col = torch.empty(flat.shape[0], dtype=torch.int32)
    if library.csr_from_flat(flat.shape[0], flat.data_ptr(), rows, in_features, crow.data_ptr(), col.data_ptr()):
        raise ValueError(f"positions must be strictly increasing and below {rows * in_features}")
    return crow, col


def native_csr_flat(crow: Tensor, col: Tensor, in_features: int) -> Tensor | None:
    """The int64 flat positions ``row * in_features + col`` of a CSR structure's entries, or None."""
    library = _csr_library(crow, col)
    if library is None:
        return None
    crow, col = crow.contiguous(), col.contiguous()
    flat = torch.empty(col.shape[0], dtype=torch.int64)
    library.csr_flat(crow.shape[0] - 1, in_features, crow.data_ptr(), col.data_ptr(), flat.data_ptr())
    return flat


def native_csr_replace(crow: Tensor, col: Tensor, in_features: int, keep: Tensor,
                       grow: Tensor) -> tuple[Tensor, Tensor, Tensor] | None:
    """The CSR structure after keeping the entries ``keep`` and adding the flat positions ``grow``.

    Args:
        crow: int32 row pointers.
        col: int32 column indices.
        in_features: the column count.
        keep: bool ``(nnz,)``: the entries that stay.
        grow: int64 flat positions ``row * in_features + col`` to add, strictly increasing, none of them kept.

    Returns:
        ``(crow, col, source)`` of the new structure, ``source`` (int32) giving each new entry's old slot or -1 for
        an added one; or None (kernels unavailable, or a tensor they do not handle).

    Raises:
        ValueError: ``grow`` is not strictly increasing, is out of range, or holds a kept position.
    """
    library = _csr_library(crow, col) if grow.dtype == torch.int64 and keep.is_cpu and grow.is_cpu else None
    if library is None:
        return None
    crow, col, keep, grow = crow.contiguous(), col.contiguous(), keep.contiguous(), grow.contiguous()
    n_new = int(keep.sum()) + grow.shape[0]
    new_crow = torch.empty_like(crow)
    new_col = torch.empty(n_new, dtype=torch.int32)
    source = torch.empty(n_new, dtype=torch.int32)
    if library.csr_replace(crow.shape[0] - 1, in_features, crow.data_ptr(), col.data_ptr(), keep.data_ptr(),
                           grow.shape[0], grow.data_ptr(), new_crow.data_ptr(), new_col.data_ptr(),
                           source.data_ptr()):
        raise ValueError("grow must be strictly increasing positions of the weight, none of them kept")
    return new_crow, new_col, source


def native_gather_or_zero(values: Tensor, source: Tensor) -> Tensor | None:
    """``values[source]`` with 0 where ``source < 0``, for float32 ``values`` and int32 ``source`` (CPU), or None."""
    if values.dtype != torch.float32 or source.dtype != torch.int32 or not (values.is_cpu and source.is_cpu):
        return None
    library = _load()
    if library is None:
        return None
    return checked_gather_or_zero(library, values.contiguous(), source.contiguous())


def checked_gather_or_zero(library: ctypes.CDLL, values: Tensor, source: Tensor) -> Tensor:
    """:func:`native_gather_or_zero` without its checks (contiguous float32 ``values``, int32 ``source``, CPU)."""
    out = torch.empty(source.shape[0], dtype=torch.float32)
    library.gather_or_zero_f32(source.shape[0], values.data_ptr(), source.data_ptr(), out.data_ptr(),
                               torch.get_num_threads())
    return out


def checked_live_columns(library: ctypes.CDLL, a: Tensor, max_live: int) -> Tensor | None:
    """The columns of ``a`` that hold an entry other than zero (NaN included), ascending, as int32; or None when
    there are more than ``max_live`` of them (the scan stops there).

    Args:
        library: from :func:`kernels`.
        a: 2-D float32 CPU tensor with unit-stride rows.
        max_live: the most columns wanted.
    """
    rows, cols = a.shape
    live = torch.empty(cols, dtype=torch.int32)
    count = library.live_columns_f32(rows, cols, a.data_ptr(), max(a.stride(0), 1), max_live, live.data_ptr())
    return None if count < 0 else live[:count]


def checked_select_rows(library: ctypes.CDLL, crow: Tensor, rows: Tensor) -> tuple[Tensor, Tensor]:
    """The CSR row pointers of the rows ``rows`` (int32, ascending) of a CSR matrix, and the slots of their entries
    in the full matrix (int32, in order): ``col[slots]`` and ``values[slots]`` complete the selection."""
    new_crow = torch.empty(rows.shape[0] + 1, dtype=torch.int32)
    slots = torch.empty(int(crow[-1]), dtype=torch.int32)
    count = library.csr_select_rows(crow.data_ptr(), rows.shape[0], rows.data_ptr(), new_crow.data_ptr(),
                                    slots.data_ptr())
    return new_crow, slots[:count]


def checked_scatter_or_zero(library: ctypes.CDLL, values: Tensor, index: Tensor, size: int) -> Tensor:
    """A new float32 tensor of ``size`` zeros with ``out[index[i]] = values[i]`` (contiguous float32 ``values``,
    int32 ``index`` of distinct entries below ``size``, CPU): the inverse of :func:`checked_gather_or_zero`."""
    out = torch.empty(size, dtype=torch.float32)
    library.scatter_or_zero_f32(size, out.data_ptr(), index.shape[0], index.data_ptr(), values.data_ptr())
    return out
