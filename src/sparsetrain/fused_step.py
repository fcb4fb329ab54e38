"""The fused masked optimizer step: the optimizer's update of the sparsified tensors in one pass over memory.

Masking the gradients before ``optimizer.step()`` costs a whole extra pass over every sparsified tensor, which on a
small model is several percent of a training step. :class:`MaskedStep` instead runs the optimizer's own update
for those tensors in a C kernel (``native/masked_step.c``) that reads the bool mask next to the parameter, the
gradient and the state and uses ``grad * mask`` without writing it back. The kernel reproduces torch.optim's
arithmetic bit for bit, so the weights and the state are identical to masking the gradients and calling the
PyTorch step; before it is first used for an optimizer kind, :func:`kernel_agrees` checks that on random data
against this very PyTorch build, and the PyTorch path is used if they differ.

Supported: ``torch.optim.SGD`` (momentum, dampening, Nesterov, weight decay, maximize) and ``torch.optim.Adam`` /
``AdamW`` (coupled or decoupled weight decay, amsgrad, maximize), float32 CPU tensors, the foreach and the
for-loop implementations (they compute the same values), with a float learning rate; and ``Adam`` / ``AdamW``
with ``fused=True`` for the tensors whose size lets torch's fused CPU kernel run them in whole vectors (no scalar
tail: e.g. every size that is a multiple of 16 times the thread count), whose arithmetic is reproduced; other tensors
of such an optimizer keep the masked-gradient path. Everything else (``SGD(fused=True)``, capturable,
differentiable, tensor hyperparameters, other dtypes or devices, sparse gradients) is reported by
:meth:`MaskedStep.unsupported` and left to PyTorch.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
from collections.abc import Mapping
from functools import lru_cache
from typing import Any

import torch
from torch import Tensor

from .native import try_load

__all__ = ["MaskedStep", "kernel_agrees", "masked_step_library"]

logger = logging.getLogger(__name__)

# MKL vector-math mode torch uses for its float sqrt: high accuracy, denormals kept, errors ignored.
_VML_MODE = 0x2 | 0x140000 | 0x100
_SUPPORTED = (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW)
_P = ctypes.c_void_p
_F = ctypes.c_float
_I = ctypes.c_int


def _mkl_sqrt() -> int | None:
    """Address of MKL's ``vmsSqrt`` inside libtorch_cpu, which torch's CPU ``sqrt`` calls when built with MKL."""
    if not torch.backends.mkl.is_available():
        return None
    try:
        lib = ctypes.CDLL(os.path.join(os.path.dirname(torch.__file__), "lib", "libtorch_cpu.so"))
        return ctypes.cast(lib.vmsSqrt, ctypes.c_void_p).value
    except (OSError, AttributeError):
        return None


@lru_cache(maxsize=None)
def masked_step_library() -> ctypes.CDLL | None:
    """The compiled kernels with their argument types set, or None when native kernels are unavailable."""
    lib = try_load("masked_step")
    if lib is None:
        return None
    lib.masked_sgd.argtypes = [ctypes.c_int64, _P, _P, _P, _P, _F, _F, _F, _F, _I, _I, _I]
    lib.masked_sgd.restype = None
    lib.masked_adam.argtypes = [ctypes.c_int64, _P, _P, _P, _P, _P, _P, _F, _F, _F, _F, _F, _F, _F, _F, _I, _I]
    lib.masked_adam.restype = None
    lib.masked_adam_torch_fused.argtypes = [ctypes.c_int64, _P, _P, _P, _P, _P, _P, _F, _F, _F, _F, _F, _F, _F, _F,
                                            _I, _I]
    lib.masked_adam_torch_fused.restype = None
    lib.masked_step_set_sqrt.argtypes = [_P, ctypes.c_longlong]
    lib.masked_step_set_sqrt.restype = None
    lib.masked_step_set_sqrt(_mkl_sqrt(), _VML_MODE)
    return lib


def _ptr(t: Tensor | None) -> _P:
    return _P(t.data_ptr() if t is not None else None)


def _scalar(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


class MaskedStep:
    """Runs a supported optimizer's update for masked parameters with the native kernel.

    Args:
        optimizer: the optimizer whose step is fused (see the module docstring for what is supported).

    Attributes:
        tensors_updated: how many tensor updates the kernel has done (a counter for tests and logs).
    """

    def __init__(self, optimizer: torch.optim.Optimizer) -> None:
        self.optimizer = optimizer
        self.kind = "sgd" if type(optimizer) is torch.optim.SGD else "adam"
        self.tensors_updated = 0

    @staticmethod
    def unsupported(optimizer: torch.optim.Optimizer | None) -> str | None:
        """Why ``optimizer`` cannot use the kernel as configured now, or None when it can."""
        if optimizer is None:
            return "no optimizer"
        if type(optimizer) not in _SUPPORTED:
            return f"{type(optimizer).__name__} has no fused masked kernel (SGD, Adam and AdamW have)"
        lib = masked_step_library()
        if lib is None:
            return "native kernels unavailable"
        kind = "sgd" if type(optimizer) is torch.optim.SGD else "adam"
        for index, group in enumerate(optimizer.param_groups):
            reason = _group_unsupported(kind, group)
            if reason:
                return f"param group {index}: {reason}"
            variant = kind + ("_fused" if group.get("fused") else "")
            if not kernel_agrees(variant):
                return f"the {variant} kernel does not reproduce this torch build's arithmetic"
        return None

    @torch.no_grad()
    def run(self, params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> list[Tensor]:
        """Update every masked parameter whose gradient and optimizer state exist; return those updated.

        Parameters without state yet (the first step) or with a gradient the kernel cannot read are left to
        the optimizer's own step. The caller must keep the returned parameters out of that step.
        """
        lib = masked_step_library()
        assert lib is not None
        owner = {id(p): group for group in self.optimizer.param_groups for p in group["params"]}
        threads = torch.get_num_threads()
        done: list[Tensor] = []
        for name, mask in masks.items():
            param = params[name]
            grad = param.grad
            group = owner.get(id(param))
            if (group is None or grad is None or not _plain_tensor(grad) or mask.dtype != torch.bool
                    or mask.device.type != "cpu" or not mask.is_contiguous()):
                continue
            state = self.optimizer.state.get(param, {})
            if self.kind == "sgd":
                updated = self._sgd(lib, param, grad, mask, state, group, threads)
            else:
                updated = self._adam(lib, param, grad, mask, state, group, threads)
            if updated:
                done.append(param)
        self.tensors_updated += len(done)
        return done

    @staticmethod
    def _sgd(lib: ctypes.CDLL, param: Tensor, grad: Tensor, mask: Tensor, state: dict, group: dict,
             threads: int) -> bool:
        momentum = group["momentum"]
        buf = state.get("momentum_buffer") if momentum != 0 else None
        if momentum != 0 and (buf is None or not _plain_tensor(buf)):
            return False
        lib.masked_sgd(param.numel(), _ptr(param), _ptr(grad), _ptr(buf), _ptr(mask), -group["lr"],
                       group["weight_decay"], momentum, 1 - group["dampening"], int(group["nesterov"]),
                       int(group["maximize"]), threads)
        return True

    @staticmethod
    def _adam(lib: ctypes.CDLL, param: Tensor, grad: Tensor, mask: Tensor, state: dict, group: dict,
              threads: int) -> bool:
        amsgrad = group["amsgrad"]
        if not state:
            return False
        step_t, exp_avg, exp_avg_sq = state.get("step"), state.get("exp_avg"), state.get("exp_avg_sq")
        vmax = state.get("max_exp_avg_sq") if amsgrad else None
        if (not isinstance(step_t, Tensor) or step_t.device.type != "cpu" or exp_avg is None or exp_avg_sq is None
                or not _plain_tensor(exp_avg) or not _plain_tensor(exp_avg_sq)
                or (amsgrad and (vmax is None or not _plain_tensor(vmax)))):
            return False
        if group.get("fused") and _torch_fused_tails(param.numel(), threads):
            return False  # torch's tail loops round differently: leave this tensor to torch
        lr, (beta1, beta2), eps, wd = group["lr"], group["betas"], group["eps"], group["weight_decay"]
        decoupled = group.get("decoupled_weight_decay", False)
        step_t += 1  # what torch does (as a tensor op) before the update
        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size_neg = (lr / bias_correction1) * -1
        decay = 1 - lr * wd if (wd != 0 and decoupled) else 1.0
        coupled = wd if (wd != 0 and not decoupled) else 0.0
        if group.get("fused"):
            lib.masked_adam_torch_fused(
                param.numel(), _ptr(param), _ptr(grad), _ptr(exp_avg), _ptr(exp_avg_sq), _ptr(vmax), _ptr(mask),
                decay, coupled, 1 - beta1, beta2, 1 - beta2, math.sqrt(bias_correction2), eps, step_size_neg,
                int(group["maximize"]), threads)
            return True
        lib.masked_adam(param.numel(), _ptr(param), _ptr(grad), _ptr(exp_avg), _ptr(exp_avg_sq), _ptr(vmax),
                        _ptr(mask), decay, coupled, 1 - beta1, beta2, 1 - beta2, bias_correction2**0.5, eps,
                        step_size_neg, int(group["maximize"]), threads)
        return True


def _vector_width() -> int:
    """Floats per vector in torch's CPU kernels: 16 with AVX-512, 8 otherwise (AVX2 and the generic build)."""
    return 16 if torch.backends.cpu.get_cpu_capability().startswith("AVX512") else 8


