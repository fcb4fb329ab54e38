"""The identity of a run, study or cached artifact: a short hash of the fields that make it what it is.

Every directory sparsetrain names by its contents (``<method>-<hash>`` runs, ``lottery-<hash>`` and the
reproduction's ``imp/<benchmark>-<hash>`` runs, the MNIST-1D cache file) is named by :func:`identity_hash`: the
SHA-256 of the fields as canonical JSON (keys sorted, so the order in which they were given does not matter).
Following OpenLTH, a caller passes only the fields that differ from their defaults (``defaults=`` drops the
others), so adding an option with a default never renames existing runs.

Names must never change under existing directories, so the JSON spelling is part of a name: run directories use
compact separators (``,`` and ``:``), while lottery, IMP and cache names were first written with ``json.dumps``'s
default spacing (``, `` and ``: ``) and keep it (``compact=False``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

__all__ = ["identity_hash", "non_default"]


def non_default(fields: Mapping[str, Any], defaults: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``fields`` that are not in ``defaults`` or differ from their default there."""
    missing = object()
    return {key: value for key, value in fields.items() if defaults.get(key, missing) != value}


def identity_hash(fields: Mapping[str, Any], *, defaults: Mapping[str, Any] | None = None, length: int = 8,
                  compact: bool = True) -> str:
    """A short hex SHA-256 of ``fields`` (less those equal to ``defaults``) as key-sorted JSON.

    Args:
        fields: the identifying fields (JSON-able; other values are hashed by their ``str``).
        defaults: if given, fields equal to their default here are left out.
        length: hex digits kept.
        compact: JSON separators ``,``/``:`` (True) or ``, ``/``: `` (False); see the module docstring.

    Returns:
        ``length`` lowercase hex digits.
    """
    if isinstance(length, bool) or not isinstance(length, int) or not 1 <= length <= 64:
        raise ValueError(f"length={length!r} is not allowed: an int in [1, 64]")
    payload = dict(fields) if defaults is None else non_default(fields, defaults)
    separators = (",", ":") if compact else (", ", ": ")
    text = json.dumps(payload, sort_keys=True, separators=separators, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]
