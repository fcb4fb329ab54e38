"""Topology events: what one topology update did to each sparsified tensor, and who is told about it.

Dynamic sparse training is about how the mask moves (Liu et al. 2021, *Do We Actually Need Dense
Over-Parameterization? In-Time Over-Parameterization in Sparse Training*; Evci et al. 2020, *Rigging the
Lottery*). A :class:`TopologyEvent` records one update: per sparsified tensor the active count, the weights
dropped and grown, the churn against the masks before the update, the ITOP rate so far, the drop fraction and
target sparsity in force, and the share of the dense gradient's squared norm that the grown positions hold.

:func:`topology_event` computes one from the masks before and after the update, the ever-active masks and the
gradients; it reads each tensor a fixed number of times (bool ``&``/``~`` and ``torch.count_nonzero``, one
squared-gradient pass) and synchronises with the device twice, so it costs a small fraction of the update it
describes.

:class:`TopologySubscribers` is the registry a sparsifier owns to publish events (``subscribe(callback)``
returns a handle with ``remove()``, like PyTorch's hooks). Publishing costs one truth test when nobody listens,
and the masks before the update only need capturing when someone does::

    before = capture_masks(self.masks) if self.subscribers else None
    reset = self.update(step)                    # the method changes self.masks
    ...                                          # ever_active |= masks, weights and state masked
    if before is not None:
        self.subscribers.publish(topology_event(step, before, self.masks, self.ever_active, grads=...,
                                                drop_fraction=..., target_sparsity=...))

Subscribers are not copied with their owner (``deepcopy``, pickling): a copy starts with none.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any, overload

import torch
from torch import Tensor
from torch.utils.hooks import RemovableHandle

__all__ = ["LayerTopology", "TopologyEvent", "TopologySubscribers", "capture_masks", "topology_event"]

logger = logging.getLogger(__name__)

TopologyCallback = Callable[["TopologyEvent"], None]


@dataclass(frozen=True)
class LayerTopology:
    """One sparsified tensor in one topology update.

    Attributes:
        numel: the tensor's size.
        active: weights active after the update.
        dropped: weights active before the update and inactive after it.
        grown: weights inactive before the update and active after it.
        churn: Jaccard distance of the masks before and after, ``1 - |M_before ∩ M_after| / |M_before ∪
            M_after|`` (0: unchanged, 1: disjoint; swapping k of n active weights gives ``2k / (n + k)``,
            pruning half of them 0.5). A weight dropped and regrown in the same update counts as neither.
        itop: fraction of the tensor's weights active at least once so far, this update included (ITOP rate).
        drop_fraction: the drop fraction the method used at this update (None when it has none).
        target_sparsity: the sparsity the method's schedule asked for at this update (None when unknown).
        grad_share: squared norm of the dense gradient on the grown positions over that of the whole tensor
            (how much gradient signal the new connections hold; None without a gradient or with an all-zero one).
    """

    numel: int
    active: int
    dropped: int
    grown: int
    churn: float
    itop: float
    drop_fraction: float | None = None
    target_sparsity: float | None = None
    grad_share: float | None = None

    @property
    def density(self) -> float:
        """Active weights over the tensor's size after the update (0.0 for an empty tensor)."""
        return self.active / self.numel if self.numel else 0.0


