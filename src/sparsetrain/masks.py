"""Which tensors are prunable, their bool masks, and the sparsity report measured from the weights.

Masks are plain ``dict[str, torch.BoolTensor]`` keyed by the parameter's fully-qualified name (as in
``model.named_parameters()``), each on its parameter's device. Nothing is attached to the model: parameter
names never change and ``deepcopy`` / pickling / ``state_dict`` keep working. Tied parameters appear once
(``named_parameters`` de-duplicates them), so they are masked once.
"""

from __future__ import annotations

import logging
import math
import re
import warnings
from collections.abc import Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from .nm import NMLayout, NMPattern
from .selection import Budget, budget, keep_top, nm_budget
from .streaming_topk import topk_positions
from .tables import Column, render

__all__ = [
    "PRUNABLE_MODULES",
    "select_prunable",
    "select_named",
    "paired_biases",
    "resolve_overrides",
    "random_masks",
    "FlatMask",
    "RANDOM_BLOCK",
    "count_active",
    "apply_masks",
    "SparsityReport",
    "LayerSparsity",
    "sparsity_report",
    "warn_collapsed",
]

logger = logging.getLogger(__name__)

#: Module types whose >=2-D weights are pruned by default; norm layers and biases stay dense.
PRUNABLE_MODULES: tuple[type[nn.Module], ...] = (
    nn.Linear,
    nn.Conv1d,
    nn.Conv2d,
    nn.Conv3d,
    nn.ConvTranspose1d,
    nn.ConvTranspose2d,
    nn.ConvTranspose3d,
    nn.Embedding,
    nn.MultiheadAttention,
    nn.RNNBase,
)
_RNN_WEIGHT = re.compile(r"weight_(ih|hh)_l\d+(_reverse)?$")


def _default_prunable(module: nn.Module, local_name: str, param: nn.Parameter) -> bool:
    if param.dim() < 2 or not isinstance(module, PRUNABLE_MODULES):
        return False
    if isinstance(module, nn.RNNBase):
        return bool(_RNN_WEIGHT.match(local_name))
    if isinstance(module, nn.MultiheadAttention):
        return local_name in ("in_proj_weight", "q_proj_weight", "k_proj_weight", "v_proj_weight")
    return local_name == "weight"


def _owner_names(model: nn.Module) -> dict[str, tuple[nn.Module, str]]:
    """Fully-qualified parameter name -> (owning module, local name), first occurrence of tied params only."""
    owners: dict[str, tuple[nn.Module, str]] = {}
    seen: set[int] = set()
    for module_name, module in model.named_modules():
        for local_name, param in module.named_parameters(recurse=False):
            if id(param) in seen:
                continue
            seen.add(id(param))
            full = f"{module_name}.{local_name}" if module_name else local_name
            owners[full] = (module, local_name)
    return owners


def _matches(pattern: str, name: str) -> bool:
    return pattern == name or re.fullmatch(pattern, name) is not None


def _as_patterns(value: str | Iterable[str] | None, arg: str) -> list[str]:
    if value is None:
        return []
    patterns = [value] if isinstance(value, str) else list(value)
    for pattern in patterns:
        if not isinstance(pattern, str):
            raise TypeError(f"{arg} must hold parameter names or regexes (str), got {pattern!r}")
        try:
            re.compile(pattern)
        except re.error as err:
            raise ValueError(f"{arg}: {pattern!r} is not a valid regex ({err})") from None
    return patterns