def _torch_fused_tails(n: int, threads: int) -> list[tuple[int, int]]:
    """The elements torch's fused CPU Adam kernel updates in its scalar tail loops, as [begin, end) ranges.

    It runs on ``threads`` chunks of a cache-line-aligned length (all vector loops), then splits what is left
    evenly over the threads; each of those chunks ends with a tail shorter than a vector.
    """
    width = _vector_width()
    aligned = (-(-n // threads) // 16 * 16) * threads  # chunks of ceil(n / threads), floored to 16 floats
    tails = []
    rest = n - aligned
    if rest > 0:
        chunk = -(-rest // threads) if threads > 1 else rest
        for begin in range(aligned, n, chunk):
            end = min(n, begin + chunk)
            vector_end = begin + (end - begin) // width * width
            if vector_end < end:
                tails.append((vector_end, end))
    return tails


def _plain_tensor(t: Tensor) -> bool:
    """A dense, contiguous float32 CPU tensor the kernel can read as a flat array."""
    return (t.dtype == torch.float32 and t.device.type == "cpu" and t.layout == torch.strided
            and t.is_contiguous())


def _group_unsupported(kind: str, group: Mapping[str, Any]) -> str | None:
    """Why a param group's options cannot use the kernel, or None."""
    if group.get("fused") and kind == "sgd":
        return "SGD(fused=True) (its arithmetic is not reproduced; the PyTorch path is used)"
    if group.get("differentiable"):
        return "differentiable=True"
    if group.get("capturable"):
        return "capturable=True"
    if not _scalar(group.get("lr")):
        return f"lr={group.get('lr')!r} is not a Python number"
    keys = ("momentum", "dampening", "weight_decay") if kind == "sgd" else ("eps", "weight_decay")
    for key in keys:
        if not _scalar(group.get(key)):
            return f"{key}={group.get(key)!r} is not a Python number"
    if kind == "adam" and not all(_scalar(b) for b in group.get("betas", ())):
        return f"betas={group.get('betas')!r} are not Python numbers"
    if any(p.dtype != torch.float32 or p.device.type != "cpu" for p in group["params"]):
        return "parameters that are not float32 CPU tensors"
    return None


@lru_cache(maxsize=None)
def kernel_agrees(kind: str) -> bool:
    """Whether the kernel for ``kind`` ("sgd", "adam" or "adam_fused") gives PyTorch's exact results on this build.

    A few steps of several option sets on random data (odd sizes, zeros, tiny values) with both paths.
    """
    lib = masked_step_library()
    if lib is None:
        return False
    generator = torch.Generator().manual_seed(1234)
    if kind == "sgd":
        options = [dict(lr=0.1, momentum=0.9, weight_decay=5e-4, nesterov=True),
                   dict(lr=0.05, momentum=0.8, dampening=0.3, maximize=True, weight_decay=1e-2),
                   dict(lr=0.3)]
    else:
        options = [dict(lr=1e-2, weight_decay=5e-4, amsgrad=True), dict(lr=3e-3, betas=(0.4, 0.99), maximize=True),
                   dict(lr=1e-3, weight_decay=1e-2, decoupled_weight_decay=True)]
        if kind == "adam_fused":
            options = [dict(option, fused=True) for option in options]
    for option in options:
        # Sizes with vector tails; the fused=True kernel only serves tensors without (see _torch_fused_tails).
        n = 4099 if kind != "adam_fused" else 4096 * torch.get_num_threads()
        start = torch.randn(n, generator=generator)
        mask = torch.rand(n, generator=generator) < 0.6
        start = start * mask
        grads = [torch.randn(n, generator=generator) * torch.rand(n, generator=generator) ** 8 for _ in range(4)]
        reference = torch.nn.Parameter(start.clone())
        fused = torch.nn.Parameter(start.clone())
        make = torch.optim.SGD if kind == "sgd" else torch.optim.Adam
        opt_ref, opt_fused = make([reference], **option), make([fused], **option)
        stepper = MaskedStep(opt_fused)
        for index, grad in enumerate(grads):
            reference.grad = grad * mask.float()
            opt_ref.step()
            fused.grad = grad.clone()
            if index == 0 or not stepper.run({"w": fused}, {"w": mask}):
                fused.grad = grad * mask.float()
                opt_fused.step()
        if not torch.equal(reference, fused):
            logger.info("masked %s kernel differs from torch's %s step (options %s)", kind, make.__name__, option)
            return False
        for key, value in opt_ref.state[reference].items():
            if not torch.equal(value, opt_fused.state[fused][key]):
                logger.info("masked %s kernel differs from torch in state %r (options %s)", kind, key, option)
                return False
    return True
