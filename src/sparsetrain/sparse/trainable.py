"""TrainableSparseLinear: a Linear layer that stores, trains and updates only its active weights.

The truly sparse counterpart of a masked ``nn.Linear`` (sparse training at a cost proportional to the density, as in
SparseProp, Nikdan et al., ICML 2023, and Curci, Mocanu & Pechenizkiy 2021, *Truly Sparse Neural Networks at
Scale*): the active weights are one 1-D parameter, ``weight_values``, in CSR order (row-major, which is also the
order of their flat positions ``row * in_features + col``), beside int32 CSR indices. The optimizer sees only that
parameter, so every ``torch.optim`` optimizer works and keeps state for the active weights alone.

One training step costs three sparse products, each about as many multiply-adds as there are active weights times
the batch:

* forward ``y = x @ W.T + b``: ``native/spmm.c`` (the kernel of :class:`~sparsetrain.sparse.SparseLinear`);
* input gradient ``dx = dy @ W``: the same kernel with the transpose ``W.T``, whose CSR structure and the order of
  its entries in ``weight_values`` (``perm``) are computed once per topology, so a backward only gathers the values
  into that order;
* weight gradient at the active positions only, ``dw[k] = sum_b dy[b, r_k] * x[b, c_k]`` (a sampled dense-dense
  product, ``native/sddmm.c``), which also sums the bias gradient while it packs ``dy``.

A layer whose active weights sit in at most a quarter of its inputs (the MLP's 4096 -> 10 output layer at 99%
sparsity uses at most 410 of 4096) runs its forward and weight gradient on those inputs only (``x[:, used]``, the
columns renumbered once per topology) instead of packing the whole input for every batch tile.

A layer whose output gradient is zero in whole columns (output units that no active weight of the next layer reads,
ReLUs off for the whole batch) runs its backward on the rows of W of the other units only (at most
``LIVE_FRACTION`` of them): their weight gradient is the sampled product at their entries, scattered into a zero
gradient, and the input gradient the product with the transpose of those rows. At 99% sparsity the MLP's 4096 -> 10
output layer reads at most 410 of the 4096 units of the hidden layer before it, so that layer's backward takes about
a tenth of its rows (RigL then grows the weights of those rows: 37% of the layer's entries after its first update).
Deviation from the dense product, on purpose: a unit with a zero output gradient over the whole batch gets an exactly
zero weight gradient even where the layer input holds inf or NaN (the dense product would give NaN there).

Layout choice: plain CSR with a precomputed transpose permutation. The forward kernel was already the fastest we
measured for CSR x dense (docs/benchmarks/sparse_inference.md); the transpose costs 8 bytes per active weight and
a gather per backward (0.6 ms of the 20 ms MLP step of docs/benchmarks/sparse_training.md at 95%, measured while
developing). A variant that packed each operand once for all three products (instead of once per product) was
slower: the packs of a whole batch no longer stay in cache between packing and use.

Float32 CPU tensors use the native kernels; other dtypes and devices, or ``SPARSETRAIN_NATIVE=0`` or no C
compiler, use a PyTorch path (torch's CSR matmul and ``torch.sparse.sampled_addmm``) with the same results up to
float rounding.

Topology changes (what a sparse-training method does every ΔT steps) are index-set replacements:
:meth:`TrainableSparseLinear.replace` keeps chosen slots and adds new positions at value 0, and carries every
optimizer state tensor shaped like the values along, zero at the new positions; a shrinking set is compacted,
values and state together. :meth:`~TrainableSparseLinear.dense_grad` gives RigL's dense gradient of one layer, in
row blocks, from the input and output gradient kept during the last backward on request.
"""

from __future__ import annotations

import ctypes
import logging
import warnings
from dataclasses import dataclass, field
from functools import cached_property

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from sparsetrain.sparse.linear import SUPPORTED_DTYPES, _check_csr
from sparsetrain.sparse import sddmm, spmm
from sparsetrain.sparse.sddmm import (
    native_csr_flat,
    native_csr_from_flat,
    native_csr_replace,
    native_csr_transpose,
    native_gather_or_zero,
)
from sparsetrain.streaming_topk import merge_sorted

__all__ = ["TrainableSparseLinear", "live_units"]

logger = logging.getLogger(__name__)

_INT32_MAX = torch.iinfo(torch.int32).max

PRODUCT_TILE = 2
"""Batch tile (in vectors of 16 rows) of the forward and input-gradient products: 32-row tiles were the fastest or
within 10% of it on the MLP's 784 x 4096, 4096 x 4096 and 4096 x 10 layers at 90% and 99% sparsity, batch 128,
one thread; the inference default (chosen by input width for another machine) was up to 25% slower here."""

