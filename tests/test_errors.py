"""Every row of docs/errors.md: the bad input gives exactly the documented one-line message.

Command-line rows run ``sparsetrain.cli.main`` in a directory holding a finished and an interrupted run, and
check: exit status 2, one line on stderr (no traceback), the documented text, and not one file created, changed
or removed anywhere in that directory (names, mtimes and SHA-256 before and after). API rows check the
exception type and message. Placeholders in the table: ``<finished-run>`` and ``<interrupted-run>`` are the
run directories, ``<methods>``, ``<models>`` and ``<datasets>`` the registries' names (they grow).
"""

import hashlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import sparsetrain
import sparsetrain.studies
from sparsetrain.cli import main
from sparsetrain.experiment import (
    ExperimentConfig,
    RunDir,
    Trainer,
    TrainerCallback,
    TrainingInterrupted,
)

DOC = Path(__file__).resolve().parents[1] / "docs" / "errors.md"
T = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=32", "--data-option",
     "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]", "--epochs", "2", "--batch-size", "32",
     "--no-progress", "--no-plots"]
FINISHED = ["--method", "gmp", "--no-baseline", "--update-every", "2"]


def _train(*args):
    return ["train", *T, "--runs-dir", "runs", *args]


def _resume(*args):
    return ["train", "--resume", "<interrupted-run>", "--no-progress", *args]


# -- set-ups: damage what a row needs, inside the copied directory (cwd) --------------------------------------
def _write(name, text):
    def setup(cwd):
        path = cwd / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return setup


def _write_bytes(name, data):
    return lambda cwd: (cwd / name).write_bytes(data)


def _mkdir(name):
    return lambda cwd: (cwd / name).mkdir()


def _both_checkpoints_damaged(cwd):
    run = cwd / _RUNS["interrupted"]
    for name in ("checkpoint.pt", "checkpoint.prev.pt"):
        data = (run / "checkpoint.pt").read_bytes()
        (run / name).write_bytes(data[: len(data) // 3])


def _foreign_checkpoint(cwd):
    shutil.copy2(cwd / _RUNS["finished"] / "checkpoint.pt", cwd / _RUNS["interrupted"] / "checkpoint.pt")


def _two_process_checkpoint(cwd):
    path = cwd / _RUNS["interrupted"] / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    state["world_size"] = 2
    torch.save(state, path)


def _bad_idx(cwd):
    (cwd / "idx").mkdir()
    for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                 "t10k-labels-idx1-ubyte"):
        (cwd / "idx" / name).write_bytes(b"\x12\x34\x56\x78" + bytes(16))


def _wrong_shape_masks(cwd):
    masks = torch.load(cwd / _RUNS["finished"] / "masks.pt", weights_only=True)
    torch.save({name: mask.t() for name, mask in masks.items()}, cwd / "wrong.pt")


def _broken_run_config(cwd):
    (cwd / _RUNS["interrupted"] / "config.yaml").write_text("train: [1\n")


def _damaged_summary(cwd):
    (cwd / _RUNS["finished"] / "summary.json").write_text('{"final_acc": 0.5,')


def _run_config_not_utf8(cwd):
    (cwd / _RUNS["interrupted"] / "config.yaml").write_bytes(b"\xff\xfe train: {}\n")


_HOLDERS: list = []
_HOLD = """
import sys, time
from sparsetrain.experiment.lock import DirectoryLock
DirectoryLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(120)
"""


def _locked_by_another_process(cwd):
    holder = subprocess.Popen([sys.executable, "-c", _HOLD, str(cwd / _RUNS["interrupted"])], stdout=subprocess.PIPE,
                              text=True, env={**os.environ, "PYTHONPATH": str(Path(sparsetrain.__file__).parents[1])})
    _HOLDERS.append(holder)
    assert holder.stdout.readline().strip() == "held"


def _read_only_runs_dir(cwd):
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("needs root to mount a read-only tmpfs (as root, file permissions do not stop writes)")
    (cwd / "ro").mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(cwd / "ro")]).returncode:
        pytest.skip("cannot mount a tmpfs here")
    _MOUNTS.append(cwd / "ro")


_MOUNTS: list = []


# -- API rows -----------------------------------------------------------------------------------------------
def _model_and_optimizer():
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


def _granet_bad_sparsity(cwd):
    sparsetrain.GraNet(*_model_and_optimizer(), sparsity=1.2, total_steps=100)


def _rigl_negative_steps(cwd):
    sparsetrain.RigL(*_model_and_optimizer(), sparsity=0.9, total_steps=-5)


