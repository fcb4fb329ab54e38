"""Data parallelism for the trainer: torchrun's environment, the process group, and cross-rank messages.

``torchrun --nproc_per_node N -m sparsetrain train ...`` (or ``sparsetrain train --nproc N``) starts N processes
with ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` set. :func:`setup` reads them
(:func:`sparsetrain.distributed.process_position`) and initialises the default process group (NCCL on CUDA, gloo
on CPU) plus a gloo group for small CPU-side messages (the stop flag, mask checks, decisions rank 0 takes for
everyone), so those never wait on a GPU stream. A process group the caller initialised already is used as it is.

What a data-parallel run means here (see the trainer for the loop):

* ``train.batch_size`` is the *global* minibatch of one optimizer step, split evenly across the processes, so
  the run takes as many optimizer steps (and its LR and sparsity schedules see the same step counts) as a
  one-process run; the run directory is the same. The samples each step sees differ from a one-process run
  (each rank draws its shard from a ``DistributedSampler``), so results match a one-process run statistically,
  not bit for bit.
* every rank builds the same model and sparsifier from the same seeds; DistributedDataParallel averages the
  gradients, so every rank takes the same optimizer step and computes the same masks (checked with
  :func:`sparsetrain.distributed.assert_masks_identical` after every topology update);
* only rank 0 writes files; a resume makes every rank load the checkpoint rank 0 chose.

When a process of the run dies (killed, out of memory, a full disk on rank 0), the next collective of every other
process fails: at once when the peer's sockets close, or after :data:`TIMEOUT_ENV` seconds (default
:data:`DEFAULT_TIMEOUT`) when it hangs. :func:`lost_rank` turns that failure into a :class:`LostRank` naming the
rank that is gone (ranks on this machine are checked by process id), and the command line prints it as one line.
Only rank 0 writes, and every write is atomic, so the last checkpoint is intact and the same command resumes.
"""

from __future__ import annotations

import datetime
import logging
import os
import socket
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn
from torch import distributed as dist

from sparsetrain.distributed import process_position

from .config import ConfigError

__all__ = ["DEFAULT_TIMEOUT", "LostRank", "Parallel", "SINGLE", "TIMEOUT_ENV", "lost_rank", "setup", "shutdown",
           "wrap_model"]

logger = logging.getLogger(__name__)

#: Seconds a collective waits for a silent peer before it fails (the environment variable overrides it).
DEFAULT_TIMEOUT = 300.0
TIMEOUT_ENV = "SPARSETRAIN_DDP_TIMEOUT"


class LostRank(RuntimeError):
    """A process of the data-parallel run died or stopped answering; the message is one line naming it."""


@dataclass(frozen=True)
class Parallel:
    """Where this process stands in a data-parallel run (rank 0 of 1 outside one).

    Attributes:
        rank: this process's rank.
        world_size: number of processes.
        local_rank: rank on this machine (picks the CUDA device).
        control: process group for CPU-side objects (None: the default group, or no group at all).
        peers: ``(host name, process id)`` of every rank, in rank order (exchanged when the run starts).
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    control: Any = None
    peers: tuple[tuple[str, int], ...] = ()

    def lost_ranks(self, wait: float = 2.0) -> list[int]:
        """The other ranks on this machine whose process is gone (ranks on other machines cannot be checked).

        Args:
            wait: seconds to keep looking: a dying process closes its sockets (which is how the others notice)
                a moment before it is gone.
        """
        here = socket.gethostname()
        deadline = time.monotonic() + wait
        while True:
            lost = [rank for rank, (host, pid) in enumerate(self.peers)
                    if rank != self.rank and host == here and not _alive(pid)]
            if lost or time.monotonic() >= deadline:
                return lost
            time.sleep(0.05)

    @property
    def distributed(self) -> bool:
        """True with more than one process."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """True on rank 0 (the rank that writes files and prints)."""
        return self.rank == 0

    def barrier(self) -> None:
        """Wait until every rank gets here (no-op with one process)."""
        if self.distributed:
            dist.barrier(group=self.control)

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (picklable objects; ``obj`` is ignored on the other ranks)."""
        if not self.distributed:
            return obj
        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.control)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.distributed:
            return [obj]
        out: list[Any] = [None] * self.world_size
        dist.all_gather_object(out, obj, group=self.control)
        return out

    def any(self, flag: bool) -> bool:
        """True on every rank if ``flag`` is true on any rank."""
        if not self.distributed:
            return flag
        value = torch.tensor([1 if flag else 0], dtype=torch.int32)
        dist.all_reduce(value, op=dist.ReduceOp.MAX, group=self.control)
        return bool(value.item())

    def all_sum(self, tensors: Sequence[Tensor]) -> None:
        """Sum each tensor over the ranks, in place (the default group: tensors stay on their device)."""
        if self.distributed:
            for tensor in tensors:
                dist.all_reduce(tensor)

    def sync_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (batch-norm statistics) to every rank, as DDP does before each forward."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, src=0)


