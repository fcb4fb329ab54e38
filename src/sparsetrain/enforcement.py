"""Mask enforcement: keeping the weights outside the masks at zero through every optimizer step.

A method chooses masks; an *enforcer* makes the model and its optimizer obey them. The two meet at one boundary,
:class:`MaskEnforcer`: the sparsifier hands it the masks after every topology update (:meth:`MaskEnforcer.apply`)
and reads from it how many optimizer steps ran; the enforcer asks the sparsifier (its *source*: anything with
``masks`` and ``is_update_step(step)``) which masks hold now and whether the coming step's gradients must stay
dense for growth. Methods never touch hooks, gradients or optimizer state themselves; a method that needs the
gradients of every step (SNFS's momentum) registers a callback with :meth:`MaskEnforcer.on_gradients`.

:class:`DenseMaskEnforcer` is the storage used today: bool masks over dense weights. How it keeps pruned weights at
exactly zero cheaply: an optimizer *step pre-hook* zeroes the gradients of inactive weights before the optimizer
runs. With a zero weight, a zero gradient and zero optimizer state, every ``torch.optim`` update (momentum,
Nesterov, coupled or decoupled weight decay, Adam moments) leaves the weight at zero, so on ordinary steps the
weights and the state need no masking at all. On a topology-update step the gradients are left dense (RigL and
GraNet grow by the dense gradient), and after the update the weights and the optimizer state are masked in full.
``mask_gradients=False`` selects the plain path instead: weights and state are masked after every step, as the
official GraNet code does; both give identical weights.

The fused step (``fused_step=True``, used when possible): masking the gradients is itself a pass over memory, so
for ``torch.optim.SGD``, ``Adam`` and ``AdamW`` (foreach or for-loop, and Adam/AdamW ``fused=True``; float32 CPU;
details in :mod:`sparsetrain.fused_step`) the pre-hook runs the optimizer's update of the sparsified tensors in one
native pass that reads the mask and uses ``grad * mask`` without writing it back, with bit-identical results;
those parameters' ``.grad`` is set to None for the duration of ``optimizer.step()`` so that PyTorch updates only
the rest (biases, normalisation layers) and restored afterwards. On that path ``.grad`` after
``optimizer.step()`` holds the *unmasked* gradient of the sparsified tensors (only its active entries were used).
Other optimizers and options, a closure, GradScaler's ``grad_scale``/``found_inf`` arguments, or no C compiler
fall back to masking the gradients.

Steps are counted in optimizer steps by a post-hook, so a step that ``GradScaler`` skips (non-finite gradients)
is not counted and changes nothing.

Topology updates are carried out by the enforcer too, because they read the weights where they live: a method says
*what* to do (drop the smallest magnitudes and grow by a :data:`~sparsetrain.scores.Growth`, prune by magnitude
under a :class:`~sparsetrain.selection.Budget`, draw random masks) and the enforcer does it on its storage
(:meth:`MaskEnforcer.drop_and_grow`, :meth:`~MaskEnforcer.prune`, :meth:`~MaskEnforcer.random_masks`). Here that is
the pure functions of :mod:`sparsetrain.updates` and :mod:`sparsetrain.selection` on dense score tensors. The
second storage, :class:`sparsetrain.sparse.backend.SparseEnforcer` (Linear layers that store only their active weights),
implements the same boundary: :meth:`~MaskEnforcer.apply` re-lays the storage out for new masks, the topology
operations choose the same masks from the active values and from row blocks of the dense score, and the dense
gradient is materialised only for the steps where ``source.needs_dense_gradient`` asks for it. The masks a
sparsifier holds are whatever :meth:`~MaskEnforcer.apply` returns: here the dict it was given.
"""

from __future__ import annotations

import gc
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from typing import Any, ClassVar, Protocol

import torch
from torch import Tensor, nn

from .fused_step import MaskedStep
from .masks import FlatMask, SparsityReport, apply_masks, random_masks, sparsity_report
from .optim_state import mask_optimizer_state
from .scores import Growth, growth_scores, magnitude_scores
from .nm import NMLayout, NMPattern
from .selection import Budget, Groups, keep_top
from .sparse_init import scale_to_active_fan_in
from .updates import regrow
from .validation import check_bool_masks

