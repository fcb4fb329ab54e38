"""SparseLinear: an inference-time replacement for ``nn.Linear`` whose weight is a CSR matrix.

Main path: the native kernel of :mod:`sparsetrain.sparse.spmm` (``native/spmm.c``), for float32 CPU
inputs when no autograd graph is needed (under ``torch.no_grad()`` / ``torch.inference_mode()``, or an
input that does not require grad). It reads the row-major ``(batch, in)`` input directly and returns an
ordinary contiguous ``(batch, out)`` tensor, bias included; it is several times faster than the PyTorch
path below (``docs/benchmarks/sparse_inference.md``).

PyTorch path (float64, autograd, ``SPARSETRAIN_NATIVE=0``, no C compiler): the product is computed as ``y.T = W_csr @ x.T`` with ``torch.addmm`` (CSR left operand, dense
row-major right operand), which on CPU runs MKL's sparse-times-dense kernel. Of the variants measured
in ``benchmarks/sparse_inference.py`` this orientation was by far the fastest: ``x @ W_csr.T``
(dense times sparse), COO weights and ``torch.sparse.mm`` were all slower, often slower than dense.
Indices are int32 (MKL's native width in torch's CPU build), and the batch is cut into slabs so that
one slab of ``x.T`` (``in_features x slab`` values) stays around 512 KiB, cache-sized: on the
2048- and 4096-wide layers this was up to 1.5x faster than one call over the whole batch.

On this path the output is returned as the transpose view of the ``(out_features, batch)`` result, so it is
*not contiguous* (values are exact; call ``.contiguous()`` if a later op needs it). That saves a
transpose copy, and when the next layer is another SparseLinear (with element-wise activations in
between) its ``x.T`` is then already contiguous.

The weight is held as buffers (``weight_crow_indices``, ``weight_col_indices``, ``weight_values``)
and gets no gradient: the module is for inference. Gradients do flow to the input.

Graph capture (``torch.jit.trace``, ``torch.jit.script``, ``torch.onnx.export``, ``torch.export`` /
``torch.compile``): the native kernel is a ctypes call, invisible to a tracer, which would record its output as a
constant (a traced model would then return the same numbers for every input). While a graph is captured the layer
computes ``F.linear`` with its dense weight instead (:func:`capturing_graph`), so the captured graph gives the same
outputs as the layer, at dense speed; ``torch.jit.script`` scripts the equivalent ``nn.Linear``. A warning says so
once. To deploy the speed-up, run the converted model in Python.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsetrain.sparse.spmm import native_linear

logger = logging.getLogger(__name__)

SUPPORTED_DTYPES: frozenset[torch.dtype] = frozenset({torch.float32, torch.float64})
"""Weight dtypes torch's CPU CSR matmul supports (float16 / bfloat16 raise 'not implemented')."""

SLAB_BYTES = 512 * 1024
"""Target size of one slab of ``x.T`` per sparse matmul call (see the module docstring)."""

MIN_SLAB = 64
"""Never cut the batch into slabs of fewer rows than this (per-call overhead dominates below)."""


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": known, and not actionable by the user.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


class SparseLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` stored in CSR layout; same outputs as ``nn.Linear``.

    Build one with :meth:`from_dense` (or let :func:`sparsetrain.sparse.convert` do it).

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        crow_indices: CSR row pointers, shape ``(out_features + 1,)``.
        col_indices: CSR column indices, shape ``(nnz,)``.
        values: nonzero weights in row-major order, shape ``(nnz,)``, float32 or float64.
        bias: optional bias of shape ``(out_features,)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        crow_indices: Tensor,
        col_indices: Tensor,
        values: Tensor,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        if values.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"values must be float32 or float64, got {values.dtype}")
        if crow_indices.shape != (out_features + 1,) or col_indices.shape != values.shape or values.dim() != 1:
            raise ValueError(
                f"CSR parts do not match out_features={out_features}: crow_indices {tuple(crow_indices.shape)}, "
                f"col_indices {tuple(col_indices.shape)}, values {tuple(values.shape)}"
            )
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        _check_csr(crow_indices, col_indices, in_features)
        self.in_features = in_features
        self.out_features = out_features
        index_dtype = torch.int32 if values.numel() <= torch.iinfo(torch.int32).max else torch.int64
        self.register_buffer("weight_crow_indices", crow_indices.to(index_dtype).contiguous())
        self.register_buffer("weight_col_indices", col_indices.to(index_dtype).contiguous())
        self.register_buffer("weight_values", values.detach().contiguous())
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        # The native kernel trusts the indices; a loaded state_dict is checked like the constructor's arguments.
        self.register_load_state_dict_post_hook(_check_loaded)

    @classmethod
    def from_dense(cls, linear: nn.Linear) -> SparseLinear:
        """Convert an ``nn.Linear``; its zero weights are dropped, everything else is copied.

        Args:
            linear: the layer (float32 or float64 weight).

        Returns:
            A SparseLinear computing the same function.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        if weight.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"linear.weight must be float32 or float64, got {weight.dtype}")
        csr = _csr_from_dense(weight)
        return cls(
            linear.in_features,
            linear.out_features,
            csr.crow_indices(),
            csr.col_indices(),
            csr.values(),
            linear.bias.detach() if linear.bias is not None else None,
        )

    @property
    def nnz(self) -> int:
        """Number of stored (nonzero) weights."""
        return self.weight_values.numel()

    @property
    def sparsity(self) -> float:
        """Fraction of the dense weight that is zero."""
        return 1.0 - self.nnz / (self.in_features * self.out_features)

    def weight_csr(self) -> Tensor:
        """The weight as a ``torch.sparse_csr`` tensor (shares memory with the buffers)."""
        return _csr(
            self.weight_crow_indices,
            self.weight_col_indices,
            self.weight_values,
            (self.out_features, self.in_features),
        )

    def dense_weight(self) -> Tensor:
        """The weight as a dense ``(out_features, in_features)`` tensor (a new copy; built with ops a tracer can
        record)."""
        counts = self.weight_crow_indices.diff().long()
        rows = torch.repeat_interleave(torch.arange(self.out_features, device=counts.device), counts)
        weight = torch.zeros(self.out_features, self.in_features, dtype=self.weight_values.dtype,
                             device=self.weight_values.device)
        return weight.index_put_((rows, self.weight_col_indices.long()), self.weight_values)

    def to_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (dense weight, the same bias)."""
        return dense_linear(self)

    def __prepare_scriptable__(self) -> nn.Module:
        return scriptable(self)

    def _slab_rows(self) -> int:
        per_row = self.in_features * self.weight_values.element_size()
        rows = MIN_SLAB
        while rows * 2 * per_row <= SLAB_BYTES:
            rows *= 2
        return rows

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: input of shape ``(..., in_features)`` and the weight's dtype; leading dims are
                flattened into one batch dim.

        Returns:
            Output of shape ``(..., out_features)``: contiguous from the native kernel, else a
            non-contiguous view (see the module docs).
        """
        if capturing_graph():
            return captured_forward(self, x)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        out = native_linear(
            x2, self.weight_crow_indices, self.weight_col_indices, self.weight_values, self.bias, self.out_features
        )
        if out is not None:
            return out.view(*lead, self.out_features)
        return self.torch_forward(x)

    def torch_forward(self, x: Tensor) -> Tensor:
        """The PyTorch (MKL CSR ``addmm``) path of :meth:`forward`, whatever the native kernel's availability.

        Args:
            x: input of shape ``(..., in_features)`` and the weight's dtype.

        Returns:
            Output of shape ``(..., out_features)`` (a non-contiguous view; see the module docs).
        """
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        x2 = x.reshape(-1, self.in_features)
        weight = self.weight_csr()
        bias = self.bias.unsqueeze(1) if self.bias is not None else None
        slab = self._slab_rows()
        n = x2.shape[0]
        if n <= slab:
            out_t = self._matmul_t(weight, x2.t().contiguous(), bias)
        else:
            out_t = torch.cat(
                [self._matmul_t(weight, x2[i : i + slab].t().contiguous(), bias) for i in range(0, n, slab)],
                dim=1,
            )
        return out_t.t().reshape(*lead, self.out_features)

    @staticmethod
    def _matmul_t(weight: Tensor, x_t: Tensor, bias: Tensor | None) -> Tensor:
        if bias is None:
            return torch.mm(weight, x_t)
        return torch.addmm(bias, weight, x_t)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, out_features={self.out_features}, "
            f"bias={self.bias is not None}, sparsity={self.sparsity:.4f}"
        )


def capturing_graph() -> bool:
    """Whether a graph of the running code is being captured (``torch.jit`` tracing or scripting, ONNX export,
    ``torch.export`` / ``torch.compile``): native kernels are invisible there."""
    return bool(torch.jit.is_tracing() or torch.jit.is_scripting() or torch.onnx.is_in_onnx_export()
                or torch.compiler.is_compiling())


_warned_capture: set[str] = set()


def _warn_dense(module: nn.Module, what: str) -> None:
    name = type(module).__name__
    if name not in _warned_capture:
        _warned_capture.add(name)
        logger.warning("%s: %s runs the dense equivalent (F.linear with the dense weight): the same outputs, not "
                       "the sparse kernel's speed", name, what)


@torch.compiler.assume_constant_result
def _constant_dense_weight(module: nn.Module) -> Tensor:
    """The module's dense weight, computed outside the graph being captured, which holds it as a constant (as it
    holds any dense layer's weight): building it from the CSR / N:M buffers uses ops ONNX does not have."""
    tracing = torch._C._get_tracing_state()
    if tracing is not None:
        torch._C._set_tracing_state(None)
    try:
        with torch.no_grad():
            return module.dense_weight()
    finally:
        if tracing is not None:
            torch._C._set_tracing_state(tracing)


def captured_forward(module: nn.Module, x: Tensor) -> Tensor:
    """The forward of a sparse inference layer while a graph is captured: ``F.linear`` with its dense weight."""
    _warn_dense(module, "a captured graph (trace, ONNX, torch.export)")
    return F.linear(x, _constant_dense_weight(module), module.bias)


def dense_linear(module: nn.Module) -> nn.Linear:
    """The ``nn.Linear`` equivalent of a sparse inference layer (``dense_weight()``, ``bias``)."""
    weight = module.dense_weight()
    linear = nn.Linear(module.in_features, module.out_features, bias=module.bias is not None, device=weight.device,
                       dtype=weight.dtype)
    with torch.no_grad():
        linear.weight.copy_(weight)
        if module.bias is not None:
            linear.bias.copy_(module.bias)
    return linear.train(module.training)


def scriptable(module: nn.Module) -> nn.Linear:
    """What ``torch.jit.script`` compiles in place of a sparse inference layer: its ``nn.Linear``."""
    _warn_dense(module, "torch.jit.script")
    return dense_linear(module)


def _check_csr(crow: Tensor, col: Tensor, in_features: int) -> None:
    """Raise ValueError unless ``crow``/``col`` form a valid CSR structure with columns in ``[0, in_features)``."""
    if crow.numel() == 0 or int(crow[0]) != 0 or int(crow[-1]) != col.numel() or bool((crow.diff() < 0).any()):
        raise ValueError(
            f"crow_indices must start at 0, end at nnz={col.numel()} and never decrease, got {crow.tolist()[:8]}..."
        )
    if col.numel() and (int(col.min()) < 0 or int(col.max()) >= in_features):
        raise ValueError(
            f"col_indices must lie in [0, in_features={in_features}), got range [{int(col.min())}, {int(col.max())}]"
        )


def _check_loaded(module: nn.Module, incompatible_keys: object) -> None:
    assert isinstance(module, SparseLinear)
    _check_csr(module.weight_crow_indices, module.weight_col_indices, module.in_features)


def _csr_from_dense(weight: Tensor) -> Tensor:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return weight.to_sparse_csr()
