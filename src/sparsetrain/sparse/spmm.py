"""The native sparse-times-dense products behind :class:`~sparsetrain.sparse.SparseLinear` and
:class:`~sparsetrain.sparse.NMLinear` (float32, CPU).

Wraps ``native/spmm.c`` (compiled on first use by :mod:`sparsetrain.native`): ``y = x @ W.T + b`` with ``x``
``(batch, in)`` and ``y`` ``(batch, out)`` both row-major, W in CSR with int32 indices (:func:`native_linear`)
or in the N:M layout of NMLinear (:func:`native_nm_linear`). The C file's comments describe the kernels (batch
tiles packed transposed into a per-thread buffer, one vector multiply-add per nonzero and 16 batch rows, OpenMP
over (tile, row range) work items; the N:M kernel also blocks over inputs).

Both return None whenever the kernel cannot serve a call (kernel unavailable, or ``SPARSETRAIN_NATIVE=0``, or
a dtype / device / index width it does not handle, or autograd needs a graph); the caller then uses its
PyTorch path. :func:`checked_linear` is the CSR product without those checks, for a caller that made them once per
call (TrainableSparseLinear's hot path).
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Callable

import torch
from torch import Tensor

from sparsetrain import native

logger = logging.getLogger(__name__)

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES: dict[str, native.Signature] = {
    "spmm_linear_f32": (_INT, [_I64] * 3 + [_P] * 5 + [_I64, _P, _I64, _INT, _INT]),
    "nm_linear_f32": (_INT, [_I64] * 3 + [_INT] * 2 + [_P] * 4 + [_I64, _P, _I64, _INT]),
}


def _load() -> ctypes.CDLL | None:
    """The kernel library (built and loaded once per process), or None when native kernels are unavailable."""
    return native.try_load("spmm", _SIGNATURES)


def native_available() -> bool:
    """True when the native kernel is built and enabled (``SPARSETRAIN_NATIVE`` not 0)."""
    return _load() is not None


def native_supports(x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None) -> bool:
    """Whether :func:`native_linear` can compute this call (without checking that the kernel is built).

    Written as plain attribute tests: this runs on every forward call, where microseconds count.

    Args:
        x: the input.
        crow: CSR row pointers of the weight.
        col: CSR column indices of the weight.
        values: CSR values of the weight.
        bias: the bias or None.

    Returns:
        True for float32 CPU tensors with int32 indices, when no autograd graph is needed.
    """
    if crow.dtype != torch.int32 or col.dtype != torch.int32 or not (crow.is_cpu and col.is_cpu):
        return False
    return _float32_without_graph(x, values, bias)


def _float32_without_graph(x: Tensor, values: Tensor, bias: Tensor | None) -> bool:
    """Float32 CPU input, weights and bias, and no autograd graph needed: what both kernels require."""
    f32 = torch.float32
    if x.dtype != f32 or values.dtype != f32 or not (x.is_cpu and values.is_cpu):
        return False
    if bias is not None and (bias.dtype != f32 or not bias.is_cpu):
        return False
    return not (torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    ))


def _contiguous(x: Tensor, *others: Tensor | None) -> tuple[Tensor | None, ...]:
    """``x`` with unit-stride rows (copied only when needed) and ``others`` contiguous (None stays None)."""
    if x.stride(1) != 1 or x.stride(0) < x.shape[1]:
        x = x.contiguous()
    return (x, *(t if t is None or t.is_contiguous() else t.contiguous() for t in others))


def native_linear(
    x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None, out_features: int, *, tile: int = 0
) -> Tensor | None:
    """``x @ W.T + bias`` with the native kernel, or None when it cannot serve this call.

    Args:
        x: input ``(batch, in_features)``, any strides (copied to row-major if the rows are not contiguous).
        crow: int32 CSR row pointers, ``(out_features + 1,)``, contiguous.
        col: int32 column indices, sorted within each row, ``(nnz,)``, contiguous.
        values: float32 nonzero weights, ``(nnz,)``, contiguous.
        bias: float32 ``(out_features,)`` or None.
        out_features: rows of the weight.
        tile: widest batch tile in vectors of 16 rows (1, 2 or 4), or 0 to choose from ``in_features``.

    Returns:
        A new contiguous ``(batch, out_features)`` tensor, or None (use the PyTorch path).
    """
    if tile not in (0, 1, 2, 4):
        raise ValueError(f"tile must be 0, 1, 2 or 4, got {tile!r}")
    if x.dim() != 2 or not native_supports(x, crow, col, values, bias):
        return None
    library = _load()
    if library is None:
        return None
    x, crow, col, values, bias = _contiguous(x, crow, col, values, bias)
    return checked_linear(library, x, crow, col, values, bias, out_features, tile)


def kernels() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when native kernels are unavailable (for :func:`checked_linear`)."""
    return _load()


