"""NMLinear: an inference-time replacement for ``nn.Linear`` whose weight follows an N:M pattern along its inputs.

The weight is held as two buffers: ``weight_values`` ``(out, in / M * N)``, the N kept weights of every group
of M inputs, group after group, and ``weight_positions`` (uint8, same shape), each value's position in its
group (rising within a group): the layout of the compact N:M export (:mod:`sparsetrain.sparse.nm_format`)
with positions one per byte. A group with fewer than N nonzeros stores zeros.

Main path: the native kernel ``nm_linear_f32`` of ``native/spmm.c`` (float32, CPU, no autograd graph needed),
which blocks the product over inputs, something the pattern makes free (every row has N weights in every run
of M inputs). PyTorch path (float64, autograd, no compiler, ``SPARSETRAIN_NATIVE=0``): the dense weight is
rebuilt and ``F.linear`` runs, correct but not faster than dense.

Where it pays (``benchmarks/nm_inference.py``, 1 thread, batch 128, square 1024-4096 layers): 1:4 and 2:8
run 1.4-2.1x faster than dense ``F.linear``, 1:8 3.4-3.9x, each faster than the CSR kernel of
:class:`SparseLinear` on the same weight; 2:4 does not pay on a CPU (0.75-1.03x: half the multiply-adds of a
GEMM that runs near peak, each needing its own load), so :func:`sparsetrain.sparse.convert` builds NMLinear
only for :data:`CPU_PATTERNS`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sparsetrain.nm import NMPattern, as_groups
from sparsetrain.sparse.linear import captured_forward, capturing_graph, dense_linear, scriptable
from sparsetrain.sparse.nm_format import NMSpec, fits, stored_entries
from sparsetrain.sparse.spmm import native_nm_linear

CPU_PATTERNS: tuple[NMPattern, ...] = (NMPattern(1, 8), NMPattern(1, 4), NMPattern(2, 8))
"""Patterns :func:`~sparsetrain.sparse.convert` turns into NMLinear on CPU, sparsest first: the ones measured
to beat dense ``F.linear`` and the CSR kernel at batch 128 (``docs/benchmarks/nm_inference.md``)."""

MIN_FILL = 0.9
"""Least fraction of the pattern's slots a weight's nonzeros must fill for NMLinear to be chosen. A weight
trained N:M fills them all; an unstructured weight far sparser than a pattern may fit it by chance (a small
99 %-sparse layer often fits 1:8), and NMLinear would then multiply mostly stored zeros: CSR is faster."""


def cpu_pattern(weight: Tensor) -> NMPattern | None:
    """The pattern of :data:`CPU_PATTERNS` under which NMLinear should run a ``[out, in]`` weight, if any.

    Args:
        weight: the dense weight.

    Returns:
        The sparsest pattern the weight fits with at least :data:`MIN_FILL` of its slots nonzero, or None.
    """
    if weight.dim() != 2:
        return None
    nonzeros = int(torch.count_nonzero(weight))
    for pattern in CPU_PATTERNS:
        if nonzeros >= MIN_FILL * weight.numel() * pattern.n / pattern.m and fits(weight, NMSpec(pattern, 1)):
            return pattern
    return None


class NMLinear(nn.Module):
    """``y = x @ W.T + b`` with ``W`` stored N:M along its inputs; same outputs as ``nn.Linear`` up to rounding.

    Build one with :meth:`from_dense` (or let :func:`sparsetrain.sparse.convert` do it).

    Args:
        in_features: size of each input sample (a multiple of ``pattern.m``).
        out_features: size of each output sample.
        pattern: the N:M pattern (M <= 256).
        values: ``(out_features, in_features / M * N)`` kept weights, float32 or float64.
        positions: same shape, integer positions in ``[0, M)`` rising within each group.
        bias: optional bias of shape ``(out_features,)``.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        pattern: NMPattern | str,
        values: Tensor,
        positions: Tensor,
        bias: Tensor | None = None,
    ) -> None:
        super().__init__()
        pattern = NMPattern.parse(pattern)
        if pattern.m > 256:
            raise ValueError(f"pattern={pattern}: NMLinear stores positions in one byte, so M must be <= 256")
        if in_features % pattern.m:
            raise ValueError(f"in_features={in_features} is not a multiple of M={pattern.m}")
        if values.dtype not in (torch.float32, torch.float64):
            raise TypeError(f"values must be float32 or float64, got {values.dtype}")
        shape = (out_features, in_features // pattern.m * pattern.n)
        if tuple(values.shape) != shape or tuple(positions.shape) != shape:
            raise ValueError(f"values and positions must have shape {shape}, got {tuple(values.shape)} and "
                             f"{tuple(positions.shape)}")
        if bias is not None and bias.shape != (out_features,):
            raise ValueError(f"bias must have shape ({out_features},), got {tuple(bias.shape)}")
        self.in_features = in_features
        self.out_features = out_features
        self.pattern = pattern
        _check_positions(positions, pattern)
        self.register_buffer("weight_values", values.detach().contiguous())
        self.register_buffer("weight_positions", positions.to(torch.uint8).contiguous())
        self.bias = nn.Parameter(bias.detach().clone(), requires_grad=False) if bias is not None else None
        # The native kernel trusts the positions; a loaded state_dict is checked like the constructor's arguments.
        self.register_load_state_dict_post_hook(_check_loaded)

    @classmethod
    def from_dense(cls, linear: nn.Linear, pattern: NMPattern | str) -> NMLinear:
        """Convert an ``nn.Linear`` whose weight has at most N nonzeros in every group of M inputs.

        Args:
            linear: the layer (float32 or float64 weight).
            pattern: the pattern it follows.

        Returns:
            An NMLinear computing the same function.

        Raises:
            ValueError: the weight does not follow the pattern.
        """
        if not isinstance(linear, nn.Linear):
            raise TypeError(f"linear must be an nn.Linear, got {type(linear).__name__}")
        pattern = NMPattern.parse(pattern)
        weight = linear.weight.detach()
        if weight.dim() != 2 or not fits(weight, NMSpec(pattern, 1)):
            raise ValueError(f"the weight {tuple(weight.shape)} does not follow {pattern} along its inputs")
        stored = stored_entries(weight, NMSpec(pattern, 1))
        rows = linear.out_features
        values = as_groups(weight, 1, pattern.m)[stored].reshape(rows, -1)
        positions = stored.nonzero()[:, 1].reshape(rows, -1)
        bias = linear.bias.detach() if linear.bias is not None else None
        return cls(linear.in_features, rows, pattern, values, positions, bias)

    @property
    def sparsity(self) -> float:
        """Fraction of the dense weight that is zero (measured: stored zeros count)."""
        return 1.0 - int(torch.count_nonzero(self.weight_values)) / (self.in_features * self.out_features)

    def dense_weight(self) -> Tensor:
        """The weight as a dense ``(out_features, in_features)`` tensor (a new copy)."""
        n, m = self.pattern.n, self.pattern.m
        groups = torch.arange(self.weight_values.shape[1], device=self.weight_values.device) // n
        columns = groups * m + self.weight_positions.long()
        weight = torch.zeros(self.out_features, self.in_features, dtype=self.weight_values.dtype,
                             device=self.weight_values.device)
        return weight.scatter_(1, columns, self.weight_values)

    def forward(self, x: Tensor) -> Tensor:
        """Apply the layer.

        Args:
            x: input of shape ``(..., in_features)`` and the weight's dtype.

        Returns:
            Output of shape ``(..., out_features)``, contiguous.
        """
        if capturing_graph():
            return captured_forward(self, x)
        if x.shape[-1:] != (self.in_features,):
            raise ValueError(f"x must have last dim in_features={self.in_features}, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        bias = self.bias.detach() if self.bias is not None else None
        out = native_nm_linear(x.reshape(-1, self.in_features), self.weight_values, self.weight_positions, bias,
                               self.pattern.n, self.pattern.m)
        if out is not None:
            return out.view(*lead, self.out_features)
        return F.linear(x, self.dense_weight(), self.bias)

    def to_linear(self) -> nn.Linear:
        """The equivalent ``nn.Linear`` (dense weight, the same bias)."""
        return dense_linear(self)

    def __prepare_scriptable__(self) -> nn.Module:
        return scriptable(self)  # the native kernel cannot be scripted (see sparsetrain.sparse.linear)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.bias is not None}, pattern={self.pattern}")


def _check_positions(positions: Tensor, pattern: NMPattern) -> None:
    """Raise ValueError unless every group's positions lie in ``[0, M)`` and rise strictly."""
    groups = positions.reshape(-1, pattern.n).long()
    if groups.numel() and (int(groups.min()) < 0 or int(groups.max()) >= pattern.m):
        raise ValueError(f"positions must lie in [0, {pattern.m}), got [{int(groups.min())}, {int(groups.max())}]")
    if pattern.n > 1 and not bool((groups.diff(dim=1) > 0).all()):
        raise ValueError("positions must rise strictly within each group")


def _check_loaded(module: nn.Module, incompatible_keys: object) -> None:
    assert isinstance(module, NMLinear)
    if module.weight_positions.dtype != torch.uint8:
        raise ValueError(f"weight_positions must be uint8, got {module.weight_positions.dtype}")
    _check_positions(module.weight_positions, module.pattern)
