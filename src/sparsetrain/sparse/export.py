"""Compressed export of a pruned model's state_dict to one safetensors file, and loading it back.

File layout (format version 1). A plain safetensors file whose string metadata holds:

* ``"format"``: ``"sparsetrain.sparse"`` (files without it are refused);
* ``"format_version"``: ``"1"``;
* ``"tensors"``: JSON object, state_dict name -> ``{"encoding", "shape", "dtype", "parts"}`` where
  ``parts`` maps part names (see :mod:`sparsetrain.sparse.encoding`) to the keys under which they
  are stored; ``nm``-encoded tensors add ``"nm": {"pattern": "2:4", "dim": 1}`` (a reader that
  predates this encoding refuses such a file with "unknown encoding 'nm'"). Dense tensors are stored under their own name, so a file with nothing compressed
  reads like an ordinary safetensors state_dict. A tensor that is the very same tensor as an
  earlier one (tied weights) gets ``{"encoding": "alias", "target": <name>}`` and is stored once.

Only safetensors' own loader is used (no pickle), so loading an untrusted file runs no code.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import safetensors
import safetensors.torch
import torch
from torch import Tensor, nn

from sparsetrain.atomic import write_bytes
from sparsetrain.nm import reduction_dim
from sparsetrain.sparse.encoding import ENCODINGS, EncodingError, decode, encode
from sparsetrain.sparse.nm_format import NMSpec

logger = logging.getLogger(__name__)

FORMAT_NAME = "sparsetrain.sparse"
FORMAT_VERSION = 1
_PART_SEPARATOR = "::"


class SparseFileError(ValueError):
    """Raised when a file is not a sparsetrain export, is corrupt, or does not fit the model."""


@dataclass(frozen=True)
class ExportInfo:
    """What :func:`export_sparse` wrote.

    Attributes:
        path: the file written.
        bytes_written: size of the file on disk (header included).
        dense_bytes: bytes the same tensors take dense (``numel * itemsize`` summed over distinct
            tensors; tied tensors counted once), i.e. the payload of a dense safetensors file.
        encodings: state_dict name -> encoding used (``"dense"``, ``"bitmask"``, ``"csr"``,
            ``"coo"``, ``"nm"`` or ``"alias"``).
        patterns: state_dict name -> N:M pattern (e.g. ``"2:4"``) of each ``nm``-encoded tensor.
    """

    path: Path
    bytes_written: int
    dense_bytes: int
    encodings: dict[str, str] = field(default_factory=dict)
    patterns: dict[str, str] = field(default_factory=dict)

    @property
    def compression_ratio(self) -> float:
        """``dense_bytes / bytes_written`` (> 1 means the file is smaller than the dense tensors)."""
        return self.dense_bytes / self.bytes_written if self.bytes_written else math.inf


def _dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def _dtype_from_name(name: object, what: str) -> torch.dtype:
    dtype = getattr(torch, name, None) if isinstance(name, str) else None
    if not isinstance(dtype, torch.dtype):
        raise SparseFileError(f"{what}: unknown dtype {name!r} in metadata")
    return dtype


def _alias_key(t: Tensor) -> tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype, str]:
    return (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), t.stride(), t.dtype, str(t.device))


def _reduction_dims(model: nn.Module) -> dict[str, int]:
    """state_dict name -> reduction dim of every parameter with >= 2 dims (where N:M groups run)."""
    dims = {}
    for module_name, module in model.named_modules():
        for local, param in module.named_parameters(recurse=False):
            if param.dim() >= 2:
                dims[f"{module_name}.{local}" if module_name else local] = reduction_dim(module, local)
    return dims


def export_sparse(
    model: nn.Module,
    path: str | os.PathLike[str],
    *,
    min_sparsity: float = 0.3,
    keep_zero_signs: bool = True,
) -> ExportInfo:
    """Write ``model.state_dict()`` to one safetensors file, sparse tensors compressed.

    A tensor whose fraction of zeros is at least ``min_sparsity`` is stored with the smallest of
    the bitmask / CSR / COO encodings (rule in :mod:`sparsetrain.sparse.encoding`), or dense if
    that is not smaller; every other tensor and buffer is stored dense. A weight that follows an
    N:M pattern along its reduction dim (:func:`sparsetrain.nm.reduction_dim`; M in 2..32) is
    stored as N:M (kept values plus in-group positions) when that is no larger. The export is lossless:
    :func:`load_sparse` returns a state_dict bit-identical to the original (``-0.0`` and NaN
    included).

    Note on ``-0.0``: masking by multiplication (``w * mask``) leaves ``-0.0`` wherever a negative
    weight was pruned. Keeping those signs costs one bit per zero (about ``numel / 8`` bytes per
    tensor, as much as a bitmask); masks baked with ``masked_fill``/``torch.where`` give ``+0.0``
    and cost nothing. Pass ``keep_zero_signs=False`` to store every zero as ``+0.0``.

    Args:
        model: the module to export (pruned weights already exactly zero).
        path: file to write (overwritten if it exists).
        min_sparsity: smallest sparsity, in [0, 1], at which a tensor is considered for compression.
        keep_zero_signs: keep ``-0.0`` bit-exact (see above); False stores them as ``+0.0``.

    Returns:
        An :class:`ExportInfo` with the bytes written, the dense bytes, and each tensor's encoding.
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(min_sparsity, bool) or not isinstance(min_sparsity, (int, float)) or not 0.0 <= min_sparsity <= 1.0:
        raise ValueError(f"min_sparsity must be a float in [0, 1], got {min_sparsity!r}")
    if not isinstance(keep_zero_signs, bool):
        raise TypeError(f"keep_zero_signs must be a bool, got {type(keep_zero_signs).__name__}")
    path = Path(path)
    state = model.state_dict()
    stored: dict[str, Tensor] = {}
    entries: dict[str, dict[str, object]] = {}
    first_of: dict[tuple[int, int, tuple[int, ...], tuple[int, ...], torch.dtype, str], str] = {}
    dense_bytes = 0
    dims = _reduction_dims(model)
    for name, tensor in state.items():
        if not isinstance(tensor, Tensor):
            raise TypeError(f"state_dict entry {name!r} is a {type(tensor).__name__}, not a tensor")
        key = _alias_key(tensor)
        if key in first_of:
            entries[name] = {"encoding": "alias", "target": first_of[key]}
            continue
        first_of[key] = name
        dense_bytes += tensor.numel() * tensor.element_size()
        encoded = encode(tensor, min_sparsity=min_sparsity, keep_zero_signs=keep_zero_signs, nm_dim=dims.get(name))
        part_keys: dict[str, str] = {}
        for part, value in encoded.parts.items():
            stored_key = name if encoded.encoding == "dense" else f"{name}{_PART_SEPARATOR}{part}"
            if stored_key in stored or (stored_key != name and stored_key in state):
                raise ValueError(f"state_dict name {name!r} collides with a stored part key {stored_key!r}")
            # Fresh, contiguous, unshared storage: safetensors refuses tensors that share memory.
            stored[stored_key] = value.detach().to("cpu").contiguous().clone()
            part_keys[part] = stored_key
        entries[name] = {
            "encoding": encoded.encoding,
            "shape": list(encoded.shape),
            "dtype": _dtype_name(encoded.dtype),
            "parts": part_keys,
        }
        if encoded.nm is not None:
            entries[name]["nm"] = encoded.nm.to_json()
    metadata = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "tensors": json.dumps(entries)}
    write_bytes(safetensors.torch.save(stored, metadata=metadata), path)
    info = ExportInfo(
        path=path,
        bytes_written=path.stat().st_size,
        dense_bytes=dense_bytes,
        encodings={n: str(e["encoding"]) for n, e in entries.items()},
        patterns={n: str(e["nm"]["pattern"]) for n, e in entries.items() if "nm" in e},
    )
    logger.info(
        "exported %d tensors to %s: %d bytes (dense %d, ratio %.2f)",
        len(entries),
        path,
        info.bytes_written,
        dense_bytes,
        info.compression_ratio,
    )
    return info


