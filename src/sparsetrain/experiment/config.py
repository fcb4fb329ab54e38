"""The experiment configuration: strict validation of every value, parsing, overrides, YAML and the run's hash.

An experiment is five sections (``data``, ``model``, ``optim``, ``sparse``, ``train``), declared with each field's
help text, flag and allowed values in :mod:`.sections` (and importable from here). A config is built from
defaults, then a YAML file, then dotted overrides (``sparse.sparsity=0.95``); every value is checked on the way in,
and a bad one raises :class:`ConfigError` naming the field, the value and what is allowed.

A run directory is named by :meth:`ExperimentConfig.run_name`: the method and a short hash of the fields that
differ from their defaults, leaving out fields that cannot change the result (seed, paths, device, threads), so
adding an option with a default later never renames old runs.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Union

import yaml

from sparsetrain.identity import identity_hash
from sparsetrain.reading import ReadError, load_yaml_text

from .sections import (
    DENSE,
    SECTIONS,
    DataConfig,
    FieldInfo,
    ModelConfig,
    OptimConfig,
    SparseConfig,
    TrainConfig,
    iter_fields,
)

__all__ = [
    "ConfigError",
    "DataConfig",
    "ModelConfig",
    "OptimConfig",
    "SparseConfig",
    "TrainConfig",
    "ExperimentConfig",
    "SECTIONS",
    "FieldInfo",
    "iter_fields",
    "parse_text",
    "parse_yaml_value",
    "validate_value",
    "load_yaml",
]

logger = logging.getLogger(__name__)

#: The ``sparse.backend`` run identities are named against: the default before "auto" became it (see
#: :meth:`ExperimentConfig._backend_identity`).
NAMED_BACKEND = "dense"

#: Values a field no longer takes, with where they went: (field, value) -> the explanation in the error.
_MOVED = {("sparse.distribution", "global"): "'global' is a scope, not a distribution: set sparse.scope=global "
                                             "(--sparse-scope global)",
          ("sparse.scope", "layerwise"): "it is spelled 'layer' now"}


class ConfigError(ValueError):
    """An invalid configuration value; the message is one line naming the field, the value and what is allowed."""


_FIELDS: dict[str, FieldInfo] = {}


def _field(path: str) -> FieldInfo:
    if not _FIELDS:
        _FIELDS.update({info.path: info for info in iter_fields()})
    return _FIELDS[path]


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " or ".join("none" if a is type(None) else _type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"a list of {_type_name(typing.get_args(tp)[0])}"
    if origin is dict:
        return "a mapping"
    return {int: "an int", float: "a number", bool: "true/false", str: "a string"}.get(tp, str(tp))


def _coerce(path: str, value: Any, tp: Any) -> Any:
    """Check ``value`` against the annotation ``tp``; ints are accepted for floats. Raises ConfigError."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None and type(None) in args:
            return None
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(path, value, arg)
            except ConfigError:
                pass
        raise ConfigError(f"{path}={_short(value)} is not allowed: expected {_type_name(tp)}")
    if origin is list:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected {_type_name(tp)}")
        (item,) = typing.get_args(tp)
        return [_coerce(path, v, item) for v in value]
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected a mapping of option names to values")
        return copy.deepcopy(dict(value))
    if tp is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected an int")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected a finite number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected a string")
        return value
    raise TypeError(f"unsupported config type {tp!r} for {path}")  # a bug in this module, not a user error