__all__ = ["MaskSource", "MaskEnforcer", "DenseMaskEnforcer", "GradientCallback", "BACKENDS", "EnforcerFactory",
           "register_backend", "make_enforcer"]

logger = logging.getLogger(__name__)

#: ``callback(grads)``, run once per optimizer step with name -> dense gradient of the sparsified tensors that have
#: one (before any masking).
GradientCallback = Callable[[Mapping[str, Tensor]], None]

#: The attached enforcer of each optimizer and each sparsified parameter, by ``id`` (tensors compare elementwise,
#: so they cannot be dictionary keys), both held weakly: two enforcers on one optimizer, or on one parameter,
#: would each undo the other's masks.
_OWNERS: dict[int, tuple[weakref.ReferenceType[Any], weakref.ReferenceType[MaskEnforcer]]] = {}


def _owner(key: Any) -> MaskEnforcer | None:
    entry = _OWNERS.get(id(key))
    if entry is None or entry[0]() is not key:  # a dead object whose id was reused
        return None
    enforcer = entry[1]()
    return enforcer if enforcer is not None and enforcer.attached else None


def claim(enforcer: MaskEnforcer) -> None:
    """Register ``enforcer`` as the one enforcer of its optimizer and of each of its parameters.

    Raises:
        ValueError: another attached enforcer (another sparsifier) holds the optimizer or one of the parameters.
    """
    keys = ([(enforcer.optimizer, "optimizer")] if enforcer.optimizer is not None else []) + \
        [(param, f"parameter {name!r}") for name, param in enforcer.params.items()]
    for attempt in range(2):
        clash = next(((what, other) for key, what in keys
                      if (other := _owner(key)) is not None and other is not enforcer), None)
        if clash is None:
            break
        if attempt == 0:
            gc.collect()  # an unreachable sparsifier in a reference cycle still counts until it is collected
    else:
        what, other = clash
        raise ValueError(f"{what} is already driven by another sparsifier ({other.name} on "
                         f"{len(other.params)} tensors); two sparsifiers on one optimizer or one parameter undo each "
                         "other's masks: call remove() or export() on the other first")
    for stale in [k for k, (obj, owner) in _OWNERS.items() if obj() is None or owner() is None]:
        del _OWNERS[stale]
    ref = weakref.ref(enforcer)
    for key, _ in keys:
        _OWNERS[id(key)] = (weakref.ref(key), ref)


def release(enforcer: MaskEnforcer) -> None:
    """Forget the registrations of ``enforcer`` (see :func:`claim`; sparse storage may have replaced the tensors it
    claimed since)."""
    for key in [key for key, (_, owner) in _OWNERS.items() if owner() is enforcer]:
        del _OWNERS[key]


