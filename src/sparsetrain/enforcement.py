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

A second storage (weights stored sparse: only the active entries and their optimizer state kept) implements the
same interface: :meth:`~MaskEnforcer.apply` re-lays the storage out for new masks (grown entries at zero),
:meth:`~MaskEnforcer.attach` takes over the optimizer's step, ``optimizer_steps`` counts steps, and the dense
gradient is materialised only on the steps where ``source.is_update_step`` asks for it.
"""

from __future__ import annotations

import gc
import logging
import weakref
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from .fused_step import MaskedStep
from .masks import apply_masks
from .optim_state import mask_optimizer_state
from .validation import check_bool_masks

__all__ = ["MaskSource", "MaskEnforcer", "DenseMaskEnforcer", "GradientCallback"]

logger = logging.getLogger(__name__)

#: ``callback(params)``, run once per optimizer step when the gradients exist and before they are masked.
GradientCallback = Callable[[Mapping[str, nn.Parameter]], None]

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
    """Forget the registrations of ``enforcer`` (see :func:`claim`)."""
    keys = ([enforcer.optimizer] if enforcer.optimizer is not None else []) + list(enforcer.params.values())
    for key in keys:
        entry = _OWNERS.get(id(key))
        if entry is not None and entry[0]() is key and entry[1]() is enforcer:
            del _OWNERS[id(key)]


class MaskSource(Protocol):
    """What an enforcer reads from its sparsifier: the masks now, and the update schedule."""

    masks: dict[str, Tensor]

    def is_update_step(self, step: int) -> bool: ...


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
    attached: bool = False
    name: str = "sparsifier"

    def __init__(self, params: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 source: MaskSource, *, mask_gradients: bool = True, fused_step: bool = True) -> None:
        self.params = params
        self.optimizer = optimizer
        self.source = source
        self.mask_gradients = mask_gradients
        self.fused_step = fused_step
        self.optimizer_steps = 0
        self.masks_every_step = not mask_gradients or optimizer is None
        self._gradient_callbacks: list[GradientCallback] = []

    def note_idle_step(self) -> None:
        """The source's step() found no optimizer step since its last one (a skipped step, or a call out of
        order); an enforcer may check which at the next optimizer step. Default: nothing."""

    def on_gradients(self, callback: GradientCallback) -> None:
        """Call ``callback(params)`` at every optimizer step, once the gradients exist and before any masking."""
        self._gradient_callbacks.append(callback)

    @abstractmethod
    def attach(self) -> None:
        """Start enforcing: hook the optimizer (idempotent)."""

    @abstractmethod
    def detach(self) -> None:
        """Stop enforcing: the model and optimizer go on as plain PyTorch objects."""

    @abstractmethod
    def apply(self, masks: Mapping[str, Tensor], *, also_zero: Mapping[str, Tensor] | None = None,
              refresh: bool = True) -> None:
        """Make the weights and their optimizer state follow ``masks`` now.

        Args:
            masks: name -> bool mask.
            also_zero: name -> bool positions that restart at zero too (grown weights and their state).
            refresh: the masks may have been edited in place (rebuild anything derived from them).
        """

    @abstractmethod
    def gradients_finite(self) -> bool:
        """Whether every sparsified gradient is finite (a topology update on a non-finite one is skipped)."""


class DenseMaskEnforcer(MaskEnforcer):
    """Bool masks over dense weights, kept by optimizer hooks (see the module docstring)."""

    def __init__(self, params: Mapping[str, nn.Parameter], optimizer: torch.optim.Optimizer | None,
                 source: MaskSource, *, mask_gradients: bool = True, fused_step: bool = True) -> None:
        super().__init__(params, optimizer, source, mask_gradients=mask_gradients, fused_step=fused_step)
        self.name = type(source).__name__
        self._hooks: list[Any] = []
        # A source.step() that found no new optimizer step leaves (parameter, its gradient, the gradient's version)
        # here; the next optimizer step checks that a backward pass ran in between (see note_idle_step).
        self._idle: tuple[nn.Parameter, Tensor, int] | None = None
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
    def attach(self) -> None:
        if self.attached:
            return
        claim(self)
        if self.optimizer is not None:
            self._hooks = [
                self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                self.optimizer.register_step_post_hook(self._after_optimizer_step),
            ]
        self.attached = True

    def detach(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks = []
        if self.attached:
            release(self)
        self.attached = False

    def note_idle_step(self) -> None:
        """The source's step() ran with no optimizer step since its last one: remember the gradients, so that
        the next optimizer step can tell a skipped step (GradScaler; a backward pass comes in between) from a
        source step called before ``optimizer.step()`` (nothing in between)."""
        param = next((p for p in self.params.values() if p.grad is not None), None)
        self._idle = None if param is None else (param, param.grad, param.grad._version)

    def apply(self, masks: Mapping[str, Tensor], *, also_zero: Mapping[str, Tensor] | None = None,
              refresh: bool = True) -> None:
        multipliers = self._current_multipliers(masks, refresh)
        if also_zero:
            multipliers = dict(multipliers)
            for name, where in also_zero.items():
                multipliers[name] = (masks[name] & ~where).to(self.params[name].dtype)
        apply_masks(self.params, multipliers)
        mask_optimizer_state(self.optimizer, self.params, multipliers)
        if self._all_fused:
            self._drop_multipliers()

    def gradients_finite(self) -> bool:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return True
        # The 2-norm is NaN or inf when some entry is (or, harmlessly, when a gradient is so large that its squares
        # overflow float32: the update is then skipped too); one pass, ~8x faster than the max-abs norm on CPU.
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())

    # -- the optimizer hooks ----------------------------------------------------------------------------------------
    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # torch passes ``args`` with the optimizer itself first; a positional closure comes next.
        first = 1 if args and args[0] is optimizer else 0
        closure = kwargs.get("closure", args[first] if len(args) > first else None)
        self._held_grads = []
        if self._idle is not None:
            param, grad, version = self._idle
            self._idle = None
            if closure is None and param.grad is grad and grad._version == version:
                raise RuntimeError(f"{self.name}.step() was called before optimizer.step(), with this step's "
                                   "gradients already computed: call it right after optimizer.step() (otherwise "
                                   "each topology update comes one step late and the run's last update is never "
                                   "masked)")
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
        for callback in self._gradient_callbacks:
            callback(self.params)
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

    # -- copies -----------------------------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_hooks"] = []  # hook handles do not copy; the copy re-hooks its own optimizer
        state["_held_grads"] = []
        state["_idle"] = None
        state["_checked_masks"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        attached = state.get("attached", bool(state["_hooks"]))
        self.__dict__.update({**state, "_hooks": [], "attached": False})
        if attached:
            self.attach()