def _read_file(path: Path) -> tuple[dict[str, str], dict[str, Tensor]]:
    try:
        with safetensors.safe_open(str(path), framework="pt") as handle:
            metadata = handle.metadata() or {}
        tensors = safetensors.torch.load_file(str(path))
    except safetensors.SafetensorError as err:
        raise SparseFileError(f"{path} is not a readable safetensors file (corrupt or truncated?): {err}") from err
    return metadata, tensors


def _parse_entries(metadata: Mapping[str, str], path: Path) -> dict[str, dict[str, object]]:
    if metadata.get("format") != FORMAT_NAME:
        raise SparseFileError(
            f"{path} is not a sparsetrain sparse export: metadata 'format' is {metadata.get('format')!r}, "
            f"expected {FORMAT_NAME!r} (write files with sparsetrain.sparse.export_sparse)"
        )
    version = metadata.get("format_version")
    if version != str(FORMAT_VERSION):
        raise SparseFileError(
            f"{path}: format_version {version!r} is not supported (this sparsetrain reads {FORMAT_VERSION})"
        )
    try:
        entries = json.loads(metadata.get("tensors", ""))
    except json.JSONDecodeError as err:
        raise SparseFileError(f"{path}: the 'tensors' metadata is not valid JSON: {err}") from err
    if not isinstance(entries, dict) or not all(isinstance(e, dict) for e in entries.values()):
        raise SparseFileError(f"{path}: the 'tensors' metadata must be a JSON object of objects")
    return entries


