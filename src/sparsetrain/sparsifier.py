"""The sparsifier base: the optimizer-like contract every method shares.

A method is constructed on a model and its optimizer, and ``step()`` is called once per optimizer step, right
after ``optimizer.step()``::

    sparsifier = sparsetrain.GraNet(model, optimizer, sparsity=0.9, total_steps=T)
    ...
    loss.backward(); optimizer.step(); sparsifier.step(); optimizer.zero_grad()

How pruned weights stay exactly zero cheaply: an optimizer *step pre-hook* zeroes the gradients of inactive
weights before the optimizer runs. With a zero weight, a zero gradient and zero optimizer state, every
``torch.optim`` update (momentum, Nesterov, coupled or decoupled weight decay, Adam moments) leaves the weight at
zero, so on ordinary steps the weights and the state need no masking at all. On a topology-update step the
gradients are left dense (RigL and GraNet grow by the dense gradient), and after the update the weights and the
optimizer state are masked in full. ``mask_gradients=False`` selects the plain path instead: weights and state
are masked after every step, as the official GraNet code does; both give identical weights.

The fused step (``fused_step=True``, the default, used when possible): masking the gradients is itself a pass over
memory, so for ``torch.optim.SGD``, ``Adam`` and ``AdamW`` (foreach or for-loop, and Adam/AdamW ``fused=True``;
float32 CPU; details in :mod:`sparsetrain.fused_step`) the pre-hook runs the
optimizer's update of the sparsified tensors in one native pass that reads the mask and uses ``grad * mask``
without writing it back (:mod:`sparsetrain.fused_step`), with bit-identical results; those parameters' ``.grad``
is set to None for the duration of ``optimizer.step()`` so that PyTorch updates only the rest (biases,
normalisation layers) and restored afterwards. On that path ``.grad`` after ``optimizer.step()`` holds the
*unmasked* gradient of the sparsified tensors (only its active entries were used). Other optimizers and options,
a closure, GradScaler's ``grad_scale``/``found_inf`` arguments, or no C compiler fall back to masking the gradients.

Steps are counted in optimizer steps: the sparsifier counts ``optimizer.step()`` calls with a post-hook, so a
step that ``GradScaler`` skips (non-finite gradients) is not counted and changes nothing. A topology update
whose gradients are not finite is skipped too.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from .distributions import allocate, check_distribution
from .fused_step import MaskedStep
from .masks import SparsityReport, apply_masks, random_masks, resolve_overrides, select_prunable, sparsity_report
from .optim_state import mask_optimizer_state

__all__ = ["Sparsifier", "check_bool", "check_choice", "check_fraction", "check_sparsity", "check_positive_int"]

logger = logging.getLogger(__name__)

_STATE_VERSION = 1


def check_sparsity(name: str, value: Any) -> float:
    """A sparsity must be a real number in [0, 1)."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
        raise ValueError(f"{name}={value!r} is not allowed: a sparsity must be a number in [0, 1)")
    return float(value)


def check_fraction(name: str, value: Any) -> float:
    """A drop fraction must be a real number in (0, 1]."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= 1.0:
        raise ValueError(f"{name}={value!r} is not allowed: a fraction must be a number in (0, 1]")
    return float(value)


def check_positive_int(name: str, value: Any) -> int:
    """Step counts must be positive integers."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{name}={value!r} is not allowed: it must be a positive int")
    if value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed: it must be a positive int (> 0)")
    return value


def check_bool(name: str, value: Any) -> bool:
    """Switches must be real bools: ``bool("no")`` is True, so strings and numbers are refused."""
    if not isinstance(value, bool):
        raise TypeError(f"{name}={value!r} is not allowed: it must be True or False")
    return value


