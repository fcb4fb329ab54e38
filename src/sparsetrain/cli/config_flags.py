"""The experiment config on the command line: one flag per config field, ``--config FILE``, ``--set KEY=VALUE``.

Shared by ``train``, ``lottery`` and ``plasticity``. Precedence: defaults < ``--recipe`` (``train`` only) <
``--config`` (or ``--resume RUN_DIR``'s config.yaml) < flags < ``--set``.
"""

from __future__ import annotations

import argparse
import typing
from pathlib import Path
from typing import Any

from .terminal import CliError, fmt_default, note

__all__ = ["add_config_flags", "resolve_config", "parse_seeds", "note_validation"]


def add_config_flags(parser: argparse.ArgumentParser) -> None:
    """One flag per config field, grouped by section; every flag defaults to "not given" (None)."""
    from sparsetrain.experiment.config import SECTIONS, iter_fields

    groups = {s: parser.add_argument_group(f"{s} (config section '{s}')",
                                         (SECTIONS[s].__doc__ or "").replace("``", "")) for s in SECTIONS}
    for info in iter_fields():
        group = groups[info.section]
        help_text = f"{info.help} (default: {fmt_default(info.default)})"
        dest = f"cfg:{info.path}"
        origin = typing.get_origin(info.type)
        if info.type is bool:
            group.add_argument(info.flag, dest=dest, action=argparse.BooleanOptionalAction, default=None,
                               help=help_text)
        elif origin is dict:
            group.add_argument(info.flag, dest=dest, action="append", default=None, metavar="KEY=VALUE",
                               help=f"{info.help}; repeatable, values are YAML (default: none)")
        elif origin is list:
            group.add_argument(info.flag, dest=dest, nargs="+", default=None, metavar=info.name.upper(),
                               help=help_text)
        else:
            try:
                choices = info.allowed()
            except ImportError:
                choices = None
            metavar = "{" + ",".join(choices) + "}" if choices else info.name.upper()
            if choices and info.also is not None:
                metavar += f" or {info.also[1]}"
            group.add_argument(info.flag, dest=dest, default=None, metavar=metavar, help=help_text)


def resolve_config(args: argparse.Namespace) -> Any:
    """The :class:`~sparsetrain.experiment.ExperimentConfig` of the command line.

    defaults < ``--recipe`` < ``--config`` file (or ``--resume RUN_DIR``'s config.yaml) < flags < ``--set``.

    Raises:
        CliError: a missing ``--config`` file, or ``--config`` or ``--recipe`` with ``--resume RUN_DIR``.
        ConfigError: a value the config does not allow, or an unknown recipe.
    """
    from sparsetrain.experiment.config import (
        ConfigError,
        ExperimentConfig,
        iter_fields,
        load_yaml,
        parse_text,
        parse_yaml_value,
    )
    from sparsetrain.reading import MAX_YAML_BYTES, read_text

    recipe = getattr(args, "recipe", None)
    if isinstance(args.resume, str):
        from sparsetrain.experiment.rundir import RunDir

        if args.config or recipe:
            given = "--config" if args.config else "--recipe"
            raise CliError(f"--resume RUN_DIR and {given} cannot be combined: the run's own config.yaml is used")
        config = RunDir(Path(args.resume)).read_config()
    else:
        if recipe:
            from sparsetrain.experiment.recipe import load_recipe

            config = load_recipe(recipe)
        else:
            config = ExperimentConfig()
        if args.config:
            path = Path(args.config)
            if not path.exists():
                raise CliError(f"--config={args.config!r}: no such file")
            config = config.updated(load_yaml(read_text(path, limit=MAX_YAML_BYTES, what="config"), str(path)))

    overrides: dict[str, Any] = {}
    for info in iter_fields():
        given = getattr(args, f"cfg:{info.path}")
        if given is None:
            continue
        try:
            if isinstance(given, bool):
                overrides[info.path] = given
            elif isinstance(given, list) and info.name == "options":
                for item in given:
                    key, sep, text = item.partition("=")
                    if not sep or not key:
                        raise ConfigError(f"{info.flag}={item!r} is not allowed: expected KEY=VALUE")
                    overrides[f"{info.path}.{key.strip()}"] = parse_yaml_value(f"{info.path}.{key}", text)
            elif isinstance(given, list):
                overrides[info.path] = parse_text(info.path, " ".join(given))
            else:
                overrides[info.path] = parse_text(info.path, given)
        except ConfigError as exc:
            raise ConfigError(f"argument {info.flag}: {exc}") from None
    config = config.with_overrides(overrides)

    for item in args.overrides:
        key, sep, text = item.partition("=")
        key = key.strip()
        if not sep or not key:
            raise ConfigError(f"--set {item!r} is not allowed: expected KEY=VALUE, e.g. sparse.sparsity=0.95")
        parts = key.split(".")
        value = parse_yaml_value(key, text) if len(parts) == 3 and parts[1] == "options" else parse_text(key, text)
        config = config.with_overrides({key: value})
    return config


def parse_seeds(args: argparse.Namespace, default: int) -> list[int]:
    """``--seeds`` as distinct ints >= 0 in the order given; ``[default]`` without the flag."""
    if args.seeds is None:
        return [default]
    seeds = []
    for text in args.seeds:
        try:
            seed = int(text)
        except ValueError:
            raise CliError(f"argument --seeds: {text!r} is not allowed: expected ints >= 0") from None
        if seed < 0:
            raise CliError(f"argument --seeds: {seed} is not allowed: expected ints >= 0")
        seeds.append(seed)
    return list(dict.fromkeys(seeds))


def note_validation(config: Any) -> None:
    """Say once that a run without a validation split (``--val-fraction 0``) reports its last epoch as "best"."""
    if config.data.val_fraction == 0:
        note("--val-fraction 0: no validation split, so 'best' is the last epoch (an epoch chosen on the test set "
             "would report the test set's best case)")
