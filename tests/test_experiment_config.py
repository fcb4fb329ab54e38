"""Config dataclasses: validation, overrides, YAML round trips and the run-directory hash."""

import hashlib

import pytest
import yaml

from sparsetrain.experiment.config import (
    ConfigError,
    ExperimentConfig,
    SparseConfig,
    iter_fields,
    parse_text,
    validate_value,
)


def test_default_hash_is_the_hash_of_no_overrides():
    # Known answer: no non-default field -> sha256 of the canonical JSON "{}".
    assert ExperimentConfig().config_hash() == hashlib.sha256(b"{}").hexdigest()[:8]
    assert ExperimentConfig().run_name() == "granet-" + hashlib.sha256(b"{}").hexdigest()[:8]


def test_hash_ignores_fields_set_to_their_default_and_key_order():
    a = ExperimentConfig().with_overrides({"sparse.sparsity": 0.95, "optim.lr": 0.1})
    b = ExperimentConfig().with_overrides({"optim.lr": 0.1, "sparse.sparsity": 0.95, "train.batch_size": 32,
                                           "sparse.method": "granet"})
    assert a.config_hash() == b.config_hash()
    assert a.non_default() == {"optim.lr": 0.1, "sparse.sparsity": 0.95}
    # A field that has its default value is not part of the identity: adding a new field with a default
    # later leaves every existing hash unchanged.
    assert all(info.path not in a.non_default() for info in iter_fields()
               if getattr(getattr(a, info.section), info.name) == info.default)


def test_hash_ignores_seed_paths_and_device_but_not_recipe():
    base = ExperimentConfig()
    same = base.with_overrides({"train.seed": 3, "train.device": "cpu", "data.cache_dir": "/tmp/x",
                                "train.threads": 2, "train.eval_batch_size": 17})
    assert same.config_hash() == base.config_hash()
    for override in ({"train.epochs": 3}, {"sparse.method": "rigl"}, {"sparse.options.drop_fraction": 0.3},
                     {"model.options.channels": 8}, {"optim.milestones": [0.3, 0.6]}):
        assert base.with_overrides(override).config_hash() != base.config_hash(), override


def test_int_and_float_spellings_hash_the_same():
    assert (ExperimentConfig().with_overrides({"optim.lr": 1}).config_hash()
            == ExperimentConfig().with_overrides({"optim.lr": 1.0}).config_hash())


def test_yaml_round_trip_keeps_every_field():
    config = ExperimentConfig().with_overrides({"sparse.method": "rigl", "sparse.options.drop_fraction": 0.2,
                                                "optim.betas": [0.8, 0.99], "optim.grad_clip": 1.5})
    again = ExperimentConfig.from_yaml(config.to_yaml())
    assert again == config
    assert yaml.safe_load(config.to_yaml())["sparse"]["options"] == {"drop_fraction": 0.2}


def test_dense_baseline_resets_the_sparse_section():
    a = ExperimentConfig().with_overrides({"sparse.sparsity": 0.8, "sparse.update_every": 7})
    b = ExperimentConfig().with_overrides({"sparse.method": "rigl", "sparse.sparsity": 0.95})
    assert a.dense_baseline().run_name() == b.dense_baseline().run_name()
    assert a.dense_baseline().sparse == SparseConfig(method="dense")
    assert a.with_overrides({"train.epochs": 5}).dense_baseline().run_name() != a.dense_baseline().run_name()


@pytest.mark.parametrize("values, words", [
    ({"sparse": {"sparsity": 1.0}}, ["sparse.sparsity=1.0", "[0, 1)"]),
    ({"sparse": {"method": "magic"}}, ["sparse.method='magic'", "granet", "rigl", "dense"]),
    ({"train": {"epochs": 2.5}}, ["train.epochs=2.5", "int"]),
    ({"train": {"epochs": True}}, ["train.epochs=True", "int"]),
    ({"optim": {"nesterov": "yes"}}, ["optim.nesterov='yes'", "true or false"]),
    ({"optim": {"milestones": [0.8, 0.5]}}, ["optim.milestones", "increasing"]),
    ({"optim": {"betas": [0.9]}}, ["optim.betas", "two numbers"]),
    ({"sparse": {"sparsty": 0.9}}, ["sparse.sparsty", "fields of sparse", "sparsity"]),
    ({"spars": {"sparsity": 0.9}}, ["'spars'", "sections", "sparse"]),
    ({"train": 3}, ["train", "mapping"]),
    ({"train": {"device": "tpu"}}, ["train.device='tpu'", "cuda"]),
])
def test_bad_values_name_the_field_the_value_and_what_is_allowed(values, words):
    with pytest.raises(ConfigError) as info:
        ExperimentConfig.from_dict(values)
    message = str(info.value)
    assert "\n" not in message
    for word in words:
        assert word in message