class _PooledCount:
    """A count of :class:`TopologyEvent` pooled over its tensors: the :class:`LayerTopology` count of the same
    name (``numel``, ``active``, ``dropped``, ``grown``) summed over ``event.layers``. Read-only."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.count = name
        self.__doc__ = f"``{name}`` summed over the event's tensors."

    @overload
    def __get__(self, event: None, owner: type) -> _PooledCount: ...

    @overload
    def __get__(self, event: TopologyEvent, owner: type | None = None) -> int: ...

    def __get__(self, event: TopologyEvent | None, owner: type | None = None) -> int | _PooledCount:
        if event is None:
            return self
        return sum(getattr(layer, self.count) for layer in event.layers.values())


@dataclass(frozen=True)
class TopologyEvent:
    """One topology update of a sparsifier: the optimizer step it followed and its :class:`LayerTopology` per
    sparsified tensor (in the sparsifier's order). Totals pool all tensors."""

    step: int
    layers: dict[str, LayerTopology] = field(default_factory=dict)

    numel = _PooledCount()
    active = _PooledCount()
    dropped = _PooledCount()
    grown = _PooledCount()

    @property
    def density(self) -> float:
        """Active weights over all sparsified weights after the update."""
        numel = self.numel
        return self.active / numel if numel else 0.0

    @property
    def churn(self) -> float:
        """Jaccard distance of the pooled masks before and after (as :attr:`LayerTopology.churn`)."""
        kept = self.active - self.grown
        union = self.active + self.dropped
        return 1.0 - kept / union if union else 0.0

    @property
    def itop(self) -> float:
        """ITOP rate of all sparsified weights pooled (weighted by tensor size)."""
        numel = self.numel
        return sum(layer.itop * layer.numel for layer in self.layers.values()) / numel if numel else 0.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict: the step, the pooled totals (for readers; ignored by :meth:`from_dict`) and the
        per-tensor records."""
        return {"step": self.step, "density": self.density, "churn": self.churn, "itop": self.itop,
                "dropped": self.dropped,
                "grown": self.grown, "layers": {name: asdict(layer) for name, layer in self.layers.items()}}

    @classmethod
    def from_dict(cls, record: Mapping[str, Any]) -> TopologyEvent:
        """The event of a :meth:`to_dict` record (a line of ``topology.jsonl``).

        Raises:
            ValueError: the record has no ``step`` or ``layers``, or a layer lacks a field.
        """
        if "step" not in record or not isinstance(record.get("layers"), Mapping):
            raise ValueError(f"not a topology event record (expected keys 'step' and 'layers'), got keys "
                             f"{sorted(record)[:6]}")
        try:
            layers = {str(name): LayerTopology(**values) for name, values in record["layers"].items()}
        except TypeError as exc:
            raise ValueError(f"topology event at step {record['step']}: a layer record does not fit ({exc})") from None
        return cls(step=int(record["step"]), layers=layers)


def capture_masks(masks: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """A copy of ``masks`` to compare the next update against (a method may edit its masks in place)."""
    return {name: mask.detach().clone() for name, mask in masks.items()}


def _per_tensor(value: float | Mapping[str, float] | None, name: str) -> float | None:
    if value is None or isinstance(value, (int, float)):
        return None if value is None else float(value)
    return float(value[name]) if name in value else None


@torch.no_grad()
def topology_event(
    step: int,
    before: Mapping[str, Tensor],
    after: Mapping[str, Tensor],
    ever_active: Mapping[str, Tensor],
    *,
    grads: Mapping[str, Tensor | None] | None = None,
    drop_fraction: float | Mapping[str, float] | None = None,
    target_sparsity: float | Mapping[str, float] | None = None,
) -> TopologyEvent:
    """Compute the :class:`TopologyEvent` of one update.

    Args:
        step: the optimizer step the update followed (1-based, as ``Sparsifier.step_count``).
        before: the bool masks right before the update (:func:`capture_masks`).
        after: the bool masks after it; same names and shapes.
        ever_active: the union of every mask so far, this update's included (``Sparsifier.ever_active``).
        grads: the dense gradients the update saw, by name (missing or None: no ``grad_share`` for that tensor).
        drop_fraction: the drop fraction in force, one for all tensors or per name.
        target_sparsity: the schedule's target sparsity in force, one for all tensors or per name.

    Returns:
        The event, tensors in the order of ``after``.

    Raises:
        ValueError: the three mask dicts do not hold the same names and shapes.
        TypeError: a mask is not a bool tensor.
    """
    for label, masks in (("before", before), ("ever_active", ever_active)):
        if masks.keys() != after.keys():
            missing, extra = sorted(after.keys() - masks.keys()), sorted(masks.keys() - after.keys())
            raise ValueError(f"{label} must hold the same tensors as after: missing {missing[:5]}, extra {extra[:5]}")
    counts: list[Tensor] = []
    energies: list[Tensor] = []
    for name, new in after.items():
        old, ever = before[name], ever_active[name]
        for label, mask in (("before", old), ("after", new), ("ever_active", ever)):
            if mask.dtype != torch.bool:
                raise TypeError(f"{label}[{name!r}] must be a bool tensor, got dtype {mask.dtype}")
            if mask.shape != new.shape:
                raise ValueError(f"{label}[{name!r}] has shape {tuple(mask.shape)}, after[{name!r}] has "
                                 f"{tuple(new.shape)}")
        old, ever = old.to(new.device), ever.to(new.device)
        counts.append(torch.stack([torch.count_nonzero(old), torch.count_nonzero(new),
                                   torch.count_nonzero(old & new), torch.count_nonzero(ever)]))
        grad = (grads or {}).get(name)
        if grad is not None:
            squared = grad.detach().to(new.device, torch.float32).square()
            energies.append(torch.stack([squared.sum(), torch.where(new & ~old, squared, 0.0).sum()]))
        else:
            energies.append(torch.full((2,), float("nan"), device=new.device))
    # Two transfers for all the numbers: a GPU synchronises twice per event, not once per count.
    device = counts[0].device if counts else None
    count_rows = torch.stack([c.to(device) for c in counts]).tolist() if counts else []
    energy_rows = torch.stack([e.to(device) for e in energies]).tolist() if energies else []
    layers: dict[str, LayerTopology] = {}
    for (name, mask), (n_before, n_after, kept, n_ever), (total, grown_energy) in zip(after.items(), count_rows,
                                                                                         energy_rows):
        union = n_before + n_after - kept
        numel = mask.numel()
        layers[name] = LayerTopology(
            numel=numel, active=n_after, dropped=n_before - kept, grown=n_after - kept,
            churn=1.0 - kept / union if union else 0.0, itop=n_ever / numel if numel else 0.0,
            drop_fraction=_per_tensor(drop_fraction, name), target_sparsity=_per_tensor(target_sparsity, name),
            grad_share=grown_energy / total if total > 0 else None)  # NaN (no gradient) > 0 is False
    return TopologyEvent(step=int(step), layers=layers)


class TopologySubscribers:
    """The callbacks told about every topology update of one sparsifier.

    Example:
        >>> subscribers = TopologySubscribers()
        >>> seen = []
        >>> handle = subscribers.subscribe(seen.append)
        >>> subscribers.publish(TopologyEvent(step=100))
        >>> handle.remove()
        >>> subscribers.publish(TopologyEvent(step=200))
        >>> [event.step for event in seen], bool(subscribers)
        ([100], False)
    """

    def __init__(self) -> None:
        # An OrderedDict, as torch's hooks: RemovableHandle keeps a weak reference to it (a plain dict has none).
        self._callbacks: OrderedDict[int, TopologyCallback] = OrderedDict()

    def subscribe(self, callback: TopologyCallback) -> RemovableHandle:
        """Call ``callback(event)`` after every topology update, in subscription order.

        Args:
            callback: takes a :class:`TopologyEvent`; its return value is ignored and its exceptions propagate
                (a broken logger stops training loudly rather than silently losing the record).

        Returns:
            A handle whose ``remove()`` unsubscribes the callback.

        Raises:
            TypeError: ``callback`` is not callable.
        """
        if not callable(callback):
            raise TypeError(f"callback={callback!r} is not allowed: it must be callable (it gets a TopologyEvent)")
        handle = RemovableHandle(self._callbacks)
        self._callbacks[handle.id] = callback
        return handle

    def publish(self, event: TopologyEvent) -> None:
        """Give ``event`` to every subscriber."""
        for callback in list(self._callbacks.values()):
            callback(event)

    def __bool__(self) -> bool:
        return bool(self._callbacks)

    def __len__(self) -> int:
        return len(self._callbacks)

    def __getstate__(self) -> dict[str, Any]:
        # Callbacks belong to the live object (loggers, open files): a copy starts without them. (A non-empty
        # state, so that unpickling calls __setstate__.)
        return {"version": 1}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self._callbacks = OrderedDict()
