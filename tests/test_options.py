"""Typed method options: one declaration per method, merged along the MRO, read by construction, the run hash,
``--help`` and docs/options.md."""

from __future__ import annotations

import inspect
import logging
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsetrain
from helpers import make_model
from sparsetrain.experiment import ExperimentConfig
from sparsetrain.experiment.build import RESERVED_METHOD_OPTIONS, method_options_help
from sparsetrain.options import REQUIRED, Option, declared, describe
from sparsetrain.sparsifier import Sparsifier

DOC = Path(__file__).resolve().parents[1] / "docs" / "options.md"


class Regenerating(sparsetrain.GraNet):
    """GraNet's regeneration at the given masks' sparsity: a subclass that only changes defaults."""

    option_defaults = {"update_every": 100, "prune_end": 0}


def test_a_subclass_inherits_its_bases_options_and_changes_only_defaults():
    base = set(declared(Sparsifier))
    gmp, granet = sparsetrain.GMP.declared_options(), sparsetrain.GraNet.declared_options()
    assert base < set(gmp) < set(granet)
    assert set(granet) - set(gmp) == {"drop_fraction", "drop_fraction_final", "regrow_after_pruning", "regrow_mode"}
    assert (gmp["update_every"].default, gmp["distribution"].default, gmp["scope"].default) == \
        (1000, "uniform", "layer")
    assert (granet["update_every"].default, granet["scope"].default) == (1000, "global")
    assert sparsetrain.RigL.declared_options()["distribution"].default == "erk"
    assert Regenerating.declared_options()["update_every"].default == 100
    assert declared(Sparsifier)["total_steps"].default is REQUIRED
    # Each option is declared once: the constructor's signature is generated from the declaration.
    signature = inspect.signature(sparsetrain.GraNet)
    assert list(signature.parameters)[:2] == ["model", "optimizer"]
    assert signature.parameters["drop_fraction"].default == 0.5
    assert signature.parameters["sparsity"].default is inspect.Parameter.empty


def test_option_defaults_must_name_a_declared_option():
    with pytest.raises(TypeError, match=r"Broken.option_defaults: 'drop_fractoin' is not a declared option"):
        type("Broken", (sparsetrain.GraNet,), {"option_defaults": {"drop_fractoin": 0.2}})


def test_a_method_declares_an_option_and_construction_validates_it():
    class Halving(Sparsifier):
        """Prunes nothing; declares one option with a check."""

        method = "halving"
        options = (Option("factor", 0.5, "a factor", "float",
                          lambda name, value: sparsetrain.validation.check_number(name, value, "(0, 1)")),)

    model = make_model("mlp")
    assert Halving(model, None, sparsity=0.5, total_steps=3, factor=1 / 4).factor == 0.25
    with pytest.raises(ValueError, match=r"factor=2 is not allowed: it must be a number in \(0, 1\)"):
        Halving(model, None, sparsity=0.5, total_steps=3, factor=2)
    with pytest.raises(TypeError, match=r"fcator=0.1 is not allowed: Halving has no such option; allowed: .*factor"):
        Halving(model, None, sparsity=0.5, total_steps=3, fcator=0.1)
    with pytest.raises(TypeError, match=r"Halving: total_steps is required"):
        Halving(model, None, sparsity=0.5)


def test_the_run_hash_leaves_out_declared_defaults_and_normalises_types():
    base = ExperimentConfig()
    same = [base.with_overrides({"sparse.options.drop_fraction": 0.5}),  # GraNet's declared default
            base.with_overrides({"sparse.options.regrow_mode": "keep", "sparse.options.prune_start": 0.0})]
    assert all(c.run_name() == base.run_name() == "granet-44136fa3" for c in same)
    one, one_float = (base.with_overrides({"sparse.options.drop_fraction": v}) for v in (1, 1.0))
    assert one.run_name() == one_float.run_name() != base.run_name()
    assert one.non_default()["sparse.options"] == {"drop_fraction": 1.0}
    # A point in training keeps its type: 1 is step 1, 1.0 the end of the run.
    step, end = (base.with_overrides({"sparse.options.prune_end": v}) for v in (1, 1.0))
    assert step.run_name() != end.run_name()
    # An unknown option stays in the identity as given (the run is refused later, when the method is built).
    assert base.with_overrides({"sparse.options.bogus": 1}).non_default()["sparse.options"] == {"bogus": 1}


def test_a_saved_config_with_the_old_global_distribution_loads_as_the_global_scope(caplog):
    with caplog.at_level(logging.WARNING):
        old = ExperimentConfig.from_yaml("sparse:\n  method: gmp\n  distribution: global\n")
    assert (old.sparse.scope, old.sparse.distribution) == ("global", None)
    assert "read as sparse.scope='global'" in caplog.text
    # Its run keeps the name it had (computed with the package before the split: gmp-05765098).
    assert old.run_name() == "gmp-05765098"
    assert ExperimentConfig().with_overrides({"sparse.method": "gmp", "sparse.scope": "global"}).run_name() == \
        "gmp-05765098"


def test_help_text_lists_every_method_and_option_except_the_configs_own_fields():
    text = method_options_help()
    sections: dict[str, str] = {}
    title = ""
    for line in text.splitlines()[1:]:
        if line.startswith("    "):
            sections[title] += line + "\n"
        else:
            title = line.strip()
            sections[title] = ""
    assert [title.split(":")[0] for title in sections] == ["every method", *sparsetrain.METHODS]
    shared = sections[next(iter(sections))]
    for name, cls in sparsetrain.METHODS.items():
        own = next(body for title, body in sections.items() if title.startswith(f"{name}: "))
        for option in cls.declared_options():
            if option not in RESERVED_METHOD_OPTIONS and option != "init_data":
                assert f"    {option}=" in own + shared, (name, option)
    assert "    drop_fraction=0.5 " in sections[next(t for t in sections if t.startswith("granet: "))]
    assert "    sparsity=" not in text and "    scope=" not in text and "    init_data=" not in text


def test_docs_options_md_is_generated_from_the_declaration():
    """docs/options.md is ``describe(METHODS, fmt="markdown")`` under its header; regenerate it when an option
    changes."""
    text = DOC.read_text()
    assert text.endswith(describe(sparsetrain.METHODS, fmt="markdown")), \
        "docs/options.md is out of date: regenerate its tables"


def test_a_method_starts_from_given_masks_at_their_sparsity():
    model = nn.Sequential(nn.Linear(10, 20), nn.ReLU(), nn.Linear(20, 4))
    g = torch.Generator().manual_seed(0)
    masks = {"0.weight": torch.rand(20, 10, generator=g) < 0.25}  # only this tensor is sparsified
    for cls in sparsetrain.METHODS.values():
        if cls in (sparsetrain.SNFS, sparsetrain.SRSTE):
            continue  # they need an optimizer (SR-STE also refuses masks: it recomputes them each step)
        sp = cls(model, None, masks=masks, total_steps=10)
        assert list(sp.params) == ["0.weight"] and torch.equal(sp.masks["0.weight"], masks["0.weight"])
        assert sp.sparsity == pytest.approx(1 - int(masks["0.weight"].sum()) / 200)
        assert not bool(model[0].weight[~masks["0.weight"]].any())
        sp.remove()  # one sparsifier per parameter: the next method takes the model over
