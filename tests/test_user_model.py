"""A user's own model, ``--model package.module:factory``, and runs without a validation hold-out."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest
from torch import nn

from sparsetrain.cli import main
from sparsetrain.experiment import ConfigError, ExperimentConfig
from sparsetrain.experiment.metrics import BEST_BY_LAST
from sparsetrain.models import build_model, is_factory

MODULE = textwrap.dedent('''
    import math
    from torch import nn

    CALLS = []

    def make(input_shape, num_classes, width=8):
        """An MLP on flattened inputs; records how it was called."""
        CALLS.append((input_shape, num_classes, width))
        return nn.Sequential(nn.Flatten(), nn.Linear(math.prod(input_shape), width), nn.ReLU(),
                             nn.Linear(width, num_classes))

    def wide(input_shape, num_classes):
        return make(input_shape, num_classes, width=16)

    def not_a_module(input_shape, num_classes):
        return 42

    NOT_CALLABLE = 3
''')


@pytest.fixture
def user_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A directory holding ``usermodels_<n>.py`` as the current directory (not on sys.path), with a fresh name
    per test so no import is cached across tests."""
    name = f"usermodels_{abs(hash(tmp_path)) % 10**8}"
    (tmp_path / f"{name}.py").write_text(MODULE)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(tmp_path))])
    monkeypatch.setenv("SPARSETRAIN_TEST_MODULE", name)
    yield tmp_path
    sys.modules.pop(name, None)


def module_name() -> str:
    import os

    return os.environ["SPARSETRAIN_TEST_MODULE"]


def test_the_factory_gets_the_input_shape_and_class_count_as_the_built_in_models(user_dir: Path) -> None:
    name = module_name()
    model = build_model(f"{name}:make", (1, 40), 10, width=12)
    assert isinstance(model, nn.Module)
    assert sys.modules[name].CALLS == [((1, 40), 10, 12)]
    assert str(user_dir) not in sys.path  # imported from the current directory, which is not left on the path


def test_a_factory_that_cannot_be_used_is_one_line_naming_it(user_dir: Path) -> None:
    name = module_name()
    cases = {
        "nosuchmodule_xyz:make": r"model 'nosuchmodule_xyz:make': cannot import module 'nosuchmodule_xyz' "
                                 r"\(ModuleNotFoundError: No module named 'nosuchmodule_xyz'\); it must be importable "
                                 r"from the current directory or PYTHONPATH",
        f"{name}:missing": rf"module '{name}' has no attribute 'missing'",
        f"{name}:NOT_CALLABLE": r"'NOT_CALLABLE' is a int, not a callable factory",
        f"{name}:not_a_module": r"returned a int, expected a torch.nn.Module",
    }
    for model, message in cases.items():
        with pytest.raises(ValueError, match=message):
            build_model(model, (1, 40), 10)
    with pytest.raises(ValueError, match=r"cannot be called as factory\(input_shape, num_classes, depth=\.\.\.\)"):
        build_model(f"{name}:make", (1, 40), 10, depth=3)


def test_the_config_takes_a_factory_and_its_name_is_part_of_the_run_identity() -> None:
    assert is_factory("pkg.sub:make") and is_factory("m:Class.build") and not is_factory("cnn1d")
    assert not is_factory("pkg/sub:make") and not is_factory("pkg:")
    mine = ExperimentConfig().with_overrides({"model.name": "mymodels:make"})
    other = ExperimentConfig().with_overrides({"model.name": "mymodels:other"})
    assert mine.config_hash() != other.config_hash() != ExperimentConfig().config_hash()
    with pytest.raises(ConfigError, match=r"model.name='nosuch' is not allowed; choose one of cnn1d.*, or "
                                          r"package.module:factory"):
        ExperimentConfig().with_overrides({"model.name": "nosuch"})


def test_train_runs_a_users_model_without_a_validation_split(user_dir: Path, capsys: pytest.CaptureFixture) -> None:
    name = module_name()
    code = main(["train", "--model", f"{name}:wide", "--method", "rigl", "--sparsity", "0.8", "--epochs", "2",
                 "--batch-size", "128", "--val-fraction", "0", "--runs-dir", "runs", "--no-baseline",
                 "--no-progress", "--no-plots"])
    assert code == 0
    err = capsys.readouterr().err
    assert "--val-fraction 0: no validation split, so 'best' is the last epoch" in err
    (summary_file,) = Path("runs").glob("rigl-*/seed_0/summary.json")
    summary = json.loads(summary_file.read_text())
    assert summary["model"] == f"{name}:wide"
    assert summary["best_by"] == BEST_BY_LAST and summary["best_epoch"] == 2
    assert summary["best_acc"] == summary["final_acc"] and summary["final_val_acc"] is None


def test_a_model_that_cannot_be_imported_is_one_line_on_the_command_line(user_dir: Path,
                                                                         capsys: pytest.CaptureFixture) -> None:
    assert main(["train", "--model", "nosuchmodule_xyz:make", "--epochs", "1", "--runs-dir", "runs",
                 "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert err.startswith("sparsetrain: error: model: model 'nosuchmodule_xyz:make': cannot import module")
    assert err.endswith("it must be importable from the current directory or PYTHONPATH")