def _unknown_override(cwd):
    ExperimentConfig().with_overrides({"sparse.sparsty": 0.9})


def _cut_file(cwd):
    (cwd / "cut.pt").write_bytes((cwd / _RUNS["finished"] / "masks.pt").read_bytes()[:100])


def _load_truncated(cwd):
    from sparsetrain.experiment import load_checkpoint

    load_checkpoint("cut.pt")


def _load_wrong_masks(cwd):
    model, optimizer = _model_and_optimizer()
    sparsifier = sparsetrain.Static(model, optimizer, sparsity=0.5, total_steps=10)
    state = sparsifier.state_dict()
    state["masks"]["0.weight"] = state["masks"]["0.weight"].t()
    sparsifier.load_state_dict(state)


def _gmp_global_distribution(cwd):
    sparsetrain.GMP(*_model_and_optimizer(), sparsity=0.9, total_steps=100, distribution="global")


def _gmp_global_scope_with_distribution(cwd):
    sparsetrain.GMP(*_model_and_optimizer(), sparsity=0.9, total_steps=100, scope="global", distribution="erk")


def _lottery_layerwise(cwd):
    sparsetrain.studies.LotteryConfig(scope="layerwise")


def _rigl_unknown_option(cwd):
    sparsetrain.RigL(*_model_and_optimizer(), sparsity=0.9, total_steps=100, drop_frac=0.3)


def _granet_without_sparsity(cwd):
    sparsetrain.GraNet(*_model_and_optimizer(), total_steps=100)


def _static_float_masks(cwd):
    sparsetrain.Static(*_model_and_optimizer(), total_steps=10, masks={"0.weight": torch.ones(8, 4)})


def _static_unknown_mask_name(cwd):
    sparsetrain.Static(*_model_and_optimizer(), total_steps=10, masks={"9.weight": torch.ones(8, 4, dtype=torch.bool)})


def _two_sparsifiers_one_optimizer(cwd):
    model, optimizer = _model_and_optimizer()
    sparsetrain.RigL(model, optimizer, sparsity=0.9, total_steps=10)
    sparsetrain.Static(model, optimizer, sparsity=0.5, total_steps=10)


def _two_sparsifiers_one_parameter(cwd):
    model, optimizer = _model_and_optimizer()
    sparsetrain.RigL(model, optimizer, sparsity=0.9, total_steps=10)
    sparsetrain.Static(model, torch.optim.SGD(model.parameters(), lr=0.1), sparsity=0.5, total_steps=10)


def _optimizer_of_another_model(cwd):
    model, _ = _model_and_optimizer()
    _, other = _model_and_optimizer()
    sparsetrain.RigL(model, other, sparsity=0.9, total_steps=10)


def _step_before_optimizer_step(cwd):
    model, optimizer = _model_and_optimizer()
    sparsifier = sparsetrain.RigL(model, optimizer, sparsity=0.9, total_steps=10)
    for _ in range(2):
        model(torch.randn(3, 4)).sum().backward()
        sparsifier.step()
        optimizer.step()


def _step_after_export(cwd):
    model, optimizer = _model_and_optimizer()
    sparsifier = sparsetrain.RigL(model, optimizer, sparsity=0.9, total_steps=10)
    sparsifier.export()
    sparsifier.step()


def _state_of_another_sparsity(cwd):
    model, optimizer = _model_and_optimizer()
    state = sparsetrain.Static(model, optimizer, sparsity=0.5, total_steps=10).state_dict()
    sparsetrain.Static(*_model_and_optimizer(), sparsity=0.9, total_steps=10).load_state_dict(state)


def _float_masks_assigned(cwd):
    model, optimizer = _model_and_optimizer()
    sparsifier = sparsetrain.Static(model, optimizer, sparsity=0.5, total_steps=10)
    sparsifier.masks = {name: mask.float() for name, mask in sparsifier.masks.items()}
    model(torch.randn(3, 4)).sum().backward()
    optimizer.step()


def _meta_masks(cwd):
    sparsetrain.Static(*_model_and_optimizer(), total_steps=10,
                       masks={"0.weight": torch.ones(8, 4, dtype=torch.bool, device="meta")})


def _without_mlflow(cwd, monkeypatch):
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if the extra were not installed


def _rigl_pattern_with_a_scope(cwd):
    sparsetrain.RigL(*_model_and_optimizer(), pattern="2:4", scope="global", total_steps=100)


