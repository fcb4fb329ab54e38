"""Storage backends: where the sparsified weights live, behind the mask-enforcement boundary.

A sparsifier's ``backend`` option chooses the storage (:func:`sparsetrain.enforcement.make_enforcer`; this module
registers "sparse" and "auto" there when it is imported, which ``import sparsetrain`` does):

* ``"dense"`` (the default): bool masks over dense weights, :class:`~sparsetrain.enforcement.DenseMaskEnforcer`.
  Every tensor of any module can be sparsified; a training step costs what the dense step costs.
* ``"sparse"``: :class:`SparseEnforcer`. Each sparsified weight of an ``nn.Linear`` is held by a
  :class:`~sparsetrain.sparse.TrainableSparseLinear` that stores, trains and updates only its active weights, so
  a step costs in proportion to the density (docs/benchmarks/sparse_training.md). Tensors it cannot hold (the
  weights of convolutions, embeddings, attention, RNNs, a Linear whose weight is tied to another module's or that
  ``nn.MultiheadAttention`` reads directly) stay on the masked-dense path in the same sparsifier; one log line names
  both sets.
* ``"auto"``: sparse storage for the Linear layers where it is measured faster (:func:`sparse_is_faster`: float32
  on the CPU, at most :data:`AUTO_MAX_DENSITY` dense at attach, at least :data:`AUTO_MIN_WEIGHTS` weights), the
  masked-dense path for the rest.

What a user of sparse storage must know:

* **The model changes.** Attaching replaces the held ``nn.Linear`` modules by ``TrainableSparseLinear`` ones under
  the same module names; their parameters are ``<layer>.weight_values`` (the active weights, 1-D) and the same
  ``<layer>.bias`` object, beside the int32 index buffers ``<layer>.weight_crow_indices`` and
  ``<layer>.weight_col_indices``. ``model.state_dict()`` holds that sparse form, so a checkpoint is as small as the
  model, and it loads into a model attached the same way (the layer resizes to the checkpoint's count).
  ``sparsifier.export()`` gives back ``nn.Linear`` modules with dense weights (``+0.0`` where inactive), under the
  original names.
* **The optimizer changes with it.** Build the optimizer on the dense model as usual, *before* the sparsifier:
  attaching swaps each held weight for its values parameter in the optimizer's param groups, in place, carrying any
  state it already has at the active positions (``export()`` swaps back). Any ``torch.optim`` optimizer works; its
  state exists for the active weights only. A topology update reuses dropped slots for grown weights, with zero
  value and zero state; a shrinking set (GMP, GraNet) compacts values, gradient and state together.
* **Data parallelism**: attach before wrapping the model in ``DistributedDataParallel`` (DDP must see the values
  parameters; :class:`SparseEnforcer` refuses a DDP wrapper). A shrinking set changes parameter sizes, so the DDP
  wrapper must be rebuilt after such an update (the Trainer does); fixed-count methods (Static, SET, RigL, SNFS)
  keep every size. Dense gradients for growth are all-reduced block by block, so every rank grows the same
  positions.
* **Precision**: float32 or float64 weights, no autocast in the held layers.
* **A model too large to exist dense**: build it on the ``meta`` device (``with torch.device("meta"): ...``).
  Each held Linear is then materialised sparse on the CPU: its active weights and its bias drawn from
  ``nn.Linear``'s default initialisation, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (torch's global generator, active
  positions only); random masks are drawn in blocks (:class:`~sparsetrain.masks.FlatMask`), so no dense score, mask
  or weight of such a layer is ever built. Every other parameter must be real.

How the methods run on it without caring: ``sparsifier.masks`` is a :class:`SparseMasks` mapping (name -> bool mask,
built from a layer's index set when asked; ``count(name)`` without building it); the positions ever active are a
:class:`PackedMasks` (one bit per weight); both live in :mod:`sparsetrain.sparse.storage_masks`. A method's update
asks the enforcer, which works, one held layer at a time (:mod:`sparsetrain.sparse.held_layers`), on the active values
(drop by ``|w|``, pruning by magnitude with the same exact top-k and tie rule, lowest position first) and on row
blocks of the dense growth score (:func:`~sparsetrain.streaming_topk.topk_positions`). For growth by gradient the
dense gradient is computed one layer at a time, in row blocks, from the layer's inputs and output gradients kept
during the backward of the steps where ``sparsifier.needs_dense_gradient(step)`` (RigL's and GraNet's update steps,
never SET's or GMP's; SNFS reads it every step). Given the same weights and gradients the masks are the same as on
the dense path (tests/test_backends.py).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Iterator, Mapping, MutableMapping
from typing import Any

import torch
from torch import Tensor, nn

from sparsetrain.enforcement import (
    DenseMaskEnforcer,
    GradientCallback,
    MaskEnforcer,
    MaskSource,
    register_backend,
    step_closure,
)
from sparsetrain.masks import FlatMask, LayerSparsity, SparsityReport, random_masks
from sparsetrain.nm import NMLayout, NMPattern
from sparsetrain.scores import Growth, growth_scores, warn_no_gradient
from sparsetrain.selection import Budget, Groups, keep_top
from sparsetrain.sparse import held_layers
from sparsetrain.sparse.storage_masks import PackedMasks, SparseMasks, active_positions, as_bool
from sparsetrain.sparse.trainable import TrainableSparseLinear
from sparsetrain.updates import regrow

__all__ = ["AUTO_MAX_DENSITY", "AUTO_MIN_WEIGHTS", "sparse_is_faster", "SparseEnforcer", "SparseMasks",
           "PackedMasks", "distributed_data_parallel"]

logger = logging.getLogger(__name__)

#: "auto" holds a Linear sparse at most this dense at attach: the measured break-even of a whole training step
#: (docs/benchmarks/sparse_training_extras.md, "Break-even"), with a margin.
AUTO_MAX_DENSITY = 0.3
#: ... and only with at least this many weights: below it the fixed costs of the sparse kernels dominate.
AUTO_MIN_WEIGHTS = 1 << 17


def sparse_is_faster(shape: tuple[int, ...], density: float, dtype: torch.dtype, device: torch.device) -> bool:
    """The "auto" rule: whether a Linear weight trains faster held sparse than masked-dense.

    True for float32 weights on the CPU (where the native kernels run) at most :data:`AUTO_MAX_DENSITY` dense with
    at least :data:`AUTO_MIN_WEIGHTS` weights. On GPUs dense matrix products win at every density measured here.
    """
    return (device.type in ("cpu", "meta") and dtype == torch.float32 and density <= AUTO_MAX_DENSITY
            and math.prod(shape) >= AUTO_MIN_WEIGHTS)


def distributed_data_parallel(model: nn.Module, **kwargs: Any) -> nn.parallel.DistributedDataParallel:
    """``DistributedDataParallel(model, **kwargs)`` for a model that may hold sparse layers.

    The index buffers of each :class:`~sparsetrain.sparse.TrainableSparseLinear` are left out of DDP's buffer
    broadcast: they are identical on every rank by construction, and a topology update replaces them (DDP would go
    on broadcasting the old tensors). Call it again after an update that changed a layer's active count (GMP and
    GraNet pruning): DDP's gradient buckets are sized at construction.
    """
    ignored = [f"{prefix}.{name}" if prefix else name for prefix, module in model.named_modules()
               if isinstance(module, TrainableSparseLinear) for name, _ in module.named_buffers(recurse=False)]
    if ignored:
        nn.parallel.DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(model, ignored)
    return nn.parallel.DistributedDataParallel(model, **kwargs)


def _refuse_pattern(pattern: NMPattern | None) -> None:
    """Sparse storage holds unstructured masks only (the sparsifier refuses ``backend='sparse'`` with a pattern)."""
    if pattern is not None:
        raise ValueError(f"pattern='{pattern}' is not allowed on sparse storage: it trains unstructured masks only "
                         "(use backend='dense')")


class _DenseSource:
    """The source the masked-dense part of a :class:`SparseEnforcer` reads: the masks of the tensors it holds."""

    def __init__(self, enforcer: SparseEnforcer) -> None:
        self._enforcer = enforcer

    @property
    def masks(self) -> dict[str, Tensor]:
        return self._enforcer.dense_masks

    def is_update_step(self, step: int) -> bool:
        return self._enforcer.source.is_update_step(step)

    def needs_dense_gradient(self, step: int) -> bool:
        return self._enforcer.source.needs_dense_gradient(step)


class _DenseGradients(Mapping[str, Tensor]):
    """name -> the dense gradient of a held layer, computed when asked (for a gradient callback)."""

    def __init__(self, enforcer: SparseEnforcer) -> None:
        self._enforcer = enforcer

    def __getitem__(self, name: str) -> Tensor:
        layer = self._enforcer.layers[name]
        return held_layers.gradient_rows(layer, self._enforcer._ready.get(name), slice(0, layer.out_features))

    def __iter__(self) -> Iterator[str]:
        return iter(self._enforcer._ready)

    def __len__(self) -> int:
        return len(self._enforcer._ready)


# ---------------------------------------------------------------------------------------------------------------
# The enforcer
# ---------------------------------------------------------------------------------------------------------------


class SparseEnforcer(MaskEnforcer):
    """Sparse storage for the Linear layers it can hold, the masked-dense path for the other tensors.

    See the module docstring for what changes in the model and the optimizer. The split between the two storages is
    made at the first :meth:`apply` (the sparsifier's attach), when the initial masks are known.

    Args:
        model: the model (not a DDP or DataParallel wrapper).
        params / optimizer / source / mask_gradients / fused_step: as
            :func:`~sparsetrain.enforcement.make_enforcer`.
        auto: hold a Linear sparse only where :func:`sparse_is_faster` says so (else: every Linear it can hold).

    Attributes:
        layers: name -> the :class:`~sparsetrain.sparse.TrainableSparseLinear` holding that weight.
        dense_masks: name -> bool mask of the tensors on the masked-dense path.
        dense: the enforcer of those tensors (None when there are none).
    """

    _transient = ("_ready",)

    def __init__(self, model: nn.Module, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 source: MaskSource, *, auto: bool = False, mask_gradients: bool = True,
                 fused_step: bool = True) -> None:
        super().__init__(params, optimizer, source, mask_gradients=mask_gradients, fused_step=fused_step)
        if optimizer is None:
            raise ValueError("backend='sparse' needs the optimizer: it swaps the held weights for their active "
                             "values in it and counts its steps")
        if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
            raise ValueError("backend='sparse' replaces Linear modules in the model: build the sparsifier on the "
                             "model itself, then wrap it in DistributedDataParallel")
        self.model = model
        self.auto = auto
        self.layers: dict[str, TrainableSparseLinear] = {}
        self.dense_masks: dict[str, Tensor] = {}
        self.dense: DenseMaskEnforcer | None = None
        self.view = SparseMasks(self)
        #: name -> (parent module, attribute) of the nn.Linear that can hold it; the others, name -> why not.
        self._slots: dict[str, tuple[nn.Module, str]] = {}
        self._why_dense: dict[str, str] = {}
        self._find_slots()
        self._laid_out = False
        #: name -> the (input, output gradient) pairs of the last optimizer step's backward passes.
        self._ready: dict[str, list[tuple[Tensor, Tensor]]] = {}

    def _find_slots(self) -> None:
        """Which sparsified tensors an nn.Linear holds that can be replaced (pure: nothing changes)."""
        uses: dict[int, int] = {}
        for _, param in self.model.named_parameters(remove_duplicate=False):
            uses[id(param)] = uses.get(id(param), 0) + 1
        for name, param in self.params.items():
            module_name, _, local = name.rpartition(".")
            module = self.model.get_submodule(module_name) if module_name else self.model
            parent_name, _, attribute = module_name.rpartition(".")
            parent = self.model.get_submodule(parent_name) if module_name else None
            if type(module) is not nn.Linear or local != "weight":
                self._why_dense[name] = f"a {type(module).__name__}'s {local}"
            elif parent is None:
                self._why_dense[name] = "the model itself"
            elif isinstance(parent, nn.MultiheadAttention):
                self._why_dense[name] = "read directly by MultiheadAttention"
            elif uses[id(param)] > 1:
                self._why_dense[name] = "tied to another module"
            elif param.dtype not in (torch.float32, torch.float64):
                self._why_dense[name] = f"dtype {param.dtype}"
            else:
                self._slots[name] = (parent, attribute)

    # -- the boundary ---------------------------------------------------------------------------------------------
    @property  # type: ignore[override]
    def optimizer_steps(self) -> int:
        return self._optimizer_steps

    @optimizer_steps.setter
    def optimizer_steps(self, value: int) -> None:
        # The masked-dense part counts the same steps with its own hook; a restored count goes to both.
        self._optimizer_steps = value
        dense = self.__dict__.get("dense")
        if dense is not None:
            dense.optimizer_steps = value

    def on_gradients(self, callback: GradientCallback) -> None:
        super().on_gradients(callback)
        if self.dense is not None:
            self.dense.on_gradients(callback)

    def attach(self) -> None:
        super().attach()
        self._arm()

    def _hook(self) -> None:
        if self.optimizer is not None and not self._hooks:
            self._hooks = [self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                           self.optimizer.register_step_post_hook(self._after_optimizer_step)]
        if self.dense is not None:
            self.dense.attach()

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self.dense is not None:
            self.dense.detach()
        for layer in self.layers.values():
            layer.keep_grad_inputs = False
            layer.clear_grad_inputs()
        self._ready = {}

    def apply(self, masks: Mapping[str, Tensor | FlatMask], *, also_zero: Mapping[str, Tensor] | None = None,
              refresh: bool = True) -> Mapping[str, Tensor]:
        if not self._laid_out:
            self._lay_out(masks)
        elif masks is not self.view:
            for name, layer in self.layers.items():
                reset = (also_zero or {}).get(name)
                wanted = masks[name]
                if reset is not None or not torch.equal(active_positions(wanted).to(layer.weight_crow_indices.device),
                                                        layer.flat_indices()):
                    layer.apply_mask(as_bool(wanted, self.device(name)), self.optimizer, reset=reset)
        if self.dense is not None:
            if masks is self.view:
                dense = self.dense_masks
            else:
                dense = {name: as_bool(masks[name], self.device(name)) for name in self.dense.params}
            zero = {name: z for name, z in also_zero.items() if name in dense} if also_zero else None
            self.dense_masks = dict(self.dense.apply(dense, also_zero=zero, refresh=refresh))
        self._arm()
        return self.view

    def gradients_finite(self) -> bool:
        grads = [layer.weight_values.grad for layer in self.layers.values() if layer.weight_values.grad is not None]
        if grads and not bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()):
            return False
        return self.dense is None or self.dense.gradients_finite()

    def device(self, name: str) -> torch.device:
        layer = self.layers.get(name)
        return layer.weight_values.device if layer is not None else self.params[name].device

    # -- laying the storage out -------------------------------------------------------------------------------------
    def _lay_out(self, masks: Mapping[str, Tensor | FlatMask]) -> None:
        """Split the tensors between the storages and move the held ones into sparse layers."""
        held = []
        for name, param in self.params.items():
            if name not in self._slots:
                continue
            mask = masks[name]
            count = mask.count() if isinstance(mask, FlatMask) else int(torch.count_nonzero(mask))
            density = count / param.numel()
            if self.auto and not sparse_is_faster(tuple(param.shape), density, param.dtype, param.device):
                self._why_dense[name] = f"auto: density {density:.3f}, {param.numel()} weights"
                continue
            held.append(name)
        for name, param in self.params.items():
            if name not in held and param.is_meta:
                raise ValueError(f"{name} is on the meta device but stays on the masked-dense path "
                                 f"({self._why_dense.get(name)}): only Linear weights held sparse are materialised")
        for name in held:
            self._hold(name, masks[name])
        dense_params = {name: param for name, param in self.params.items() if name not in self.layers}
        self.dense_masks = {name: as_bool(masks[name], param.device) for name, param in dense_params.items()}
        if dense_params:
            self.dense = DenseMaskEnforcer(dense_params, self.optimizer, _DenseSource(self),
                                           mask_gradients=self.mask_gradients, fused_step=self.fused_step)
            self.dense.exclusive = False  # this enforcer holds the optimizer and the tensors
            self.dense.optimizer_steps = self.optimizer_steps
            for callback in self._gradient_callbacks:
                self.dense.on_gradients(callback)
            if self.attached:
                self.dense.attach()
        self.masks_every_step = self.dense is not None and self.dense.masks_every_step
        self._laid_out = True
        logger.info("%s: %d tensor(s) held sparse (%s); %d on the masked-dense path (%s)", type(self.source).__name__,
                    len(self.layers), ", ".join(self.layers) or "-", len(dense_params),
                    ", ".join(f"{name}: {self._why_dense[name]}" for name in dense_params) or "-")

    def _hold(self, name: str, mask: Tensor | FlatMask) -> None:
        """Replace the nn.Linear of ``name`` by a TrainableSparseLinear with the active weights of ``mask``."""
        parent, attribute = self._slots[name]
        weight = getattr(parent, attribute).weight
        layer = held_layers.hold(getattr(parent, attribute), mask, self.optimizer)
        setattr(parent, attribute, layer)
        self.params[name] = torch.empty(weight.shape, dtype=weight.dtype, device="meta")
        self.layers[name] = layer

    # -- the optimizer hooks ----------------------------------------------------------------------------------------
    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self.check_step_order(step_closure(optimizer, args, kwargs)[1])

    def _trained_tensors(self) -> Iterable[Tensor]:
        held = [layer.weight_values for layer in self.layers.values()]
        return held + [param for name, param in self.params.items() if name not in self.layers]

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        self._optimizer_steps += 1  # not through the setter: the masked-dense part's own hook counts this step
        if not self.layers:  # "auto" chose the masked-dense path for everything: its own hooks do the rest
            return
        self._ready = {name: layer.take_grad_inputs() for name, layer in self.layers.items() if layer.keep_grad_inputs}
        if self._gradient_callbacks and self._ready:
            grads = _DenseGradients(self)
            for callback in self._gradient_callbacks:
                callback(grads)
        if not self.source.needs_dense_gradient(self.optimizer_steps):
            self._ready = {}
        self._arm()

    def _arm(self) -> None:
        """Keep the layers' inputs and output gradients during the next step's backward if it needs them."""
        keep = bool(self._gradient_callbacks) or self.source.needs_dense_gradient(self.optimizer_steps + 1)
        for layer in self.layers.values():
            layer.keep_grad_inputs = keep

    # -- topology ---------------------------------------------------------------------------------------------------
    def random_masks(self, sparsity: float, distribution: str, generator: torch.Generator, *, scope: str,
                     fixed: Mapping[str, float], pattern: NMPattern | None = None,
                     layouts: Mapping[str, NMLayout] | None = None) -> dict[str, Tensor | FlatMask]:
        _refuse_pattern(pattern)
        flat = self.layers if self._laid_out else self._slots
        return random_masks(self.params, sparsity, distribution, generator, scope=scope, fixed=fixed, flat=flat)

    def drop_and_grow(self, masks: Mapping[str, Tensor], fraction: float, growth: Growth,
                      generator: torch.Generator, *, mode: str, rounding: str,
                      groups: Mapping[str, Groups] | None = None) -> tuple[Mapping[str, Tensor], dict[str, Tensor]]:
        _refuse_pattern(next(iter(groups.values())).pattern if groups else None)
        dense_params = self.dense.params if self.dense is not None else {}
        if growth == "gradient" and not self._ready and all(p.grad is None for p in dense_params.values()):
            warn_no_gradient()
        dense_growth = growth_scores(dense_params, growth, generator, warn=False)
        reset: dict[str, Tensor] = {}
        for name in self.params:  # the order of the dense path: random growth draws tensor by tensor
            if name in self.layers:
                held_layers.drop_and_grow_layer(name, self.layers[name], self._ready.get(name), fraction, growth,
                                                generator, self.optimizer, mode=mode, rounding=rounding)
                continue
            new, zeroed = regrow({name: masks[name]}, {name: dense_params[name].detach().abs()}, dense_growth,
                                 fraction, mode=mode, rounding=rounding)
            self.dense_masks[name] = new[name]
            reset.update(zeroed)
        self._ready = {}
        return self.view, reset

    @torch.no_grad()
    def prune(self, masks: Mapping[str, Tensor], wanted: Budget) -> Mapping[str, Tensor]:
        scores: dict[str, Tensor] = {}
        eligible: dict[str, Tensor] = {}
        for name, param in self.params.items():
            layer = self.layers.get(name)
            if layer is not None:  # only active weights are stored: all of them are eligible
                scores[name] = layer.weight_values.detach().abs()
                eligible[name] = torch.ones_like(scores[name], dtype=torch.bool)
            else:
                scores[name], eligible[name] = param.detach().abs(), masks[name]
        kept = keep_top(scores, wanted, eligible=eligible)
        for name, keep in kept.items():
            layer = self.layers.get(name)
            if layer is None:
                self.dense_masks[name] = keep
            elif not bool(keep.all()):
                layer.replace(keep, torch.empty(0, dtype=torch.int64), self.optimizer)
        return self.view

    def track_active(self, masks: Mapping[str, Tensor]) -> MutableMapping[str, Tensor]:
        record = PackedMasks({name: tuple(p.shape) for name, p in self.params.items()},
                             {name: self.device(name) for name in self.params})
        self.record_active(record, masks)
        return record  # type: ignore[return-value]  # read-only mapping; grows through record_active

    def record_active(self, record: MutableMapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
        assert isinstance(record, PackedMasks)
        for name in self.params:
            if masks is self.view:
                record.add(name, self.view.positions(name))
            else:
                record.add(name, active_positions(masks[name]))

    @torch.no_grad()
    def scale_to_active_fan_in(self, masks: Mapping[str, Tensor | FlatMask]) -> dict[str, float]:
        """Lay the storage out for ``masks`` now, then scale each held layer's values row by row (a row's active
        count is its fan-in) and the masked-dense tensors as the dense path does."""
        if not self._laid_out:
            self._lay_out(masks)
        applied: dict[str, float] = {}
        for name, layer in self.layers.items():
            factor = held_layers.scale_to_active_fan_in(layer)
            if factor is not None:
                applied[name] = factor
        if self.dense is not None:
            applied.update(self.dense.scale_to_active_fan_in(self.dense_masks))
        return {name: applied[name] for name in self.params if name in applied}

    def sparsity_report(self, notes: Mapping[str, str] | None = None) -> SparsityReport:
        rows = []
        for name, param in self.params.items():
            layer = self.layers.get(name)
            tensor = layer.weight_values if layer is not None else param
            rows.append(LayerSparsity(name, tuple(param.shape), param.numel(), int(torch.count_nonzero(tensor)),
                                      (notes or {}).get(name, "")))
        return SparsityReport(rows)

    def dense_gradients(self) -> Mapping[str, Tensor | None]:
        """The masked-dense tensors' gradients; None for the held layers, whose dense gradient exists only in row
        blocks during the update (a topology event then has no ``grad_share`` for them)."""
        return {name: None if name in self.layers else param.grad for name, param in self.params.items()}

    @torch.no_grad()
    def export(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        result = {}
        for name in list(self.layers):
            layer = self.layers.pop(name)
            parent, attribute = self._slots[name]
            linear, result[name] = held_layers.release(layer, self.optimizer)
            setattr(parent, attribute, linear)
            self.params[name] = linear.weight
        if self.dense is not None:
            result.update(self.dense.export(self.dense_masks))
        return {name: result[name] for name in self.params}


def _sparse_enforcer(auto: bool):  # noqa: ANN202
    def build(model: nn.Module, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
              source: MaskSource, *, mask_gradients: bool, fused_step: bool) -> MaskEnforcer:
        return SparseEnforcer(model, params, optimizer, source, auto=auto, mask_gradients=mask_gradients,
                              fused_step=fused_step)
    return build


register_backend("sparse", _sparse_enforcer(auto=False))
register_backend("auto", _sparse_enforcer(auto=True))
