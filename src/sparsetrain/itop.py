"""In-time over-parameterization (ITOP) rate of a dynamic sparse run: the one home of the rate.

Liu, Yin, Mocanu & Pechenizkiy, *Do We Actually Need Dense Over-Parameterization? In-Time
Over-Parameterization in Sparse Training*, ICML 2021: the ITOP rate is the fraction of all (maskable)
weights that were active at some point during training, ``R = |∪_t M_t| / N``. A static sparse run stays
at its density; a dynamic run that explores many connections approaches 1.

The rate counts only the tensors that appear in the masks: weights that are never masked (biases, norm
parameters) are not part of ``N``, as in the paper.

Who reads it: a sparsifier keeps the union of its masks (``Sparsifier.ever_active``) and reports
:func:`pooled_itop` of it (``Sparsifier.itop_rate()``); the trainer writes :func:`itop_by_layer` beside it in
``metrics.jsonl`` and ``summary.json``; :class:`ItopTracker` and :func:`itop_rate` compute the same rate from
masks saved over time (they are also :mod:`sparsetrain.analysis`'s).
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping
from typing import Any

from torch import Tensor

from .masks import active_fraction, count_active, count_entries
from .validation import check_bool_masks, check_same_layout

__all__ = ["ItopTracker", "itop_rate", "itop_by_layer", "pooled_itop"]

logger = logging.getLogger(__name__)


def itop_by_layer(ever_active: Mapping[str, Tensor] | None) -> dict[str, float] | None:
    """``{name: fraction of the tensor's positions ever active}`` (0.0 for an empty tensor), in the dict's order.

    Args:
        ever_active: ``{parameter name: bool tensor}`` of the positions active at least once (e.g.
            ``Sparsifier.ever_active``), or None (a dense run).

    Returns:
        The per-tensor rates, or None for None.
    """
    if ever_active is None:
        return None
    sizes = {name: count_entries(ever_active, name) for name in ever_active}
    return {name: count_active(ever_active, name) / size if size else 0.0 for name, size in sizes.items()}


def pooled_itop(ever_active: Mapping[str, Tensor]) -> float:
    """The ITOP rate of all tensors together: positions ever active over all positions (0.0 without any); the
    packed record of sparse storage is counted without unpacking it."""
    return active_fraction(ever_active)


class ItopTracker:
    """Accumulate ``ever_active |= mask`` per tensor over successive mask dicts.

    Call :meth:`update` with the current masks whenever the topology may have changed (after each
    prune-and-regrow step, or every step: the union is idempotent). The first call fixes the tensor
    names and shapes; later calls must match them. Accumulators live on the masks' devices.

    Example:
        >>> import torch
        >>> tracker = ItopTracker()
        >>> tracker.update({"w": torch.tensor([True, False, False, False])})
        >>> tracker.update({"w": torch.tensor([False, True, False, False])})
        >>> tracker.rate()
        0.5
    """

    def __init__(self) -> None:
        self._ever_active: dict[str, Tensor] = {}
        self._num_updates = 0

    @property
    def num_updates(self) -> int:
        """Number of mask dicts accumulated so far."""
        return self._num_updates

    def update(self, masks: Mapping[str, Tensor]) -> None:
        """Add one mask dict to the union.

        Args:
            masks: ``{parameter name: bool tensor}``; after the first call, exactly the same names and shapes.

        Raises:
            TypeError: a value is not a bool tensor.
            ValueError: names or shapes differ from the first call (the message names the tensor).
        """
        check_bool_masks(masks, "masks")
        if not masks:
            raise ValueError("masks must hold at least one tensor, got an empty dict")
        if self._num_updates == 0:
            self._ever_active = {k: m.detach().clone() for k, m in masks.items()}
        else:
            check_same_layout(self._ever_active, masks, "the tracked masks", "masks")
            for k, acc in self._ever_active.items():
                acc |= masks[k].to(acc.device)
        self._num_updates += 1

    def _require_updates(self) -> None:
        if self._num_updates == 0:
            raise RuntimeError("ItopTracker has no masks yet: call update(masks) first")

    def ever_active(self) -> dict[str, Tensor]:
        """Return a copy of the ``{name: bool tensor}`` of positions active at least once."""
        self._require_updates()
        return {k: v.clone() for k, v in self._ever_active.items()}

    def per_layer(self) -> dict[str, float]:
        """Return ``{name: fraction of the tensor's positions ever active}`` (0.0 for an empty tensor)."""
        self._require_updates()
        rates = itop_by_layer(self._ever_active)
        assert rates is not None
        return rates

    def rate(self) -> float:
        """Return the ITOP rate: positions ever active over all positions of all tracked tensors.

        Raises:
            RuntimeError: no masks were given yet.
        """
        self._require_updates()
        return pooled_itop(self._ever_active)

    def state_dict(self) -> dict[str, Any]:
        """Return the tracker's state: ``{"ever_active": {name: bool tensor}, "num_updates": int}``."""
        return {"ever_active": {k: v.clone() for k, v in self._ever_active.items()}, "num_updates": self._num_updates}

    def load_state_dict(self, state_dict: Mapping[str, Any]) -> None:
        """Restore a state from :meth:`state_dict`.

        Args:
            state_dict: the dict to restore.

        Raises:
            ValueError: keys are missing, or ``num_updates`` is inconsistent with ``ever_active``.
            TypeError: ``ever_active`` does not map names to bool tensors.
        """
        missing = {"ever_active", "num_updates"} - set(state_dict)
        if missing:
            raise ValueError(f"state_dict is missing keys {sorted(missing)}")
        ever = state_dict["ever_active"]
        n = state_dict["num_updates"]
        check_bool_masks(ever, "state_dict['ever_active']")
        if not isinstance(n, int) or n < 0:
            raise ValueError(f"state_dict['num_updates'] must be an int >= 0, got {n!r}")
        if (n == 0) != (len(ever) == 0):
            raise ValueError(f"state_dict has num_updates={n} but {len(ever)} tracked tensors")
        self._ever_active = {k: v.clone() for k, v in ever.items()}
        self._num_updates = n


def itop_rate(mask_sequence: Iterable[Mapping[str, Tensor]]) -> float:
    """ITOP rate of a sequence of mask dicts: fraction of all positions active in at least one of them.

    Args:
        mask_sequence: the masks over time, each ``{parameter name: bool tensor}`` with the same names
            and shapes.

    Returns:
        ``|∪_t M_t| / N`` over all tensors together.

    Raises:
        ValueError: the sequence is empty, or names or shapes differ between elements.
    """
    tracker = ItopTracker()
    for masks in mask_sequence:
        tracker.update(masks)
    if tracker.num_updates == 0:
        raise ValueError("mask_sequence must hold at least one mask dict, got none")
    return tracker.rate()
