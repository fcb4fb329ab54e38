"""Data-parallel helpers: which process this is, and a cheap cross-rank check that masks are identical.

:func:`process_position` is the one place that reads where a process stands in a run (its rank, the number of
processes, its local rank): from the initialised process group, else from torchrun's environment variables, so
it answers before the group is joined too (the command line prints from rank 0 only).

Under ``torch.distributed`` data parallelism (``DistributedDataParallel``) every rank runs its own sparsifier
on its own replica. The masks stay identical on every rank without any communication of their own because
every input to a topology update is identical on every rank:

- random masks and random growth (SET) are drawn on a CPU ``torch.Generator`` seeded by the sparsifier's
  ``seed`` (give every rank the same seed);
- gradient scores (RigL, GraNet) read ``param.grad`` after ``loss.backward()``, which DDP has already
  all-reduced, so every rank sees the same averaged gradient;
- magnitude scores read the weights, which DDP keeps identical (same start, same gradients, same optimizer);
- ties are broken by position (exact top-k), never by chance;
- schedules count optimizer steps, which every rank takes together.

Build the sparsifier on ``ddp_model.module`` (recommended) or on the DDP wrapper itself: parameter names are
the same either way (no ``module.`` prefix), see :func:`sparsetrain.masks.select_prunable`.

:func:`assert_masks_identical` all-gathers a short digest of every mask and raises :class:`MaskDivergenceError`
naming the tensors and ranks that differ. It costs one small all-gather plus reading each mask once; call it
every few updates (or after each update in tests).
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import Tensor
from torch import distributed as dist

__all__ = [
    "MaskDivergenceError",
    "is_distributed",
    "launch_environment",
    "process_position",
    "rank",
    "world_size",
    "is_main_process",
    "mask_digests",
    "masks_checksum",
    "assert_masks_identical",
]

_LAUNCH_VARIABLES = ("RANK", "WORLD_SIZE", "LOCAL_RANK")
_DIGEST_BYTES = 16
_BIT_WEIGHTS = (1, 2, 4, 8, 16, 32, 64, 128)


class MaskDivergenceError(RuntimeError):
    """The masks differ between ranks of a data-parallel run."""


def is_distributed() -> bool:
    """True inside an initialised ``torch.distributed`` process group."""
    return dist.is_available() and dist.is_initialized()


def launch_environment() -> tuple[int, int, int] | None:
    """``(rank, world_size, local_rank)`` from torchrun's ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK``, or None
    outside a multi-process launch (``WORLD_SIZE`` unset or 1).

    Raises:
        ValueError: the variables are present but not valid (the message names them).
    """
    text = {name: os.environ.get(name) for name in _LAUNCH_VARIABLES}
    if text["WORLD_SIZE"] is None:
        return None
    values = {}
    for name, raw in text.items():
        try:
            values[name] = int(raw if raw is not None else "")
        except ValueError:
            raise ValueError(f"environment variable {name}={raw!r} is not allowed: expected an int (launch "
                             "data-parallel runs with torchrun or sparsetrain train --nproc N)") from None
    rank_, world, local = values["RANK"], values["WORLD_SIZE"], values["LOCAL_RANK"]
    if world < 1 or not 0 <= rank_ < world or local < 0:
        raise ValueError(f"environment RANK={rank_}, WORLD_SIZE={world}, LOCAL_RANK={local} is not allowed: "
                         "expected 0 <= RANK < WORLD_SIZE and LOCAL_RANK >= 0")
    return (rank_, world, local) if world > 1 else None


def process_position() -> tuple[int, int, int]:
    """``(rank, world_size, local_rank)`` of this process: the default group's when one is initialised, else
    torchrun's variables (a launched process that has not joined its group yet), else ``(0, 1, 0)``.

    Raises:
        ValueError: torchrun's variables are present but not valid.
    """
    if is_distributed():
        return dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", dist.get_rank()))
    return launch_environment() or (0, 1, 0)


def rank() -> int:
    """This process's rank (:func:`process_position`); 0 outside a distributed run, and when torchrun's variables
    are malformed (the run itself then stops with their error)."""
    try:
        return process_position()[0]
    except ValueError:
        return 0


def world_size() -> int:
    """Number of processes in the run (:func:`process_position`); 1 outside a distributed run."""
    try:
        return process_position()[1]
    except ValueError:
        return 1


def is_main_process() -> bool:
    """True on rank 0, and in any process that is not part of a distributed run (log, save, print and plot here)."""
    return rank() == 0


def _as_masks(masks: Any) -> Mapping[str, Tensor]:
    """Accept a name -> mask mapping or anything with a ``.masks`` mapping (a sparsifier)."""
    found = getattr(masks, "masks", masks)
    if not isinstance(found, Mapping):
        raise TypeError(f"masks must be a mapping name -> bool tensor or a sparsifier, got {type(masks).__name__}")
    for name, mask in found.items():
        if not isinstance(mask, Tensor):
            raise TypeError(f"masks[{name!r}] must be a tensor, got {type(mask).__name__}")
    return found


@torch.no_grad()
def _pack_bits(mask: Tensor) -> bytes:
    """The mask as bytes, 8 entries per byte, packed on its own device so only numel/8 bytes leave it."""
    flat = mask.detach().reshape(-1).to(torch.bool)
    pad = (-flat.numel()) % 8
    if pad:
        flat = torch.cat([flat, flat.new_zeros(pad)])
    weights = torch.tensor(_BIT_WEIGHTS, dtype=torch.uint8, device=flat.device)
    packed = (flat.view(-1, 8).to(torch.uint8) * weights).sum(dim=1, dtype=torch.uint8)
    return packed.cpu().numpy().tobytes()


def mask_digests(masks: Mapping[str, Tensor] | Any) -> dict[str, str]:
    """A short hex digest (BLAKE2b, 128 bits) of each mask's shape and entries.

    Args:
        masks: name -> bool mask, or a sparsifier (its ``.masks``).

    Returns:
        name -> 32-character hex digest, in the masks' order.
    """
    result = {}
    for name, mask in _as_masks(masks).items():
        digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
        digest.update(repr(tuple(mask.shape)).encode())
        digest.update(_pack_bits(mask))
        result[name] = digest.hexdigest()
    return result


def masks_checksum(masks: Mapping[str, Tensor] | Any) -> str:
    """One hex digest of all masks (names, shapes and entries); equal digests mean bit-identical masks.

    Args:
        masks: name -> bool mask, or a sparsifier (its ``.masks``).

    Returns:
        A 32-character hex digest. Local: no communication (see :func:`assert_masks_identical`).
    """
    digest = hashlib.blake2b(digest_size=_DIGEST_BYTES)
    for name, value in mask_digests(masks).items():
        digest.update(name.encode())
        digest.update(b"\0")
        digest.update(value.encode())
    return digest.hexdigest()


def assert_masks_identical(masks: Mapping[str, Tensor] | Any, group: Any = None) -> str:
    """Check that every rank holds bit-identical masks; a collective call (every rank must call it).

    Outside a distributed run this only computes the checksum.

    Args:
        masks: name -> bool mask, or a sparsifier (its ``.masks``).
        group: the process group (default: the default group).

    Returns:
        The checksum shared by all ranks (see :func:`masks_checksum`).

    Raises:
        MaskDivergenceError: on every rank, when any two ranks differ; the message names the ranks, the
            tensors that differ, and the tensors present on some ranks only.
    """
    digests = mask_digests(masks)
    checksum = masks_checksum(masks)
    if not is_distributed():
        return checksum
    gathered: list[Any] = [None] * dist.get_world_size(group)
    dist.all_gather_object(gathered, (checksum, digests), group=group)
    if all(other[0] == checksum for other in gathered):
        return checksum
    reference = gathered[0][1]
    problems = []
    for other_rank, (other_sum, other_digests) in enumerate(gathered):
        if other_sum == gathered[0][0]:
            continue
        differ = [n for n in reference if n in other_digests and other_digests[n] != reference[n]]
        only_ref = [n for n in reference if n not in other_digests]
        only_other = [n for n in other_digests if n not in reference]
        parts = []
        if differ:
            parts.append(f"{len(differ)} tensor(s) differ, e.g. {differ[:5]}")
        if only_ref or only_other:
            parts.append(f"names differ: only on rank 0 {only_ref[:5]}, only on rank {other_rank} {only_other[:5]}")
        problems.append(f"rank {other_rank} vs rank 0: " + "; ".join(parts))
    raise MaskDivergenceError(
        "sparsity masks differ between data-parallel ranks (" + " | ".join(problems) + "). Every rank must build "
        "its sparsifier with the same seed and arguments, on gradients synchronised by DistributedDataParallel, "
        "and call sparsifier.step() after every optimizer.step()."
    )