def checked_linear(library: ctypes.CDLL, x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None,
                   out_features: int, tile: int) -> Tensor | None:
    """:func:`native_linear` without its checks, for a caller that made them once (a layer's hot path).

    Args:
        library: from :func:`kernels`.
        x: float32 CPU input ``(batch, in_features)`` with unit-stride rows.
        crow, col, values, bias: as for :func:`native_linear`, CPU, contiguous, of the dtypes it requires.
        out_features: rows of the weight.
        tile: 0, 1, 2 or 4, as for :func:`native_linear`.

    Returns:
        A new contiguous ``(batch, out_features)`` tensor, or None when the kernel failed (out of memory).
    """
    weight = (crow.data_ptr(), col.data_ptr(), values.data_ptr())
    return _run_linear(library.spmm_linear_f32, "spmm", x, out_features, weight, bias, options=(tile,))


def native_nm_linear(
    x: Tensor, values: Tensor, positions: Tensor, bias: Tensor | None, n: int, m: int
) -> Tensor | None:
    """``x @ W.T + bias`` for an N:M weight with the native kernel, or None when it cannot serve this call.

    Args:
        x: input ``(batch, in_features)``, any strides (copied to row-major if the rows are not contiguous).
        values: float32 ``(out_features, in_features / m * n)``, contiguous: the kept weights of every row,
            group after group.
        positions: uint8, same shape: each value's position in its group of ``m`` (rising within a group,
            checked by the caller).
        bias: float32 ``(out_features,)`` or None.
        n: weights kept per group.
        m: group size (<= 256).

    Returns:
        A new contiguous ``(batch, out_features)`` tensor, or None (use the PyTorch path).
    """
    if x.dim() != 2 or positions.dtype != torch.uint8 or not _float32_without_graph(x, values, bias):
        return None
    library = _load()
    if library is None:
        return None
    x, values, positions, bias = _contiguous(x, values, positions, bias)
    weight = (n, m, values.data_ptr(), positions.data_ptr())
    return _run_linear(library.nm_linear_f32, "N:M kernel", x, values.shape[0], weight, bias)


def _run_linear(
    kernel: Callable[..., int],
    label: str,
    x: Tensor,
    out_features: int,
    weight: tuple[int, ...],
    bias: Tensor | None,
    options: tuple[int, ...] = (),
) -> Tensor | None:
    """Call a native ``y = x @ W.T + bias`` kernel in the calling convention both share.

    The convention: ``kernel(batch, in, out, *weight, bias, x, ldx, y, ldy, *options, threads) -> status``, with
    ``x`` and ``y`` row-major (leading dimensions ``ldx``, ``ldy``) and status 0 on success.

    Args:
        kernel: the library function (``spmm_linear_f32`` or ``nm_linear_f32``).
        label: how the warning names the kernel when it fails.
        x: the input, ``(batch, in_features)`` with unit-stride rows.
        out_features: rows of the weight.
        weight: the kernel's weight arguments (pointers to contiguous tensors, and the N:M pattern's n and m).
        bias: contiguous float32 ``(out_features,)`` or None.
        options: the kernel's arguments after ``ldy`` other than the thread count (the CSR kernel's tile width).

    Returns:
        A new contiguous ``(batch, out_features)`` tensor, or None when the kernel failed (it logs a warning).
    """
    batch, in_features = x.shape
    y = torch.empty(batch, out_features, dtype=torch.float32)
    status = kernel(
        batch,
        in_features,
        out_features,
        *weight,
        bias.data_ptr() if bias is not None else None,
        x.data_ptr(),
        max(x.stride(0), 1),
        y.data_ptr(),
        max(out_features, 1),
        *options,
        torch.get_num_threads(),
    )
    if status != 0:
        logger.warning("native %s failed (out of memory?); using the PyTorch path for this call", label)
        return None
    return y
