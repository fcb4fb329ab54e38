"""The sparsifier base: the optimizer-like contract every method shares.

A method is constructed on a model and its optimizer, and ``step()`` is called once per optimizer step, right
after ``optimizer.step()``::

    sparsifier = sparsetrain.GraNet(model, optimizer, sparsity=0.9, total_steps=T)
    ...
    loss.backward(); optimizer.step(); sparsifier.step(); optimizer.zero_grad()

Like torch.ao.pruning's ``BaseSparsifier``, a sparsifier is its state (``masks``, the step, a random generator),
``step()``, the method's ``update()`` and ``state_dict()``. Construction happens in two explicit phases:

1. *build*, free of side effects: the options are validated against the method's declaration
   (:mod:`sparsetrain.options`), the tensors to sparsify are selected, and the method's :meth:`setup` derives its
   pure state (schedules, cadences);
2. :meth:`attach`, the one place that touches the model and the optimizer: the initial masks are drawn (or taken
   from ``masks=``), the pruned weights and their optimizer state are zeroed, and the mask enforcer
   (:mod:`sparsetrain.enforcement`) hooks the optimizer.

A method subclass declares its options (``options``, ``option_defaults``) and implements :meth:`setup`,
:meth:`initial_masks`, :meth:`is_update_step` and :meth:`update` (and :meth:`schedule_at` when it has schedules);
it never overrides ``__init__``. Its update changes the topology through the helpers :meth:`drop_and_grow`,
:meth:`prune_by_magnitude` and :meth:`random_masks`, which the enforcer carries out where the weights live, so a
method runs unchanged on either storage backend (``backend``, see :mod:`sparsetrain.sparse.backend`). Steps are counted
in optimizer steps (see :mod:`sparsetrain.enforcement`); a topology update whose gradients are not finite is
skipped.

Every topology update can be watched: ``sparsifier.subscribe(callback)`` calls ``callback(event)`` with a
:class:`~sparsetrain.topology.TopologyEvent` after each update (see :mod:`sparsetrain.topology`). With nobody
subscribed an update step costs one extra truth test; ordinary steps cost nothing.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from .base_options import BASE_OPTIONS
from .distributions import allocate
from .enforcement import MaskEnforcer, make_enforcer
from .itop import pooled_itop
from .masks import (
    FlatMask,
    SparsityReport,
    active_fraction,
    resolve_overrides,
    select_named,
    select_prunable,
    sparsity_report,
    warn_collapsed,
)
from .nm import NMLayout, NMPattern, nm_layouts, nm_report
from .options import REQUIRED, Option, OptionSet, declared
from .scores import Growth
from .selection import Budget, Groups, nm_budget, resolve_scope
from .topology import TopologyCallback, TopologySubscribers, capture_masks, topology_event
from .validation import check_bool_masks, check_optimizer_holds

__all__ = ["Sparsifier"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


class Sparsifier:
    """Base of every method: options, masks, step counting, state dict; enforcement through a mask enforcer.

    Args:
        model: any ``nn.Module``.
        optimizer: its optimizer (any ``torch.optim.Optimizer``), or None to mask weights only.
        **options: the method's options (:meth:`declared_options`): its own and the base options below.

    Base options (every method accepts them; declared, checked and documented in full in
    :mod:`sparsetrain.base_options`): ``sparsity``, ``total_steps``, ``distribution``, ``scope``, ``update_every``,
    ``include`` / ``exclude``, ``sparsity_overrides``, ``dense_first`` / ``dense_last``, ``seed``,
    ``mask_gradients``, ``fused_step``, ``sparse_init``, ``masks``, ``pattern`` and ``backend``.
    """

    method: ClassVar[str] = "base"
    #: The options this class adds to (or replaces in) its bases' declaration.
    options: ClassVar[tuple[Option, ...]] = BASE_OPTIONS
    #: name -> default: this class's defaults for options declared by a base.
    option_defaults: ClassVar[Mapping[str, Any]] = {}

    _declaration: ClassVar[OptionSet]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._declaration = declared(cls)
        cls.__signature__ = cls._declaration.signature()

    @classmethod
    def declared_options(cls) -> OptionSet:
        """The options of this method: its own and its bases', with this class's defaults."""
        return cls._declaration

    @classmethod
    def starts_sparse(cls, options: Mapping[str, Any]) -> bool:
        """Whether the method, given these options, draws a sparse starting mask itself (``sparse_init`` acts on
        it): True unless ``masks`` are given. The run identity (:meth:`OptionSet.identity`) counts ``sparse_init``
        in force only then."""
        return options.get("masks") is None

    @classmethod
    def storage_may_be_sparse(cls, options: Mapping[str, Any]) -> bool:
        """Whether ``backend="auto"`` may hold some of this method's tensors in sparse storage, given these options:
        only a method that attaches with sparse unstructured masks (drawn or given) can, as "auto" decides at
        attach. The run identity names "auto" only then (:meth:`ExperimentConfig.non_default`)."""
        return options.get("pattern") is None and (cls.starts_sparse(options) or options.get("masks") is not None)

    # -- build: no side effects -----------------------------------------------------------------------------------
    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None, **options: Any) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        declaration = self.declared_options()
        values = declaration.validate(options)
        self.model = model
        self.optimizer = optimizer
        #: The option names given explicitly (the others are at their declared defaults).
        self.given = frozenset(options)
        #: Construction-only inputs (options with ``stored=False``), for :meth:`setup` and :meth:`initial_masks`;
        #: emptied by :meth:`attach`.
        self.inputs = {name: values[name] for name, option in declaration.items() if not option.stored}
        given_masks = self.inputs.get("masks")
        if given_masks is None:
            self.params: dict[str, nn.Parameter] = select_prunable(model, include=values["include"],
                                                                   exclude=values["exclude"])
        else:
            self.params = self._select_masked(given_masks, values)
            if values["sparsity"] is REQUIRED and values["pattern"] is None:
                values["sparsity"] = sparsity_report(given_masks).sparsity
        #: Under an N:M pattern: the pattern and every sparsified tensor's layout (its reduction dim, or why it is
        #: kept dense); None and {} otherwise.
        self.pattern: NMPattern | None = None if values["pattern"] is None else NMPattern.parse(values["pattern"])
        self.layouts: dict[str, NMLayout] = {}
        if self.pattern is not None:
            values["sparsity"] = self._pattern_sparsity(values["sparsity"])
            self.layouts = nm_layouts(model, self.params, self.pattern)
        for name, value in values.items():
            if value is REQUIRED:
                raise TypeError(f"{type(self).__name__}: {name} is required" +
                                (" (or masks=..., whose sparsity is then used)" if name == "sparsity" else ""))
        values["scope"], values["distribution"] = resolve_scope(
            values["scope"] if "scope" in options else None,
            values["distribution"] if "distribution" in options else None,
            default_scope=self.default_scope(values), default_distribution=values["distribution"])
        for name, option in declaration.items():
            if option.stored and name != "pattern":
                setattr(self, name, values[name])
        self.config: dict[str, Any] = {name: values[name] for name, option in declaration.items() if option.stored}
        self.fixed = resolve_overrides(list(self.params), values["sparsity_overrides"],
                                       dense_first=values["dense_first"], dense_last=values["dense_last"])
        if not self.params:
            raise ValueError(f"{type(self).__name__}: no tensor to sparsify: the model has no weights of the prunable "
                             "layer types (see sparsetrain.masks.PRUNABLE_MODULES), or include / exclude left none; "
                             "name them with include=[...]")
        check_optimizer_holds(optimizer, self.params)
        self.generator = torch.Generator().manual_seed(values["seed"])
        self.step_count = 0
        self.exported = False
        self._collapsed: set[str] = set()
        self.masks: dict[str, Tensor] = {}
        self.ever_active: dict[str, Tensor] = {}
        #: Who is told about every topology update (:meth:`subscribe`); never copied with the sparsifier.
        self.subscribers = TopologySubscribers()
        if self.pattern is not None and values["backend"] == "sparse":
            raise ValueError(f"{type(self).__name__}: backend='sparse' is not allowed with pattern='{self.pattern}': "
                             "sparse storage trains unstructured masks only (use backend='dense' or 'auto')")
        self.enforcer: MaskEnforcer = self.build_enforcer(values)
        if self.pattern is not None:
            self._check_pattern_inputs(given_masks)
        self.setup()
        self.attach()

    def build_enforcer(self, values: Mapping[str, Any]) -> MaskEnforcer:
        """The mask enforcer of this method: the storage ``backend`` chooses
        (:func:`sparsetrain.enforcement.make_enforcer`; under a pattern always the masked-dense one)."""
        backend = "dense" if self.pattern is not None else values["backend"]
        return make_enforcer(backend, self.model, self.params, self.optimizer, self,
                             mask_gradients=values["mask_gradients"], fused_step=values["fused_step"])

    def _pattern_sparsity(self, sparsity: Any) -> float:
        """The sparsity under the pattern: ``1 - N/M``; a different one given is refused."""
        assert self.pattern is not None
        if sparsity is not REQUIRED and abs(sparsity - self.pattern.sparsity) > 1e-9:
            raise ValueError(f"{type(self).__name__}: sparsity={sparsity!r} is not allowed with pattern="
                             f"'{self.pattern}': its sparsity is 1 - N/M = {self.pattern.sparsity:g} (leave sparsity "
                             "out)")
        return self.pattern.sparsity

    def _check_pattern_inputs(self, given_masks: Mapping[str, Tensor] | None) -> None:
        """Refuse what a pattern leaves without meaning (scope, distribution), pinned sparsities other than 0, and
        given masks that do not follow the pattern."""
        assert self.pattern is not None
        where = f"{type(self).__name__} with pattern='{self.pattern}'"
        for name in ("scope", "distribution"):
            if name in self.given:
                raise ValueError(f"{where}: {name}={self.config[name]!r} is not allowed: every patterned tensor "
                                 "keeps N of every M (leave scope and distribution out)")
        try:
            self.nm_budget()
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        if given_masks is not None:
            report = nm_report(given_masks, self.layouts, self.pattern)
            dense = [name for name in report.dense if not bool(given_masks[name].all())]
            if not report.follows or dense:
                off = [layer.layout.name for layer in report.layers if layer.status == "violates"] + dense
                raise ValueError(f"{where}: masks[{off[0]!r}] does not follow the pattern (every group of "
                                 f"{self.pattern.m} must keep {self.pattern.n}; a tensor that cannot follow it must be "
                                 "all True)")

    def nm_budget(self, pattern: NMPattern | None = None) -> Budget:
        """The budget of ``pattern`` (default: this sparsifier's) over the sparsified tensors: N of every M in each
        patterned tensor, the tensors kept dense whole (:func:`sparsetrain.selection.nm_budget`)."""
        chosen = pattern or self.pattern
        if chosen is None:
            raise ValueError(f"{type(self).__name__} has no pattern")
        return nm_budget(self.layouts, chosen, fixed=self.fixed)

    def _select_masked(self, masks: Mapping[str, Tensor], values: Mapping[str, Any]) -> dict[str, nn.Parameter]:
        """The tensors given masks name, once the masks are checked to fit them."""
        if values["include"] is not None or values["exclude"] is not None:
            raise ValueError("give masks=... or include/exclude, not both: the masks name the tensors to sparsify")
        params = select_named(self.model, masks, "masks")
        for name, param in params.items():
            if tuple(masks[name].shape) != tuple(param.shape):
                raise ValueError(f"masks[{name!r}] has shape {tuple(masks[name].shape)}, the parameter has "
                                 f"{tuple(param.shape)}")
        return params

    def default_scope(self, values: Mapping[str, Any]) -> str:
        """The scope used when neither a scope nor a distribution is given. Default: the declared one."""
        return values["scope"]

    # -- what subclasses define -----------------------------------------------------------------------------------
    def setup(self) -> None:
        """Derive the method's pure state from its options (schedules, cadences); no side effects. Default: none."""

    def initial_masks(self) -> dict[str, Tensor]:
        """Masks at step 0 when none are given (``masks=``). Default: all dense."""
        return {name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()}

    def is_update_step(self, step: int) -> bool:
        """Whether the topology changes after optimizer step ``step`` (1-based). Default: never."""
        return False

    def needs_dense_gradient(self, step: int) -> bool:
        """Whether the update after optimizer step ``step`` reads the dense gradient (growth by |gradient|).

        Sparse storage computes a layer's dense gradient only for such steps (it keeps the layers' inputs and
        output gradients during their backward pass). Default: on every update step; methods whose updates never
        read gradients (pruning, random growth) say False.
        """
        return self.is_update_step(step)

    def update(self, step: int) -> dict[str, Tensor]:
        """Change ``self.masks`` for step ``step``; return positions whose weights and state restart at 0."""
        return {}

    def schedule_at(self, step: int) -> dict[str, float | None]:
        """The schedule values in force at update step ``step``, for its topology event: ``drop_fraction`` (None
        when the method drops nothing at that step) and ``target_sparsity``. Default: no drop fraction, the
        constant ``sparsity``."""
        return {"drop_fraction": None, "target_sparsity": self.sparsity}

    # -- attach: the one place with side effects ------------------------------------------------------------------
    def attach(self) -> None:
        """Draw (or take) the initial masks, rescale a sparse start's weights (``sparse_init``), zero the pruned
        weights and their optimizer state, hook the optimizer."""
        given = self.inputs.get("masks")
        if given is not None:
            masks = {name: given[name].detach().to(param.device).clone() for name, param in self.params.items()}
        else:
            masks = self.initial_masks()
        # First: another sparsifier on this optimizer or these tensors is refused before anything is touched.
        self.enforcer.attach()
        if self.sparse_init == "fan_in" and (given is None or "sparse_init" in self.given):
            scaled = self.enforcer.scale_to_active_fan_in(masks)
            if scaled:
                logger.info("%s: initial weights rescaled to their active fan-in (RMS factor per tensor: %s)",
                            type(self).__name__, ", ".join(f"{n} {f:.2f}" for n, f in scaled.items()))
        self.inputs = {}
        self.masks = self.enforcer.apply(masks)
        self.ever_active = self.enforcer.track_active(self.masks)
        self._warn_collapsed()
        logger.info("%s: %d tensors sparsified, sparsity %.4f at step 0", type(self).__name__, len(self.masks),
                    self.current_sparsity())
        if self.pattern is not None:
            dense = {name: note for name, note in self._pattern_notes().items() if note != str(self.pattern)}
            logger.info("%s: pattern %s on %d of %d tensors; kept dense: %s", type(self).__name__, self.pattern,
                        len(self.masks) - len(dense), len(self.masks),
                        "; ".join(f"{name} ({note.removeprefix('kept dense: ')})" for name, note in dense.items())
                        or "none")

    def _warn_collapsed(self) -> None:
        """Warn (once per tensor) about tensors whose mask keeps no weight: the layer passes nothing on."""
        fresh = [name for name in self.masks if name not in self._collapsed]
        self._collapsed |= set(warn_collapsed(self.masks, f"{type(self).__name__}(sparsity={self.sparsity}) at step "
                                                          f"{self.step_count}", names=fresh, stacklevel=4))

    # -- shared helpers for subclasses ----------------------------------------------------------------------------
    def random_masks(self, sparsity: float, distribution: str | None = None, *, scope: str | None = None,
                     fixed: Mapping[str, float] | None = None,
                     pattern: NMPattern | None = None) -> dict[str, Tensor | FlatMask]:
        """Random masks with exact counts (see :func:`sparsetrain.masks.random_masks`); defaults: this
        sparsifier's distribution, scope, pinned tensors and pattern (N random entries of every M). Sparse storage
        returns a :class:`~sparsetrain.masks.FlatMask` for the layers it will hold (the same mask, never built
        dense)."""
        return self.enforcer.random_masks(sparsity, distribution or self.distribution, self.generator,
                                          scope=scope or self.scope, fixed=self.fixed if fixed is None else fixed,
                                          pattern=pattern or self.pattern, layouts=self.layouts)

    def drop_and_grow(self, fraction: float, growth: Growth, *, mode: str = "keep", rounding: str = "floor",
                      groups: Mapping[str, Groups] | None = None) -> dict[str, Tensor]:
        """Per tensor, drop ``fraction`` of the active weights with the smallest magnitude and grow as many
        (:func:`sparsetrain.updates.regrow`), on whichever storage holds them; updates ``self.masks``.

        Args:
            fraction: the share of each tensor's active weights swapped.
            growth: "gradient" (the dense |gradient| of this step), "random" (this sparsifier's generator) or a
                function of the tensor's name giving its dense growth score (:data:`sparsetrain.scores.Growth`).
            mode: "keep", "zero" or "forbid" (:data:`sparsetrain.updates.REGROW_MODES`).
            rounding: "floor" (RigL's code) or "ceil" (GraNet's code) for the number swapped.
            groups: the N:M groups each patterned tensor keeps (:meth:`nm_budget`'s ``groups``); None: unstructured.

        Returns:
            Positions whose weights and optimizer state restart at zero, for :meth:`update` to return.
        """
        self.masks, reset = self.enforcer.drop_and_grow(self.masks, fraction, growth, self.generator, mode=mode,
                                                        rounding=rounding, groups=groups)
        return reset

    def prune_by_magnitude(self, wanted: Budget) -> None:
        """Keep the largest-magnitude active weights under ``wanted`` (:func:`sparsetrain.selection.keep_top`
        with the masks as the eligible entries: pruning never adds); updates ``self.masks``."""
        self.masks = self.enforcer.prune(self.masks, wanted)

    def allocation(self, sparsity: float, distribution: str | None = None) -> dict[str, int]:
        """Nonzeros per tensor at ``sparsity`` under a distribution in the layer scope (overrides pinned)."""
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        return allocate(shapes, sparsity, distribution or self.distribution, fixed=self.fixed)

    # -- the loop -----------------------------------------------------------------------------------------------
    def step(self) -> bool:
        """Advance one optimizer step; update the topology on update steps. Call after ``optimizer.step()``.

        Returns:
            True if the topology changed at this step.
        """
        enforcer = self.enforcer
        if not enforcer.attached:
            done = "export()" if self.exported else "remove()"
            raise RuntimeError(f"{type(self).__name__}.step() after {done}: the sparsifier no longer holds the model "
                               "(its masks are not enforced); build a new sparsifier to train on sparse")
        missed = False
        if self.optimizer is not None:
            if enforcer.optimizer_steps == self.step_count:
                logger.debug("optimizer.step() did not run since the last call (skipped step): nothing to do")
                enforcer.note_idle_step()
                return False
            missed = enforcer.optimizer_steps - self.step_count > 1
            if missed:
                # An update step's gradients were left dense for growth; without its step() call the pruned
                # weights moved. Re-mask so they are exactly zero again (the missed update itself is lost).
                logger.warning("sparsifier.step() was not called after %d optimizer step(s); call it after every "
                               "optimizer.step()", enforcer.optimizer_steps - self.step_count - 1)
            self.step_count = enforcer.optimizer_steps
        else:
            self.step_count += 1
        if self.is_update_step(self.step_count):
            if enforcer.gradients_finite():
                # A method may edit its masks in place: keep the old ones only when someone will compare them.
                before = capture_masks(self.masks) if self.subscribers else None
                reset = self.update(self.step_count)
                # One pass zeroes both the inactive positions and the newly grown ones (weights and state).
                self.masks = enforcer.apply(self.masks, also_zero=reset)
                enforcer.record_active(self.ever_active, self.masks)
                self._warn_collapsed()
                if before is not None:
                    self._publish(before)
                return True
            logger.warning("step %d: non-finite (or overflowing) gradients, topology update skipped", self.step_count)
            enforcer.apply(self.masks, refresh=False)
        elif missed or enforcer.masks_every_step:
            enforcer.apply(self.masks, refresh=False)
        return False

    def subscribe(self, callback: TopologyCallback) -> RemovableHandle:
        """Call ``callback(event)`` after every topology update, with its :class:`~sparsetrain.topology.TopologyEvent`.

        The callback runs inside :meth:`step`, after the weights and optimizer state follow the new masks; its
        exceptions propagate. Subscriptions are not copied with the sparsifier (``deepcopy``, pickling).

        Args:
            callback: takes the event; its return value is ignored.

        Returns:
            A handle whose ``remove()`` unsubscribes it.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        return self.subscribers.subscribe(callback)

    def _publish(self, before: Mapping[str, Tensor]) -> None:
        """Tell the subscribers what the update at this step did (the gradients are still the dense ones it saw)."""
        step = self.step_count
        grads = self.enforcer.dense_gradients()
        self.subscribers.publish(topology_event(step, before, self.masks, self.ever_active, grads=grads,
                                                **self.schedule_at(step)))

    def apply_masks(self, refresh: bool = True, also_zero: Mapping[str, Tensor] | None = None) -> None:
        """Zero the weights and the optimizer state outside the masks (see :meth:`MaskEnforcer.apply`).

        Args:
            refresh: rebuild anything derived from ``self.masks`` first (needed after editing a mask in place).
            also_zero: name -> bool positions zeroed as well (newly grown weights start at zero with zero
                optimizer state), in the same pass.
        """
        self.masks = self.enforcer.apply(self.masks, also_zero=also_zero, refresh=refresh)

    # -- inspection -----------------------------------------------------------------------------------------------
    def current_sparsity(self) -> float:
        """Sparsity of the masks over all sparsified tensors."""
        return 1.0 - active_fraction(self.masks)

    def itop_rate(self) -> float:
        """In-time over-parameterization rate: fraction of sparsified weights ever active so far
        (:func:`sparsetrain.itop.pooled_itop` of :attr:`ever_active`)."""
        return pooled_itop(self.ever_active)

    def report(self) -> SparsityReport:
        """Per-tensor shape, nonzeros and sparsity measured from the weights; under a pattern each tensor's note
        says whether it follows the pattern or is kept dense (and why)."""
        return self.enforcer.sparsity_report(notes=self._pattern_notes() if self.pattern is not None else None)

    def _pattern_notes(self) -> dict[str, str]:
        """name -> the pattern, or why the tensor is kept dense."""
        groups = self.nm_budget().groups
        return {name: str(self.pattern) if name in groups else
                f"kept dense: {layout.dense_reason or 'pinned dense'}" for name, layout in self.layouts.items()}

    # -- persistence ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks, step, generator state and config: everything needed for an exact resume."""
        return {
            "version": _STATE_VERSION,
            "method": self.method,
            "config": _portable(self.config),
            "step": self.step_count,
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "ever_active": {n: m.detach().cpu().clone() for n, m in self.ever_active.items()},
            "generator": self.generator.get_state(),
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises:
            TypeError: a mask that is not a bool tensor.
            ValueError: the state belongs to another method or another target sparsity, or its tensor names or
                shapes do not fit.
        """
        if not isinstance(state, Mapping) or not isinstance(state.get("masks"), Mapping) or "method" not in state:
            raise ValueError("not a sparsetrain sparsifier state (expected keys 'method', 'masks', 'step', ...)")
        if state["method"] != self.method:
            raise ValueError(f"the state is for method {state['method']!r}, this sparsifier is {self.method!r}")
        check_bool_masks(state["masks"], "state['masks']")
        theirs = state.get("config", {}).get("sparsity")
        if isinstance(theirs, (int, float)) and abs(theirs - self.sparsity) > 1e-12:
            raise ValueError(f"the state is for sparsity={theirs}, this sparsifier has sparsity={self.sparsity}: "
                             f"build it with sparsity={theirs} to continue that state")
        names, theirs = set(self.params), set(state["masks"])
        if names != theirs:
            missing, unexpected = sorted(names - theirs), sorted(theirs - names)
            raise ValueError(f"the state's masks do not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, mask in state["masks"].items():
            if tuple(mask.shape) != tuple(self.params[name].shape):
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter has "
                                 f"{tuple(self.params[name].shape)}")
        if "total_steps" in state.get("config", {}) and state["config"]["total_steps"] != self.total_steps:
            logger.warning("loaded state has total_steps=%r, this sparsifier has %r", state["config"]["total_steps"],
                           self.total_steps)
        device = self.enforcer.device
        masks = {n: state["masks"][n].to(device=device(n), dtype=torch.bool) for n in self.params}
        ever_active = {n: state.get("ever_active", state["masks"])[n].to(device=device(n), dtype=torch.bool)
                       for n in self.params}
        self.step_count = self.enforcer.optimizer_steps = int(state["step"])
        self.generator.set_state(state["generator"])
        self._load_extra_state(state.get("extra", {}))
        self.masks = self.enforcer.apply(masks)
        self.ever_active = self.enforcer.track_active(ever_active)

    def _extra_state(self) -> dict[str, Any]:
        """Method state beyond the masks, saved under ``state_dict()['extra']``."""
        return {}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        return None

    # -- leaving ------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the enforcer's hooks; the model and optimizer go on as plain PyTorch objects (and may get another
        sparsifier). A later :meth:`step` raises."""
        self.enforcer.detach()

    def export(self) -> nn.Module:
        """Bake the masks into the weights, detach from the optimizer, and return the plain model.

        Pruned weights become ``+0.0`` (masking by multiplication leaves ``-0.0`` where a weight was negative,
        which costs a sign bit per zero in :func:`sparsetrain.export_sparse`'s bit-exact files). On sparse storage
        the layers become ``nn.Linear`` again, under their original names, in the model and in the optimizer (its
        state at the active positions carried over), so the exported model is the masked-dense one. A later
        :meth:`step` raises.
        """
        self.remove()
        self.masks = self.enforcer.export(self.masks)
        self.exported = True
        return self.model

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sparsity={self.sparsity}, total_steps={self.total_steps}, "
                f"distribution={self.distribution!r}, scope={self.scope!r}, update_every={self.update_every}, "
                f"step={self.step_count}, tensors={len(self.params)})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["generator"] = self.generator.get_state()
        # Subscribers belong to the live object (loggers, open files): a copy starts with none.
        state.pop("subscribers", None)
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(state["generator"])
        self.__dict__.update({**state, "generator": generator, "subscribers": TopologySubscribers()})


def _portable(value: Any) -> Any:
    """Lists for tuples and string keys, so that the config loads with ``torch.load(weights_only=True)``."""
    if isinstance(value, (list, tuple)):
        return [_portable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _portable(v) for k, v in value.items()}
    return value


Sparsifier._declaration = declared(Sparsifier)
Sparsifier.__signature__ = Sparsifier._declaration.signature()  # type: ignore[attr-defined]
