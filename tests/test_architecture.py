"""docs/architecture.md's example method runs as written, and behaves as a method must."""

from __future__ import annotations

import re
from pathlib import Path

import torch

import sparsetrain

DOC = Path(__file__).resolve().parents[1] / "docs" / "architecture.md"


def _example() -> dict:
    text = DOC.read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.DOTALL)
    (code,) = [block for block in blocks if "class ConstantRigL" in block]
    assert len(code.splitlines()) <= 40  # "a 30-line example method"
    namespace: dict = {}
    exec(compile(code, str(DOC), "exec"), namespace)  # noqa: S102 - our own documentation
    return namespace


def test_the_documented_method_trains_sparse_and_moves_its_topology() -> None:
    ConstantRigL = _example()["ConstantRigL"]
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(20, 64), torch.nn.ReLU(), torch.nn.Linear(64, 4))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    sparsifier = ConstantRigL(model, optimizer, sparsity=0.8, total_steps=40, update_every=10, swap=0.2)
    first = {name: mask.clone() for name, mask in sparsifier.masks.items()}
    events = []
    sparsifier.subscribe(events.append)
    for _ in range(40):
        loss = model(torch.randn(8, 20)).square().mean()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        sparsifier.step()
    # exact sparsity, pruned weights and their momentum exactly zero, and the topology really moved
    assert sparsifier.current_sparsity() == sparsetrain.masks.sparsity_report(first).sparsity
    for name, param in sparsifier.params.items():
        mask = sparsifier.masks[name]
        assert not param[~mask].any()
        assert not optimizer.state[param]["momentum_buffer"][~mask].any()
    assert any(not torch.equal(first[n], sparsifier.masks[n]) for n in first)
    assert sparsifier.itop_rate() > 1 - sparsifier.current_sparsity()
    # its topology events, with the schedule values its schedule_at reports
    assert [event.step for event in events] == [10, 20, 30, 40]
    for event in events:
        assert event.grown == event.dropped > 0
        assert {(layer.drop_fraction, layer.target_sparsity) for layer in event.layers.values()} == {(0.2, 0.8)}


def test_the_documented_option_is_declared_validated_and_resumable() -> None:
    ConstantRigL = _example()["ConstantRigL"]
    assert "swap" in ConstantRigL.declared_options().describe()
    model = torch.nn.Linear(10, 10)
    try:
        ConstantRigL(model, None, sparsity=0.5, total_steps=10, swap=1.5)
    except ValueError as exc:
        assert "swap=1.5 is not allowed" in str(exc)
    else:
        raise AssertionError("swap=1.5 was accepted")
    sparsifier = ConstantRigL(model, None, sparsity=0.5, total_steps=10, swap=0.3)
    twin = ConstantRigL(torch.nn.Linear(10, 10), None, sparsity=0.5, total_steps=10, swap=0.3, seed=1)
    twin.load_state_dict(sparsifier.state_dict())
    assert torch.equal(twin.masks["weight"], sparsifier.masks["weight"])


def test_the_documented_layers_are_the_tested_layers() -> None:
    """The layer table of docs/architecture.md names the same packages, in the same order, as tests/test_layers.py."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("layers", Path(__file__).with_name("test_layers.py"))
    layers = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(layers)
    rows = re.findall(r"^\| \d\. [^|]+\| ([^|]+) \|", DOC.read_text(encoding="utf-8"), flags=re.MULTILINE)
    documented = [tuple(sorted(re.findall(r"`([a-z_]+)(?:/|/__init__\.py)?`", row))) for row in rows]
    expected = [tuple(sorted(names)) for names in layers.LAYERS]
    names = {"core": ("native",), "sparsetrain": ("sparsetrain",)}
    assert len(documented) == len(expected)
    for doc, tested in zip(documented, expected):
        assert doc == tested or doc == names.get(tested[0]), (doc, tested)