def validate_value(path: str, value: Any) -> Any:
    """Check one field's value (type, choices, range) and return it normalised (ints -> floats for floats).

    Args:
        path: ``section.field``.
        value: the value.

    Returns:
        The normalised value.

    Raises:
        ConfigError: unknown field or a value that is not allowed.
    """
    try:
        info = _field(path)
    except KeyError:
        raise _unknown(path) from None
    value = _coerce(path, value, info.type)
    if value is None:
        return None
    allowed = info.allowed()
    if isinstance(value, str) and (path, value) in _MOVED:
        raise ConfigError(f"{path}={_short(value)} is not allowed: {_MOVED[path, value]}")
    if allowed is not None and value not in allowed and not (info.also is not None and info.also[0](value)):
        extra = f", or {info.also[1]}" if info.also is not None else ""
        raise ConfigError(f"{path}={_short(value)} is not allowed; choose one of {', '.join(allowed)}{extra}")
    if info.check is not None:
        predicate, description = info.check
        if not predicate(value):
            raise ConfigError(f"{path}={_short(value)} is not allowed: expected {description}")
    return value


def _short(value: Any, limit: int = 120) -> str:
    """``repr(value)`` cut to ``limit`` characters, so that a message about a huge value stays one readable line."""
    text = repr(value)
    return text if len(text) <= limit else f"{text[:limit - 3]}..."


def _unknown(path: str) -> ConfigError:
    section, _, name = path.partition(".")
    if section not in SECTIONS:
        where = f" (in {path!r})" if name else ""
        return ConfigError(f"unknown config section {section!r}{where}; sections: {', '.join(SECTIONS)}")
    names = [f.name for f in dataclasses.fields(SECTIONS[section])]
    return ConfigError(f"unknown config field {path!r}; fields of {section}: {', '.join(names)}")


def parse_text(path: str, text: str) -> Any:
    """Parse a command-line string for field ``path`` into a value of the field's type.

    Numbers, booleans and "none" are read as such; lists as YAML (``[0.5, 0.75]``) or comma-separated; option
    dicts take YAML values. The result still goes through :func:`validate_value`.

    Raises:
        ConfigError: unknown field or text that cannot be read as the field's type.
    """
    try:
        info = _field(path)
    except KeyError:
        raise _unknown(path) from None
    return _parse_as(path, text, info.type)