def select_prunable(
    model: nn.Module,
    *,
    include: str | Iterable[str] | None = None,
    exclude: str | Iterable[str] | None = None,
) -> dict[str, nn.Parameter]:
    """The parameters to sparsify, by fully-qualified name, in model order.

    By default: every weight with >= 2 dims of Linear, Conv1d/2d/3d (grouped and depthwise too), ConvTranspose,
    Embedding, MultiheadAttention (``in_proj_weight``; ``out_proj`` is a Linear) and RNN/LSTM/GRU
    (``weight_ih_l*``, ``weight_hh_l*``). Biases and norm layers stay dense. A ``DistributedDataParallel`` or
    ``DataParallel`` wrapper is looked through: names are those of the wrapped model (no ``module.`` prefix).

    Args:
        model: the model.
        include: names or regexes (full match) of parameters to sparsify *instead of* the default selection;
            any parameter with >= 2 dims may be named.
        exclude: names or regexes removed from the selection.

    Raises:
        ValueError: a pattern matches no parameter, or nothing is left to prune.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    owners = _owner_names(model)
    params = dict(model.named_parameters())
    include_patterns = _as_patterns(include, "include")
    exclude_patterns = _as_patterns(exclude, "exclude")
    for arg, patterns in (("include", include_patterns), ("exclude", exclude_patterns)):
        for pattern in patterns:
            if not any(_matches(pattern, name) for name in params):
                raise ValueError(f"{arg}: {pattern!r} matches no parameter of the model; "
                                 f"parameters are e.g. {', '.join(list(params)[:6])}")
    if include_patterns:
        chosen = {n: p for n, p in params.items() if any(_matches(pat, n) for pat in include_patterns)}
        for name, param in chosen.items():
            if param.dim() < 2:
                raise ValueError(f"include: {name!r} has shape {tuple(param.shape)}; only tensors with >= 2 dims "
                                 "can be sparsified")
    else:
        chosen = {n: params[n] for n, (module, local) in owners.items() if _default_prunable(module, local, params[n])}
    chosen = {n: p for n, p in chosen.items() if not any(_matches(pat, n) for pat in exclude_patterns)}
    if not chosen:
        raise ValueError("the model has nothing to prune: no Linear/Conv/Embedding/attention/RNN weight with >= 2 "
                         "dims was selected (use include=... to name parameters)")
    return chosen


def select_named(model: nn.Module, names: Iterable[str], arg: str = "masks") -> dict[str, nn.Parameter]:
    """The parameters named exactly ``names`` (e.g. the keys of given masks), in model order.

    Any tensor with at least one dimension may be named (a bias too, e.g. a lottery ticket that prunes biases with
    their weights); the default selection (:func:`select_prunable`) keeps to weights with >= 2 dims.

    Args:
        model: the model (a ``DistributedDataParallel`` / ``DataParallel`` wrapper is looked through).
        names: fully-qualified parameter names.
        arg: the argument the names come from, for messages.

    Raises:
        ValueError: no name, a name that is not a parameter of the model, or a scalar.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    params = dict(model.named_parameters())
    wanted = list(names)
    if not wanted:
        raise ValueError(f"{arg} must hold at least one tensor's mask, got none")
    for name in wanted:
        if name not in params:
            raise ValueError(f"{arg}: {name!r} is not a parameter of the model; parameters are e.g. "
                             f"{', '.join(list(params)[:6])}")
        if params[name].dim() < 1:
            raise ValueError(f"{arg}: {name!r} is a scalar (shape ()); only tensors with >= 1 dim can be masked")
    chosen = set(wanted)
    return {name: param for name, param in params.items() if name in chosen}


def paired_biases(model: nn.Module, names: Iterable[str]) -> dict[str, str]:
    """The bias of each named weight's own module, where it has one: weight name -> bias name.

    The bias of ``<module>.weight`` is ``<module>.bias``; of an RNN's ``weight_ih_l0``, ``bias_ih_l0``; of
    attention's ``in_proj_weight``, ``in_proj_bias`` (the local name with "weight" replaced by "bias"). Weights
    without one (``bias=False``, embeddings) are left out.

    Args:
        model: the model (a ``DistributedDataParallel`` / ``DataParallel`` wrapper is looked through).
        names: fully-qualified weight names, e.g. the keys of :func:`select_prunable`.
    """
    if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)):
        model = model.module
    owners = _owner_names(model)
    params = dict(model.named_parameters())
    pairs = {}
    for name in names:
        module, local = owners[name]
        bias_local = local.replace("weight", "bias", 1)
        bias = name[: len(name) - len(local)] + bias_local
        if bias_local != local and isinstance(getattr(module, bias_local, None), nn.Parameter) and bias in params:
            pairs[name] = bias
    return pairs


def resolve_overrides(
    names: Sequence[str],
    overrides: Mapping[str, float] | None,
    *,
    dense_first: bool = False,
    dense_last: bool = False,
) -> dict[str, float]:
    """Per-tensor pinned sparsities from name/regex overrides and the dense first/last switches.

    Raises:
        ValueError: an override pattern matches no selected tensor, or a sparsity is outside [0, 1).
    """
    fixed: dict[str, float] = {}
    for pattern, value in (overrides or {}).items():
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not 0.0 <= value < 1.0:
            raise ValueError(f"sparsity_overrides[{pattern!r}]={value!r}: a sparsity must be a number in [0, 1)")
        hits = [n for n in names if _matches(pattern, n)]
        if not hits:
            raise ValueError(f"sparsity_overrides: {pattern!r} matches no sparsified parameter; "
                             f"they are {', '.join(names)}")
        fixed.update({n: float(value) for n in hits})
    if dense_first:
        fixed[names[0]] = 0.0
    if dense_last:
        fixed[names[-1]] = 0.0
    return fixed


#: Entries per block of random scores drawn for a :class:`FlatMask` (1 MiB of float32).
RANDOM_BLOCK = 1 << 18


