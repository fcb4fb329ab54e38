"""Paper recipes: experiment configs shipped with the package, one YAML file each (``sparsetrain train --recipe``).

A recipe is an ordinary config file (sections ``data``, ``model``, ``optim``, ``sparse``, ``train``) with one more
section, ``recipe``, that says what it is: ``description`` (one line, for ``--recipe list``), ``reference`` (the
paper and the official code it follows), ``model`` (a note on the network) and ``deviations`` (what differs from
the official code, and why). The files live in ``sparsetrain/experiment/recipes/``; the GraNet recipes follow Liu
et al. (NeurIPS 2021) and its official CIFAR scripts, the RigL one Evci et al. (ICML 2020) and its official CIFAR-10
code. A recipe names no data directory: the user gives ``--data-dir``.
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from .config import ConfigError, ExperimentConfig, load_yaml

__all__ = ["list_recipes", "recipe_info", "load_recipe"]

#: The section of a recipe file that describes it (not a config section).
INFO = "recipe"


def _files() -> dict[str, Any]:
    folder = resources.files("sparsetrain.experiment") / "recipes"
    return {entry.name[: -len(".yaml")]: entry for entry in folder.iterdir() if entry.name.endswith(".yaml")}


def list_recipes() -> dict[str, str]:
    """Every shipped recipe: name -> its one-line description, sorted by name."""
    return {name: recipe_info(name)["description"] for name in sorted(_files())}


def _read(name: str) -> dict[str, Any]:
    files = _files()
    if name not in files:
        raise ConfigError(f"recipe {name!r} is not allowed; choose one of {', '.join(sorted(files))} (or list)")
    return load_yaml(files[name].read_text(encoding="utf-8"), f"recipe {name}")


def recipe_info(name: str) -> dict[str, str]:
    """The ``recipe`` section of ``name``: description, reference, model, deviations.

    Raises:
        ConfigError: no such recipe.
    """
    return dict(_read(name).get(INFO) or {})


def load_recipe(name: str) -> ExperimentConfig:
    """The config of recipe ``name`` (its ``recipe`` section set aside).

    Raises:
        ConfigError: no such recipe, or a file that is not a valid config (a bug in the package).
    """
    values = {section: fields for section, fields in _read(name).items() if section != INFO}
    return ExperimentConfig.from_dict(values)
