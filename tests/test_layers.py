"""The package's layers: the import graph between its packages, built from the source with ``ast``, has no cycle
and no edge that points up the declared order.

Every ``import`` / ``from ... import`` anywhere in a module counts (inside functions and ``TYPE_CHECKING`` blocks
too), relative ones resolved; ``from package import name`` counts as an import of ``package.name`` when that is a
module. Nodes are the subpackages of ``sparsetrain``, plus ``core`` (the top-level modules, with ``native/``, the C
kernels of core operations, whose loader writes through the core's atomic writer), ``sparsetrain`` (the package's
``__init__``: the public facade) and ``cli`` (with ``__main__``). docs/architecture.md describes the same order.
"""

from __future__ import annotations

import ast
import sys
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = SRC / "sparsetrain"

#: The layers, bottom first. A package may import its own layer's packages (without a cycle) and the layers below.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("core",),                                        # masks, selection, sparsifier, enforcement, options, ...
    ("data", "models", "init_pruning", "sparse"),     # datasets, architectures, pruning at init, sparse storage
    ("methods", "lottery"),                           # the sparse-training methods; the lottery's algorithms
    ("analysis",),                                    # pure functions of masks, weights and checkpoints
    ("sparsetrain",),                                 # the facade: ``import sparsetrain``
    ("experiment", "integrations"),                   # configs, the Trainer, run directories; Lightning / HF
    ("studies",),                                     # lottery, plasticity, reproduction, jackpot runs, reports
    ("cli",),                                         # the command line
)
LEVEL = {name: level for level, names in enumerate(LAYERS) for name in names}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


MODULES = _modules()


def node(module: str) -> str:
    """The graph node of a module of the package."""
    parts = module.split(".")
    if len(parts) == 1:
        return "sparsetrain"
    if parts[1] == "__main__":
        return "cli"
    if parts[1] == "native" or not (PACKAGE / parts[1]).is_dir():
        return "core"
    return parts[1]


def imports(module: str, path: Path) -> list[tuple[str, int]]:
    """``(imported module, line)`` for every import of a ``sparsetrain`` module in ``module``."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for item in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(item, ast.Import):
            found += [(alias.name, item.lineno) for alias in item.names]
        elif isinstance(item, ast.ImportFrom):
            if item.level:
                base = package[:len(package) - (item.level - 1)]
                source = ".".join(base + ([item.module] if item.module else []))
            else:
                source = item.module or ""
            for alias in item.names:
                name = f"{source}.{alias.name}"
                found.append((name if name in MODULES else source, item.lineno))
    return [(target, line) for target, line in found if target == "sparsetrain" or target.startswith("sparsetrain.")]


def graph() -> dict[tuple[str, str], list[str]]:
    """``{(from node, to node): ["module:line -> imported", ...]}`` between distinct nodes."""
    edges: dict[tuple[str, str], list[str]] = defaultdict(list)
    for module, path in MODULES.items():
        here = node(module)
        for target, line in imports(module, path):
            there = node(target)
            if there != here:
                edges[(here, there)].append(f"{module}:{line} -> {target}")
    return edges


def cycles(edges: dict[tuple[str, str], list[str]]) -> list[list[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    succ: dict[str, set[str]] = defaultdict(set)
    for a, b in edges:
        succ[a].add(b)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(succ[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted({a for a, _ in edges} | {b for _, b in edges}):
        if v not in index:
            visit(v)
    return found


def test_every_package_has_a_declared_layer():
    nodes = {node(module) for module in MODULES}
    assert nodes == set(LEVEL), f"declare the layer of {sorted(nodes - set(LEVEL))} in LAYERS"


def test_no_import_cycle_between_packages():
    edges = graph()
    found = cycles(edges)
    detail = [why for component in found for (a, b), whys in edges.items() if a in component and b in component
              for why in whys[:3]]
    assert not found, f"import cycles between packages {found}:\n" + "\n".join(detail)


def test_no_import_points_up_the_layers():
    upward = [why for (a, b), whys in sorted(graph().items()) if LEVEL[b] > LEVEL[a] for why in whys]
    assert not upward, "imports that point up the layers (move the code, or pass the dependency in):\n" + \
        "\n".join(upward)


def test_the_checker_sees_function_level_and_relative_imports(tmp_path, monkeypatch):
    """The graph catches an upward import hidden in a function, and a cycle through relative imports."""
    root = tmp_path / "src" / "sparsetrain"
    for name, text in {
        "__init__.py": "",
        "masks.py": "def f():\n    from .studies import run  # hidden upward import\n",
        "studies/__init__.py": "from ..masks import f\nfrom sparsetrain import masks\n",
    }.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    this = sys.modules[__name__]
    monkeypatch.setattr(this, "PACKAGE", root)
    monkeypatch.setattr(this, "SRC", root.parent)
    monkeypatch.setattr(this, "MODULES", _modules())
    edges = graph()
    assert edges[("core", "studies")] == ["sparsetrain.masks:2 -> sparsetrain.studies"]
    assert sorted(edges[("studies", "core")]) == ["sparsetrain.studies:1 -> sparsetrain.masks",
                                                  "sparsetrain.studies:2 -> sparsetrain.masks"]
    assert cycles(edges) == [["core", "studies"]]


@pytest.mark.parametrize("name", ["analysis", "lottery"])
def test_the_pure_packages_import_only_the_core(name):
    """``analysis`` (functions of masks, weights, checkpoints) and ``lottery`` (its algorithms) train nothing."""
    assert {b for (a, b) in graph() if a == name} <= {"core"}