NARROW_FRACTION = 0.25
"""Largest fraction of the inputs with an active weight at which the forward and the weight gradient read only the
used inputs (see :class:`_Narrow`). The MLP's 4096 -> 10 layer at 99% sparsity uses at most 410 of its 4096 inputs:
its forward + backward went from 0.80 to 0.64 ms (1 thread, batch 128); at 95% (40% of the inputs used) the copy
of the used columns cost about what the smaller products saved, hence a quarter."""

LIVE_FRACTION = 0.5
"""Largest fraction of a layer's output units with a gradient other than zero over the batch at which the backward
multiplies only their rows of W (see ``_backward_of_live_units``). The backward of a 4096 x 4096 layer (1 thread,
batch 128) took 0.13-0.34x the time of the whole-matrix backward with a tenth of the units live, 0.31-0.53x with 30%,
0.57-0.73x with half, 0.83-0.90x with 70% (90-99% sparsity), the rows' structures kept from the step before; built
anew at every step (live units that change every step), 0.94-1.05x with half, 1.21-1.46x with 70%. The choice depends
on the current gradient only, never on earlier steps: the two ways round differently, and a resumed run must take
the same one as the uninterrupted run."""

#: Buffers of the index structures, in _Layout's order; only W's CSR goes into the state_dict.
_LAYOUT_BUFFERS = ("weight_crow_indices", "weight_col_indices", "weight_t_crow_indices", "weight_t_row_indices",
                   "weight_t_perm")
_PERSISTENT = frozenset(_LAYOUT_BUFFERS[:2])


@dataclass(frozen=True, eq=False)
class _Layout:
    """The index structures of one topology: CSR of W and of W.T (all int32), never modified in place.

    ``perm`` gives, for each entry of W.T in its CSR order, its slot in W's order: ``values_t = values[perm]``.
    """

    in_features: int
    out_features: int
    crow: Tensor
    col: Tensor
    t_crow: Tensor
    t_rows: Tensor
    perm: Tensor

    def tensors(self) -> tuple[Tensor, ...]:
        """The index tensors, in the order of ``_LAYOUT_BUFFERS``."""
        return self.crow, self.col, self.t_crow, self.t_rows, self.perm

    @cached_property
    def narrow(self) -> _Narrow | None:
        """W over its used inputs only, when at most ``NARROW_FRACTION`` of them are used (else None).

        Derived once per topology (the layout is immutable) from W.T's row pointers: an input is used when its row of
        W.T is not empty.
        """
        used_mask = self.t_crow[1:] != self.t_crow[:-1]
        used = used_mask.nonzero().squeeze(1)
        if used.shape[0] == 0 or used.shape[0] > NARROW_FRACTION * self.in_features:
            return None
        renumber = torch.cumsum(used_mask, 0, dtype=torch.int32) - 1
        t_crow = torch.cat([self.t_crow.index_select(0, used), self.t_crow[-1:]])
        return _Narrow(used, renumber.index_select(0, self.col.long()), t_crow)

    def live_rows(self, kernels: _Kernels, units: Tensor) -> _LiveRows:
        """W's rows of the output units ``units`` (int32, ascending), kept until other units are asked for: the units
        with a gradient mostly stay the same from step to step (the ones a sparse next layer reads). Built anew, the
        same units give the same structures, so the gradients never depend on what was kept."""
        cached = self.__dict__.get("_live_rows")
        if cached is not None and _same(cached.units, units):
            return cached
        crow, slots = sddmm.checked_select_rows(kernels[1], self.crow, units)
        transposed = native_csr_transpose(crow, self.col.index_select(0, slots), self.in_features)
        assert transposed is not None  # the kernels are loaded and the indices are int32 CPU tensors
        t_crow, t_rows, perm = transposed
        cached = _LiveRows(units, t_crow, t_rows, slots.index_select(0, perm))
        self.__dict__["_live_rows"] = cached
        return cached


def _same(a: Tensor, b: Tensor) -> bool:
    """Two index tensors hold the same entries."""
    return a.shape == b.shape and torch.equal(a, b)


@dataclass(frozen=True, eq=False)
class _Narrow:
    """W restricted to the inputs it uses (the columns holding an active weight), for layers that use few of them.

    The products then read only those inputs (``x[:, used]``) instead of packing the whole input for every batch
    tile, and the input gradient is computed for them alone and scattered into a zero ``(batch, in_features)``
    gradient. W.T's entries and ``perm`` are unchanged: only its empty rows are left out.
    """

    used: Tensor  # int64: the used inputs, ascending
    col: Tensor  # int32: W's column indices renumbered to positions in ``used``
    t_crow: Tensor  # int32: W.T's row pointers over the used inputs only (len(used) + 1)


@dataclass(frozen=True, eq=False)
class _LiveRows:
    """W's rows of some output units (the ones with a gradient), held as their transpose (inputs x units), 8 bytes
    per entry: the input gradient is the product with it, the weight gradient the sampled product at its entries."""

    units: Tensor  # int32: the output units, ascending
    t_crow: Tensor  # int32: row pointers over the inputs
    t_rows: Tensor  # int32: each entry's unit, as a position in ``units``
    t_slots: Tensor  # int32: each entry's slot in weight_values