def _parse_as(path: str, text: str, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    stripped = text.strip()
    if origin in (Union, types.UnionType):
        if stripped.lower() in ("none", "null", "~", ""):
            return None
        (inner,) = [a for a in typing.get_args(tp) if a is not type(None)]
        return _parse_as(path, text, inner)
    if tp is bool:
        low = stripped.lower()
        if low in ("true", "yes", "on", "1"):
            return True
        if low in ("false", "no", "off", "0"):
            return False
        raise ConfigError(f"{path}={_short(text)} is not allowed: expected true or false")
    if tp in (int, float):
        try:
            return tp(stripped)
        except ValueError:
            raise ConfigError(f"{path}={_short(text)} is not allowed: expected {_type_name(tp)}") from None
    if tp is str:
        return text
    if origin is list:
        try:
            loaded = load_yaml_text(stripped, path) if stripped.startswith("[") else None
        except ReadError:
            loaded = None
        if isinstance(loaded, list):
            items = [str(v) for v in loaded]
        else:
            items = [s for s in stripped.replace(",", " ").split() if s]
        (item,) = typing.get_args(tp)
        return [_parse_as(path, s, item) for s in items]
    return parse_yaml_value(path, text)


def parse_yaml_value(path: str, text: str) -> Any:
    """Read one option value (``KEY=VALUE`` of an options dict) as YAML; "1e-3" is a number, not a string.

    Raises:
        ConfigError: not a YAML value.
    """
    try:
        value = load_yaml_text(text, path)
    except ReadError as exc:
        detail = str(exc).removeprefix(f"{path}: ").removeprefix("not valid YAML: ")
        raise ConfigError(f"{path}={_short(text)} is not allowed: not a YAML value ({detail})") from None
    # YAML 1.1 reads "1e-3" as a string; a user writing a number means a number.
    if isinstance(value, str):
        try:
            return float(value) if any(c in value for c in ".eE") else int(value)
        except ValueError:
            return value
    return value


@dataclass
class ExperimentConfig:
    """A whole experiment: one field per section."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    sparse: SparseConfig = field(default_factory=SparseConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- construction ------------------------------------------------------------------------------------------
    @classmethod
    def from_dict(cls, values: Mapping[str, Any] | None) -> ExperimentConfig:
        """Build from nested ``{section: {field: value}}``; missing fields take their defaults.

        Raises:
            ConfigError: unknown section or field, or a value that is not allowed.
        """
        config = cls()
        return config.updated(values or {})

    @classmethod
    def from_yaml(cls, text: str, source: str = "config") -> ExperimentConfig:
        """Build from YAML text (:func:`load_yaml`), e.g. a ``config.yaml`` or a user's ``--config`` file."""
        return cls().updated(load_yaml(text, source))

    def updated(self, values: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with nested ``{section: {field: value}}`` applied on top (a section's dict replaces nothing else).

        Raises:
            ConfigError: as :meth:`from_dict`.
        """
        if not isinstance(values, Mapping):
            raise ConfigError(f"a config must be a mapping of sections ({', '.join(SECTIONS)}), got {_short(values)}")
        flat: dict[str, Any] = {}
        for section, fields_ in values.items():
            if section not in SECTIONS:
                raise _unknown(f"{section}.")
            if fields_ is None:
                continue
            if not isinstance(fields_, Mapping):
                raise ConfigError(f"config section {section!r} must be a mapping of fields, got {_short(fields_)}")
            for name, value in fields_.items():
                flat[f"{section}.{name}"] = value
        if flat.get("sparse.distribution") == "global" and flat.get("sparse.scope") is None:
            # A config saved before the scope was split from the distribution: read it in today's words.
            logger.warning("sparse.distribution='global' (the old spelling) read as sparse.scope='global'")
            flat["sparse.distribution"], flat["sparse.scope"] = None, "global"
        return self.with_overrides(flat)

    def with_overrides(self, overrides: Mapping[str, Any]) -> ExperimentConfig:
        """A copy with dotted overrides applied in order, e.g. ``{"sparse.sparsity": 0.95}``.

        ``section.options.KEY`` sets one key of an options dict.

        Raises:
            ConfigError: unknown field or a value that is not allowed.
        """
        config = copy.deepcopy(self)
        for path, value in overrides.items():
            parts = path.split(".")
            if len(parts) == 3 and parts[1] == "options" and parts[0] in SECTIONS:
                getattr(config, parts[0]).options[parts[2]] = value
                continue
            if len(parts) != 2:
                raise _unknown(path) if len(parts) < 2 else ConfigError(
                    f"unknown config field {path!r}: only section.options.KEY has three parts")
            setattr(getattr(config, parts[0]), parts[1], validate_value(path, value))
        return config

    # -- views -------------------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, dict[str, Any]]:
        """Nested plain dict of every field (YAML/JSON-able)."""
        return {section: dataclasses.asdict(getattr(self, section)) for section in SECTIONS}

    def to_yaml(self) -> str:
        """The full config as YAML (what ``config.yaml`` holds)."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)

    def flat(self) -> dict[str, Any]:
        """``{"section.field": value}`` for every field."""
        return {f"{s}.{k}": v for s, d in self.to_dict().items() for k, v in d.items()}

    def non_default(self, *, hashed_only: bool = True) -> dict[str, Any]:
        """The fields that differ from their defaults (only those that identify a run, by default).

        ``sparse.options`` holds only the options that differ from the method's declared defaults, normalised by
        type (:meth:`sparsetrain.options.OptionSet.identity`). In the identifying view, a global scope without a
        distribution is spelled as it was before scope and distribution were two fields
        (``sparse.distribution: global``), so the runs named then keep their names; and ``sparse.backend`` is
        named against "dense", its default when those runs were named (:meth:`_backend_identity`).
        """
        result = {}
        for info in iter_fields():
            value = getattr(getattr(self, info.section), info.name)
            default = info.default
            if info.path == "sparse.options":
                value = self._method_options_identity(value)
            elif info.path == "sparse.backend" and hashed_only:
                value, default = self._backend_identity(), NAMED_BACKEND
            if value != default and (info.hashed or not hashed_only):
                result[info.path] = value
        if hashed_only and result.get("sparse.scope") == "global" and "sparse.distribution" not in result:
            del result["sparse.scope"]
            result["sparse.distribution"] = "global"
        return result

    def _backend_identity(self) -> str:
        """``sparse.backend`` as the run identity names it: "auto" counts as "dense" (:data:`NAMED_BACKEND`) where
        it cannot hold a layer sparse, so the runs it leaves unchanged keep the names they had when "dense" was the
        default: no sparsifier (the dense baseline), a method that cannot be held sparse
        (:meth:`~sparsetrain.sparsifier.Sparsifier.storage_may_be_sparse`: GMP and GraNet from dense, SR-STE), an N:M
        pattern or a precision other than fp32 (both train dense)."""
        import sparsetrain

        sparse, backend = self.sparse, self.sparse.backend
        cls = sparsetrain.METHODS.get(sparse.method)
        may_be_sparse = cls is not None and cls.storage_may_be_sparse(sparse.options)
        if backend == "auto" and (not may_be_sparse or sparse.pattern is not None or self.train.precision != "fp32"):
            return NAMED_BACKEND
        return backend

    def _method_options_identity(self, options: dict[str, Any]) -> dict[str, Any]:
        import sparsetrain

        cls = sparsetrain.METHODS.get(self.sparse.method)
        if cls is None:
            return options
        return cls.declared_options().identity(options, in_force=("sparse_init",) if cls.starts_sparse(options)
                                                else ())

    def config_hash(self, length: int = 8) -> str:
        """Short SHA-256 of the non-default identifying fields (stable across key order and new default fields)."""
        return identity_hash(self.non_default(), length=length)

    def run_name(self) -> str:
        """``<method>-<hash>``: the directory of this experiment (one ``seed_<n>`` subdirectory per seed)."""
        return f"{self.sparse.method}-{self.config_hash()}"

    def dense_baseline(self) -> ExperimentConfig:
        """The same recipe without sparsity: method "dense" with the other sparse fields at their defaults.

        The sparse section is reset so that every sparse run with the same data, model, optimizer and training
        recipe shares one dense baseline directory.
        """
        config = copy.deepcopy(self)
        config.sparse = SparseConfig(method=DENSE)
        return config

    def pinned_storage(self) -> ExperimentConfig:
        """The config with ``sparse.backend`` "auto" replaced by "dense" (another backend is left as it is).

        For the studies and result scripts whose published tables came from the masked-dense path, before "auto" was
        the default: their runs keep those names and digits (sparse storage computes the same function with
        another float summation order) unless a recipe asks for "sparse" itself.
        """
        return self.with_overrides({"sparse.backend": NAMED_BACKEND}) if self.sparse.backend == "auto" else self

    def canonical(self) -> ExperimentConfig:
        """The config with fields that a method ignores reset (the dense method ignores the sparse section)."""
        return self.dense_baseline() if self.sparse.method == DENSE else copy.deepcopy(self)


def load_yaml(text: str, source: str = "config") -> dict[str, Any]:
    """A config file's text as a nested dict (:func:`sparsetrain.reading.load_yaml_text`: safe, bounded, no
    aliases, no duplicate keys).

    Raises:
        ConfigError: not valid YAML (or refused by those rules), or not a mapping.
    """
    try:
        values = load_yaml_text(text, source)
    except ReadError as exc:
        raise ConfigError(str(exc)) from None
    if values is None:
        return {}
    if not isinstance(values, dict):
        raise ConfigError(f"{source}: a config must be a mapping of sections ({', '.join(SECTIONS)}), "
                          f"got {type(values).__name__}")
    return values