def check_choice(name: str, value: Any, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ValueError(f"{name}={value!r} is not allowed; choose one of {', '.join(map(repr, allowed))}")
    return value


class Sparsifier:
    """Base of every method: masks, step counting, masking of weights and optimizer state, state dict.

    Subclasses set ``method`` and override :meth:`initial_masks`, :meth:`is_update_step` and :meth:`update`.

    Args:
        model: any ``nn.Module``.
        optimizer: its optimizer (any ``torch.optim.Optimizer``), or None to mask weights only.
        sparsity: final target sparsity in [0, 1).
        total_steps: number of optimizer steps in the run (> 0); schedules are fractions of it.
        distribution: layer-wise allocation, one of "uniform", "er", "erk", "global".
        update_every: ΔT, optimizer steps between topology updates.
        include / exclude: parameter names or regexes (full match) to sparsify instead of / remove from the
            default selection (see :func:`sparsetrain.masks.select_prunable`).
        sparsity_overrides: name or regex -> sparsity pinned for those tensors.
        dense_first / dense_last: keep the first / last sparsified tensor dense.
        seed: seeds the sparsifier's own CPU generator (random masks, random growth).
        mask_gradients: the fast path (see module docstring); False masks weights and state every step.
        fused_step: with ``mask_gradients``, run the optimizer's update of the sparsified tensors in one native
            masked pass when the optimizer and its options allow it (see module docstring); False always masks
            the gradients and lets the optimizer do the whole step.
    """

    method: ClassVar[str] = "base"

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        sparsity: float,
        total_steps: int,
        distribution: str = "erk",
        update_every: int = 100,
        include: str | Iterable[str] | None = None,
        exclude: str | Iterable[str] | None = None,
        sparsity_overrides: Mapping[str, float] | None = None,
        dense_first: bool = False,
        dense_last: bool = False,
        seed: int = 0,
        mask_gradients: bool = True,
        fused_step: bool = True,
    ) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if optimizer is not None and not isinstance(optimizer, torch.optim.Optimizer):
            raise TypeError(f"optimizer must be a torch.optim.Optimizer or None, got {type(optimizer).__name__}")
        self.sparsity = check_sparsity("sparsity", sparsity)
        self.total_steps = check_positive_int("total_steps", total_steps)
        self.distribution = check_distribution(distribution)
        self.update_every = check_positive_int("update_every", update_every)
        if isinstance(seed, bool) or not isinstance(seed, int):
            raise TypeError(f"seed={seed!r} is not allowed: it must be an int")
        self.model = model
        self.optimizer = optimizer
        for switch, value in (("dense_first", dense_first), ("dense_last", dense_last),
                              ("mask_gradients", mask_gradients), ("fused_step", fused_step)):
            check_bool(switch, value)
        self.params: dict[str, nn.Parameter] = select_prunable(model, include=include, exclude=exclude)
        self.fixed = resolve_overrides(
            list(self.params), sparsity_overrides, dense_first=dense_first, dense_last=dense_last
        )
        self.mask_gradients = bool(mask_gradients)
        self.fused_step = bool(fused_step)
        self.generator = torch.Generator().manual_seed(seed)
        self.config: dict[str, Any] = {
            "sparsity": self.sparsity, "total_steps": self.total_steps, "distribution": self.distribution,
            "update_every": self.update_every, "include": include, "exclude": exclude,
            "sparsity_overrides": dict(sparsity_overrides or {}), "dense_first": dense_first,
            "dense_last": dense_last, "seed": seed, "mask_gradients": self.mask_gradients,
            "fused_step": self.fused_step,
        }
        self.step_count = 0
        self._optimizer_steps = 0
        self._hooks: list[Any] = []
        self.masks: dict[str, Tensor] = {}
        self.ever_active: dict[str, Tensor] = {}
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

    # -- set-up, called by subclasses at the end of their __init__ -------------------------------------------------
    def _start(self) -> None:
        """Draw the initial masks, zero the pruned weights and state, and hook the optimizer."""
        self.masks = self.initial_masks()
        self.ever_active = {name: mask.clone() for name, mask in self.masks.items()}
        self.apply_masks()
        if self.optimizer is not None:
            self._hooks = [
                self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                self.optimizer.register_step_post_hook(self._after_optimizer_step),
            ]
        logger.info("%s: %d tensors sparsified, sparsity %.4f at step 0", type(self).__name__, len(self.masks),
                    self.current_sparsity())

    # -- what subclasses define -----------------------------------------------------------------------------------
    def initial_masks(self) -> dict[str, Tensor]:
        """Masks at step 0. Default: all dense."""
        return {name: torch.ones_like(p, dtype=torch.bool) for name, p in self.params.items()}

    def is_update_step(self, step: int) -> bool:
        """Whether the topology changes after optimizer step ``step`` (1-based). Default: never."""
        return False

    def update(self, step: int) -> dict[str, Tensor]:
        """Change ``self.masks`` in place for step ``step``; return positions whose weights and state restart at 0."""
        return {}

    # -- shared helpers for subclasses ----------------------------------------------------------------------------
    def random_masks(self, sparsity: float, distribution: str) -> dict[str, Tensor]:
        """Random masks with exact counts (see :func:`sparsetrain.masks.random_masks`)."""
        return random_masks(self.params, sparsity, distribution, self.generator, fixed=self.fixed)

    def allocation(self, sparsity: float, distribution: str | None = None) -> dict[str, int]:
        """Nonzeros per tensor at ``sparsity`` under a static distribution (overrides pinned)."""
        shapes = {name: tuple(p.shape) for name, p in self.params.items()}
        return allocate(shapes, sparsity, distribution or self.distribution, fixed=self.fixed)

    # -- the loop -----------------------------------------------------------------------------------------------
    def _before_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> Any:
        # torch passes ``args`` with the optimizer itself first; a positional closure comes next.
        first = 1 if args and args[0] is optimizer else 0
        closure = kwargs.get("closure", args[first] if len(args) > first else None)
        self._held_grads = []
        if closure is None:
            # GradScaler hands fused optimizers the scale: the gradients are still scaled, leave them to torch.
            self._prepare_gradients(fusable="grad_scale" not in kwargs and "found_inf" not in kwargs)
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
        if not self.mask_gradients or self.is_update_step(self._optimizer_steps + 1):
            return
        names = [n for n in self.masks if self.params[n].grad is not None]
        if not names:
            return
        stepper = self._fused_stepper() if fusable else None
        self._all_fused = False
        self._log_path("fused" if stepper is not None else "masked gradients")
        if stepper is not None:
            done = {id(p) for p in stepper.run(self.params, {n: self.masks[n] for n in names})}
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
            multipliers = self._current_multipliers()
            torch._foreach_mul_([self.params[n].grad for n in names], [multipliers[n] for n in names])

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
                logger.info("%s: fused optimizer step not used: %s", type(self).__name__, reason)
            return None
        if self._masked_step is None or self._masked_step.optimizer is not self.optimizer:
            self._masked_step = MaskedStep(self.optimizer)
        return self._masked_step

    def _log_path(self, path: str) -> None:
        if path != self._logged_path:
            logger.info("%s: ordinary steps use the %s path", type(self).__name__, path)
            self._logged_path = path

    def _after_optimizer_step(self, optimizer: torch.optim.Optimizer, args: Any, kwargs: Any) -> None:
        for param, grad in self._held_grads:
            param.grad = grad
        self._held_grads = []
        self._optimizer_steps += 1

    def step(self) -> bool:
        """Advance one optimizer step; update the topology on update steps. Call after ``optimizer.step()``.

        Returns:
            True if the topology changed at this step.
        """
        missed = False
        if self.optimizer is not None:
            if self._optimizer_steps == self.step_count:
                logger.debug("optimizer.step() did not run since the last call (skipped step): nothing to do")
                return False
            missed = self._optimizer_steps - self.step_count > 1
            if missed:
                # An update step's gradients were left dense for growth; without its step() call the pruned
                # weights moved. Re-mask so they are exactly zero again (the missed update itself is lost).
                logger.warning("sparsifier.step() was not called after %d optimizer step(s); call it after every "
                               "optimizer.step()", self._optimizer_steps - self.step_count - 1)
            self.step_count = self._optimizer_steps
        else:
            self.step_count += 1
        update_step = self.is_update_step(self.step_count)
        if update_step:
            if self._gradients_finite():
                reset = self.update(self.step_count)
                for name, mask in self.masks.items():
                    self.ever_active[name] |= mask
                # One pass zeroes both the inactive positions and the newly grown ones (weights and state).
                self.apply_masks(also_zero=reset)
                if self._all_fused:
                    self._drop_multipliers()
                return True
            logger.warning("step %d: non-finite (or overflowing) gradients, topology update skipped", self.step_count)
        if update_step or missed or not self.mask_gradients or self.optimizer is None:
            self.apply_masks(refresh=False)
        return False

    def _gradients_finite(self) -> bool:
        grads = [p.grad for p in self.params.values() if p.grad is not None]
        if not grads:
            return True
        # The 2-norm is NaN or inf when some entry is (or, harmlessly, when a gradient is so large that its squares
        # overflow float32: the update is then skipped too); one pass, ~8x faster than the max-abs norm on CPU.
        return bool(torch.isfinite(torch.stack(torch._foreach_norm(grads))).all())


    def _current_multipliers(self, refresh: bool = False) -> dict[str, Tensor]:
        """The masks in their parameters' dtypes, rebuilt when asked or when a mask tensor was replaced."""
        sources = self._multiplier_sources
        if refresh or sources.keys() != self.masks.keys() or any(sources[n] is not m for n, m in self.masks.items()):
            self._multipliers = {n: m.to(self.params[n].dtype) for n, m in self.masks.items()}
            self._multiplier_sources = dict(self.masks)
        return self._multipliers

    def apply_masks(self, refresh: bool = True, also_zero: Mapping[str, Tensor] | None = None) -> None:
        """Zero the weights and the optimizer state outside the masks.

        Args:
            refresh: rebuild the cached multipliers from ``self.masks`` first (needed after editing a mask in
                place; the per-step plain path skips it).
            also_zero: name -> bool positions zeroed as well (newly grown weights start at zero with zero
                optimizer state), in the same pass.
        """
        multipliers = self._current_multipliers(refresh)
        if also_zero:
            multipliers = dict(multipliers)
            for name, where in also_zero.items():
                multipliers[name] = (self.masks[name] & ~where).to(self.params[name].dtype)
        apply_masks(self.params, multipliers)
        mask_optimizer_state(self.optimizer, self.params, multipliers)

    # -- inspection -----------------------------------------------------------------------------------------------
    def current_sparsity(self) -> float:
        """Sparsity of the masks over all sparsified tensors."""
        total = sum(m.numel() for m in self.masks.values())
        return 1.0 - sum(int(torch.count_nonzero(m)) for m in self.masks.values()) / total

    def itop_rate(self) -> float:
        """In-time over-parameterization rate: fraction of sparsified weights ever active so far."""
        total = sum(m.numel() for m in self.ever_active.values())
        return sum(int(torch.count_nonzero(m)) for m in self.ever_active.values()) / total

    def report(self) -> SparsityReport:
        """Per-tensor shape, nonzeros and sparsity measured from the weights."""
        return sparsity_report(self.params)

    # -- persistence ----------------------------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Masks, step, generator state and config: everything needed for an exact resume."""
        return {
            "version": _STATE_VERSION,
            "method": self.method,
            "config": self._portable_config(),
            "step": self.step_count,
            "masks": {n: m.detach().cpu().clone() for n, m in self.masks.items()},
            "ever_active": {n: m.detach().cpu().clone() for n, m in self.ever_active.items()},
            "generator": self.generator.get_state(),
            "extra": self._extra_state(),
        }

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Raises:
            ValueError: the state belongs to another method, or its tensor names or shapes do not fit.
        """
        if not isinstance(state, Mapping) or "masks" not in state or "method" not in state:
            raise ValueError("not a sparsetrain sparsifier state (expected keys 'method', 'masks', 'step', ...)")
        if state["method"] != self.method:
            raise ValueError(f"the state is for method {state['method']!r}, this sparsifier is {self.method!r}")
        names, theirs = set(self.params), set(state["masks"])
        if names != theirs:
            missing, unexpected = sorted(names - theirs), sorted(theirs - names)
            raise ValueError(f"the state's masks do not fit the model: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for name, mask in state["masks"].items():
            if tuple(mask.shape) != tuple(self.params[name].shape):
                raise ValueError(f"mask {name!r} has shape {tuple(mask.shape)}, the parameter has "
                                 f"{tuple(self.params[name].shape)}")
        for key in ("sparsity", "total_steps"):
            if key in state.get("config", {}) and state["config"][key] != self.config[key]:
                logger.warning("loaded state has %s=%r, this sparsifier has %r", key, state["config"][key],
                               self.config[key])
        self.masks = {n: state["masks"][n].to(device=self.params[n].device, dtype=torch.bool) for n in self.params}
        self.ever_active = {
            n: state.get("ever_active", state["masks"])[n].to(device=self.params[n].device, dtype=torch.bool)
            for n in self.params
        }
        self.step_count = self._optimizer_steps = int(state["step"])
        self.generator.set_state(state["generator"])
        self._load_extra_state(state.get("extra", {}))
        self.apply_masks()

    def _portable_config(self) -> dict[str, Any]:
        def portable(value: Any) -> Any:
            if isinstance(value, (list, tuple)):
                return [portable(v) for v in value]
            if isinstance(value, dict):
                return {str(k): portable(v) for k, v in value.items()}
            return value
        return portable(self.config)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, extra: Mapping[str, Any]) -> None:
        return None

    # -- leaving ------------------------------------------------------------------------------------------------
    def remove(self) -> None:
        """Detach the optimizer hooks; the model and optimizer go on as plain PyTorch objects."""
        for handle in self._hooks:
            handle.remove()
        self._hooks = []

    def export(self) -> nn.Module:
        """Bake the masks into the weights, detach from the optimizer, and return the plain model.

        Pruned weights become ``+0.0`` (masking by multiplication leaves ``-0.0`` where a weight was negative,
        which costs a sign bit per zero in :func:`sparsetrain.export_sparse`'s bit-exact files).
        """
        self.apply_masks()
        with torch.no_grad():
            for name, mask in self.masks.items():
                self.params[name].masked_fill_(~mask, 0.0)
        self.remove()
        return self.model

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(sparsity={self.sparsity}, total_steps={self.total_steps}, "
                f"distribution={self.distribution!r}, update_every={self.update_every}, step={self.step_count}, "
                f"tensors={len(self.params)})")

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_hooks"] = bool(self._hooks)  # hook handles do not copy; the copy re-hooks its own optimizer
        state["generator"] = self.generator.get_state()
        state["_held_grads"] = []
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        generator = torch.Generator()
        generator.set_state(state["generator"])
        state["generator"] = generator
        hooked = state["_hooks"]
        state["_hooks"] = []
        for key, default in (("fused_step", True), ("_masked_step", None), ("_held_grads", []),
                             ("_logged_path", None), ("_all_fused", False)):
            state.setdefault(key, default)  # pickles from before the fused step
        self.__dict__.update(state)
        if hooked and self.optimizer is not None:
            self._hooks = [
                self.optimizer.register_step_pre_hook(self._before_optimizer_step),
                self.optimizer.register_step_post_hook(self._after_optimizer_step),
            ]