@dataclass(eq=False)
class _GradInputs:
    """Layer inputs and output gradients kept by the backward passes while ``enabled`` (for the dense gradient)."""

    enabled: bool = False
    pairs: list[tuple[Tensor, Tensor]] = field(default_factory=list)


def _csr(crow: Tensor, col: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    with warnings.catch_warnings():
        # "Sparse CSR tensor support is in beta state": known, and not actionable by the user.
        warnings.simplefilter("ignore", UserWarning)
        return torch.sparse_csr_tensor(crow, col, values, size, check_invariants=False)


#: The native libraries serving one call, ``(spmm, sddmm)``; None on the PyTorch path.
_Kernels = tuple[ctypes.CDLL, ctypes.CDLL]


def _kernels(x: Tensor, values: Tensor, bias: Tensor | None, layout: _Layout) -> _Kernels | None:
    """The native kernels if they can serve this layer call (float32 CPU tensors, kernels built and enabled).

    Decided once per forward (the backward reuses the answer), so that the kernels below are called without the
    per-call checks of the public ``native_*`` wrappers: the index tensors are the layout's (int32, contiguous).
    """
    f32 = torch.float32
    if x.dtype != f32 or values.dtype != f32 or not (x.is_cpu and values.is_cpu and layout.crow.is_cpu):
        return None
    if not values.is_contiguous() or (bias is not None and not (bias.dtype == f32 and bias.is_cpu
                                                                 and bias.is_contiguous())):
        return None
    product, gradient = spmm.kernels(), sddmm.kernels()
    return None if product is None or gradient is None else (product, gradient)


def _product(kernels: _Kernels | None, x: Tensor, crow: Tensor, col: Tensor, values: Tensor, bias: Tensor | None,
             n_out: int) -> Tensor:
    """``x @ W.T (+ bias)`` for CSR ``W`` (n_out rows, x contiguous): the native kernel, else torch's CSR matmul."""
    if kernels is not None:
        y = spmm.checked_linear(kernels[0], x, crow, col, values, bias, n_out, PRODUCT_TILE)
        if y is not None:
            return y
    weight = _csr(crow, col, values, (n_out, x.shape[1]))
    y_t = torch.mm(weight, x.t()) if bias is None else torch.addmm(bias.unsqueeze(1), weight, x.t())
    return y_t.t()


def _values_grad(kernels: _Kernels | None, x: Tensor, dy: Tensor, crow: Tensor, col: Tensor,
                 with_bias: bool) -> tuple[Tensor, Tensor | None]:
    """``dy.T @ x`` at the active positions of the CSR pattern ``(crow, col)``, in ``weight_values`` order, and
    with ``with_bias`` the bias gradient ``dy.sum(0)`` (the native kernel sums it while packing dy)."""
    if kernels is not None:
        db = dy.new_empty(dy.shape[1]) if with_bias else None
        dw = sddmm.checked_sddmm(kernels[1], x, dy, crow, col, bias_grad=db)
        if dw is not None:
            return dw, db
    template = _csr(crow, col, torch.zeros(col.shape[0], dtype=x.dtype), (dy.shape[1], x.shape[1]))
    dw = torch.sparse.sampled_addmm(template, dy.t(), x, beta=0.0).values()
    return dw, dy.sum(0) if with_bias else None


def _transpose_values(kernels: _Kernels | None, values: Tensor, layout: _Layout) -> Tensor:
    """``weight_values`` in the order of W.T's entries."""
    if kernels is not None:  # perm has no negative entry: a plain gather
        return sddmm.checked_gather_or_zero(kernels[1], values, layout.perm)
    return values.index_select(0, layout.perm)


def live_units(dy: Tensor, at_most: int | None = None) -> Tensor | None:
    """The output units whose gradient is not zero over the batch: the columns of ``dy`` (batch x units) holding an
    entry other than zero (NaN included), ascending, as int32; or None when there are more than ``at_most``.

    A unit outside them (one that no active weight of the next layer reads, a ReLU off for the whole batch) has an
    exactly zero row in the weight gradient and adds nothing to the input gradient. Native scan for float32 CPU
    gradients with unit-stride rows (it stops early once more than ``at_most`` are found), else PyTorch.
    """
    at_most = dy.shape[1] if at_most is None else at_most
    if dy.dtype == torch.float32 and dy.is_cpu and dy.dim() == 2 and dy.stride(1) == 1:
        library = sddmm.kernels()
        if library is not None:
            return sddmm.checked_live_columns(library, dy, at_most)
    live = dy.ne(0).any(0).nonzero().squeeze(1)
    return live.to(torch.int32) if live.shape[0] <= at_most else None


def _backward_of_live_units(kernels: _Kernels, x: Tensor, dy: Tensor, values: Tensor, layout: _Layout,
                            rows: _LiveRows, need_x: bool, need_values: bool,
                            with_bias: bool) -> tuple[Tensor | None, Tensor | None, Tensor | None]:
    """The backward over W's rows of the live units ``rows.units`` only: every other row meets an output gradient
    that is zero over the whole batch, so it adds nothing to ``dx`` and its weights' (and bias') gradient is zero.

    With ``R`` the transpose of those rows (inputs x live units): ``dx = dy[:, live] @ R.T`` is the product with
    ``R``, and the weight gradient at R's entries is ``x.T @ dy[:, live]`` sampled there (the sampled product with
    the two operands' roles exchanged), scattered into a zero gradient. ``R`` is kept by the layout while the live
    units stay the same (see :meth:`_Layout.live_rows`).
    """
    live = rows.units
    dy_live = dy.index_select(1, live)
    grad_x = grad_values = grad_bias = None
    if need_x:
        values_t = sddmm.checked_gather_or_zero(kernels[1], values, rows.t_slots)
        grad_x = _product(kernels, dy_live, rows.t_crow, rows.t_rows, values_t, None, layout.in_features)
    if need_values:
        grad_t, _ = _values_grad(kernels, dy_live, x, rows.t_crow, rows.t_rows, False)
        grad_values = sddmm.checked_scatter_or_zero(kernels[1], grad_t, rows.t_slots, values.shape[0])
    if with_bias:
        grad_bias = dy_live.new_zeros(layout.out_features).index_copy_(0, live.long(), dy_live.sum(0))
    return grad_x, grad_values, grad_bias


class _SparseLinearFunction(torch.autograd.Function):
    """``y = x @ W.T + b`` with gradients for ``x``, W's values (active positions only) and ``b``."""

    @staticmethod
    def forward(ctx, x: Tensor, values: Tensor, bias: Tensor | None, layout: _Layout,  # type: ignore[override]
                grad_inputs: _GradInputs) -> Tensor:
        kernels = _kernels(x, values, bias, layout)
        narrow = layout.narrow
        # x_used: the input columns W uses (x itself unless the layer uses few of them).
        x = x.contiguous()
        x_used = x.index_select(1, narrow.used) if narrow is not None else x
        ctx.save_for_backward(x, x_used, values)
        ctx.layout, ctx.grad_inputs, ctx.has_bias, ctx.kernels = layout, grad_inputs, bias is not None, kernels
        col = narrow.col if narrow is not None else layout.col
        return _product(kernels, x_used, layout.crow, col, values, bias, layout.out_features)

    @staticmethod
    @once_differentiable
    def backward(ctx, dy: Tensor) -> tuple[Tensor | None, ...]:  # type: ignore[override]
        x, x_used, values = ctx.saved_tensors
        layout: _Layout = ctx.layout
        kernels: _Kernels | None = ctx.kernels
        narrow = layout.narrow
        dy = dy.contiguous()
        need_x, need_values = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        with_bias = ctx.has_bias and ctx.needs_input_grad[2]
        # Only the live units' rows of W when few units have a gradient (native kernels only).
        live = live_units(dy, int(LIVE_FRACTION * dy.shape[1])) if kernels is not None else None
        if live is not None:
            assert kernels is not None
            grad_x, grad_values, grad_bias = _backward_of_live_units(
                kernels, x, dy, values, layout, layout.live_rows(kernels, live), need_x, need_values, with_bias)
        else:
            grad_x = grad_values = grad_bias = None
            if need_x:
                # Over all inputs even for a narrow layer: writing the zero rows of the unused inputs in the
                # product's write-back was cheaper than a zero gradient plus a scatter of the used columns.
                grad_x = _product(kernels, dy, layout.t_crow, layout.t_rows,
                                  _transpose_values(kernels, values, layout), None, layout.in_features)
            if need_values:
                col = narrow.col if narrow is not None else layout.col
                grad_values, grad_bias = _values_grad(kernels, x_used, dy, layout.crow, col, with_bias)
            elif with_bias:
                grad_bias = dy.sum(0)
        if ctx.grad_inputs.enabled:
            # Detached: x's graph would keep the earlier layers' backward nodes (and their index structures) alive.
            ctx.grad_inputs.pairs.append((x.detach(), dy))
        return grad_x, grad_values, grad_bias, None, None


def _rows_of(crow: Tensor) -> Tensor:
    """The row index (int64) of every entry of a CSR matrix, in CSR order."""
    counts = crow.diff().long()
    return torch.repeat_interleave(torch.arange(counts.shape[0]), counts, output_size=int(crow[-1]))


def _build_layout(in_features: int, out_features: int, flat: Tensor) -> _Layout:
    """CSR of W and W.T from the sorted flat positions of the active weights."""
    csr = native_csr_from_flat(flat, out_features, in_features)
    if csr is None:
        rows = torch.div(flat, in_features, rounding_mode="floor")
        crow = torch.zeros(out_features + 1, dtype=torch.int64, device=flat.device)
        crow[1:] = torch.bincount(rows, minlength=out_features).cumsum(0)
        csr = crow.to(torch.int32), (flat - rows * in_features).to(torch.int32)
    return _layout_of_csr(in_features, out_features, *csr)


def _layout_of_csr(in_features: int, out_features: int, crow: Tensor, col: Tensor) -> _Layout:
    """W's CSR and the structure of W.T derived from it."""
    transposed = native_csr_transpose(crow, col, in_features)
    if transposed is None:
        # Stable sort by column: within a column the entries keep their row order.
        perm = torch.sort(col, stable=True).indices
        t_crow = torch.zeros(in_features + 1, dtype=torch.int64, device=col.device)
        t_crow[1:] = torch.bincount(col.long(), minlength=in_features).cumsum(0)
        transposed = (t_crow.to(torch.int32), _rows_of(crow)[perm].to(torch.int32), perm.to(torch.int32))
    return _Layout(in_features, out_features, crow, col, *transposed)


def _replacement(layout: _Layout, keep: Tensor, grow: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(crow, col, source)`` after keeping ``keep`` and adding ``grow`` (see ``native_csr_replace``)."""
    replaced = native_csr_replace(layout.crow, layout.col, layout.in_features, keep, grow)
    if replaced is not None:
        return replaced
    flat = _rows_of(layout.crow) * layout.in_features + layout.col.long()
    kept_slots = keep.nonzero().squeeze(1)
    merged, kept_at = merge_sorted(flat.index_select(0, kept_slots), grow)
    if merged.shape[0] > 1 and not bool((merged[1:] > merged[:-1]).all()):
        raise ValueError("grow must be strictly increasing positions of the weight, none of them kept")
    source = torch.full(merged.shape, -1, dtype=torch.int32, device=merged.device)
    source[kept_at] = kept_slots.to(torch.int32)
    rows = torch.div(merged, layout.in_features, rounding_mode="floor")
    crow = torch.zeros(layout.out_features + 1, dtype=torch.int64, device=merged.device)
    crow[1:] = torch.bincount(rows, minlength=layout.out_features).cumsum(0)
    return crow.to(torch.int32), (merged - rows * layout.in_features).to(torch.int32), source


def _carried(old: Tensor, source: Tensor) -> Tensor:
    """``old[source]``, zero where ``source < 0``."""
    new = native_gather_or_zero(old, source)
    if new is None:
        new = old.index_select(0, source.clamp(min=0).to(old.device))
        new[(source < 0).to(old.device)] = 0
    return new


class TrainableSparseLinear(nn.Module):
    """``y = x @ W.T + b`` training only W's active entries, stored as CSR values and indices.

    Build one with :meth:`from_dense` (a weight and a bool mask) or :meth:`from_linear`; get the dense form back
    with :meth:`dense_weight`, :meth:`mask` and :meth:`to_linear`.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        indices: flat positions ``row * in_features + col`` of the active weights, strictly increasing.
        values: their values, float32 or float64, shape ``(nnz,)``.
        bias: optional bias of shape ``(out_features,)``.
    """

    def __init__(self, in_features: int, out_features: int, indices: Tensor, values: Tensor,
                 bias: Tensor | None = None) -> None:
        super().__init__()
        for name, size in (("in_features", in_features), ("out_features", out_features)):
            if not isinstance(size, int) or isinstance(size, bool) or not 0 < size <= _INT32_MAX:
                raise ValueError(f"{name} must be an int in [1, {_INT32_MAX}], got {size!r}")
        if values.dtype not in SUPPORTED_DTYPES:
            raise TypeError(f"values must be float32 or float64, got {values.dtype}")
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.in_features = in_features
        self.out_features = out_features
        flat = _checked_indices(indices, in_features * out_features, "indices")
        if values.shape != flat.shape:
            raise ValueError(f"values must have shape {tuple(flat.shape)} like indices, got {tuple(values.shape)}")
        self.weight_values = nn.Parameter(values.detach().clone().contiguous())
        self.bias = nn.Parameter(bias.detach().clone().to(values.dtype)) if bias is not None else None
        self._grad_inputs = _GradInputs()
        # W's CSR is the persistent form (state_dict); W.T's structure is derived from it on every topology change.
        for name in _LAYOUT_BUFFERS:
            self.register_buffer(name, torch.empty(0, dtype=torch.int32), persistent=name in _PERSISTENT)
        self._set_layout(_build_layout(in_features, out_features, flat))
        self.register_load_state_dict_post_hook(_rebuild_after_load)

    # ----------------------------------------------------------------------------------------------------------
    # Conversions
    # ----------------------------------------------------------------------------------------------------------

    @classmethod
    def from_dense(cls, weight: Tensor, mask: Tensor, bias: Tensor | None = None) -> TrainableSparseLinear:
        """The layer whose active weights are ``weight[mask]``.

        Args:
            weight: dense ``(out_features, in_features)`` weight, float32 or float64.
            mask: bool tensor of the same shape; True = active (kept even where the weight is exactly 0).
            bias: optional ``(out_features,)`` bias.

        Returns:
            A layer with ``mask.sum()`` stored weights; :meth:`dense_weight` gives back ``weight * mask``
            bit for bit (inactive entries as +0.0).
        """
        if weight.dim() != 2 or mask.shape != weight.shape or mask.dtype != torch.bool:
            raise ValueError(f"mask must be a bool tensor shaped like the 2-D weight {tuple(weight.shape)}, "
                             f"got {mask.dtype} {tuple(mask.shape)}")
        flat = mask.reshape(-1).nonzero().squeeze(1)
        values = weight.detach().reshape(-1).index_select(0, flat)
        return cls(weight.shape[1], weight.shape[0], flat, values, bias)

    @classmethod
    def from_linear(cls, linear: nn.Linear, mask: Tensor | None = None) -> TrainableSparseLinear:
        """Convert an ``nn.Linear``; active = ``mask``, or the nonzero weights when no mask is given.

        Args:
            linear: the layer (float32 or float64 weight).
            mask: optional bool tensor shaped like ``linear.weight``.

        Returns:
            A TrainableSparseLinear computing the same function, with a copy of the weights and bias.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        weight = linear.weight.detach()
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls.from_dense(weight, weight != 0 if mask is None else mask, bias)

    def flat_indices(self) -> Tensor:
        """Flat positions ``row * in_features + col`` (int64) of the stored weights, increasing (CSR order)."""
        flat = native_csr_flat(self.weight_crow_indices, self.weight_col_indices, self.in_features)
        if flat is None:
            flat = _rows_of(self.weight_crow_indices) * self.in_features + self.weight_col_indices.long()
        return flat

    def mask(self) -> Tensor:
        """The active positions as a bool ``(out_features, in_features)`` tensor."""
        mask = torch.zeros(self.out_features * self.in_features, dtype=torch.bool, device=self.weight_values.device)
        mask[self.flat_indices()] = True
        return mask.view(self.out_features, self.in_features)

    def dense_weight(self) -> Tensor:
        """The weight as a dense ``(out_features, in_features)`` tensor (a new copy, +0.0 where inactive)."""
        values = self.weight_values.detach()
        dense = torch.zeros(self.out_features * self.in_features, dtype=values.dtype, device=values.device)
        dense[self.flat_indices()] = values
        return dense.view(self.out_features, self.in_features)

    def to_linear(self) -> nn.Linear:
        """An ``nn.Linear`` with the dense weight (zeros where inactive) and a copy of the bias."""
        dtype = self.weight_values.dtype
        linear = nn.Linear(self.in_features, self.out_features, bias=self.bias is not None, dtype=dtype)
        with torch.no_grad():
            linear.weight.copy_(self.dense_weight())
            if self.bias is not None:
                linear.bias.copy_(self.bias)
        return linear

    @property
    def nnz(self) -> int:
        """Number of stored (active) weights."""
        return self.weight_values.shape[0]

    @property
    def density(self) -> float:
        """Fraction of the dense weight that is active."""
        return self.nnz / (self.in_features * self.out_features)

    # ----------------------------------------------------------------------------------------------------------
    # Training
    # ----------------------------------------------------------------------------------------------------------

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: input of shape ``(..., in_features)`` and the weight's dtype.

        Returns:
            Output of shape ``(..., out_features)``.
        """
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        y = _SparseLinearFunction.apply(x.reshape(-1, self.in_features), self.weight_values, self.bias,
                                        self._layout(), self._grad_inputs)
        return y.reshape(*lead, self.out_features)

    @property
    def keep_grad_inputs(self) -> bool:
        """While True, each backward pass keeps this layer's input and output gradient for :meth:`dense_grad`.

        Set it before the forward pass of a step whose dense gradient is wanted (RigL's update steps only: it holds
        one input and one output gradient per call, until :meth:`clear_grad_inputs`).
        """
        return self._grad_inputs.enabled

    @keep_grad_inputs.setter
    def keep_grad_inputs(self, value: bool) -> None:
        self._grad_inputs.enabled = bool(value)

    def clear_grad_inputs(self) -> None:
        """Free the inputs and output gradients kept for :meth:`dense_grad`."""
        self._grad_inputs.pairs.clear()

    def take_grad_inputs(self) -> list[tuple[Tensor, Tensor]]:
        """Hand over the ``(input, output gradient)`` pairs kept so far and forget them here (for a caller that
        computes the dense gradient later with ``dense_grad(rows, pairs)``, after further backward passes)."""
        pairs = self._grad_inputs.pairs
        self._grad_inputs.pairs = []
        return pairs

    def dense_grad(self, rows: slice | None = None, pairs: list[tuple[Tensor, Tensor]] | None = None) -> Tensor:
        """The dense gradient of the loss with respect to the weight (or its rows ``rows``), at every position.

        Computed from the layer inputs and output gradients kept since :attr:`keep_grad_inputs` was set (summed
        over the backward passes, as ``weight.grad`` would accumulate): a ``(rows, in_features)`` matrix product
        per pass, so a caller can walk a large layer in row blocks without ever holding its whole dense gradient.

        Args:
            rows: a slice of output rows (step 1), or None for all.
            pairs: the pairs to use instead of the ones kept now (from :meth:`take_grad_inputs`).

        Returns:
            A new ``(len(rows), in_features)`` tensor.

        Raises:
            RuntimeError: no backward pass was kept.
        """
        pairs = self._grad_inputs.pairs if pairs is None else pairs
        if not pairs:
            raise RuntimeError("no backward pass was kept: set keep_grad_inputs = True before the forward pass")
        rows = rows if rows is not None else slice(0, self.out_features)
        if rows.step not in (None, 1):
            raise ValueError(f"rows must be a slice with step 1, got {rows!r}")
        grad: Tensor | None = None
        for x, dy in pairs:
            part = dy[:, rows].t() @ x
            grad = part if grad is None else grad.add_(part)
        assert grad is not None
        return grad

    # ----------------------------------------------------------------------------------------------------------
    # Topology
    # ----------------------------------------------------------------------------------------------------------

    @torch.no_grad()
    def replace(self, keep: Tensor, grow: Tensor, optimizer: torch.optim.Optimizer | None = None) -> None:
        """Replace the active set: keep the slots ``keep``, add the positions ``grow`` at value 0.

        Kept weights keep their values, gradients and optimizer state; grown ones start at 0 with zero state in
        every optimizer state tensor shaped like the values (momentum, Adam's moments, ...; scalars such as
        ``step`` are left alone). When as many positions grow as are dropped, every tensor is rewritten in place
        (the dropped slots are reused); otherwise values, gradient and state are resized together (a shrinking set
        is compacted). The parameter object stays the same, so the optimizer needs no change.

        Args:
            keep: bool ``(nnz,)`` over the current slots (CSR order): True = stays active.
            grow: int64 flat positions ``row * in_features + col`` to add, distinct and not among the kept ones
                (a dropped position may grow back: it then restarts at 0). Increasing order saves a sort.
            optimizer: the optimizer holding ``weight_values``' state, if any.
        """
        if keep.dtype != torch.bool or keep.shape != (self.nnz,):
            raise ValueError(f"keep must be a bool tensor of shape ({self.nnz},), got {keep.dtype} "
                             f"{tuple(keep.shape)}")
        grow = grow.reshape(-1)
        if grow.numel() > 1 and not bool((grow[1:] > grow[:-1]).all()):
            grow = torch.sort(grow).values
        grow = _checked_indices(grow, self.in_features * self.out_features, "grow")
        crow, col, source = _replacement(self._layout(), keep, grow)
        param = self.weight_values
        state = optimizer.state.get(param, {}) if optimizer is not None else {}
        state_keys = [key for key, value in state.items() if isinstance(value, Tensor) and value.shape == param.shape]
        in_place = source.shape[0] == param.shape[0]
        for key in state_keys:
            if in_place:
                state[key].copy_(_carried(state[key], source))
            else:
                state[key] = _carried(state[key], source)
        grad = param.grad
        if in_place:
            param.copy_(_carried(param, source))
            if grad is not None:
                grad.copy_(_carried(grad, source))
        else:
            _resize(param, _carried(param.data, source), _carried(grad, source) if grad is not None else None)
        del source
        # Let go of the old structure (W.T's included) before the new transpose is built: peak memory holds one.
        self._set_layout(None)
        self._set_layout(_layout_of_csr(self.in_features, self.out_features, crow, col))
        logger.debug("topology replaced: %d active weights, %d of them grown", param.shape[0], grow.shape[0])

    @torch.no_grad()
    def apply_mask(self, mask: Tensor, optimizer: torch.optim.Optimizer | None = None,
                   reset: Tensor | None = None) -> None:
        """Make ``mask`` the active set (a dense-mask front end to :meth:`replace`).

        Args:
            mask: bool ``(out_features, in_features)``: the new active set.
            optimizer: the optimizer holding ``weight_values``' state, if any.
            reset: optional bool tensor of the same shape: active positions that restart at 0 with zero state even
                if they were active before (a weight dropped and regrown in the same update).
        """
        shape = (self.out_features, self.in_features)
        for name, value in (("mask", mask), ("reset", reset)):
            if value is not None and (value.dtype != torch.bool or tuple(value.shape) != shape):
                raise ValueError(f"{name} must be a bool tensor of shape {shape}, got {value.dtype} "
                                 f"{tuple(value.shape)}")
        wanted = mask.reshape(-1)
        flat = self.flat_indices()
        keep = wanted.index_select(0, flat)
        if reset is not None:
            keep &= ~reset.reshape(-1).index_select(0, flat)
        carried = torch.zeros_like(wanted)
        carried[flat[keep]] = True
        self.replace(keep, (wanted & ~carried).nonzero().squeeze(1), optimizer)

    # ----------------------------------------------------------------------------------------------------------

    def _layout(self) -> _Layout:
        """The current index structures (one object per topology and device, reused by every forward call)."""
        buffers = self._buffers  # not getattr: the module's __getattr__ is slow on the hot path
        cached = self.__dict__.get("_layout_cache")
        if cached is None or any(buffers[name] is not t for name, t in zip(_LAYOUT_BUFFERS, cached.tensors())):
            cached = _Layout(self.in_features, self.out_features, *(buffers[name] for name in _LAYOUT_BUFFERS))
            self.__dict__["_layout_cache"] = cached
        return cached

    def _set_layout(self, layout: _Layout | None) -> None:
        """Install ``layout``'s index tensors (None: empty ones, releasing the old structure)."""
        self.__dict__.pop("_layout_cache", None)  # the cached view would keep the old tensors alive
        empty = torch.empty(0, dtype=torch.int32, device=self.weight_crow_indices.device)
        for name, value in zip(_LAYOUT_BUFFERS, layout.tensors() if layout is not None else (empty,) * 5):
            setattr(self, name, value)

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,  # type: ignore[no-untyped-def]
                              unexpected_keys, error_msgs) -> None:
        # A checkpoint of this layer may hold another active count: take its sizes before torch copies into ours.
        values, col = state_dict.get(prefix + "weight_values"), state_dict.get(prefix + "weight_col_indices")
        if isinstance(values, Tensor) and isinstance(col, Tensor) and values.dim() == col.dim() == 1:
            if values.shape != self.weight_values.shape:
                self.weight_values.data = self.weight_values.data.new_empty(values.shape)
            if col.shape != self.weight_col_indices.shape:
                self.weight_col_indices = self.weight_col_indices.new_empty(col.shape)
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                                      error_msgs)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, nnz={self.nnz}, density={self.density:.4f}")