def _lottery_linear_without_final(cwd):
    sparsetrain.studies.LotteryConfig(schedule="linear")


def _lottery_rounds_and_targets(cwd):
    sparsetrain.studies.LotteryConfig(sparsities=(0.5, 0.8), rounds=3)


def _rigl_pattern_on_sparse_storage(cwd):
    sparsetrain.RigL(*_model_and_optimizer(), pattern="2:4", total_steps=100, backend="sparse")


def _sparse_storage_without_optimizer(cwd):
    sparsetrain.RigL(_model_and_optimizer()[0], None, sparsity=0.9, total_steps=100, backend="sparse")


#: row number -> (argv or API callable, set-up or None); the rows' inputs and messages live in docs/errors.md.
CASES = {
    1: (_train("--sparsity", "1.2"), None),
    2: (_train("--epochs", "-3"), None),
    3: (_train("--method", "magic"), None),
    4: (_train("--model", "resnet1000"), None),
    5: (_train("--data", "imagenet"), None),
    6: (_train("--epochs", "two"), None),
    7: (_train("--set", "sparse.sparsty=0.9"), None),
    8: (_train("--set", "nosuch.lr=1"), None),
    9: (_train("--set", "sparse.sparsity"), None),
    10: (_train("--set", "train.batch_size=1.5"), None),
    11: (_train("--lr", "0"), None),
    12: (_train("--milestones", "0.8", "0.2"), None),
    13: (_train("--method-option", "drop_fraction=3"), None),
    14: (_train("--method-option", "bogus=1"), None),
    15: (_train("--method-option", "sparsity=0.5"), None),
    16: (_train("--model-option", "depth=2"), None),
    17: (_train("--data-option", "n_train=-5"), None),
    18: (_train("--seeds", "1", "x"), None),
    19: (_train("--nproc", "0"), None),
    20: (_train("--nproc", "2", "--batch-size", "33"), None),
    21: (_train("--precision", "fp16"), None),
    22: (_train("--device", "cuda"), None),
    23: (["train", *T, "--runs-dir", "afile"], _write("afile", "")),
    24: (_train("--resume", "--restart"), None),
    25: (_train("--bogus"), None),
    26: (_train("--config", "missing.yaml"), None),
    27: (_train("--config", "list.yaml"), _write("list.yaml", "- sparse\n- train\n")),
    28: (_train("--config", "broken.yaml"), _write("broken.yaml", "sparse: [0.9\n")),
    29: (_train("--config", "section.yaml"), _write("section.yaml", "sparse: 0.9\n")),
    30: (_train("--config", "unknown.yaml"), _write("unknown.yaml", "sparsity:\n  target: 0.9\n")),
    31: (_train("--config", "wrongtype.yaml"), _write("wrongtype.yaml", "train:\n  epochs: ten\n")),
    32: (["train", "--data", "mnist", "--data-dir", "empty", "--runs-dir", "runs"], _mkdir("empty")),
    33: (["train", "--data", "mnist", "--data-dir", "idx", "--runs-dir", "runs"], _bad_idx),
    34: (["train", "--data", "imagefolder", "--data-dir", "empty", "--runs-dir", "runs"], _mkdir("empty")),
    35: (["train", "--resume", "notarun"], _mkdir("notarun")),
    36: (["train", "--resume", "<finished-run>"], None),
    37: (_resume("--epochs", "9"), None),
    38: (_resume(), _both_checkpoints_damaged),
    39: (_resume(), _foreign_checkpoint),
    40: (_resume(), _two_process_checkpoint),
    41: (_resume(), _broken_run_config),
    42: (_train("--method", "static", "--method-option", "masks=wrong.pt"), _wrong_shape_masks),
    43: (_train("--method", "static", "--method-option", "masks=missing.pt"), None),
    44: (["report", "--runs-dir", "nowhere"], None),
    45: (_granet_bad_sparsity, None),
    46: (_rigl_negative_steps, None),
    47: (_unknown_override, None),
    48: (_load_truncated, _cut_file),
    49: (_load_wrong_masks, None),
    50: (_train("--distribution", "global"), None),
    51: (_train("--sparse-scope", "layerwise"), None),
    52: (_train("--method-option", "scope=global"), None),
    53: (_gmp_global_distribution, None),
    54: (_gmp_global_scope_with_distribution, None),
    55: (_lottery_layerwise, None),
    56: (_rigl_unknown_option, None),
    57: (_granet_without_sparsity, None),
    58: (_static_float_masks, None),
    59: (_static_unknown_mask_name, None),
    60: (_train("--log", "wandb"), None),
    61: (_train("--log", "mlflow"), _without_mlflow),
    62: (["report", "--runs-dir", "runs", "--html", "runs"], None),
    63: (_train("--method", "rigl", "--pattern", "2:2"), None),
    64: (_train("--method", "rigl", "--pattern", "2:4", "--sparsity", "0.75"), None),
    65: (_rigl_pattern_with_a_scope, None),
    66: (_train("--model", "nosuch_module:make"), None),
    67: (_train("--method", "rigl", "--method-option", "sparse_init=he"), None),
    68: (["lottery", "--sparsities", "0.5", "0.4", "--runs-dir", "runs", "--no-progress"], None),
    69: (["lottery", "--schedule", "linear", "--prune-rate", "0.3", "--runs-dir", "runs", "--no-progress"], None),
    70: (["lottery", "--rewind-step", "10", "--rank-step", "5", "--runs-dir", "runs", "--no-progress"], None),
    71: (_lottery_linear_without_final, None),
    72: (_lottery_rounds_and_targets, None),
    73: (_rigl_pattern_on_sparse_storage, None),
    74: (_train("--method", "rigl", "--pattern", "2:4", "--backend", "sparse"), None),
    75: (_sparse_storage_without_optimizer, None),
    76: (_resume(), _locked_by_another_process),
    77: (_train("--config", "latin1.yaml"), _write_bytes("latin1.yaml", "# café\ntrain: {epochs: 1}\n".encode("latin-1"))),
    78: (_train("--config", "laughs.yaml"), _write("laughs.yaml", "a: &a [x, x]\nb: &b [*a, *a]\nc: [*b, *b]\n")),
    79: (_train("--config", "dup.yaml"), _write("dup.yaml", "train:\n  epochs: 1\n  epochs: 2\n")),
    80: (_train("--config", "adir"), _mkdir("adir")),
    81: (_train("--config", "/dev/zero"), None),
    82: (_train("--config", "big.yaml"), _write("big.yaml", "#" * (2 << 20) + "\n")),
    83: (_train("--epochs", "99999999999999999999999999"), None),
    84: (_train("--batch-size", "1000000000000"), None),
    85: (_train("--num-workers", "1000000"), None),
    86: (_train("--seeds", "100000000000000000000"), None),
    87: (["lottery", *T[:-1], "--runs-dir", "runs", "--rounds", "1", "--rewind-step", "1000"], None),
    88: (["lottery", *T[:-1], "--runs-dir", "runs", "--rounds", "1", "--output-layer", "nosuch"], None),
    89: (["lottery", *T[:-1], "--runs-dir", "runs", "--rounds", "1000000000"], None),
    90: (["report", "--runs-dir", "runs", "--output", "adir"], _mkdir("adir")),
    91: (["report", "--runs-dir", "runs", "--output", "no/such/table.md"], None),
    92: (["plot", "--runs-dir", "runs", "--out", "afile"], _write("afile", "")),
    93: (["train", *T, "--runs-dir", "afile/runs"], _write("afile", "")),
    94: (["train", "--resume", "<interrupted-run>"], _run_config_not_utf8),
    95: (_train(*FINISHED), _damaged_summary),
    96: (["train", *T, "--runs-dir", "ro/runs"], _read_only_runs_dir),
    97: (_two_sparsifiers_one_optimizer, None),
    98: (_two_sparsifiers_one_parameter, None),
    99: (_optimizer_of_another_model, None),
    100: (_step_before_optimizer_step, None),
    101: (_step_after_export, None),
    102: (_state_of_another_sparsity, None),
    103: (_float_masks_assigned, None),
    104: (_train("--config", "nul.yaml"), _write_bytes("nul.yaml", b"train:\x00 {}\n")),
    105: (["jackpot", "<finished-run>", "--steps", "1000000000000"], None),
    106: (_meta_masks, None),
}
_RUNS: dict[str, str] = {}