def test_parse_text_reads_command_line_strings_by_field_type():
    assert parse_text("optim.lr", "1e-3") == 0.001
    assert parse_text("train.epochs", "7") == 7
    assert parse_text("optim.nesterov", "false") is False
    assert parse_text("optim.grad_clip", "none") is None
    assert parse_text("optim.milestones", "0.3,0.6") == [0.3, 0.6]
    assert parse_text("optim.milestones", "[0.3, 0.6]") == [0.3, 0.6]
    assert parse_text("sparse.options", "{drop_fraction: 0.3}") == {"drop_fraction": 0.3}
    with pytest.raises(ConfigError, match=r"train.epochs='x' is not allowed: expected an int"):
        parse_text("train.epochs", "x")
    with pytest.raises(ConfigError, match="unknown config field 'train.epoch'"):
        parse_text("train.epoch", "3")


def test_validate_value_normalises_ints_for_float_fields():
    assert validate_value("sparse.sparsity", 0) == 0.0
    assert isinstance(validate_value("sparse.sparsity", 0), float)


def test_every_field_has_help_and_a_unique_flag():
    fields = list(iter_fields())
    flags = [f.flag for f in fields]
    assert len(flags) == len(set(flags))
    assert all(f.help and f.flag.startswith("--") for f in fields)
    assert {"--method", "--sparsity", "--model", "--data", "--optimizer", "--lr", "--epochs", "--batch-size",
            "--update-every", "--seed"} <= set(flags)


def test_pattern_is_in_the_run_identity_only_when_set_and_sets_the_target_sparsity():
    base = ExperimentConfig().with_overrides({"sparse.method": "rigl"})
    patterned = base.with_overrides({"sparse.pattern": "2:4"})
    assert "sparse.pattern" not in base.non_default() and base.sparse.target_sparsity() == 0.9
    assert patterned.non_default()["sparse.pattern"] == "2:4" and patterned.config_hash() != base.config_hash()
    assert patterned.sparse.target_sparsity() == 0.5  # sparse.sparsity left at its default: the pattern's
    assert patterned.with_overrides({"sparse.sparsity": 0.75}).sparse.target_sparsity() == 0.75  # refused later
    assert parse_text("sparse.pattern", "1:4") == "1:4"
    for bad in ("2:2", "2/4", " 2:4"):
        with pytest.raises(ConfigError, match="sparse.pattern=.* is not allowed: expected 'N:M'"):
            base.with_overrides({"sparse.pattern": bad})


def test_build_passes_the_pattern_and_refuses_a_sparsity_that_contradicts_it():
    from sparsetrain.experiment.build import build_experiment
    from sparsetrain.nm import NMPattern

    tiny = {"data.name": "synthetic", "data.options": {"n_train": 64, "n_test": 16, "input_shape": [1, 12]},
            "model.name": "mlp", "model.options": {"hidden": [16]}, "train.epochs": 1, "sparse.method": "srste",
            "sparse.pattern": "1:4"}
    exp = build_experiment(ExperimentConfig().with_overrides(tiny))
    assert exp.sparsifier.pattern == NMPattern(1, 4) and exp.sparsifier.sparsity == 0.75
    with pytest.raises(ConfigError, match="sparsity=0.6 is not allowed with pattern='1:4'"):
        build_experiment(ExperimentConfig().with_overrides({**tiny, "sparse.sparsity": 0.6}))
    with pytest.raises(ConfigError, match="sparse.options.pattern='2:4' is not allowed: set sparse.pattern"):
        build_experiment(ExperimentConfig().with_overrides({**tiny, "sparse.options.pattern": "2:4"}))
