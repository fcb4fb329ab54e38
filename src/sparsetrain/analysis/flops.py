"""FLOPs of sparse models: inference FLOPs per layer, and training FLOPs of a whole run.

Conventions follow Evci et al., *Rigging the Lottery: Making All Tickets Winners*, ICML 2020
(Appendix "FLOPs"): a sparse layer costs its dense FLOPs times the density of its weight, and a
training step costs about 3× the forward pass (forward, backward to the inputs, backward to the weights).

Inference FLOPs are counted by :class:`torch.utils.flop_counter.FlopCounterMode`, which counts matrix
multiplications, convolutions and attention kernels, a multiply-add as 2 FLOPs, and no elementwise ops
(bias additions, activations, normalisation and pooling are not counted). Each counted op is attributed
to the weight it multiplies: the parameter (at least 2 dims) whose storage one of its operands shares.
That follows weights through views and tied weights (an output layer reusing the embedding matrix, the
slices of ``nn.MultiheadAttention.in_proj_weight``, a weight used twice). Ops with no weight operand
(attention scores ``q @ kᵀ``, ``attn @ v``) are "other" FLOPs and are never scaled by a density.
The CPU flash-attention kernel, missing from torch's FLOP registry, is counted like the CUDA one
(``4 * b * heads * s_q * s_k * d`` for ``d``-dim heads, ignoring causal masking).
FlopCounterMode's own per-module counts (a module's count includes its children's) are kept in the
report as ``module_flops``.

:func:`run_flops` gives both for a finished run's ``summary.json``: the density history of its topology updates,
and the steps whose backward pass needed the dense weight gradient (:func:`dense_gradient_steps`).
"""

from __future__ import annotations

import bisect
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode, flop_registry

from sparsetrain.analysis._common import check_bool_masks, format_table
from sparsetrain.validation import check_int

__all__ = [
    "LayerFlops",
    "FlopsReport",
    "inference_flops",
    "LayerTrainingFlops",
    "TrainingFlopsReport",
    "training_flops",
    "dense_gradient_steps",
    "run_flops",
]

logger = logging.getLogger(__name__)

_OTHER = "(other)"


def _ratio_to_dense(flops: float, dense_flops: float) -> float:
    """``flops / dense_flops``, the cost as a fraction of the dense model's; 1.0 when the dense model costs nothing
    (a layer or model with no counted FLOPs is neither cheaper nor dearer sparse)."""
    return flops / dense_flops if dense_flops else 1.0


@dataclass(frozen=True)
class LayerFlops:
    """Inference FLOPs attributed to one weight tensor.

    Attributes:
        name: the parameter's fully-qualified name (the first name of a tied weight).
        module: the name of the module owning it (``name`` without its last component).
        shape: the weight's shape.
        dense_flops: FLOPs of all ops that multiply by this weight, dense.
        density: fraction of the weight that is active (from the mask, else measured as ``weight != 0``).
        sparse_flops: ``dense_flops * density``.
    """

    name: str
    module: str
    shape: tuple[int, ...]
    dense_flops: int
    density: float
    sparse_flops: float