def _doc_rows():
    """``{number: (exit, message)}`` from the table in docs/errors.md."""
    rows = {}
    for line in DOC.read_text().splitlines():
        match = re.match(r"^\| (\d+) \|.*\| `(.+)` \| (\S+) \|$", line)
        if match:
            rows[int(match[1])] = (match[3], match[2].replace("\\|", "|"))
    return rows


class _StopAt(TrainerCallback):
    def on_step(self, trainer):
        if trainer.step == 3:
            os.kill(os.getpid(), 2)  # SIGINT: the trainer checkpoints and stops


@pytest.fixture(scope="module")
def template(tmp_path_factory):
    """A directory with runs/<finished gmp run> and runs/<granet run interrupted at step 3>."""
    root = tmp_path_factory.mktemp("template")
    cwd = os.getcwd()
    os.chdir(root)
    try:
        assert main(_train(*FINISHED)) == 0
        config = ExperimentConfig().with_overrides({
            "data.name": "synthetic", "data.options.n_train": 128, "data.options.n_test": 32,
            "data.options.input_shape": [1, 12], "model.name": "mlp", "model.options.hidden": [16],
            "train.epochs": 2, "train.batch_size": 32})
        with pytest.raises(TrainingInterrupted):
            Trainer(config, "runs", callback=_StopAt(), plots=False).fit()
        for key, conf in (("finished", None), ("interrupted", config)):
            run = next(p for p in Path("runs").glob("*/seed_0")
                       if (p / "summary.json").exists() == (key == "finished"))
            _RUNS[key] = str(run)
        assert RunDir(Path(_RUNS["interrupted"])).status() == "interrupted"
    finally:
        os.chdir(cwd)
    return root


