"""sparsetrain.identity: one hash names every run, study and cache file; existing names never change."""

import ast
from pathlib import Path

import pytest

from sparsetrain.experiment import ExperimentConfig
from sparsetrain.identity import identity_hash, non_default
from sparsetrain.studies.lottery import LotteryConfig, lottery_dir
from sparsetrain.studies.reproduce import SETTINGS, imp_dir

SRC = Path(__file__).resolve().parents[1] / "src" / "sparsetrain"


def test_stable_across_key_order_and_blind_to_default_values():
    a = identity_hash({"x": 1, "y": [1, 2], "z": {"b": 2, "a": 1}})
    assert a == identity_hash({"z": {"a": 1, "b": 2}, "y": [1, 2], "x": 1})
    assert len(a) == 8 and int(a, 16) >= 0
    defaults = {"x": 0, "new_option": "off"}
    assert identity_hash({"x": 1, "new_option": "off"}, defaults=defaults) == identity_hash({"x": 1})
    assert identity_hash({"x": 0}, defaults=defaults) == identity_hash({})
    assert identity_hash({"x": 2}) != identity_hash({"x": 1})
    assert identity_hash({"x": 1}, compact=False) != identity_hash({"x": 1})
    assert len(identity_hash({}, length=12)) == 12
    assert non_default({"a": 1, "b": 2, "c": 3}, {"a": 1, "b": 0}) == {"b": 2, "c": 3}
    with pytest.raises(ValueError, match="length=0 is not allowed"):
        identity_hash({}, length=0)


def test_a_changed_default_renames_only_the_runs_it_changes():
    """sparse_init's default became fan_in after runs were named under none: a run that starts sparse gets a new
    name (its old directory, trained with the dense initialisation, is never reused); spelling out the old
    behaviour keeps the old name; runs the option does not act on keep theirs."""
    base = ExperimentConfig()

    def name(method, backend="auto", **options):
        return base.with_overrides({"sparse.method": method, "sparse.options": options,
                                    "sparse.backend": backend}).run_name()

    for method, old in (("rigl", "rigl-33a41dfd"), ("set", "set-8f8a76c8"), ("static", "static-ab9dd024"),
                        ("snfs", "snfs-59a4f4a1")):  # the names at 0.2.0, before the option existed
        assert name(method, "dense", sparse_init="none") == old
        assert name(method, "dense") == name(method, "dense", sparse_init="fan_in") != old
        # sparse.backend's default became auto: a method that starts sparse is renamed under it, too
        assert name(method) != name(method, "dense")
    assert name("granet") == name("granet", sparse_init="none") == "granet-44136fa3"  # dense start: nothing acts
    assert name("granet", initial_sparsity=0.5) != name("granet", initial_sparsity=0.5, sparse_init="none")
    assert name("srste") == "srste-ed90a8e4" != name("srste", sparse_init="fan_in")  # SR-STE keeps none


def test_existing_directory_names_do_not_change():
    config = ExperimentConfig()
    assert config.run_name() == "granet-44136fa3" and config.dense_baseline().run_name() == "dense-90654191"
    lottery = lottery_dir("runs", config.with_overrides({"train.epochs": 3}), LotteryConfig(rounds=2, seed=0))
    assert lottery.as_posix() == "runs/lottery-9aa1078b/seed_0"
    quick = SETTINGS["quick"]
    # IMP's recipe changed on purpose (the harness recipe, Nesterov, as every row; was e1294109): a new name, so
    # levels trained with the old recipe are never mixed with new ones
    assert imp_dir("r", quick.benchmarks[0], quick, 0).as_posix() == "r/imp/mnist1d-cnn1d-2b800dbe/seed_0"


def test_no_other_module_hashes_an_identity():
    """SHA-256 is the identity hash's; the native build key (a file's bytes) and mask digests are content hashes."""
    allowed = {"identity.py", "native/__init__.py"}
    users = sorted(path.relative_to(SRC).as_posix() for path in SRC.rglob("*.py") if "sha256" in path.read_text()
                   and any(isinstance(node, ast.Attribute) and node.attr == "sha256"
                           for node in ast.walk(ast.parse(path.read_text()))))
    assert set(users) <= allowed, users