@dataclass(frozen=True)
class FlopsReport:
    """Per-layer and total inference FLOPs of one forward pass on an input of ``input_shape``.

    Attributes:
        input_shape: the input's shape, batch dimension included (FLOPs are for the whole batch).
        rows: one row per parameter with at least 2 dims, in ``named_parameters`` order.
        other_flops: counted FLOPs that multiply no weight (attention scores...); never scaled.
        dense_total: all counted FLOPs of the dense model (``sum(dense_flops) + other_flops``).
        sparse_total: ``sum(sparse_flops) + other_flops``.
        module_flops: FlopCounterMode's count per module, by fully-qualified module name (``""`` is the
            model itself); a module's count includes its children's.
    """

    input_shape: tuple[int, ...]
    rows: list[LayerFlops] = field(default_factory=list)
    other_flops: int = 0
    dense_total: int = 0
    sparse_total: float = 0.0
    module_flops: dict[str, int] = field(default_factory=dict)

    @property
    def sparse_ratio(self) -> float:
        """``sparse_total / dense_total`` (1.0 when nothing was counted)."""
        return _ratio_to_dense(self.sparse_total, self.dense_total)

    def dense_by_layer(self) -> dict[str, int]:
        """Return ``{parameter name: dense FLOPs}``, the input :func:`training_flops` expects."""
        return {r.name: r.dense_flops for r in self.rows}

    def density_by_layer(self) -> dict[str, float]:
        """Return ``{parameter name: density}``."""
        return {r.name: r.density for r in self.rows}

    def by_name(self) -> dict[str, LayerFlops]:
        """Return the rows keyed by parameter name."""
        return {r.name: r for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the report."""
        rows = []
        for r in self.rows:
            d = asdict(r)
            d["shape"] = list(r.shape)
            rows.append(d)
        return {
            "input_shape": list(self.input_shape),
            "rows": rows,
            "other_flops": self.other_flops,
            "dense_total": self.dense_total,
            "sparse_total": self.sparse_total,
            "sparse_ratio": self.sparse_ratio,
            "module_flops": dict(self.module_flops),
        }

    def __str__(self) -> str:
        header = ["layer", "shape", "dense FLOPs", "density", "sparse FLOPs"]
        rows: list[list[Any]] = [
            [r.name, "x".join(map(str, r.shape)), r.dense_flops, r.density, r.sparse_flops] for r in self.rows
        ]
        rows.append([_OTHER, "-", self.other_flops, None, float(self.other_flops)])
        rows.append(["total", "-", self.dense_total, None, self.sparse_total])
        return format_table(header, rows)


def _storage_key(t: Tensor) -> int | None:
    try:
        ptr = t.untyped_storage().data_ptr()
    except (RuntimeError, NotImplementedError):  # tensor subclasses without storage
        return None
    return ptr or None


def _operands(args: Sequence[Any], kwargs: Mapping[str, Any]) -> list[Any]:
    flat: list[Any] = []
    for a in [*args, *kwargs.values()]:
        if isinstance(a, (list, tuple)):
            flat.extend(a)
        else:
            flat.append(a)
    return flat


class _WeightAttribution:
    """FlopCounterMode formulas that also record which weight each counted op multiplies."""

    def __init__(self, storage_to_name: Mapping[int, str]) -> None:
        self.storage_to_name = storage_to_name
        self.flops: dict[str | None, int] = defaultdict(int)
        self.saw_only_shapes = False

    def wrap(self, formula: Callable[..., int]) -> Callable[..., int]:
        def count(*args: Any, out_val: Any = None, **kwargs: Any) -> int:
            flops = formula(*args, out_val=out_val, **kwargs)
            operands = _operands(args, kwargs)
            if not any(isinstance(a, Tensor) for a in operands):
                self.saw_only_shapes = True
            owner = None
            for a in operands:
                if isinstance(a, Tensor):
                    owner = self.storage_to_name.get(_storage_key(a) or -1)
                    if owner is not None:
                        break
            self.flops[owner] += int(flops)
            return flops

        # FlopCounterMode passes raw tensors (not shapes) to formulas marked this way.
        count._get_raw = True  # type: ignore[attr-defined]
        return count


def _formulas() -> dict[Any, Callable[..., int]]:
    formulas = dict(flop_registry)
    # torch's registry lacks the CPU flash-attention kernel that scaled_dot_product_attention (and so
    # nn.MultiheadAttention) runs on CPU; it does the same two matmuls as the CUDA flash kernel.
    aten = torch.ops.aten
    cpu_flash = getattr(aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    cuda_flash = getattr(aten, "_scaled_dot_product_flash_attention", None)
    if cpu_flash is not None and cpu_flash not in formulas and cuda_flash in formulas:
        formulas[cpu_flash] = formulas[cuda_flash]
    return formulas


def _densities(
    model: nn.Module, weights: Mapping[str, nn.Parameter], masks: Mapping[str, Tensor] | None
) -> dict[str, float]:
    alias_to_name: dict[str, str] = {}
    first_name = {id(p): n for n, p in reversed(list(model.named_parameters(remove_duplicate=False)))}
    for n, p in model.named_parameters(remove_duplicate=False):
        alias_to_name[n] = first_name[id(p)]
    from_mask: dict[str, Tensor] = {}
    named = dict(model.named_parameters())
    if masks is not None:
        check_bool_masks(masks, "masks")
        for key, mask in masks.items():
            if key not in alias_to_name:
                raise ValueError(f"masks[{key!r}] names no parameter of the model")
            name = alias_to_name[key]
            param = named[name]
            if mask.shape != param.shape:
                raise ValueError(
                    f"masks[{key!r}] has shape {tuple(mask.shape)} but the parameter has {tuple(param.shape)}"
                )
            from_mask[name] = mask
    out = {}
    with torch.no_grad():
        for name, w in weights.items():
            active = from_mask[name] if name in from_mask else w != 0
            out[name] = active.sum().item() / active.numel() if active.numel() else 1.0
    return out


def _check_input_shape(input_shape: Sequence[int]) -> tuple[int, ...]:
    if isinstance(input_shape, int) or not isinstance(input_shape, Sequence):
        raise TypeError(f"input_shape must be a sequence of ints such as (1, 3, 32, 32), got {input_shape!r}")
    shape = tuple(input_shape)
    if not shape or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 1 for s in shape):
        raise ValueError(f"input_shape must be a non-empty sequence of ints >= 1, got {input_shape!r}")
    return shape


def inference_flops(
    model: nn.Module,
    input_shape: Sequence[int],
    masks: Mapping[str, Tensor] | None = None,
    *,
    input_dtype: torch.dtype | None = None,
) -> FlopsReport:
    """Count the dense and sparse inference FLOPs of ``model`` on an all-zeros input, per layer and total.

    Dense FLOPs come from :class:`torch.utils.flop_counter.FlopCounterMode` (a multiply-add is 2 FLOPs:
    a Linear layer costs ``2 * in * out`` per sample, a Conv2d ``2 * out_elements * in/groups * kh * kw``).
    Each op is attributed to the weight it multiplies (see the module docstring). RigL's convention
    (Evci et al. 2020) gives the sparse count: ``sparse_flops = dense_flops * density`` of that weight.
    FLOPs multiplying no weight are reported as ``other_flops`` and kept unscaled in both totals; bias
    additions and elementwise ops are not counted at all.

    The model runs one forward pass in eval mode (its training flag is restored afterwards), on the
    device of its first parameter, with autograd enabled (so fused inference fast paths, which
    FlopCounterMode cannot see, are not taken; no backward pass is run and no weight changes).
    FLOPs are for the whole input: pass batch size 1 for per-sample counts. Data-dependent control
    flow sees an all-zeros input.

    Args:
        model: the model.
        input_shape: shape of the single positional input, batch dimension included.
        masks: ``{parameter name: bool tensor}``. A weight's density comes from its mask; weights without
            a mask (and all weights when ``masks`` is None) have their density measured as ``weight != 0``.
            Masks of parameters with fewer than 2 dims are accepted and ignored (a bias scales no matmul).
        input_dtype: dtype of the input; default: the dtype of the model's first floating-point parameter
            (float32 if none). Pass ``torch.long`` for models that start with an Embedding.

    Returns:
        A :class:`FlopsReport`.

    Raises:
        TypeError: ``model`` is not a module, ``input_shape`` is not a sequence, or a mask is not bool.
        ValueError: ``input_shape`` holds a non-positive size, or a mask names no parameter or has the
            wrong shape.
        RuntimeError: the installed torch does not pass tensors to custom FLOP formulas.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    shape = _check_input_shape(input_shape)
    params = list(model.parameters())
    device = params[0].device if params else torch.device("cpu")
    if input_dtype is None:
        input_dtype = next((p.dtype for p in params if p.is_floating_point()), torch.float32)

    weights = {n: p for n, p in model.named_parameters() if p.dim() >= 2}
    densities = _densities(model, weights, masks)
    storage_to_name: dict[int, str] = {}
    for n, p in weights.items():
        key = _storage_key(p)
        if key is not None:
            storage_to_name.setdefault(key, n)

    attribution = _WeightAttribution(storage_to_name)
    mapping = {op: attribution.wrap(formula) for op, formula in _formulas().items()}
    was_training = model.training
    model.eval()
    try:
        x = torch.zeros(shape, dtype=input_dtype, device=device)
        # Autograd stays on: under no_grad, eval-mode nn.MultiheadAttention and nn.TransformerEncoderLayer
        # take fused fast paths whose FLOPs FlopCounterMode does not see.
        with torch.enable_grad(), FlopCounterMode(display=False, custom_mapping=mapping) as counter:
            model(x)
    finally:
        model.train(was_training)
    if attribution.saw_only_shapes:
        raise RuntimeError(
            "this torch version passes shapes, not tensors, to custom FLOP formulas; "
            "per-weight attribution needs a newer torch"
        )

    dense_total = int(counter.get_total_flops())
    root = type(model).__name__
    module_flops = {}
    for key, per_op in counter.get_flop_counts().items():
        if key == "Global":
            continue
        fqn = "" if key == root else key[len(root) + 1 :] if key.startswith(root + ".") else key
        module_flops[fqn] = int(sum(per_op.values()))

    rows = []
    for name, w in weights.items():
        dense = attribution.flops.get(name, 0)
        d = densities[name]
        rows.append(LayerFlops(name, name.rpartition(".")[0], tuple(w.shape), dense, d, dense * d))
    other = attribution.flops.get(None, 0)
    attributed = sum(r.dense_flops for r in rows)
    if attributed + other != dense_total:  # should not happen; keep the totals consistent regardless
        logger.warning("attributed FLOPs %d + other %d != counted %d", attributed, other, dense_total)
        other = dense_total - attributed
    sparse_total = sum(r.sparse_flops for r in rows) + other
    return FlopsReport(shape, rows, other, dense_total, sparse_total, module_flops)


@dataclass(frozen=True)
class LayerTrainingFlops:
    """Training FLOPs of one layer over the whole run.

    Attributes:
        name: layer name (a key of ``per_layer_dense_flops``).
        inference_flops: the layer's dense forward FLOPs per sample, as given.
        training_flops: its training FLOPs over the run (see :func:`training_flops`).
        dense_training_flops: the same layer trained dense: ``3 * inference_flops * batch_size * total_steps``.
    """

    name: str
    inference_flops: float
    training_flops: float
    dense_training_flops: float

    @property
    def ratio(self) -> float:
        """``training_flops / dense_training_flops`` (1.0 for a layer with no FLOPs)."""
        return _ratio_to_dense(self.training_flops, self.dense_training_flops)


@dataclass(frozen=True)
class TrainingFlopsReport:
    """Training FLOPs of a whole run, per layer and total, and the ratio to dense training.

    Attributes:
        rows: one row per layer.
        total: the run's training FLOPs.
        dense_total: FLOPs of training the dense model for the same steps and batch size.
        total_steps: number of optimizer steps.
        batch_size: samples per step.
        dense_grad_steps: number of steps that computed the dense weight gradient.
    """

    rows: list[LayerTrainingFlops]
    total: float
    dense_total: float
    total_steps: int
    batch_size: int
    dense_grad_steps: int

    @property
    def ratio(self) -> float:
        """``total / dense_total``: the run's cost as a fraction of dense training (1.0 when both are 0)."""
        return _ratio_to_dense(self.total, self.dense_total)

    def by_name(self) -> dict[str, LayerTrainingFlops]:
        """Return the rows keyed by layer name."""
        return {r.name: r for r in self.rows}

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of the report."""
        return {
            "rows": [{**asdict(r), "ratio": r.ratio} for r in self.rows],
            "total": self.total,
            "dense_total": self.dense_total,
            "ratio": self.ratio,
            "total_steps": self.total_steps,
            "batch_size": self.batch_size,
            "dense_grad_steps": self.dense_grad_steps,
        }

    def __str__(self) -> str:
        header = ["layer", "inference FLOPs", "training FLOPs", "dense training FLOPs", "ratio"]
        rows: list[list[Any]] = [
            [r.name, float(r.inference_flops), r.training_flops, r.dense_training_flops, r.ratio] for r in self.rows
        ]
        rows.append(["total", None, self.total, self.dense_total, self.ratio])
        return format_table(header, rows)


def _check_history(
    density_history: Sequence[tuple[int, Mapping[str, float]]], layers: Mapping[str, float]
) -> tuple[list[int], list[Mapping[str, float]]]:
    if isinstance(density_history, Mapping) or not isinstance(density_history, Sequence) or not density_history:
        raise ValueError(
            "density_history must be a non-empty sequence of (start_step, {layer: density}) pairs, "
            f"got {density_history!r}"
        )
    starts: list[int] = []
    entries: list[Mapping[str, float]] = []
    for i, item in enumerate(density_history):
        if not (isinstance(item, Sequence) and len(item) == 2 and isinstance(item[1], Mapping)):
            raise ValueError(f"density_history[{i}] must be a (start_step, {{layer: density}}) pair, got {item!r}")
        start, dens = item
        check_int(f"density_history[{i}] start step", start, 0)
        if starts and start <= starts[-1]:
            raise ValueError(
                f"density_history start steps must increase strictly, got {start} after {starts[-1]} at index {i}"
            )
        for layer, d in dens.items():
            if layer not in layers:
                raise ValueError(f"density_history[{i}] names layer {layer!r}, absent from per_layer_dense_flops")
            if not isinstance(d, (int, float)) or isinstance(d, bool) or not 0.0 <= d <= 1.0:
                raise ValueError(f"density_history[{i}][{layer!r}] must be a density in [0, 1], got {d!r}")
        starts.append(start)
        entries.append(dens)
    if starts[0] != 0:
        raise ValueError(f"density_history must start at step 0 so every step has a density, got {starts[0]}")
    return starts, entries


def training_flops(
    per_layer_dense_flops: Mapping[str, float],
    density_history: Sequence[tuple[int, Mapping[str, float]]],
    total_steps: int,
    dense_grad_steps: Sequence[int] = (),
    batch_size: int = 1,
) -> TrainingFlopsReport:
    """Training FLOPs of a whole sparse run, following RigL's accounting (Evci et al. 2020, App. "FLOPs").

    Notation: ``F_l`` = layer l's dense forward FLOPs per sample (``per_layer_dense_flops``; e.g.
    :meth:`FlopsReport.dense_by_layer` of a batch-1 :func:`inference_flops`), ``d_l(t)`` = its density
    at optimizer step t, ``B`` = ``batch_size``, ``T`` = ``total_steps``, ``G`` = ``dense_grad_steps``.
    ``d_l(t)`` is read from the last ``density_history`` entry whose start step is ``<= t``; a layer
    missing from that entry is dense (``d = 1``). A step costs a forward pass, a backward pass to the
    inputs and one to the weights, each as much as the sparse forward::

        cost(t) = B * sum_l F_l * 3 * d_l(t)              if t not in G
        cost(t) = B * sum_l F_l * (2 * d_l(t) + 1)        if t in G

    On a step in ``G`` (RigL's regrowth steps, which need the dense gradient) the backward pass to the
    weights is dense. The run costs ``total = sum_{t=0}^{T-1} cost(t)``, dense training
    ``dense_total = 3 * B * T * sum_l F_l``, and ``ratio = total / dense_total``. A dense-to-sparse method
    (GMP, GraNet) integrates its falling densities through the history; RigL's average step cost
    ``(3 f_S ΔT + 2 f_S + f_D) / (ΔT + 1)`` is recovered with one dense-gradient step every ``ΔT + 1``.
    As in the paper, the backward pass to the first layer's input is counted although it is not needed,
    and costs outside the layers given (optimizer, elementwise ops, mask updates) are left out.

    Args:
        per_layer_dense_flops: ``{layer: dense forward FLOPs per sample}``, each finite and >= 0.
        density_history: ``[(start_step, {layer: density}), ...]``, start steps strictly increasing from
            0; each entry applies from its start step to the next one (entries starting at or after
            ``total_steps`` contribute nothing).
        total_steps: number of optimizer steps, >= 1.
        dense_grad_steps: steps (in ``[0, total_steps)``, no repeats) that compute the dense weight gradient.
        batch_size: samples per step, >= 1.

    Returns:
        A :class:`TrainingFlopsReport` with per-layer rows, ``total``, ``dense_total`` and ``ratio``.

    Raises:
        ValueError: any argument outside the ranges above, or a density for an unknown layer.
    """
    if not isinstance(per_layer_dense_flops, Mapping) or not per_layer_dense_flops:
        raise ValueError(f"per_layer_dense_flops must be a non-empty mapping, got {per_layer_dense_flops!r}")
    for layer, f in per_layer_dense_flops.items():
        if not isinstance(f, (int, float)) or isinstance(f, bool) or not (math.isfinite(f) and f >= 0):
            raise ValueError(f"per_layer_dense_flops[{layer!r}] must be a finite number >= 0, got {f!r}")
    total_steps = check_int("total_steps", total_steps, 1)
    batch_size = check_int("batch_size", batch_size, 1)
    starts, entries = _check_history(density_history, per_layer_dense_flops)
    grad_steps = list(dense_grad_steps)
    for g in grad_steps:
        if not isinstance(g, int) or isinstance(g, bool) or not 0 <= g < total_steps:
            raise ValueError(f"dense_grad_steps must hold ints in [0, {total_steps}), got {g!r}")
    if len(set(grad_steps)) != len(grad_steps):
        raise ValueError("dense_grad_steps must not repeat a step")

    per_layer = {layer: 0.0 for layer in per_layer_dense_flops}
    for i, (start, dens) in enumerate(zip(starts, entries)):
        end = starts[i + 1] if i + 1 < len(starts) else total_steps
        steps = max(0, min(end, total_steps) - start)
        for layer, f in per_layer_dense_flops.items():
            per_layer[layer] += 3.0 * f * dens.get(layer, 1.0) * steps
    for g in grad_steps:
        dens = entries[bisect.bisect_right(starts, g) - 1]
        for layer, f in per_layer_dense_flops.items():
            # (2d + 1) - 3d: the weight-gradient pass is dense instead of sparse.
            per_layer[layer] += f * (1.0 - dens.get(layer, 1.0))

    rows = [
        LayerTrainingFlops(
            name=layer,
            inference_flops=f,
            training_flops=batch_size * per_layer[layer],
            dense_training_flops=3.0 * f * batch_size * total_steps,
        )
        for layer, f in per_layer_dense_flops.items()
    ]
    return TrainingFlopsReport(
        rows=rows,
        total=sum(r.training_flops for r in rows),
        dense_total=sum(r.dense_training_flops for r in rows),
        total_steps=total_steps,
        batch_size=batch_size,
        dense_grad_steps=len(grad_steps),
    )


_GROWS_BY_GRADIENT = ("rigl", "granet")
_DENSE_GRADIENT_EVERY_STEP = ("snfs", "srste")


def dense_gradient_steps(method: str, update_steps: Sequence[int], total_steps: int) -> list[int]:
    """0-based indices of a run's steps whose backward computed the dense weight gradient.

    Gradient-based growth needs it: RigL and GraNet at their update steps, SNFS at every step (its momentum is of
    the dense gradient).

    Args:
        method: the sparse method name.
        update_steps: 1-based optimizer steps after which the topology changed.
        total_steps: steps in the run.

    Returns:
        Sorted step indices in ``[0, total_steps)``.
    """
    if method in _DENSE_GRADIENT_EVERY_STEP:
        return list(range(total_steps))
    if method in _GROWS_BY_GRADIENT:
        # The update after optimizer step s reads the gradient of step s, index s - 1.
        return sorted({s - 1 for s in update_steps if 1 <= s <= total_steps})
    return []


def run_flops(model: nn.Module, input_shape: Sequence[int], *, token_inputs: bool, masks: Mapping[str, Tensor],
              density_history: Sequence[tuple[int, Mapping[str, float]]], total_steps: int,
              dense_grad_steps: Sequence[int], batch_size: int) -> dict[str, Any] | None:
    """Inference and training FLOPs of a finished run, for its ``summary.json``; None if they cannot be counted.

    Args:
        model: the trained model (masks applied).
        input_shape: one sample's shape (no batch dimension).
        token_inputs: the inputs are int64 token ids.
        masks: final masks by parameter name.
        density_history: ``[(start_step, {name: density}), ...]`` from step 0.
        total_steps: optimizer steps of the run.
        dense_grad_steps: see :func:`dense_gradient_steps`.
        batch_size: training batch size.

    Returns:
        ``{"inference_dense", "inference_sparse", "inference_ratio", "training", "training_dense",
        "training_ratio", "dense_grad_steps", "layers"}`` (FLOPs per sample for inference, whole run for
        training; ``layers`` maps each weight to its ``{"inference_dense", "inference_sparse", "training",
        "training_dense"}``), or None when the model cannot be counted (logged; a finished run is never lost
        over its FLOPs).
    """
    try:
        report = inference_flops(model, (1, *input_shape), masks or None,
                                 input_dtype=torch.long if token_inputs else None)
        training = training_flops(report.dense_by_layer(), density_history, total_steps,
                                  dense_grad_steps=dense_grad_steps, batch_size=batch_size)
    except Exception as exc:  # FLOPs are a nice-to-have: never lose a finished run over them
        logger.warning("FLOPs not counted: %s: %s", type(exc).__name__, exc)
        return None
    inference_rows = report.by_name()
    layers = {
        row.name: {"inference_dense": inference_rows[row.name].dense_flops,
                   "inference_sparse": inference_rows[row.name].sparse_flops,
                   "training": row.training_flops, "training_dense": row.dense_training_flops}
        for row in training.rows
    }
    return {
        "inference_dense": report.dense_total,
        "inference_sparse": report.sparse_total,
        "inference_ratio": report.sparse_ratio,
        "training": training.total,
        "training_dense": training.dense_total,
        "training_ratio": training.ratio,
        "dense_grad_steps": list(dense_grad_steps),
        "layers": layers,
    }