def _alive(pid: int) -> bool:
    """Whether process ``pid`` runs (a zombie, killed but not yet reaped by its launcher, does not)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as handle:
            return handle.read().rsplit(b")", 1)[-1].split()[0] not in (b"Z", b"X")
    except FileNotFoundError:
        return False
    except (OSError, IndexError):
        pass
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:
        pass
    return True


SINGLE = Parallel()
_current: Parallel | None = None
_owned = False


def setup(device: torch.device) -> tuple[Parallel, torch.device]:
    """Join the data-parallel run this process was launched into (idempotent), and pick its device.

    Args:
        device: the resolved ``train.device``; in a multi-process CUDA run every process takes
            ``cuda:LOCAL_RANK`` instead, so only "auto" or "cuda" are allowed there.

    Returns:
        ``(parallel, device)``; :data:`SINGLE` and ``device`` unchanged outside a multi-process run.

    Raises:
        ConfigError: malformed torchrun variables, an explicit ``cuda:N`` or MPS in a multi-process run, or
            fewer CUDA devices than local processes.
    """
    global _current, _owned
    try:
        rank, world, local = process_position()
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if world == 1:
        return SINGLE, device
    if device.type == "mps":
        raise ConfigError("train.device='mps' is not allowed in a data-parallel run: use cpu (gloo) or cuda (NCCL)")
    if device.type == "cuda":
        if device.index is not None:
            raise ConfigError(f"train.device={str(device)!r} is not allowed in a data-parallel run: each process "
                              "uses cuda:LOCAL_RANK; use auto or cuda")
        if local >= torch.cuda.device_count():
            raise ConfigError(f"LOCAL_RANK={local} is not allowed: this machine has {torch.cuda.device_count()} "
                              "CUDA device(s); start at most that many processes per machine")
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if _current is not None:
        return _current, device
    if not dist.is_initialized():
        if not dist.is_available():
            raise ConfigError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        for name in ("MASTER_ADDR", "MASTER_PORT"):
            if name not in os.environ:
                raise ConfigError(f"WORLD_SIZE={world} is set but {name} is not: launch data-parallel runs with "
                                  "torchrun or sparsetrain train --nproc N")
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, rank=rank, world_size=world,
                                timeout=datetime.timedelta(seconds=collective_timeout()))
        _owned = True
        logger.info("rank %d of %d: joined the %s process group on %s", rank, world, backend, device)
    control = None if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")
    peers: list[Any] = [None] * world
    dist.all_gather_object(peers, (socket.gethostname(), os.getpid()), group=control)
    _current = Parallel(rank=rank, world_size=world, local_rank=local, control=control,
                        peers=tuple((str(h), int(p)) for h, p in peers))
    return _current, device


def collective_timeout() -> float:
    """Seconds a collective waits for a silent peer: ``$SPARSETRAIN_DDP_TIMEOUT`` or :data:`DEFAULT_TIMEOUT`.

    Raises:
        ConfigError: the variable is not a number > 0.
    """
    text = os.environ.get(TIMEOUT_ENV)
    if text is None:
        return DEFAULT_TIMEOUT
    try:
        value = float(text)
    except ValueError:
        value = 0.0
    if not 0 < value < float("inf"):
        raise ConfigError(f"{TIMEOUT_ENV}={text!r} is not allowed: expected a number of seconds > 0")
    return value


def lost_rank(exc: BaseException) -> LostRank | None:
    """``exc`` as a :class:`LostRank` if it is a failed collective of this process's data-parallel run, else None.

    Args:
        exc: an exception raised while training.
    """
    par = _current
    if par is None or not par.distributed:
        return None
    text = " ".join(str(exc).split())
    dist_error = getattr(dist, "DistError", ())
    if not (isinstance(exc, dist_error) or any(word in text for word in ("gloo", "NCCL", "Connection reset",
                                                                         "Connection closed", "Timed out"))):
        return None
    lost = par.lost_ranks()
    who = (f"rank {', '.join(map(str, lost))} {'has' if len(lost) == 1 else 'have'} died" if lost else
           "another rank stopped answering")
    reason = text.split("] ", 1)[-1].split(". This is typically")[0][:160]
    return LostRank(f"rank {par.rank} of {par.world_size}: {who} ({reason}); this rank stops too. The last "
                    "checkpoint is intact: run the same command again to resume")


def shutdown() -> None:
    """Leave the process group if :func:`setup` created it (call once at the end of the process)."""
    global _current, _owned
    if _owned and dist.is_initialized():
        dist.destroy_process_group()
    _current, _owned = None, False


def wrap_model(model: nn.Module, parallel: Parallel, device: torch.device) -> nn.Module:
    """The module to train: ``DistributedDataParallel(model)`` in a multi-process run, else ``model`` itself.

    Build the optimizer and the sparsifier on ``model`` (the unwrapped module), not on the wrapper: they see the
    same parameters, with the same names. The wrapper shares them, so a sparsifier attached after wrapping (a
    branch, which loads its weights first) masks the very tensors DDP synchronises.
    """
    if not parallel.distributed:
        return model
    from sparsetrain.sparse.backend import distributed_data_parallel

    return distributed_data_parallel(model, device_ids=[device.index] if device.type == "cuda" else None)