@dataclass(frozen=True, eq=False)
class FlatMask:
    """A mask given by its active positions: the form of a mask too large to build as a bool tensor.

    Attributes:
        shape: the shape of the tensor it masks.
        positions: int64 flat (row-major) positions of the active entries, increasing, on the CPU.
    """

    shape: tuple[int, ...]
    positions: Tensor

    def count(self) -> int:
        """Number of active entries."""
        return int(self.positions.shape[0])

    def to_bool(self, device: torch.device | str | None = None) -> Tensor:
        """The bool mask (a tensor of ``shape``)."""
        mask = torch.zeros(math.prod(self.shape), dtype=torch.bool, device=device)
        mask[self.positions.to(mask.device)] = True
        return mask.view(self.shape)


def random_blocks(numel: int, generator: torch.Generator, block: int = RANDOM_BLOCK) -> Iterator[tuple[int, Tensor]]:
    """``(offset, scores)``: ``numel`` uniform random scores drawn from ``generator`` in blocks; the same numbers
    as one ``torch.rand(numel, generator=generator)`` (the CPU generator fills tensors serially)."""
    for start in range(0, numel, block):
        yield start, torch.rand(min(block, numel - start), generator=generator)


def random_masks(
    params: Mapping[str, Tensor],
    sparsity: float,
    distribution: str,
    generator: torch.Generator,
    *,
    scope: str = "layer",
    fixed: Mapping[str, float] | None = None,
    pattern: NMPattern | str | None = None,
    layouts: Mapping[str, NMLayout] | None = None,
    flat: Collection[str] = (),
) -> dict[str, Tensor | FlatMask]:
    """Random masks with exact counts: per tensor from ``distribution``, or ``scope="global"``, or N:M.

    Scores are drawn on the CPU from ``generator`` (so every device and every rank draws the same mask) and
    the mask is moved to the parameter's device. In the global scope the unpinned tensors' counts come from one
    draw over all of them together (so each tensor's density is uniform in expectation), then each tensor draws
    its mask with its count, as in the layer scope. With a ``pattern`` (and the ``layouts`` of
    :func:`sparsetrain.nm.nm_layouts`) every patterned tensor keeps N random entries of every M (static N:M) and
    ``sparsity``, ``distribution`` and ``scope`` are not used (:func:`sparsetrain.selection.nm_budget`).

    Args:
        params: name -> tensor (only shapes and devices are read: a ``meta`` tensor will do for a ``flat`` name).
        sparsity / distribution / scope / fixed: as :func:`sparsetrain.selection.budget`.
        generator: the CPU generator the scores are drawn from.
        pattern / layouts: the N:M pattern and the tensors' layouts (None: unstructured).
        flat: names whose masks come back as :class:`FlatMask`, chosen over blocks of scores
            (:func:`~sparsetrain.streaming_topk.topk_positions`) so that no score or bool tensor of their size is
            ever built. The random numbers and the choice (ties to the lowest position) are the same as for a bool
            mask, so either form gives the same mask. Not with a pattern.

    Returns:
        name -> bool mask, or :class:`FlatMask` for the ``flat`` names.
    """
    shapes = {n: tuple(p.shape) for n, p in params.items()}
    if pattern is not None:
        if flat:
            raise ValueError(f"pattern={str(pattern)!r} is not allowed with flat masks: N:M masks are drawn as bool "
                             "tensors")
        if layouts is None:
            raise ValueError(f"pattern={str(pattern)!r} needs layouts (sparsetrain.nm.nm_layouts) for the reduction "
                             "dims")
        wanted = nm_budget({n: layouts[n] for n in params}, pattern, fixed=fixed)
    else:
        wanted = budget(shapes, sparsity, distribution=distribution, scope=scope, fixed=fixed)
    counts = dict(wanted.counts)
    pooled = [n for n in shapes if n not in counts and n not in wanted.groups]
    if pooled:
        sizes = [math.prod(shapes[n]) for n in pooled]
        if any(name in flat for name in pooled):
            chosen = topk_positions(random_blocks(sum(sizes), generator), wanted.global_count or 0)
            ends = torch.tensor(sizes).cumsum(0)
            owner = torch.bucketize(chosen, ends, right=True)
            counts.update(zip(pooled, torch.bincount(owner, minlength=len(pooled)).tolist(), strict=True))
        else:
            draw = torch.rand(sum(sizes), generator=generator)
            keep = keep_top(dict(zip(pooled, torch.split(draw, sizes), strict=True)), Budget({}, wanted.global_count))
            counts.update({name: int(keep[name].sum()) for name in pooled})
    masks: dict[str, Tensor | FlatMask] = {}
    for name, param in params.items():
        if name in flat:
            masks[name] = FlatMask(shapes[name], topk_positions(random_blocks(math.prod(shapes[name]), generator),
                                                                counts[name]))
            continue
        scores = torch.rand(shapes[name], generator=generator)
        one = Budget(groups={name: wanted.groups[name]}) if name in wanted.groups else Budget({name: counts[name]})
        masks[name] = keep_top({name: scores}, one)[name].to(param.device)
    return masks


