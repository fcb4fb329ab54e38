"""convert(): swap the sparse-enough ``nn.Linear`` layers of a model for faster sparse ones.

On CPU, a layer becomes :class:`SparseLinear` (CSR weight, native kernel), or :class:`NMLinear` when its
weight follows one of the N:M patterns measured to pay on a CPU (:data:`~sparsetrain.sparse.nm_linear.CPU_PATTERNS`:
1:8, 1:4, 2:8; ``docs/benchmarks/nm_inference.md``). 2:4 does not pay on a CPU and is left to the rules below.
On CUDA, a 2:4 float16/bfloat16 weight becomes torch's semi-structured sparse tensor
(:mod:`sparsetrain.sparse.semi_structured`); other CUDA layers stay dense.

Which layers are converted is decided by measurement (``benchmarks/sparse_inference.py``,
``docs/benchmarks/sparse_inference.md``, with SparseLinear's native kernel): a CSR layer is only
faster than dense above a break-even sparsity, and for small layers the fixed per-call cost of the
sparse path (a few tens of microseconds, mostly Python and ctypes) eats the gain. Layers below either threshold stay ``nn.Linear``, so converting never trades a fast
dense layer for a slower sparse one at the measured batch size.

Convolutions are left dense: im2col (``F.unfold``) alone took longer than the whole dense
convolution in our measurements, so im2col + sparse matmul never paid (see the benchmark doc).

Deploying a converted model: its ``state_dict`` holds each converted layer's CSR or N:M buffers, not a
``weight``; :func:`dense_state_dict` gives the state dict of the original architecture (it loads into the model
before :func:`convert`), and :func:`unconvert` the equivalent plain model. ``torch.jit.trace`` / ``script``,
``torch.onnx.export`` and ``torch.export`` of a converted model give the same outputs as the model, computed
densely (see :mod:`sparsetrain.sparse.linear`): the sparse kernels run only in Python.
"""

from __future__ import annotations

import copy
import logging

import torch
from torch import Tensor, nn

from sparsetrain.sparse.linear import SUPPORTED_DTYPES, SparseLinear
from sparsetrain.sparse.nm_linear import NMLinear, cpu_pattern
from sparsetrain.sparse.semi_structured import to_semi_structured

__all__ = ["DEFAULT_MIN_NUMEL", "DEFAULT_MIN_SPARSITY", "convert", "dense_state_dict", "unconvert"]

logger = logging.getLogger(__name__)

DEFAULT_MIN_SPARSITY = 0.75
"""Break-even sparsity measured at batch 128 on square 1024/2048/4096 layers (Xeon, 1 thread, native
kernel): the highest per-size break-even (about 55-70 %), rounded up to a multiple of 0.05 plus one
step of margin, because the 4096 layer was only 1.05x faster than dense at 70 % on a shared machine.
See docs/benchmarks/sparse_inference.md, section 3."""

DEFAULT_MIN_NUMEL = 1 << 16
"""Smallest weight (in elements) worth converting at batch 128: below it the sparse call's fixed
cost (a few tens of microseconds) dominates. With the native kernel, 128 x 128 already breaks even
at batch 128 and 256 x 256 (65536 weights) is clearly faster (section 4 of the doc); at batch 1
dense layers of this size are faster (per-call overhead), as they were with the torch CSR path."""


def _weight_sparsity(linear: nn.Linear) -> float:
    weight = linear.weight.detach()
    return float((weight == 0).sum()) / weight.numel() if weight.numel() else 0.0


def _skip_reason(linear: nn.Linear, min_sparsity: float, min_numel: int) -> str | None:
    weight = linear.weight
    if weight.device.type != "cpu":
        return f"weight on {weight.device} (sparse inference runs on CPU, and on CUDA for 2:4 float16/bfloat16)"
    if weight.dtype not in SUPPORTED_DTYPES:
        return f"dtype {weight.dtype} (CPU CSR matmul supports float32/float64 only)"
    if weight.numel() < min_numel:
        return f"{weight.numel()} weights < min_numel={min_numel}"
    sparsity = _weight_sparsity(linear)
    if sparsity < min_sparsity:
        return f"sparsity {sparsity:.4f} < min_sparsity={min_sparsity}"
    return None


def _sparse_layer(linear: nn.Linear, min_sparsity: float, min_numel: int) -> nn.Module | str:
    """The replacement for one ``nn.Linear`` (on CUDA: the layer itself, its weight made semi-structured), or
    the reason it stays dense."""
    if linear.weight.device.type == "cuda":
        reason = to_semi_structured(linear)
        return linear if reason is None else reason
    reason = _skip_reason(linear, min_sparsity, min_numel)
    if reason is not None:
        return reason
    # NMLinear's kernel is float32; float64 goes to CSR (MKL).
    pattern = cpu_pattern(linear.weight.detach()) if linear.weight.dtype == torch.float32 else None
    return SparseLinear.from_dense(linear) if pattern is None else NMLinear.from_dense(linear, pattern)