def _decode_entry(name: str, entry: Mapping[str, object], tensors: Mapping[str, Tensor], path: Path) -> Tensor:
    what = f"{path}: tensor {name!r}"
    encoding = entry.get("encoding")
    if encoding not in ENCODINGS:
        raise SparseFileError(f"{what}: unknown encoding {encoding!r}")
    shape = entry.get("shape")
    parts = entry.get("parts")
    if not isinstance(shape, list) or not all(isinstance(s, int) and s >= 0 for s in shape):
        raise SparseFileError(f"{what}: shape must be a list of non-negative ints, got {shape!r}")
    if not isinstance(parts, dict):
        raise SparseFileError(f"{what}: 'parts' must be an object, got {parts!r}")
    missing = [key for key in parts.values() if key not in tensors]
    if missing:
        raise SparseFileError(f"{what}: stored parts {missing} are missing from the file")
    dtype = _dtype_from_name(entry.get("dtype"), what)
    try:
        nm = NMSpec.from_json(entry.get("nm"), len(shape)) if encoding == "nm" else None
    except ValueError as err:
        raise SparseFileError(f"{what}: {err}") from err
    try:
        return decode(str(encoding), {p: tensors[k] for p, k in parts.items()}, tuple(shape), dtype, what, nm)
    except EncodingError as err:
        raise SparseFileError(str(err)) from err


def _check_fits(state: Mapping[str, Tensor], model: nn.Module, path: Path) -> None:
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [
        f"{n}: file {tuple(state[n].shape)} vs model {tuple(expected[n].shape)}"
        for n in expected
        if n in state and state[n].shape != expected[n].shape
    ]
    if missing or unexpected or wrong:
        problems = []
        if missing:
            problems.append(f"missing from the file: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
        if unexpected:
            problems.append(f"not in the model: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
        if wrong:
            problems.append(f"shape mismatch: {wrong[:10]}{' ...' if len(wrong) > 10 else ''}")
        raise SparseFileError(f"{path} does not fit {type(model).__name__}: " + "; ".join(problems))


def load_sparse(path: str | os.PathLike[str], model: nn.Module | None = None) -> dict[str, Tensor] | nn.Module:
    """Read a file written by :func:`export_sparse`.

    Args:
        path: the file.
        model: if given, the state_dict is loaded into it (``strict=True``) after checking that
            names and shapes match exactly.

    Returns:
        The state_dict (name -> CPU tensor, bit-identical to the exported one, in the exported
        order) when ``model`` is None; otherwise ``model`` itself, loaded.

    Raises:
        FileNotFoundError: if ``path`` does not exist.
        SparseFileError: (a ``ValueError``) if the file is not a sparsetrain export, is corrupt or
            truncated, or does not fit ``model``.
    """
    if model is not None and not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module or None, got {type(model).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no such file: {path}")
    metadata, tensors = _read_file(path)
    entries = _parse_entries(metadata, path)
    referenced = {k for e in entries.values() if isinstance(e.get("parts"), dict) for k in e["parts"].values()}
    stray = sorted(set(tensors) - referenced)
    if stray:
        raise SparseFileError(f"{path}: tensors {stray[:10]} are stored but not described in the metadata")
    state: dict[str, Tensor] = {}
    for name, entry in entries.items():
        if entry.get("encoding") == "alias":
            target = entry.get("target")
            if target not in state:
                raise SparseFileError(f"{path}: tensor {name!r} aliases {target!r}, which is not stored before it")
            state[name] = state[target]
        else:
            state[name] = _decode_entry(name, entry, tensors, path)
    if model is None:
        return state
    _check_fits(state, model, path)
    model.load_state_dict(state, strict=True)
    return model