def count_active(masks: Mapping[str, Tensor], name: str) -> int:
    """The number of active entries of ``masks[name]``, without building the mask where the mapping can count
    (the masks of sparse storage, see :mod:`sparsetrain.sparse.storage_masks`, have a ``count(name)``)."""
    count = getattr(masks, "count", None)
    return count(name) if count is not None else int(torch.count_nonzero(masks[name]))


def count_entries(masks: Mapping[str, Tensor], name: str) -> int:
    """The size of ``masks[name]``, without building the mask where the mapping knows it (``numel(name)``)."""
    numel = getattr(masks, "numel", None)
    return numel(name) if numel is not None else masks[name].numel()


def active_fraction(masks: Mapping[str, Tensor]) -> float:
    """Active entries over all entries of all masks together (0.0 without any), counted without building the
    masks of sparse storage."""
    total = sum(count_entries(masks, name) for name in masks)
    return sum(count_active(masks, name) for name in masks) / total if total else 0.0


@torch.no_grad()
def apply_masks(params: Mapping[str, Tensor], masks: Mapping[str, Tensor]) -> None:
    """Zero every parameter outside its mask, in place (one fused call over all tensors).

    ``masks`` may be bool or already in the parameters' dtype (faster).
    """
    names = list(masks)
    torch._foreach_mul_([params[n] for n in names], [masks[n] for n in names])


@dataclass(frozen=True)
class LayerSparsity:
    """One tensor's row of a :class:`SparsityReport` (``note``: e.g. the N:M pattern it follows, or why not)."""

    name: str
    shape: tuple[int, ...]
    numel: int
    nonzeros: int
    note: str = ""

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0


@dataclass(frozen=True)
class SparsityReport:
    """Per-tensor shape, nonzeros and sparsity measured from the weights; ``str()`` is a table."""

    layers: list[LayerSparsity] = field(default_factory=list)

    @property
    def numel(self) -> int:
        return sum(layer.numel for layer in self.layers)

    @property
    def nonzeros(self) -> int:
        return sum(layer.nonzeros for layer in self.layers)

    @property
    def sparsity(self) -> float:
        return 1.0 - self.nonzeros / self.numel if self.numel else 0.0

    def to_dict(self) -> dict:
        """JSON-able form: per-layer rows and the totals."""
        return {
            "layers": [
                {"name": l.name, "shape": list(l.shape), "numel": l.numel, "nonzeros": l.nonzeros,
                 "sparsity": l.sparsity, **({"note": l.note} if l.note else {})}
                for l in self.layers
            ],
            "numel": self.numel,
            "nonzeros": self.nonzeros,
            "sparsity": self.sparsity,
        }

    def __str__(self) -> str:
        notes = any(l.note for l in self.layers)
        rows = [(l.name, "x".join(map(str, l.shape)), l.numel, l.nonzeros, l.sparsity, *((l.note,) if notes else ()))
                for l in self.layers]
        rows.append(("total", "", self.numel, self.nonzeros, self.sparsity, *(("",) if notes else ())))
        columns = [Column("tensor", align="left"), Column("shape", align="left"), Column("numel", format=","),
                   Column("nonzeros", format=","), Column("sparsity", format=".4f")]
        return render(columns + ([Column("note", align="left")] if notes else []), rows)


@torch.no_grad()
def sparsity_report(params: Mapping[str, Tensor], notes: Mapping[str, str] | None = None) -> SparsityReport:
    """Measure each tensor's nonzeros from its values; ``notes`` (name -> text) go into the rows."""
    return SparsityReport([
        LayerSparsity(name, tuple(p.shape), p.numel(), int(torch.count_nonzero(p)), (notes or {}).get(name, ""))
        for name, p in params.items()
    ])


def warn_collapsed(masks: Mapping[str, Tensor], what: str, *, names: Iterable[str] | None = None,
                   stacklevel: int = 3) -> list[str]:
    """Log and ``warnings.warn`` about tensors whose mask keeps no weight (layer collapse); return their names.

    A collapsed layer passes nothing forward (a Linear or convolution with no weight outputs its bias alone), so
    a network with one trains at chance: the warning names the layers, whatever chose the masks. The masks of
    sparse storage are counted without being built (:func:`count_active`).

    Args:
        masks: name -> bool mask.
        what: who chose the masks, for the message (e.g. "RigL(sparsity=0.999999)").
        names: the masks to look at (default: all).
        stacklevel: passed to ``warnings.warn`` (point at the caller's caller).
    """
    empty = [name for name in (masks if names is None else names)
             if count_entries(masks, name) and not count_active(masks, name)]
    if empty:
        message = f"{what}: layer collapse, no weight left in {', '.join(empty)}"
        logger.warning(message)
        warnings.warn(message, stacklevel=stacklevel)
    return empty
