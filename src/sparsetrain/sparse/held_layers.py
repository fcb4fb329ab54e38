"""The operations of sparse storage on one held layer: moving an ``nn.Linear`` into a
:class:`~sparsetrain.sparse.TrainableSparseLinear` and back, and the topology operations that work on its active
values and on row blocks of its dense growth score.

:class:`~sparsetrain.sparse.backend.SparseEnforcer` decides which layers it holds and calls these, one layer at a
time, in the order of the dense path. Each one keeps the optimizer in step with the layer (the held weight and its
values parameter are swapped in its param groups, state carried at the active positions), and none ever builds a
layer's dense weight, score or gradient whole: growth reads the dense score in blocks of at most
:data:`GROWTH_BLOCK` entries (:func:`~sparsetrain.streaming_topk.topk_positions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import torch
from torch import Tensor, nn
from torch import distributed as dist

from sparsetrain.masks import FlatMask
from sparsetrain.optim_state import swap_parameter
from sparsetrain.scores import Growth
from sparsetrain.sparse.storage_masks import active_positions
from sparsetrain.sparse.trainable import TrainableSparseLinear, live_units
from sparsetrain.sparse_init import unit_factors
from sparsetrain.streaming_topk import exclude_rows, topk_positions
from sparsetrain.topk import topk_mask
from sparsetrain.updates import swap_count

__all__ = ["GROWTH_BLOCK", "GROWTH_MIN_ROWS", "LIVE_ROWS_FRACTION", "GradientRows", "hold", "release",
           "drop_and_grow_layer", "growth_blocks", "gradient_rows", "scale_to_active_fan_in"]

#: Scores per row block of a dense growth score (1 MiB of float32): never more of a layer's dense score at once...
GROWTH_BLOCK = 1 << 18
#: ... except that a block has at least this many rows, so that the dense gradient's matrix products stay efficient
#: for very wide layers (64 rows of a 65,536-wide layer: 16 MiB).
GROWTH_MIN_ROWS = 64

#: Below this fraction of live output units (a nonzero gradient somewhere in the batch), :class:`GradientRows`
#: multiplies only the live units' rows.
LIVE_ROWS_FRACTION = 0.75

#: The (input, output gradient) pairs a layer kept during the backward passes of one optimizer step.
GradInputs = list[tuple[Tensor, Tensor]]


@torch.no_grad()
def hold(linear: nn.Linear, mask: Tensor | FlatMask, optimizer: torch.optim.Optimizer) -> TrainableSparseLinear:
    """A TrainableSparseLinear with the active weights of ``mask`` to replace ``linear`` (the caller puts it in
    the model).

    Its values parameter takes the weight's place in ``optimizer`` (with the state at the active positions), and it
    keeps ``linear``'s bias object. A weight on the meta device is materialised on the CPU with ``nn.Linear``'s
    default initialisation, drawn at the active positions only (and a fresh bias with it).

    Args:
        linear: the layer to hold; its weight is float32 or float64.
        mask: its active positions, a bool mask of the weight's shape or a FlatMask.
        optimizer: the optimizer that updates ``linear``'s weight.

    Returns:
        The new layer.
    """
    weight = linear.weight
    device = torch.device("cpu") if weight.is_meta else weight.device
    positions = active_positions(mask).to(device)
    bias = linear.bias
    if weight.is_meta:
        # nn.Linear's default initialisation (kaiming_uniform_ with a = sqrt(5)), drawn at the active positions.
        bound = 1.0 / math.sqrt(linear.in_features) if linear.in_features else 0.0
        values = torch.empty(positions.shape[0], dtype=weight.dtype).uniform_(-bound, bound)
        if bias is not None:
            fresh = nn.Parameter(torch.empty(bias.shape, dtype=bias.dtype).uniform_(-bound, bound),
                                 requires_grad=bias.requires_grad)
            swap_parameter(optimizer, bias, fresh, lambda state: state)
            bias = fresh
    else:
        values = weight.detach().reshape(-1).index_select(0, positions)
    layer = TrainableSparseLinear(linear.in_features, linear.out_features, positions, values)
    layer.bias = bias  # the same Parameter object: the optimizer and any reference to it stay valid
    layer.weight_values.requires_grad_(weight.requires_grad)
    layer.train(linear.training)
    swap_parameter(optimizer, weight, layer.weight_values, lambda state: state.reshape(-1).index_select(0, positions))
    return layer


@torch.no_grad()
def release(layer: TrainableSparseLinear, optimizer: torch.optim.Optimizer) -> tuple[nn.Linear, Tensor]:
    """The ``nn.Linear`` to put back in place of a held ``layer``, with its dense weight (``+0.0`` where inactive)
    and the same bias object; the dense weight takes the values' place in ``optimizer``, with their state scattered
    to the active positions (zero elsewhere).

    Returns:
        The layer and its bool mask.
    """
    positions = layer.flat_indices()
    shape = (layer.out_features, layer.in_features)
    linear = nn.Linear(layer.in_features, layer.out_features, bias=False, device="meta")
    linear.weight = nn.Parameter(layer.dense_weight(), requires_grad=layer.weight_values.requires_grad)
    linear.bias = layer.bias
    linear.train(layer.training)
    swap_parameter(optimizer, layer.weight_values, linear.weight,
                   lambda state: state.new_zeros(math.prod(shape)).index_copy_(0, positions, state).view(shape))
    return linear, FlatMask(shape, positions).to_bool(positions.device)


@torch.no_grad()
def drop_and_grow_layer(name: str, layer: TrainableSparseLinear, pairs: GradInputs | None, fraction: float,
                        growth: Growth, generator: torch.Generator, optimizer: torch.optim.Optimizer, *, mode: str,
                        rounding: str) -> None:
    """:func:`sparsetrain.topk.drop_and_grow` on a held layer: drop among its values, grow over row blocks.

    Args:
        name: the weight's name (what a callable ``growth`` is asked for).
        layer: the held layer, changed in place (grown weights start at zero, with zero optimizer state).
        pairs: its kept (input, output gradient) pairs, for growth by gradient.
        fraction / growth / generator / mode / rounding: as the enforcer's ``drop_and_grow``.
        optimizer: the optimizer of the layer's values.
    """
    n_active, numel = layer.nnz, layer.in_features * layer.out_features
    n_swap = swap_count(fraction, n_active, rounding)
    if n_swap == 0 or n_active == numel:
        return
    n_swap = min(n_swap, n_active)
    if mode == "forbid":  # only weights inactive before the update may grow
        n_swap = min(n_swap, numel - n_active)
    if n_swap == 0:
        return
    keep = topk_mask(layer.weight_values.detach().abs(), n_active - n_swap)
    grown = topk_positions(growth_blocks(name, layer, pairs, growth, generator, None if mode == "forbid" else keep),
                           n_swap, absolute=growth != "random")
    if mode == "keep":  # a weight dropped and grown back in the same update keeps its value and state
        positions = layer.flat_indices()
        slot = torch.searchsorted(positions, grown).clamp_(max=positions.numel() - 1)
        back = positions.index_select(0, slot) == grown
        del positions  # before the replacement's own buffers
        keep[slot[back]] = True
        grown = grown[~back]
        del slot, back
        layer.replace(keep, grown, optimizer)
    else:
        layer.replace(keep, grown, optimizer)


def growth_blocks(name: str, layer: TrainableSparseLinear, pairs: GradInputs | None, growth: Growth,
                  generator: torch.Generator, kept: Tensor | None) -> Iterator[tuple[int, Tensor]]:
    """``(offset, scores)`` over row blocks of a held layer's dense growth score, NaN at the positions that may not
    grow: the slots ``kept`` (bool over the layer's slots), or every active one when ``kept`` is None. The excluded
    positions of a block come from its rows' slice of the CSR indices, so none of the layer's index sets is
    expanded whole."""
    n_in, n_out = layer.in_features, layer.out_features
    rows = max(GROWTH_MIN_ROWS, GROWTH_BLOCK // n_in)
    dense_score = growth(name) if callable(growth) else None
    gradient = GradientRows(layer, pairs, rows) if growth == "gradient" else None
    crow, col = layer.weight_crow_indices, layer.weight_col_indices
    for first in range(0, n_out, rows):
        last = min(first + rows, n_out)
        start, end = first * n_in, last * n_in
        if gradient is not None:
            block = gradient(first, last).reshape(-1)
        elif growth == "random":
            block = torch.rand(end - start, generator=generator).to(layer.weight_values.device)
        else:
            block = dense_score.reshape(-1)[start:end].to(torch.float32, copy=True)
        exclude_rows(block, crow, col, kept, first, last)  # NaN is never chosen
        yield start, block


class GradientRows:
    """Row blocks of a held layer's dense gradient from its kept ``pairs`` (zeros without them), averaged over
    data-parallel ranks (every rank then grows the same positions).

    The rows of output units whose gradient is zero over the whole batch are exactly zero (units that no active
    weight of the next layer reads, dead ReLUs: 90% of the middle layer's units of the benchmark MLP at 99%
    sparsity). When fewer than :data:`LIVE_ROWS_FRACTION` of the units are live, only their rows are multiplied,
    ``chunk`` live rows per matrix product (a chunk spans several blocks, so a layer with few live units costs one
    product per ``chunk`` of them instead of one per block), and each block is assembled from the chunk. A zero row
    stays 0 even where an input is not finite (the dense product would give NaN there; an update is skipped on
    non-finite gradients anyway).

    Args:
        layer: the held layer.
        pairs: its kept (input, output gradient) pairs, or None.
        chunk: live rows per product (at least the rows of any block asked for).
    """

    def __init__(self, layer: TrainableSparseLinear, pairs: GradInputs | None, chunk: int) -> None:
        self.layer, self.pairs, self.chunk = layer, pairs or [], chunk
        live = torch.zeros(layer.out_features, dtype=torch.bool, device=layer.weight_values.device)
        for _, dy in self.pairs:
            units = live_units(dy)
            assert units is not None  # no limit asked
            live[units.long()] = True
        #: The live output units (int64, increasing), or None to multiply whole blocks.
        self.live = None
        if self.pairs and int(live.sum()) < LIVE_ROWS_FRACTION * layer.out_features:
            self.live = live.nonzero().squeeze(1)
        self._cached = (0, 0, None)  # live[c0:c1] and their gradient rows

    def __call__(self, first: int, last: int) -> Tensor:
        """Rows ``first .. last - 1`` of the dense gradient, a new ``(last - first, in_features)`` tensor."""
        layer = self.layer
        values = layer.weight_values
        if not self.pairs:
            return torch.zeros(last - first, layer.in_features, dtype=values.dtype, device=values.device)
        if self.live is None:
            block = layer.dense_grad(slice(first, last), self.pairs)
        else:
            block = torch.zeros(last - first, layer.in_features, dtype=values.dtype, device=values.device)
            lo, hi = torch.searchsorted(self.live, torch.tensor([first, last], device=self.live.device)).tolist()
            if hi > lo:
                c0, c1, rows = self._cached
                if not c0 <= lo <= hi <= c1:
                    c0, c1 = lo, min(lo + max(self.chunk, hi - lo), self.live.numel())
                    index = self.live[c0:c1]
                    rows = None
                    for x, dy in self.pairs:
                        part = dy.index_select(1, index).t() @ x
                        rows = part if rows is None else rows.add_(part)
                    self._cached = (c0, c1, rows)
                block.index_copy_(0, self.live[lo:hi] - first, rows[lo - c0:hi - c0])
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(block)
            block.div_(dist.get_world_size())
        return block


def gradient_rows(layer: TrainableSparseLinear, pairs: GradInputs | None, rows: slice) -> Tensor:
    """Rows ``rows`` of a held layer's dense gradient (:class:`GradientRows`, for one block)."""
    return GradientRows(layer, pairs, rows.stop - rows.start)(rows.start, rows.stop)


@torch.no_grad()
def scale_to_active_fan_in(layer: TrainableSparseLinear) -> float | None:
    """:func:`sparsetrain.sparse_init.scale_to_active_fan_in` on a held layer: scale its values row by row (a row's
    active count is its fan-in).

    Returns:
        The RMS of the rows' factors (as :func:`~sparsetrain.sparse_init.unit_factors` gives it), or None for a
        fully dense layer (left as it is).
    """
    if layer.nnz == layer.in_features * layer.out_features:
        return None
    active = layer.weight_crow_indices.diff().long()
    factors, applied = unit_factors(active, layer.in_features, layer.weight_values.dtype)
    layer.weight_values.mul_(torch.repeat_interleave(factors.to(layer.weight_values.device),
                                                     active.to(layer.weight_values.device), output_size=layer.nnz))
    return applied