def convert(
    model: nn.Module,
    *,
    min_sparsity: float | None = None,
    min_numel: int = DEFAULT_MIN_NUMEL,
    inplace: bool = False,
) -> nn.Module:
    """Return a model whose sparse ``nn.Linear`` layers run sparse kernels (for inference).

    A layer is converted when its type is exactly ``nn.Linear`` (subclasses such as the
    ``out_proj`` of ``nn.MultiheadAttention``, whose weight is read directly by its parent, are
    left alone) and:

    * on CPU, its weight is a float32/float64 tensor of at least ``min_numel`` elements whose
      fraction of exactly-zero weights is at least ``min_sparsity``: it becomes an
      :class:`NMLinear` if the (float32) weight follows a pattern of
      :data:`~sparsetrain.sparse.nm_linear.CPU_PATTERNS` along its inputs and fills it
      (:func:`~sparsetrain.sparse.nm_linear.cpu_pattern`), else a :class:`SparseLinear`;
    * on CUDA, its weight is 2:4 along its inputs, float16/bfloat16, of a shape torch's
      semi-structured kernels accept: the weight becomes a semi-structured sparse tensor (the
      layer stays an ``nn.Linear``; ``min_sparsity`` and ``min_numel`` do not apply).

    A Linear shared between several parents is converted once and stays shared. Outputs equal
    the original model's up to float rounding (summation order differs).

    Args:
        model: the model (pruned weights exactly zero). An ``nn.Linear`` itself is accepted too.
        min_sparsity: conversion threshold in [0, 1]; ``None`` uses :data:`DEFAULT_MIN_SPARSITY`,
            the break-even measured at batch 128.
        min_numel: smallest weight size (elements, >= 0) to convert.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The converted model (``model`` itself when ``inplace``, else a copy).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    threshold = DEFAULT_MIN_SPARSITY if min_sparsity is None else min_sparsity
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold <= 1.0:
        raise ValueError(f"min_sparsity must be None or a float in [0, 1], got {min_sparsity!r}")
    if isinstance(min_numel, bool) or not isinstance(min_numel, int) or min_numel < 0:
        raise ValueError(f"min_numel must be an int >= 0, got {min_numel!r}")
    if not isinstance(inplace, bool):
        raise TypeError(f"inplace must be a bool, got {type(inplace).__name__}")
    target = model if inplace else copy.deepcopy(model)
    if type(target) is nn.Linear:
        layer = _sparse_layer(target, threshold, min_numel)
        return target if isinstance(layer, str) else layer
    replaced: dict[int, nn.Module] = {}
    for parent_name, parent in list(target.named_modules(remove_duplicate=False)):
        # _modules, not named_children(): the latter lists a module shared under two names once.
        for child_name, child in list(parent._modules.items()):
            if type(child) is not nn.Linear:
                continue
            full_name = f"{parent_name}.{child_name}" if parent_name else child_name
            if id(child) not in replaced:
                layer = _sparse_layer(child, threshold, min_numel)
                if isinstance(layer, str):
                    logger.debug("keeping %s dense: %s", full_name, layer)
                    replaced[id(child)] = child
                    continue
                replaced[id(child)] = layer
                logger.info("converted %s: %s", full_name, "semi-structured 2:4 weight" if layer is child else layer)
            setattr(parent, child_name, replaced[id(child)])
    return target


def _dense_tensor(value: Tensor) -> Tensor:
    """A semi-structured (CUDA 2:4) weight as an ordinary tensor; anything else as it is."""
    return value.to_dense() if type(value).__name__.startswith("SparseSemiStructured") else value


def dense_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The state dict of the architecture before :func:`convert`: each converted layer as ``weight`` / ``bias``.

    It loads (``load_state_dict``, strict) into the original model, and saves like any dense checkpoint.

    Args:
        model: a model returned by :func:`convert` (a model without converted layers is returned as is).

    Returns:
        ``model.state_dict()`` with every :class:`SparseLinear` / :class:`NMLinear`'s buffers replaced by its dense
        ``weight`` (and ``bias``), and semi-structured weights made dense; the other entries unchanged.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    state = {key: _dense_tensor(value) for key, value in model.state_dict().items()}
    for name, module in model.named_modules(remove_duplicate=False):
        if not isinstance(module, (SparseLinear, NMLinear)):
            continue
        prefix = f"{name}." if name else ""
        for key in [k for k in state if k.startswith(prefix) and "." not in k[len(prefix):]]:
            del state[key]
        state[f"{prefix}weight"] = module.dense_weight()
        if module.bias is not None:
            state[f"{prefix}bias"] = module.bias.detach().clone()
    return state


def unconvert(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """The inverse of :func:`convert`: every :class:`SparseLinear` / :class:`NMLinear` back to an ``nn.Linear``.

    Args:
        model: a converted model.
        inplace: modify ``model`` itself instead of a deep copy.

    Returns:
        The model with plain ``nn.Linear`` layers (a shared layer stays shared).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    target = model if inplace else copy.deepcopy(model)
    if isinstance(target, (SparseLinear, NMLinear)):
        return target.to_linear()
    replaced: dict[int, nn.Module] = {}
    for _, parent in list(target.named_modules(remove_duplicate=False)):
        for child_name, child in list(parent._modules.items()):
            if isinstance(child, (SparseLinear, NMLinear)):
                replaced.setdefault(id(child), child.to_linear())
                setattr(parent, child_name, replaced[id(child)])
    return target