def _resize(param: nn.Parameter, values: Tensor, grad: Tensor | None) -> None:
    """Give ``param`` new values (and gradient) of another size, keeping the Parameter object.

    The tensor underneath is swapped for a new one (``torch.utils.swap_tensors``) so that autograd creates a new
    gradient accumulator of the new size: the old one, which an earlier graph or a DistributedDataParallel wrapper
    may still hold, keeps the old size. Where the swap is refused (something outside Python, such as a live DDP
    reducer, holds the tensor) the data is replaced in place instead, and the holder must let go before the next
    backward pass (see :func:`sparsetrain.sparse.backend.distributed_data_parallel`).
    """
    fresh = nn.Parameter(values, requires_grad=param.requires_grad)
    fresh.grad = grad
    try:
        torch.utils.swap_tensors(param, fresh)
    except RuntimeError:
        param.grad = None
        param.data = values
        param.grad = grad


def _checked_indices(indices: Tensor, numel: int, name: str) -> Tensor:
    """``indices`` as int64, after checking: 1-D integers, strictly increasing, within ``[0, numel)``."""
    if indices.dim() != 1 or indices.dtype.is_floating_point or indices.dtype == torch.bool:
        raise ValueError(f"{name} must be a 1-D integer tensor, got {indices.dtype} {tuple(indices.shape)}")
    flat = indices.to(torch.int64)
    if flat.numel() > _INT32_MAX:
        raise ValueError(f"{name} has {flat.numel()} entries; at most {_INT32_MAX} (int32 CSR indices)")
    if flat.numel():
        if int(flat[0]) < 0 or int(flat[-1]) >= numel:
            raise ValueError(f"{name} must lie in [0, {numel}), got range [{int(flat[0])}, {int(flat[-1])}]")
        if flat.numel() > 1 and not bool((flat[1:] > flat[:-1]).all()):
            raise ValueError(f"{name} must be strictly increasing (distinct, sorted)")
    return flat


def _rebuild_after_load(module: nn.Module, incompatible_keys: object) -> None:
    """After load_state_dict: check the loaded CSR and rebuild the transpose from it."""
    assert isinstance(module, TrainableSparseLinear)
    crow, col = module.weight_crow_indices, module.weight_col_indices
    _check_csr(crow, col, module.in_features)
    if crow.shape != (module.out_features + 1,) or col.shape != module.weight_values.shape:
        raise ValueError(f"loaded CSR indices {tuple(crow.shape)}, {tuple(col.shape)} do not match "
                         f"out_features={module.out_features} and weight_values {tuple(module.weight_values.shape)}")
    flat = _rows_of(crow) * module.in_features + col.long()
    _checked_indices(flat, module.in_features * module.out_features, "loaded indices")
    module._set_layout(_build_layout(module.in_features, module.out_features, flat))