def step_closure(optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> tuple[int, Any]:
    """In an optimizer step pre-hook, where a positional closure sits in ``args`` and the closure (None without one).

    torch passes ``args`` with the optimizer itself first; a positional closure comes next.

    Returns:
        ``(position, closure)``.
    """
    first = 1 if args and args[0] is optimizer else 0
    return first, kwargs.get("closure", args[first] if len(args) > first else None)


class MaskSource(Protocol):
    """What an enforcer reads from its sparsifier: the masks now, and the update schedule."""

    masks: Mapping[str, Tensor]

    def is_update_step(self, step: int) -> bool: ...

    def needs_dense_gradient(self, step: int) -> bool: ...


class MaskEnforcer(ABC):
    """The boundary between a method, which chooses masks, and the storage that enforces them.

    Args:
        params: name -> the sparsified parameters.
        optimizer: their optimizer, or None (then :meth:`apply` after every step is all there is).
        source: the sparsifier: ``source.masks`` and ``source.is_update_step(step)``.
        mask_gradients: keep pruned weights at zero through their gradients (else mask after every step).
        fused_step: with ``mask_gradients``, run the sparsified tensors' update in one native pass when possible.

    Attributes:
        optimizer_steps: ``optimizer.step()`` calls counted so far (or restored from a checkpoint).
        masks_every_step: whether the weights must be masked after every step (no optimizer, or the plain path).
        attached: between :meth:`attach` and :meth:`detach`.
        name: the source's class name, for messages.
    """

    optimizer_steps: int
    masks_every_step: bool
    #: Whether :meth:`attach` claims the optimizer and the tensors for this enforcer alone (:func:`claim`); False
    #: for a part of another enforcer that shares its optimizer (sparse storage's masked-dense part).
    exclusive: bool = True
    attached: bool = False
    #: Attributes that a copy (deepcopy, pickle) starts empty: objects of this process's current step.
    _transient: ClassVar[tuple[str, ...]] = ()

    def __init__(self, params: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 source: MaskSource, *, mask_gradients: bool = True, fused_step: bool = True) -> None:
        self.params = params
        self.optimizer = optimizer
        self.source = source
        self.mask_gradients = mask_gradients
        self.fused_step = fused_step
        self.optimizer_steps = 0
        self.masks_every_step = not mask_gradients or optimizer is None
        self.name = type(source).__name__
        self._gradient_callbacks: list[GradientCallback] = []
        self._hooks: list[Any] = []
        # A source.step() that found no new optimizer step leaves (tensor, its gradient, the gradient's version)
        # here; the next optimizer step checks that a backward pass ran in between (see note_idle_step).
        self._idle: tuple[Tensor, Tensor, int] | None = None

    def note_idle_step(self) -> None:
        """The source's step() ran with no optimizer step since its last one: remember the gradients, so that
        the next optimizer step can tell a skipped step (GradScaler; a backward pass comes in between) from a
        source step called before ``optimizer.step()`` (nothing in between, see :meth:`check_step_order`)."""
        tensor = next((t for t in self._trained_tensors() if t.grad is not None), None)
        self._idle = None if tensor is None else (tensor, tensor.grad, tensor.grad._version)

    def check_step_order(self, closure: Any) -> None:
        """At an optimizer step, before it runs: refuse a source step that came between this step's backward pass
        and ``optimizer.step()`` (:meth:`note_idle_step`). O(1).

        Raises:
            RuntimeError: the source's step() was called before ``optimizer.step()``.
        """
        if self._idle is None:
            return
        tensor, grad, version = self._idle
        self._idle = None
        if closure is None and tensor.grad is grad and grad._version == version:
            raise RuntimeError(f"{self.name}.step() was called before optimizer.step(), with this step's "
                               "gradients already computed: call it right after optimizer.step() (otherwise "
                               "each topology update comes one step late and the run's last update is never "
                               "masked)")

    def _trained_tensors(self) -> Iterable[Tensor]:
        """The tensors the optimizer updates for the sparsified ones (their gradients tell a backward pass)."""
        return self.params.values()

    def on_gradients(self, callback: GradientCallback) -> None:
        """Call ``callback(params)`` at every optimizer step, once the gradients exist and before any masking."""
        self._gradient_callbacks.append(callback)

    def attach(self) -> None:
        """Start enforcing (idempotent): claim the optimizer and the tensors for this enforcer alone (another
        sparsifier's are refused before anything is touched, :func:`claim`), then hook the optimizer.

        Raises:
            ValueError: another attached sparsifier drives the optimizer or one of the tensors.
        """
        if self.attached:
            return
        if self.exclusive:
            claim(self)
        self._hook()
        self.attached = True

    def detach(self) -> None:
        """Stop enforcing: the model and optimizer go on as plain PyTorch objects (and may get another sparsifier)."""
        self._unhook()
        if self.attached:
            release(self)
        self.attached = False

    @abstractmethod
    def apply(self, masks: Mapping[str, Tensor | FlatMask], *, also_zero: Mapping[str, Tensor] | None = None,
              refresh: bool = True) -> Mapping[str, Tensor]:
        """Make the weights and their optimizer state follow ``masks`` now.

        Args:
            masks: name -> bool mask (or :class:`~sparsetrain.masks.FlatMask`, from :meth:`random_masks`).
            also_zero: name -> bool positions that restart at zero too (grown weights and their state).
            refresh: the masks may have been edited in place (rebuild anything derived from them).

        Returns:
            The masks the sparsifier holds from now on (name -> bool tensor).
        """

    @abstractmethod
    def gradients_finite(self) -> bool:
        """Whether every sparsified gradient is finite (a topology update on a non-finite one is skipped)."""

    # -- topology: a method's update, carried out where the weights live -------------------------------------------
    @abstractmethod
    def random_masks(self, sparsity: float, distribution: str, generator: torch.Generator, *, scope: str,
                     fixed: Mapping[str, float], pattern: NMPattern | None = None,
                     layouts: Mapping[str, NMLayout] | None = None) -> dict[str, Tensor | FlatMask]:
        """Random masks with exact counts (:func:`sparsetrain.masks.random_masks`, N:M under ``pattern``), in the
        form :meth:`apply` takes best (a :class:`~sparsetrain.masks.FlatMask` where no bool tensor should be
        built)."""

    @abstractmethod
    def drop_and_grow(self, masks: Mapping[str, Tensor], fraction: float, growth: Growth,
                      generator: torch.Generator, *, mode: str, rounding: str,
                      groups: Mapping[str, Groups] | None = None) -> tuple[Mapping[str, Tensor], dict[str, Tensor]]:
        """Per tensor, drop ``fraction`` of the active weights with the smallest magnitude and grow as many by
        ``growth`` (:func:`sparsetrain.updates.regrow`; the tensors in ``groups`` keep their N:M pattern).

        Returns:
            ``(masks, reset)``: the masks after the update, and name -> positions whose weights and optimizer state
            must restart at zero (for :meth:`apply`'s ``also_zero``; empty where the storage already did it).
        """

    @abstractmethod
    def prune(self, masks: Mapping[str, Tensor], wanted: Budget) -> Mapping[str, Tensor]:
        """Keep the largest magnitudes among the active weights under ``wanted``
        (:func:`sparsetrain.selection.keep_top` with the masks as the eligible entries); returns the new masks."""

    @abstractmethod
    def track_active(self, masks: Mapping[str, Tensor]) -> MutableMapping[str, Tensor]:
        """A new record of the positions ever active (name -> bool mask), starting from ``masks``."""

    @abstractmethod
    def record_active(self, record: MutableMapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
        """Add ``masks`` to a record from :meth:`track_active`."""

    @abstractmethod
    def scale_to_active_fan_in(self, masks: Mapping[str, Tensor | FlatMask]) -> dict[str, float]:
        """Before the first :meth:`apply`: rescale each unit's initial weights to its active fan-in under ``masks``
        (:func:`sparsetrain.sparse_init.scale_to_active_fan_in`); returns name -> RMS factor of the rescaled
        tensors."""

    @abstractmethod
    def sparsity_report(self, notes: Mapping[str, str] | None = None) -> SparsityReport:
        """Per-tensor shape, nonzeros and sparsity measured from the weights (``notes``: name -> text in the rows)."""

    @abstractmethod
    def dense_gradients(self) -> Mapping[str, Tensor | None]:
        """name -> the dense gradient the last topology update saw (None where there is none), for its event."""

    @abstractmethod
    def export(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        """Bake the masks into dense weights (pruned entries ``+0.0``); every tensor ends in dense storage, in the
        model and in the optimizer. Returns the masks as bool tensors."""

    def device(self, name: str) -> torch.device:
        """The device of the sparsified tensor ``name``."""
        return self.params[name].device

    # -- hooks and copies ---------------------------------------------------------------------------------------
    @abstractmethod
    def _hook(self) -> None:
        """Register this enforcer's optimizer hooks, keeping their handles in ``_hooks`` (idempotent)."""

    @abstractmethod
    def _unhook(self) -> None:
        """Remove the hooks of :meth:`_hook`."""

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_hooks"] = []  # hook handles do not copy; an attached enforcer's copy attaches to its own optimizer
        state["_idle"] = None
        for name in self._transient:
            state[name] = type(state[name])()
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        attached = state.get("attached", False)
        self.__dict__.update({**state, "_hooks": [], "attached": False})
        if attached:  # claim and hook only: the source may not be restored yet (a subclass's attach may read it)
            MaskEnforcer.attach(self)


class DenseMaskEnforcer(MaskEnforcer):
    """Bool masks over dense weights, kept by optimizer hooks (see the module docstring)."""

    _transient = ("_held_grads", "_checked_masks")

    def __init__(self, params: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 source: MaskSource, *, mask_gradients: bool = True, fused_step: bool = True) -> None:
        super().__init__(params, optimizer, source, mask_gradients=mask_gradients, fused_step=fused_step)
        self._checked_masks: dict[str, Tensor] = {}
        # The masks in each parameter's dtype: multiplying by a float tensor is about twice as fast as by a bool
        # one, and this runs on every step. Rebuilt whenever the masks change.
        self._multipliers: dict[str, Tensor] = {}
        self._multiplier_sources: dict[str, Tensor] = {}
        # The fused step: its stepper (built on first use), the gradients hidden from the optimizer during one
        # step, and the last path logged.
        self._masked_step: MaskedStep | None = None
        self._held_grads: list[tuple[Tensor, Tensor]] = []
        self._logged_path: str | None = None
        self._all_fused = False  # the last ordinary step ran every sparsified tensor through the kernel

    # -- the boundary ---------------------------------------------------------------------------------------------
    def _hook(self) -> None:
        if self.optimizer is not None and not self._hooks:
            self._hooks = [
                self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                self.optimizer.register_step_post_hook(self._after_optimizer_step),
            ]

    def _unhook(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def apply(self, masks: Mapping[str, Tensor | FlatMask], *, also_zero: Mapping[str, Tensor] | None = None,
              refresh: bool = True) -> Mapping[str, Tensor]:
        if any(isinstance(mask, FlatMask) for mask in masks.values()):
            masks = {n: m.to_bool(self.params[n].device) if isinstance(m, FlatMask) else m for n, m in masks.items()}
        multipliers = self._current_multipliers(masks, refresh)
        if also_zero:
            multipliers = dict(multipliers)
            for name, where in also_zero.items():
                multipliers[name] = (masks[name] & ~where).to(self.params[name].dtype)
        apply_masks(self.params, multipliers)
        mask_optimizer_state(self.optimizer, self.params, multipliers)
        if self._all_fused:
            self._drop_multipliers()
        return masks

    def gradients_finite(self) -> bool:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return True
        # The 2-norm is NaN or inf when some entry is (or, harmlessly, when a gradient is so large that its squares
        # overflow float32: the update is then skipped too); one pass, ~8x faster than the max-abs norm on CPU.
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    # -- topology -------------------------------------------------------------------------------------------------
    def random_masks(self, sparsity: float, distribution: str, generator: torch.Generator, *, scope: str,
                     fixed: Mapping[str, float], pattern: NMPattern | None = None,
                     layouts: Mapping[str, NMLayout] | None = None) -> dict[str, Tensor | FlatMask]:
        return random_masks(self.params, sparsity, distribution, generator, scope=scope, fixed=fixed,
                            pattern=pattern, layouts=layouts)

    def drop_and_grow(self, masks: Mapping[str, Tensor], fraction: float, growth: Growth,
                      generator: torch.Generator, *, mode: str, rounding: str,
                      groups: Mapping[str, Groups] | None = None) -> tuple[Mapping[str, Tensor], dict[str, Tensor]]:
        return regrow(masks, magnitude_scores(self.params), growth_scores(self.params, growth, generator), fraction,
                      mode=mode, rounding=rounding, groups=groups)

    def prune(self, masks: Mapping[str, Tensor], wanted: Budget) -> Mapping[str, Tensor]:
        return keep_top(magnitude_scores(self.params), wanted, eligible=masks)

    def track_active(self, masks: Mapping[str, Tensor]) -> MutableMapping[str, Tensor]:
        return {name: mask.clone() for name, mask in masks.items()}

    def record_active(self, record: MutableMapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
        for name, mask in masks.items():
            record[name] |= mask

    def scale_to_active_fan_in(self, masks: Mapping[str, Tensor | FlatMask]) -> dict[str, float]:
        return scale_to_active_fan_in(self.params, masks)

    def sparsity_report(self, notes: Mapping[str, str] | None = None) -> SparsityReport:
        return sparsity_report(self.params, notes=notes)

    def dense_gradients(self) -> Mapping[str, Tensor | None]:
        return {name: param.grad for name, param in self.params.items()}

    @torch.no_grad()
    def export(self, masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
        self.apply(masks, refresh=False)
        # Masking by multiplication leaves -0.0 where a weight was negative: +0.0 saves a sign bit per zero in
        # export_sparse's bit-exact files.
        for name, mask in masks.items():
            self.params[name].masked_fill_(~mask, 0.0)
        return dict(masks)

    # -- the optimizer hooks ----------------------------------------------------------------------------------------
    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        first, closure = step_closure(optimizer, args, kwargs)
        self._held_grads = []
        self.check_step_order(closure)
        if closure is None:
            # GradScaler hands fused optimizers the scale (as keyword arguments, or since torch 2.4 as the optimizer's
            # grad_scale / found_inf attributes): the gradients are still scaled, leave them to torch.
            scaled = any(key in kwargs or getattr(optimizer, key, None) is not None
                         for key in ("grad_scale", "found_inf"))
            self._prepare_gradients(fusable=not scaled)
            return None

        # With a closure (Lightning, LBFGS) the gradients only exist once the closure has run inside step().
        def closure_then_prepare() -> Any:
            loss = closure()
            self._prepare_gradients(fusable=False)
            return loss

        if "closure" in kwargs:
            return args, {**kwargs, "closure": closure_then_prepare}
        return (*args[:first], closure_then_prepare, *args[first + 1:]), kwargs

    def _prepare_gradients(self, fusable: bool = True) -> None:
        """Runs once this step's gradients exist, before the optimizer reads them: mask inactive gradients.

        On the fused path the sparsified tensors are updated here instead, and hidden from the optimizer's step.
        """
        if self._gradient_callbacks:
            grads = {name: p.grad for name, p in self.params.items() if p.grad is not None}
            for callback in self._gradient_callbacks:
                callback(grads)
        if not self.mask_gradients or self.source.is_update_step(self.optimizer_steps + 1):
            return
        masks = self.source.masks
        names = [n for n in masks if self.params[n].grad is not None]
        if not names:
            return
        self.check_masks(masks)
        stepper = self._fused_stepper() if fusable else None
        self._all_fused = False
        self._log_path("fused" if stepper is not None else "masked gradients")
        if stepper is not None:
            done = {id(p) for p in stepper.run(self.params, {n: masks[n] for n in names})}
            for name in names:
                param = self.params[name]
                if id(param) in done:
                    self._held_grads.append((param, param.grad))
                    param.grad = None
            names = [n for n in names if id(self.params[n]) not in done]
            self._all_fused = not names
            if self._all_fused:
                self._drop_multipliers()
        if names:
            multipliers = self._current_multipliers(masks)
            torch._foreach_mul_([self.params[n].grad for n in names], [multipliers[n] for n in names])

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for param, grad in self._held_grads:
            param.grad = grad
        self._held_grads = []
        self.optimizer_steps += 1

    # -- helpers --------------------------------------------------------------------------------------------------
    def check_masks(self, masks: Mapping[str, Tensor]) -> None:
        """Raise unless ``masks`` are bool tensors of the parameters' shapes (each mask tensor checked once).

        Raises:
            TypeError: a mask that is not a bool tensor (a float 0/1 mask would be taken as weights to multiply).
            ValueError: a mask of another shape than its parameter, or for a tensor this enforcer does not hold.
        """
        checked = self._checked_masks
        if checked.keys() == masks.keys() and all(checked[n] is m for n, m in masks.items()):
            return
        check_bool_masks(masks, "masks")
        for name, mask in masks.items():
            if name not in self.params:
                raise ValueError(f"masks: {name!r} is not one of the {len(self.params)} sparsified tensors")
            if mask.shape != self.params[name].shape:
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter has "
                                 f"{tuple(self.params[name].shape)}")
        self._checked_masks = dict(masks)

    def _current_multipliers(self, masks: Mapping[str, Tensor], refresh: bool = False) -> dict[str, Tensor]:
        """The masks in their parameters' dtypes, rebuilt when asked or when a mask tensor was replaced."""
        sources = self._multiplier_sources
        if refresh or sources.keys() != masks.keys() or any(sources[n] is not m for n, m in masks.items()):
            self.check_masks(masks)
            self._multipliers = {n: m.to(self.params[n].dtype) for n, m in masks.items()}
            self._multiplier_sources = dict(masks)
        return self._multipliers

    def _drop_multipliers(self) -> None:
        """Free the float copies of the masks (4 bytes per weight) while the fused kernel, which reads the bool
        masks, serves every sparsified tensor; they are rebuilt when an update step or a fallback needs them."""
        self._multipliers, self._multiplier_sources = {}, {}

    def _fused_stepper(self) -> MaskedStep | None:
        """The fused step's runner when it can serve the optimizer as configured now, else None."""
        if not self.fused_step or self.optimizer is None:
            return None
        reason = MaskedStep.unsupported(self.optimizer)
        if reason is not None:
            if self._logged_path is None:
                logger.info("%s: fused optimizer step not used: %s", self.name, reason)
            return None
        if self._masked_step is None or self._masked_step.optimizer is not self.optimizer:
            self._masked_step = MaskedStep(self.optimizer)
        return self._masked_step

    def _log_path(self, path: str) -> None:
        if path != self._logged_path:
            logger.info("%s: ordinary steps use the %s path", self.name, path)
            self._logged_path = path


#: The storage backends a sparsifier's ``backend`` option takes: "dense" here, "sparse" and "auto" registered by
#: :mod:`sparsetrain.sparse.backend` (the sparse package sits above the core, so the core does not import it).
BACKENDS = ("dense", "sparse", "auto")


class EnforcerFactory(Protocol):
    """Builds the enforcer of a storage backend (:func:`register_backend`)."""

    def __call__(self, model: nn.Module, params: dict[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 source: MaskSource, *, mask_gradients: bool, fused_step: bool) -> MaskEnforcer: ...


_FACTORIES: dict[str, EnforcerFactory] = {}


def register_backend(name: str, factory: EnforcerFactory) -> None:
    """Make ``factory`` build the enforcer of backend ``name`` (one of :data:`BACKENDS`)."""
    if name not in BACKENDS or name == "dense":
        raise ValueError(f"backend={name!r} is not allowed here: choose one of 'sparse', 'auto'")
    _FACTORIES[name] = factory


def make_enforcer(backend: str, model: nn.Module, params: dict[str, nn.Parameter],
                  optimizer: torch.optim.Optimizer | None, source: MaskSource, *, mask_gradients: bool = True,
                  fused_step: bool = True) -> MaskEnforcer:
    """The enforcer of a storage backend: :class:`DenseMaskEnforcer` for "dense", the registered one otherwise
    (:mod:`sparsetrain.sparse.backend`).

    Args:
        backend: one of :data:`BACKENDS`.
        model: the model (sparse storage replaces modules in it at attach).
        params: name -> the sparsified parameters (the sparsifier's own dict: sparse storage puts a ``meta``
            stand-in of the dense shape in place of each weight it holds).
        optimizer / source / mask_gradients / fused_step: as :class:`MaskEnforcer`.

    Raises:
        ValueError: an unknown backend, or what the backend's enforcer refuses (e.g. sparse storage without an
            optimizer or on a DDP wrapper).
    """
    if backend == "dense":
        return DenseMaskEnforcer(params, optimizer, source, mask_gradients=mask_gradients, fused_step=fused_step)
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r} is not allowed: choose one of {', '.join(map(repr, BACKENDS))}")
    if backend not in _FACTORIES:
        raise ValueError(f"backend={backend!r} is not available: import sparsetrain.sparse.backend first")
    return _FACTORIES[backend](model, params, optimizer, source, mask_gradients=mask_gradients,
                               fused_step=fused_step)
