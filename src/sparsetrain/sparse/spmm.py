"""The native CSR-times-dense product behind :class:`~sparsetrain.sparse.SparseLinear` (float32, CPU).

Wraps ``native/spmm.c`` (compiled on first use by :mod:`sparsetrain.native`): ``y = x @ W.T + b`` with ``x``
``(batch, in)`` and ``y`` ``(batch, out)`` both row-major, W in CSR with int32 indices. The C file's header
comment describes the kernel (batch tiles packed transposed into a per-thread buffer, one vector multiply-add
per nonzero and 16 batch rows, OpenMP over (tile, row range) work items).

:func:`native_linear` returns None whenever the kernel cannot serve a call (kernel unavailable, or
``SPARSETRAIN_NATIVE=0``, or a dtype / device / index width it does not handle, or autograd needs a graph);
the caller then uses its PyTorch path.
"""

from __future__ import annotations

import ctypes
import logging

import torch
from torch import Tensor

from sparsetrain import native

logger = logging.getLogger(__name__)

_P, _I64, _INT = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int
_SIGNATURES: dict[str, native.Signature] = {
    "spmm_linear_f32": (_INT, [_I64] * 3 + [_P] * 5 + [_I64, _P, _I64, _INT, _INT]),
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
    f32, i32 = torch.float32, torch.int32
    if x.dtype != f32 or values.dtype != f32 or crow.dtype != i32 or col.dtype != i32:
        return False
    if not (x.is_cpu and values.is_cpu and crow.is_cpu and col.is_cpu):
        return False
    if bias is not None and (bias.dtype != f32 or not bias.is_cpu):
        return False
    if torch.is_grad_enabled() and (
        x.requires_grad or values.requires_grad or (bias is not None and bias.requires_grad)
    ):
        return False
    return True


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
    if x.stride(1) != 1 or x.stride(0) < x.shape[1]:
        x = x.contiguous()
    if not (crow.is_contiguous() and col.is_contiguous() and values.is_contiguous()):
        crow, col, values = crow.contiguous(), col.contiguous(), values.contiguous()
    if bias is not None and not bias.is_contiguous():
        bias = bias.contiguous()
    batch, in_features = x.shape
    y = torch.empty(batch, out_features, dtype=torch.float32)
    status = library.spmm_linear_f32(
        batch,
        in_features,
        out_features,
        crow.data_ptr(),
        col.data_ptr(),
        values.data_ptr(),
        bias.data_ptr() if bias is not None else None,
        x.data_ptr(),
        max(x.stride(0), 1),
        y.data_ptr(),
        max(out_features, 1),
        tile,
        torch.get_num_threads(),
    )
    if status != 0:
        logger.warning("native spmm failed (out of memory?); using the PyTorch path for this call")
        return None
    return y