def _snapshot(root):
    return {str(p.relative_to(root)): (p.stat().st_mtime_ns, hashlib.sha256(p.read_bytes()).hexdigest())
            for p in sorted(root.rglob("*")) if p.is_file()} | \
           {str(p.relative_to(root)) + "/": None for p in root.rglob("*") if p.is_dir()}


def _expected(message):
    from sparsetrain.data import list_datasets
    from sparsetrain.models import list_models

    for key, value in {"<finished-run>": _RUNS["finished"], "<interrupted-run>": _RUNS["interrupted"],
                       "<pid>": str(_HOLDERS[-1].pid) if _HOLDERS else "<pid>",
                       "<methods>": ", ".join(("dense", *sparsetrain.METHODS)),
                       "<models>": ", ".join(list_models()), "<datasets>": ", ".join(list_datasets())}.items():
        message = message.replace(key, value)
    return message


def test_the_table_has_a_test_for_every_row_and_25_or_more_rows():
    assert sorted(_doc_rows()) == sorted(CASES) and len(CASES) >= 25


@pytest.mark.parametrize("number", sorted(CASES))
def test_bad_input_gives_the_documented_one_line_message(number, template, tmp_path, monkeypatch, capsys):
    exit_status, message = _doc_rows()[number]
    action, setup = CASES[number]
    if number == 22 and torch.cuda.is_available():
        pytest.skip("needs a machine without CUDA")
    cwd = tmp_path / "cwd"
    shutil.copytree(template, cwd)
    try:
        if setup is not None:
            setup(cwd, monkeypatch) if setup.__code__.co_argcount == 2 else setup(cwd)
        monkeypatch.chdir(cwd)
        before = _snapshot(cwd)
        if callable(action):
            with pytest.raises(Exception) as info:
                action(cwd)
            assert type(info.value).__name__ == exit_status
            assert str(info.value) == _expected(message)
        else:
            argv = [_RUNS.get(a.strip("<>").replace("-run", ""), a) if a.endswith("-run>") else a for a in action]
            assert main(argv) == int(exit_status)
            err = capsys.readouterr().err.replace(f"{Path.cwd()}/", "")  # resumed runs name their files in full
            assert "Traceback" not in err
            assert err.splitlines() == [_expected(message)], err
        assert _snapshot(cwd) == before
    finally:
        while _HOLDERS:
            holder = _HOLDERS.pop()
            holder.kill()
            holder.wait()
        while _MOUNTS:
            subprocess.run(["umount", "-l", str(_MOUNTS.pop())])


def test_a_masks_file_that_fits_trains_on_exactly_those_masks(template, tmp_path, monkeypatch):
    """The counterpart of row 42: sparse.options.masks given as a file is the static method's mask."""
    monkeypatch.chdir(tmp_path)
    given = Path(template) / _RUNS["finished"] / "masks.pt"
    assert main(["train", *T, "--runs-dir", "runs", "--method", "static", "--no-baseline",
                 "--method-option", f"masks={given}"]) == 0
    (run,) = Path("runs").glob("static-*/seed_0")
    trained = torch.load(run / "masks.pt", weights_only=True)
    expected = torch.load(given, weights_only=True)
    assert trained.keys() == expected.keys() and all(torch.equal(trained[k], expected[k]) for k in trained)
