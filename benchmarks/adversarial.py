"""An adversarial pass over the command line and the API: bad inputs, broken files, faults, misuse.

Every case runs in its own process (``python -m sparsetrain ...`` or a short API script) on a fresh copy of a
workspace that holds a finished run, an interrupted run and a finished lottery run, under a time limit. Each
outcome is classified:

* ``ok``: what a user should get: a bad input stops with one line ``sparsetrain: error: ...`` (or, for the API, an
  exception raised by sparsetrain with a one-line message, or a warning where the case asks for one); a
  tolerable fault gives a warning and the command goes on;
* ``traceback``: a Python traceback, exit status 1, or (API) an exception raised from inside torch / Python
  instead of a message of the library;
* ``hang``: the time limit ran out;
* ``lost``: a file of the finished or interrupted run changed or vanished, or the case's own check of the data
  failed (duplicate epochs, a resume that is not exact);
* ``cryptic``: an error, but not one line;
* ``silent``: the bad input was accepted without a word (or the API did the wrong thing silently).

The pass can be pointed at another source tree (``--src``), e.g. the code before a change::

    git archive <commit> src | tar -x -C /tmp/before
    python benchmarks/adversarial.py --src /tmp/before/src --no-doc
    python benchmarks/adversarial.py            # this checkout; writes docs/benchmarks/adversarial.md

Cases that need root (a tmpfs filled to the last byte, a read-only mount, a process without write permission)
are reported as skipped, with the reason, where they cannot run.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

RECIPE = ["--data", "synthetic", "--data-option", "n_train=128", "--data-option", "n_test=32", "--data-option",
          "input_shape=[1, 12]", "--model", "mlp", "--model-option", "hidden=[16]", "--epochs", "2",
          "--batch-size", "32", "--no-progress"]
TINY = [*RECIPE, "--no-plots"]
TINY_YAML = textwrap.dedent("""\
    data: {name: synthetic, options: {n_train: 128, n_test: 32, input_shape: [1, 12]}}
    model: {name: mlp, options: {hidden: [16]}}
    train: {epochs: 2, batch_size: 32}
    """)
NOBODY = 65534
#: Address-space limit of every case's process: a case that asks for tens of GB fails instead of taking the machine.
MEMORY_LIMIT = 6 << 30
OUTCOMES = ("ok", "traceback", "hang", "lost", "cryptic", "silent", "skipped")


# -- the cases --------------------------------------------------------------------------------------------------
@dataclass
class Case:
    """One adversarial input.

    Attributes:
        name: a short label.
        argv: the command line (``sparsetrain`` arguments) or None for an API case.
        setup: changes the case's copy of the workspace first (gets the workspace path).
        code: an API case: Python run after the API prelude; it may set ``WRONG`` (bool) when it can tell.
        expect: "error" (a one-line error), "warn" (a warning, then on), "ok" (must just work), "either"
            (an error or a warning).
        may_change: workspace keys ("finished", "interrupted", "lottery") the command may legitimately change.
        check: after the command: returns a problem ("lost" data) or None; gets (workspace, result).
        timeout: seconds.
        user: run as this uid (a process without write permission), or None.
        needs: a precondition's name ("tmpfs") checked before the case runs.
        dangerous: why the case may harm the machine when the code under test accepts it (a fork bomb);
            ``--safe`` skips these cases.
    """

    name: str
    argv: list[str] | None = None
    setup: Callable[[Path], None] | None = None
    code: str | None = None
    expect: str = "error"
    may_change: tuple[str, ...] = ()
    check: Callable[[Path, dict], str | None] | None = None
    timeout: float = 90.0
    user: int | None = None
    needs: str | None = None
    concurrent: list[list[str]] | None = field(default=None)
    dangerous: str | None = None


def train(*args: str) -> list[str]:
    """``sparsetrain train`` on the tiny recipe, seed 5 (so the workspace's runs, seed 0, are not resumed)."""
    return ["train", *TINY, "--runs-dir", "runs", "--seed", "5", *args]


def write(name: str, data: str | bytes) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        path = ws / name
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return setup


def run_file(key: str, name: str, data: str | bytes | None) -> Callable[[Path], None]:
    """Replace ``name`` in a workspace run with ``data`` (None: a directory)."""
    def setup(ws: Path) -> None:
        path = ws / RUNS[key] / name
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()
        if data is None:
            path.mkdir()
        elif isinstance(data, bytes):
            path.write_bytes(data)
        else:
            path.write_text(data)
    return setup


def chain(*setups: Callable[[Path], None]) -> Callable[[Path], None]:
    def setup(ws: Path) -> None:
        for step in setups:
            step(ws)
    return setup


def mkfifo(name: str) -> Callable[[Path], None]:
    return lambda ws: os.mkfifo(ws / name)


LAUGHS = "\n".join(["a: &a [x, x, x, x, x, x, x, x, x]"] +
                   [f"{chr(98 + i)}: &{chr(98 + i)} [*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, *{chr(97 + i)}, "
                    f"*{chr(97 + i)}]" for i in range(8)] + ["train: {epochs: *i}"]) + "\n"

RUNS: dict[str, str] = {}  # "finished" / "interrupted" / "lottery" -> path relative to the workspace


def _resume(*args: str) -> list[str]:
    return ["train", "--resume", "@interrupted", "--no-progress", *args]


def _metrics_once(ws: Path, result: dict) -> str | None:
    """The (first) run under ``runs/`` has every epoch once in metrics.jsonl."""
    problems = []
    for metrics in ws.glob("runs/*/seed_*/metrics.jsonl"):
        if str(metrics.parent.relative_to(ws)) in RUNS.values():
            continue
        epochs = [json.loads(line)["epoch"] for line in metrics.read_text().splitlines() if line.strip()]
        if epochs != sorted(set(epochs)):
            problems.append(f"{metrics.relative_to(ws)} has epochs {epochs}")
    return "; ".join(problems) or None


def _exact_resume(ws: Path, result: dict) -> str | None:
    """After the fault and a rerun, the run's final masks equal those of an uninterrupted run."""
    return result.get("exact")


def cli_cases() -> list[Case]:
    cases = [
        # -- options: out of range, huge, not numbers ---------------------------------------------------------------
        Case("epochs 1e26", train("--epochs", "99999999999999999999999999")),
        Case("epochs 1e8", train("--epochs", "100000000")),
        Case("set epochs 1e26", train("--set", "train.epochs=99999999999999999999999999")),
        Case("set epochs 1e400", train("--set", "train.epochs=1e400")),
        Case("batch size 1e12", train("--batch-size", "1000000000000")),
        Case("batch size 0", train("--batch-size", "0")),
        Case("eval batch size 0", train("--eval-batch-size", "0")),
        Case("eval batch size 1e15", train("--eval-batch-size", "1000000000000000")),
        Case("lr inf", train("--lr", "inf")),
        Case("lr nan", train("--lr", "nan")),
        Case("lr 1e309", train("--lr", "1e309")),
        Case("sparsity 0.999999", train("--sparsity", "0.999999", "--no-baseline"), expect="either"),
        Case("sparsity -0.1", train("--sparsity", "-0.1")),
        Case("sparsity nan", train("--sparsity", "nan")),
        Case("update every 0", train("--update-every", "0")),
        Case("update every 1e30", train("--update-every", "1000000000000000000000000000000")),
        Case("seed 1e30", train("--seeds", "1000000000000000000000000000000")),
        Case("seed -1", train("--seed", "-1")),
        Case("threads 0", train("--threads", "0")),
        Case("threads 1e6", train("--threads", "1000000")),
        Case("workers -1", train("--num-workers", "-1")),
        Case("workers 1e6", train("--num-workers", "1000000"), dangerous="a million DataLoader processes"),
        Case("warmup 1e30", train("--warmup-epochs", "1e30")),
        Case("val fraction 0.9999", train("--val-fraction", "0.9999")),
        Case("label smoothing 2", train("--label-smoothing", "2")),
        Case("gamma -1", train("--gamma", "-1")),
        Case("momentum 5", train("--momentum", "5")),
        Case("weight decay -1", train("--weight-decay", "-1")),
        Case("betas one value", train("--optimizer", "adam", "--betas", "0.9")),
        Case("betas 2 3", train("--optimizer", "adam", "--betas", "2", "3")),
        Case("grad clip 0", train("--grad-clip", "0")),
        Case("grad clip -1", train("--grad-clip", "-1")),
        Case("n_train 1e12", train("--data-option", "n_train=1000000000000")),
        Case("input shape huge", train("--data-option", "input_shape=[100000, 100000]")),
        Case("hidden 1e9", train("--model-option", "hidden=[1000000000]")),
        Case("hidden negative", train("--model-option", "hidden=[16, -3]")),
        Case("hidden not a list", train("--model-option", "hidden=abc")),
        Case("prune_end 5", train("--method", "gmp", "--method-option", "prune_end=5")),
        Case("overrides name no layer", train("--method-option", "sparsity_overrides={nosuch: 0.5}")),
        Case("include names nothing", train("--method-option", "include=nosuch")),
        Case("exclude everything", train("--method-option", "exclude=.*")),
        Case("overrides sparsity 2", train("--method-option", "sparsity_overrides={layers.0.weight: 2}")),
        Case("device cuda:99", train("--device", "cuda:99")),
        Case("device tpu", train("--device", "tpu")),
        Case("data seed -1", train("--data-seed", "-1")),
        Case("cache dir is a file", train("--data", "mnist1d", "--cache-dir", "afile"), write("afile", "x")),
        Case("data dir is a file", train("--data", "mnist", "--data-dir", "afile"), write("afile", "x")),
        Case("set value nan option", train("--set", "sparse.options.drop_fraction=.nan")),
        Case("set batch size list", train("--set", "train.batch_size=[1, 2]")),
        Case("set empty key", train("--set", "=5")),
        Case("set empty option key", train("--set", "sparse.options.=5")),
        Case("set four parts", train("--set", "a.b.c.d=1")),
        Case("method option huge string", train("--method-option", "regrow_mode=" + "x" * 100000)),
        Case("masks option a directory", train("--method", "static", "--method-option", "masks=adir"),
             lambda ws: (ws / "adir").mkdir()),
        Case("masks option a text file", train("--method", "static", "--method-option", "masks=afile"),
             write("afile", "not a torch file")),
        Case("masks option non-UTF-8 file", train("--method", "static", "--method-option", "masks=afile"),
             write("afile", b"\xff\xfe\x00garbage")),
        Case("init with gmp", train("--method", "gmp", "--init", "snip")),
        # -- paths: the runs directory -------------------------------------------------------------------------------
        Case("runs dir under a file", ["train", *TINY, "--runs-dir", "afile/runs"], write("afile", "x")),
        Case("runs dir: method dir is a file", ["train", *TINY, "--runs-dir", "other"],
             write("other/granet-placeholder", "x"), expect="ok"),
        Case("runs dir: experiment dir is a file", ["train", *TINY, "--runs-dir", "runs", "--method", "gmp",
                                                   "--no-baseline", "--update-every", "2", "--seed", "1"],
             lambda ws: (ws / Path(RUNS["finished"]).parent / "seed_1").write_text("x")),
        Case("runs dir: config.yaml is a directory", _resume(), run_file("interrupted", "config.yaml", None)),
        Case("runs dir: metrics.jsonl is a directory", _resume(), run_file("interrupted", "metrics.jsonl", None)),
        Case("runs dir: checkpoint.pt is a directory", _resume(), run_file("interrupted", "checkpoint.pt", None)),
        Case("runs dir: empty name", ["train", *TINY, "--runs-dir", ""]),
        Case("runs dir read-only mount", ["train", *TINY, "--runs-dir", "ro/runs"], needs="ro-mount"),
        Case("runs dir without permission", ["train", *TINY, "--runs-dir", "locked"],
             lambda ws: (ws / "locked").mkdir(mode=0o755), user=NOBODY),
        Case("report in a runs dir without permission", ["report", "--runs-dir", "runs", "--output", "runs/t.md"],
             user=NOBODY),
        # -- config files --------------------------------------------------------------------------------------------
        Case("config not UTF-8", train("--config", "bad.yaml"), write("bad.yaml", b"train:\n  epochs: \xff\xfe\n")),
        Case("config latin-1 comment", train("--config", "bad.yaml"), write("bad.yaml", "# caf\xe9\n".encode("latin-1"))),
        Case("config billion laughs", train("--config", "laughs.yaml"), write("laughs.yaml", LAUGHS)),
        Case("config alias (benign)", train("--config", "alias.yaml"),
             write("alias.yaml", "model: &m {name: mlp}\ntrain: {epochs: 1}\nx: *m\n")),
        Case("config merge key", train("--config", "merge.yaml"),
             write("merge.yaml", "base: &b {epochs: 1}\ntrain:\n  <<: *b\n")),
        Case("config duplicate section", train("--config", "dup.yaml"),
             write("dup.yaml", "train: {epochs: 1}\ntrain: {epochs: 2}\n")),
        Case("config duplicate field", train("--config", "dup.yaml"),
             write("dup.yaml", "train:\n  epochs: 1\n  epochs: 2\n")),
        Case("config duplicate option", train("--config", "dup.yaml"),
             write("dup.yaml", "sparse:\n  options:\n    drop_fraction: 0.1\n    drop_fraction: 0.2\n")),
        Case("config 30 MB", train("--config", "big.yaml"),
             write("big.yaml", "# " + "x" * (30 * 2 ** 20) + "\ntrain: {epochs: 1}\n")),
        Case("config a directory", train("--config", "adir"), lambda ws: (ws / "adir").mkdir()),
        Case("config /dev/zero", train("--config", "/dev/zero"), timeout=60),
        Case("config a FIFO", train("--config", "fifo.yaml"), mkfifo("fifo.yaml"), timeout=60),
        Case("config python tag", train("--config", "tag.yaml"),
             write("tag.yaml", "train: !!python/object/apply:os.system ['touch PWNED']\n"),
             check=lambda ws, r: "code ran" if (ws / "PWNED").exists() else None),
        Case("config deep nesting", train("--config", "deep.yaml"), write("deep.yaml", "x: " + "[" * 50000)),
        Case("config NUL bytes", train("--config", "nul.yaml"), write("nul.yaml", b"train:\x00 {}\n")),
        Case("config tabs", train("--config", "tabs.yaml"), write("tabs.yaml", "train:\n\tepochs: 1\n")),
        Case("config epochs 1e400", train("--config", "e.yaml"), write("e.yaml", "train: {epochs: 1e400}\n")),
        Case("config epochs 1e20", train("--config", "e.yaml"), write("e.yaml", "train: {epochs: 99999999999999999999}\n")),
        Case("config int keys", train("--config", "k.yaml"), write("k.yaml", "train: {1: 2}\n")),
        Case("config complex key", train("--config", "k.yaml"), write("k.yaml", "? [a, b]\n: 1\n")),
        Case("config n_train inf", train("--config", "n.yaml"), write("n.yaml", "data: {options: {n_train: .inf}}\n")),
        Case("config masks a list", train("--config", "m.yaml"),
             write("m.yaml", "sparse: {method: static, options: {masks: [1, 2]}}\n")),
        Case("config a scalar", train("--config", "s.yaml"), write("s.yaml", "42\n")),
        Case("config multi-document", train("--config", "d.yaml"), write("d.yaml", "train: {epochs: 1}\n---\nx: 1\n")),
        # -- run directories and resume ------------------------------------------------------------------------------
        Case("resume: config.yaml not UTF-8", _resume(), run_file("interrupted", "config.yaml", b"\xff\xfe\x00")),
        Case("resume: config.yaml billion laughs", _resume(), run_file("interrupted", "config.yaml", LAUGHS)),
        Case("resume: config.yaml duplicate keys", _resume(),
             run_file("interrupted", "config.yaml", "train: {epochs: 2}\ntrain: {epochs: 3}\n")),
        Case("resume: a file", ["train", "--resume", "afile"], write("afile", "x")),
        Case("resume: missing path", ["train", "--resume", "nowhere/seed_0"]),
        Case("resume: metrics.jsonl garbage", _resume(),
             run_file("interrupted", "metrics.jsonl", "{not json}\n{\"epoch\": 1}\n"), expect="either",
             may_change=("interrupted",)),
        Case("resume: metrics.jsonl not UTF-8", _resume(), run_file("interrupted", "metrics.jsonl", b"\xff\xfe\n"),
             expect="either", may_change=("interrupted",)),
        Case("resume: checkpoint a pickle", _resume(), run_file("interrupted", "checkpoint.pt",
             b"\x80\x04\x95\x1d\x00\x00\x00\x00\x00\x00\x00\x8c\x02os\x8c\x06system\x93\x8c\x05touch\x85R.")
             , expect="either", may_change=("interrupted",)),
        Case("resume: both checkpoints text", _resume(), chain(run_file("interrupted", "checkpoint.pt", "x"),
                                                              run_file("interrupted", "checkpoint.prev.pt", "y"))),
        Case("finished: summary.json damaged, train again", train("--method", "gmp", "--no-baseline",
                                                                  "--update-every", "2", "--seed", "0"),
             run_file("finished", "summary.json", "{\"final_acc\": 0.5,"), expect="either",
             may_change=("finished",)),
        Case("finished: summary.json not UTF-8, train again", train("--method", "gmp", "--no-baseline",
                                                                    "--update-every", "2", "--seed", "0"),
             run_file("finished", "summary.json", b"\xff\xfe{}"), expect="either", may_change=("finished",)),
        Case("finished: summary.json a directory, train again", train("--method", "gmp", "--no-baseline",
                                                                      "--update-every", "2", "--seed", "0"),
             run_file("finished", "summary.json", None), expect="either", may_change=("finished",)),
        Case("finished: summary.json a list, train again", train("--method", "gmp", "--no-baseline",
                                                                 "--update-every", "2", "--seed", "0"),
             run_file("finished", "summary.json", "[1, 2]"), expect="either", may_change=("finished",)),
        Case("resume --epochs huge", _resume("--epochs", "99999999999")),
        Case("resume a finished run's config in another dir", ["train", "--resume", "copy/x/seed_0"],
             lambda ws: shutil.copytree(ws / RUNS["interrupted"], ws / "copy/x/seed_0")),
        # -- report ---------------------------------------------------------------------------------------------------
        Case("report --output a directory", ["report", "--output", "adir"], lambda ws: (ws / "adir").mkdir()),
        Case("report --output missing folder", ["report", "--output", "no/such/dir/t.md"]),
        Case("report --output under a file", ["report", "--output", "afile/t.md"], write("afile", "x")),
        Case("report: damaged summary.json", ["report"], run_file("finished", "summary.json", "{oops"), expect="warn"),
        Case("report: summary.json a list", ["report"], run_file("finished", "summary.json", "[]"), expect="warn"),
        Case("report: summary.json empty object", ["report"], run_file("finished", "summary.json", "{}"),
             expect="either"),
        Case("report: summary.json wrong types", ["report"],
             run_file("finished", "summary.json", "{\"final_acc\": \"high\", \"sparsity\": [1]}"), expect="either"),
        Case("report: summary.json not UTF-8", ["report"], run_file("finished", "summary.json", b"\xff{}"),
             expect="warn"),
        Case("report: summary.json a directory", ["report"], run_file("finished", "summary.json", None),
             expect="warn"),
        Case("report: config.yaml damaged", ["report"], run_file("finished", "config.yaml", "train: [1\n"),
             expect="warn"),
        Case("report: config.yaml not UTF-8", ["report"], run_file("finished", "config.yaml", b"\xff\xfe"),
             expect="warn"),
        Case("report --aggregate: damaged summary", ["report", "--aggregate"],
             run_file("finished", "summary.json", "{oops"), expect="warn"),
        Case("report --layers: damaged summary", ["report", "--layers"],
             run_file("finished", "summary.json", "{oops"), expect="warn"),
        Case("report --runs-dir a file", ["report", "--runs-dir", "afile"], write("afile", "x")),
        Case("report: lottery level metrics damaged", ["report"], lambda ws: _damage_lottery(ws), expect="warn"),
        # -- plot -----------------------------------------------------------------------------------------------------
        Case("plot --out a file", ["plot", "--no-progress", "--out", "afile"], write("afile", "x")),
        Case("plot --out under a file", ["plot", "--no-progress", "--out", "afile/plots"], write("afile", "x")),
        Case("plot: damaged summary.json", ["plot", "--no-progress"], run_file("finished", "summary.json", "{oops"),
             expect="warn", may_change=("lottery",)),
        Case("plot: metrics.jsonl damaged", ["plot", "--no-progress"],
             run_file("finished", "metrics.jsonl", "garbage\n\xff"), expect="either",
             may_change=("finished", "lottery")),
        Case("plot: summary.json a list", ["plot", "--no-progress"], run_file("finished", "summary.json", "[]"),
             expect="warn", may_change=("lottery",)),
        Case("plot: lottery metrics damaged", ["plot", "--no-progress"], lambda ws: _damage_lottery(ws),
             expect="warn", may_change=("finished", "lottery")),
        Case("plot --runs-dir a file", ["plot", "--runs-dir", "afile"], write("afile", "x")),
        Case("plot: read-only runs dir", ["plot", "--no-progress", "--runs-dir", "ro/runs"], needs="ro-mount"),
        # -- lottery --------------------------------------------------------------------------------------------------
        Case("lottery --rewind-step beyond the run", ["lottery", *RECIPE, "--runs-dir", "runs", "--rounds", "1",
                                                     "--rewind-step", "1000000", "--controls"]),
        Case("lottery --rewind-step -1", ["lottery", *RECIPE, "--runs-dir", "runs", "--rewind-step", "-1"]),
        Case("lottery --output-layer no layer", ["lottery", *RECIPE, "--runs-dir", "runs", "--rounds", "1",
                                                "--output-layer", "nosuch", "--controls"]),
        Case("lottery --rounds 0", ["lottery", *RECIPE, "--runs-dir", "runs", "--rounds", "0"]),
        Case("lottery --rounds 1e9", ["lottery", *RECIPE, "--runs-dir", "runs", "--rounds", "1000000000",
                                     "--controls"]),
        Case("lottery --prune-rate 1.5", ["lottery", *RECIPE, "--runs-dir", "runs", "--prune-rate", "1.5"]),
        Case("lottery --output-rate abc", ["lottery", *RECIPE, "--runs-dir", "runs", "--output-rate", "abc"]),
        Case("lottery --controls bogus", ["lottery", *RECIPE, "--runs-dir", "runs", "--controls", "bogus"]),
        Case("lottery --epochs 1e12", ["lottery", *RECIPE, "--runs-dir", "runs", "--epochs", "1000000000000"]),
        Case("lottery --config billion laughs", ["lottery", "--config", "laughs.yaml", "--runs-dir", "runs"],
             write("laughs.yaml", LAUGHS)),
        # -- plasticity -----------------------------------------------------------------------------------------------
        Case("plasticity --prune-epochs 999", ["plasticity", *RECIPE, "--runs-dir", "runs", "--prune-epochs", "999"]),
        Case("plasticity --prune-epochs -1", ["plasticity", *RECIPE, "--runs-dir", "runs", "--prune-epochs", "-1"]),
        Case("plasticity --rates 1.5", ["plasticity", *RECIPE, "--runs-dir", "runs", "--rates", "1.5"]),
        Case("plasticity --regrow-every 0", ["plasticity", *RECIPE, "--runs-dir", "runs", "--regrow-every", "0"]),
        Case("plasticity --out a file", ["plasticity", *RECIPE, "--runs-dir", "runs", "--prune-epochs", "1",
                                         "--rates", "0.5", "--regeneration", "no", "--out", "afile"],
             write("afile", "x")),
        Case("plasticity --drop-fraction 5", ["plasticity", *RECIPE, "--runs-dir", "runs", "--drop-fraction", "5"]),
        # -- compare --------------------------------------------------------------------------------------------------
        Case("compare missing paths", ["compare", "nowhere/a", "nowhere/b"]),
        Case("compare a text file", ["compare", "afile", "@finished"], write("afile", "not torch")),
        Case("compare a non-UTF-8 file", ["compare", "afile", "@finished"], write("afile", b"\xff\xfe\x00")),
        Case("compare --atol -1", ["compare", "--update", "--atol", "-1", "@finished", "@finished"]),
        Case("compare --output a directory", ["compare", "--output", "adir", "@finished", "@finished"],
             lambda ws: (ws / "adir").mkdir()),
        Case("compare three paths", ["compare", "@finished", "@finished", "@finished"]),
        Case("compare an empty directory", ["compare", "adir", "@finished"], lambda ws: (ws / "adir").mkdir()),
        # -- jackpot --------------------------------------------------------------------------------------------------
        Case("jackpot on a missing run", ["jackpot", "nowhere/seed_0"]),
        Case("jackpot --sparsity 1.5", ["jackpot", "@finished", "--sparsity", "1.5"]),
        Case("jackpot --steps 1e12", ["jackpot", "@finished", "--steps", "1000000000000"]),
        Case("jackpot --batches 0", ["jackpot", "@finished", "--batches", "0"]),
        Case("jackpot --steps -1", ["jackpot", "@finished", "--steps", "-1"]),
        Case("jackpot on a run with a damaged checkpoint", ["jackpot", "@finished"],
             run_file("finished", "checkpoint.pt", "x"), may_change=("finished",)),
        # -- reproduce ------------------------------------------------------------------------------------------------
        Case("reproduce --workers 0", ["reproduce", "--tiny", "--workers", "0", "--runs-dir", "r"]),
        Case("reproduce --out a file", ["reproduce", "--tiny", "--out", "afile", "--runs-dir", "r"],
             write("afile", "x")),
        Case("reproduce --runs-dir a file", ["reproduce", "--tiny", "--runs-dir", "afile"], write("afile", "x")),
        # -- concurrency and faults -----------------------------------------------------------------------------------
        Case("two trainers started together on one run", None, concurrent=[train("--no-baseline", "--epochs", "6"),
                                                              train("--no-baseline", "--epochs", "6")],
             expect="either", check=_metrics_once),
        Case("second trainer while the first writes a checkpoint", None,
             concurrent=[train("--no-baseline", "--epochs", "4", "--set", "train.seed=3"),
                         train("--no-baseline", "--epochs", "4", "--set", "train.seed=3")],
             expect="either", check=_metrics_once),
        Case("disk full mid-run, then resume", None, needs="tmpfs", check=_exact_resume, expect="error"),
    ]
    return cases


def _damage_lottery(ws: Path) -> None:
    """Cut short the summary (the metrics) of the lottery's first ticket run: the file its curve reads."""
    (ws / RUNS["lottery"] / "level_1" / "run" / "summary.json").write_text("{oops")


# -- API cases ---------------------------------------------------------------------------------------------------
API_PRELUDE = textwrap.dedent("""\
    import torch
    from torch import nn
    import sparsetrain

    def net():
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 4))

    def batch():
        return torch.randn(8, 12), torch.randint(0, 4, (8,))

    def train_steps(model, optimizer, sparsifier, n, order="normal"):
        for _ in range(n):
            x, y = batch()
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            if order == "sparsifier first":
                sparsifier.step(); optimizer.step()
            else:
                optimizer.step(); sparsifier.step()

    def pruned_nonzero(sparsifier):
        return sum(int((p.detach()[~sparsifier.masks[n]] != 0).sum()) for n, p in sparsifier.params.items())

    def converted():  # a 97%-sparse MLP and its sparse.convert'ed copy (sparse kernels above the break-even)
        import sparsetrain.sparse as sp
        torch.manual_seed(0)
        m = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
        with torch.no_grad():
            for layer in (m[0], m[2]):
                layer.weight.mul_((torch.rand_like(layer.weight) > 0.97).float())
        return m, sp.convert(m.eval())
    """)


def api_cases() -> list[Case]:
    return [
        Case("api: float masks (Static)", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
masks = {n: (torch.rand_like(p) > 0.9).float() for n, p in m.named_parameters() if p.dim() == 2}
s = sparsetrain.Static(m, o, masks=masks, total_steps=10)
WRONG = s.current_sparsity() < 0.5"""),
        Case("api: float masks (RigL)", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
masks = {n: (torch.rand_like(p) > 0.9).float() for n, p in m.named_parameters() if p.dim() == 2}
s = sparsetrain.RigL(m, o, masks=masks, total_steps=10)
WRONG = s.current_sparsity() < 0.5"""),
        Case("api: uint8 masks", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
masks = {n: (torch.rand_like(p) > 0.9).to(torch.uint8) for n, p in m.named_parameters() if p.dim() == 2}
s = sparsetrain.Static(m, o, masks=masks, total_steps=10)
WRONG = s.current_sparsity() < 0.5"""),
        Case("api: float masks assigned", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.Static(m, o, sparsity=0.9, total_steps=10)
s.masks = {n: mk.float() for n, mk in s.masks.items()}
train_steps(m, o, s, 3)
WRONG = pruned_nonzero(s) > 0"""),
        Case("api: float masks in a loaded state", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.Static(m, o, sparsity=0.9, total_steps=10)
st = s.state_dict(); st["masks"] = {n: mk.float() * 0.5 for n, mk in st["masks"].items()}
s.load_state_dict(st)
WRONG = s.current_sparsity() < 0.5"""),
        Case("api: two sparsifiers on one optimizer", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
a = sparsetrain.Static(m, o, sparsity=0.9, total_steps=20, include=["0.weight"], seed=0)
b = sparsetrain.Static(m, o, sparsity=0.9, total_steps=20, include=["0.weight"], seed=1)
for _ in range(5):
    x, y = batch(); o.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); o.step(); a.step(); b.step()
WRONG = pruned_nonzero(a) > 0 or pruned_nonzero(b) > 0"""),
        Case("api: two sparsifiers on overlapping parameters", code="""
m = net(); o1 = torch.optim.SGD(m.parameters(), lr=0.1); o2 = torch.optim.SGD(m.parameters(), lr=0.1)
a = sparsetrain.Static(m, o1, sparsity=0.9, total_steps=20, seed=0)
b = sparsetrain.Static(m, o2, sparsity=0.5, total_steps=20, seed=1)
WRONG = True"""),
        Case("api: sparsifier.step() before optimizer.step()", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=100, update_every=2)
train_steps(m, o, s, 10, order="sparsifier first")
WRONG = pruned_nonzero(s) > 0"""),
        Case("api: step() twice per optimizer step", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.GMP(m, o, sparsity=0.9, total_steps=100, update_every=2)
x, y = batch(); o.zero_grad(); nn.functional.cross_entropy(m(x), y).backward(); o.step(); s.step(); s.step()
WRONG = True"""),
        Case("api: optimizer of another model", code="""
m = net(); other = net(); o = torch.optim.SGD(other.parameters(), lr=0.1)
s = sparsetrain.Static(m, o, sparsity=0.9, total_steps=10)
WRONG = True"""),
        Case("api: optimizer without the sparsified tensors", code="""
m = net(); o = torch.optim.SGD([m[0].bias], lr=0.1)
s = sparsetrain.Static(m, o, sparsity=0.9, total_steps=10)
WRONG = True"""),
        Case("api: sparsity 0.999999 empties layers", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.999999, total_steps=10)
WRONG = True""", expect="either"),
        Case("api: GMP to sparsity 0.9999 empties layers", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.GMP(m, o, sparsity=0.9999, total_steps=10, update_every=1)
train_steps(m, o, s, 10)
WRONG = True""", expect="either"),
        Case("api: state of sparsity 0.5 into a 0.9 sparsifier", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
st = sparsetrain.Static(m, o, sparsity=0.5, total_steps=10).state_dict()
m2 = net(); o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
s = sparsetrain.Static(m2, o2, sparsity=0.9, total_steps=10)
s.load_state_dict(st)
WRONG = abs(s.current_sparsity() - s.sparsity) > 0.05"""),
        Case("api: state of total_steps 10 into a 1000-step sparsifier", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
st = sparsetrain.GMP(m, o, sparsity=0.9, total_steps=10).state_dict()
m2 = net(); o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
s = sparsetrain.GMP(m2, o2, sparsity=0.9, total_steps=1000)
s.load_state_dict(st)
WRONG = True"""),
        Case("api: state of another method", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
st = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10).state_dict()
m2 = net(); o2 = torch.optim.SGD(m2.parameters(), lr=0.1)
sparsetrain.SET(m2, o2, sparsity=0.9, total_steps=10).load_state_dict(st)
WRONG = True"""),
        Case("api: state that is not a state", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10).load_state_dict({"masks": 1, "method": "rigl"})
WRONG = True"""),
        Case("api: state with a step past the run", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10)
st = s.state_dict(); st["step"] = 10 ** 9
s.load_state_dict(st)
WRONG = True"""),
        Case("api: step() after export()", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10)
s.export()
train_steps(m, o, s, 2)
WRONG = True"""),
        Case("api: step() after remove()", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10)
s.remove()
train_steps(m, o, s, 2)
WRONG = pruned_nonzero(s) > 0"""),
        Case("api: total_steps 1e30", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.GraNet(m, o, sparsity=0.9, total_steps=10 ** 30)
train_steps(m, o, s, 2)
WRONG = False""", expect="ok"),
        Case("api: sparsity_overrides naming no tensor", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10, sparsity_overrides={"nosuch": 0.5})
WRONG = True"""),
        Case("api: include naming nothing", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10, include=["nosuch"])
WRONG = True"""),
        Case("api: a model without prunable tensors", code="""
m = nn.Sequential(nn.ReLU()); o = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=0.1)
s = sparsetrain.RigL(m, o, sparsity=0.9, total_steps=10)
WRONG = True"""),
        Case("api: masks on a meta device", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
masks = {n: torch.ones(p.shape, dtype=torch.bool, device="meta") for n, p in m.named_parameters() if p.dim() == 2}
s = sparsetrain.Static(m, o, masks=masks, total_steps=10)
WRONG = True"""),
        Case("api: masks all False", code="""
m = net(); o = torch.optim.SGD(m.parameters(), lr=0.1)
masks = {n: torch.zeros(p.shape, dtype=torch.bool) for n, p in m.named_parameters() if p.dim() == 2}
s = sparsetrain.Static(m, o, masks=masks, total_steps=10)
WRONG = True""", expect="either"),
        Case("api: jit.trace of a converted model", code="""
import sparsetrain.sparse as sp
m, fast = converted()
x = torch.randn(4, 256)
traced = torch.jit.trace(fast, x)
WRONG = not torch.allclose(traced(torch.randn(4, 256) * 3), fast(x * 0 + torch.randn(4, 256) * 3), atol=1e9) or \\
        not torch.allclose(traced(x + 1), m(x + 1), atol=1e-4)"""),
        Case("api: jit.script of a converted model", code="""
import sparsetrain.sparse as sp
m, fast = converted()
scripted = torch.jit.script(fast)
x = torch.randn(4, 256)
WRONG = not torch.allclose(scripted(x), m(x), atol=1e-4)"""),
        Case("api: converted state_dict into the original", code="""
import sparsetrain.sparse as sp
m, fast = converted()
fresh = nn.Sequential(nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
try:  # the converted state itself has the CSR keys: a strict load must refuse it, naming them
    fresh.load_state_dict(fast.state_dict())
    refused = False
except RuntimeError as exc:
    refused = "weight_crow_indices" in str(exc)
fresh.load_state_dict(sp.dense_state_dict(fast))  # the documented way back
x = torch.randn(4, 256)
WRONG = not refused or not torch.allclose(fresh(x), m(x), atol=1e-4)"""),
        Case("api: onnx export of a converted model", code="""
import importlib.util, io
m, fast = converted()
try:
    torch.onnx.export(fast, (torch.randn(4, 256),), io.BytesIO(), dynamo=False)
    WRONG = False
except Exception as exc:  # without onnx (not a dependency): torch refuses in one line naming the package
    if importlib.util.find_spec("onnx") is not None:
        raise
    WRONG = "onnx" not in str(exc) or "\\n" in str(exc).strip()""", expect="either"),
        Case("api: export_sparse to a directory", code="""
import tempfile
m = net()
sparsetrain.export_sparse(m, tempfile.mkdtemp())
WRONG = True"""),
        Case("api: load_sparse of a text file", code="""
import tempfile, os
path = os.path.join(tempfile.mkdtemp(), "x.safetensors"); open(path, "w").write("hello")
sparsetrain.load_sparse(path, net())
WRONG = True"""),
        Case("api: load_checkpoint of a directory", code="""
import tempfile
sparsetrain.load_checkpoint(tempfile.mkdtemp())
WRONG = True"""),
        Case("api: load_checkpoint of a missing file", code="""
sparsetrain.load_checkpoint("/nonexistent/x.pt")
WRONG = True"""),
        Case("api: prune_at_init sparsity 1.0", code="""
sparsetrain.prune_at_init(net(), "synflow", sparsity=1.0, input_shape=(12,))
WRONG = True"""),
        Case("api: prune_at_init unknown method", code="""
sparsetrain.prune_at_init(net(), "magic", sparsity=0.5, input_shape=(12,))
WRONG = True"""),
    ]


# -- running -----------------------------------------------------------------------------------------------------
def _snapshot(root: Path) -> dict[str, str | None]:
    if not root.exists():
        return {}
    out: dict[str, str | None] = {}
    for path in sorted(root.rglob("*")):
        rel = str(path.relative_to(root))
        if path.is_symlink():
            out[rel] = "link"
        elif path.is_file():
            out[rel] = hashlib.sha256(path.read_bytes()).hexdigest()
        elif path.is_dir():
            out[rel + "/"] = None
    return out


def _env(src: Path, cache: Path) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(src)
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env["SPARSETRAIN_CACHE"] = str(cache)
    env["OMP_NUM_THREADS"] = "1"
    env.pop("SPARSETRAIN_TEST_WRITE_DELAY", None)
    return env


def _argv(argv: list[str]) -> list[str]:
    return [RUNS[a[1:]] if a.startswith("@") and a[1:] in RUNS else a for a in argv]


def _one_line_error(stderr: str) -> bool:
    lines = [line for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("sparsetrain: error: ")]
    return len(errors) == 1 and lines[-1] == errors[0] and all(line.startswith("sparsetrain: ") for line in lines)


def _warned(stderr: str) -> bool:
    return any(line.startswith("sparsetrain: ") and ("warning" in line.lower()) for line in stderr.splitlines())


def _limit_memory(user: int | None = None) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (MEMORY_LIMIT, MEMORY_LIMIT))
    if user is not None:
        os.setgroups([])
        os.setgid(user)
        os.setuid(user)


def _run(argv: list[str], cwd: Path, env: dict[str, str], timeout: float, user: int | None = None) -> dict:
    command = [sys.executable, "-m", "sparsetrain", *_argv(argv)]
    start = time.monotonic()
    kwargs: dict = {"preexec_fn": (lambda: _limit_memory(user))}
    try:
        done = subprocess.run(command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout,
                              errors="replace", **kwargs)
    except subprocess.TimeoutExpired as exc:
        err = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else (exc.stderr or "")
        return {"code": None, "stderr": err, "stdout": "", "seconds": time.monotonic() - start}
    return {"code": done.returncode, "stderr": done.stderr, "stdout": done.stdout,
            "seconds": time.monotonic() - start}


def classify_cli(case: Case, result: dict, problem: str | None) -> tuple[str, str]:
    err = result["stderr"]
    first = next((line for line in err.splitlines() if "Error" in line or "error" in line), err.strip()[-200:])
    if result["code"] is None:
        return "hang", f"no exit after {case.timeout:.0f} s"
    if "Traceback" in err or result["code"] == 1:
        return "traceback", (err.strip().splitlines() or ["exit 1"])[-1][:200]
    if problem:
        return "lost", problem
    if result["code"] == 0:
        if case.expect == "ok" or (case.expect in ("warn", "either") and _warned(err)):
            return "ok", "warning" if _warned(err) else "done"
        return "silent", "exit 0" + (f", stderr: {err.strip()[:120]}" if err.strip() else "")
    if case.expect == "ok":
        return ("ok" if _one_line_error(err) else "cryptic"), first[:200]
    return ("ok" if _one_line_error(err) else "cryptic"), first[:200]


def run_cli_case(case: Case, template: Path, work: Path, env: dict[str, str]) -> dict:
    ws = work / "ws"
    shutil.copytree(template, ws, symlinks=True)
    mounts: list[Path] = []
    try:
        if case.setup is not None:
            case.setup(ws)
        if case.needs == "ro-mount":
            if not _mount(ws / "ro", "ro,size=1m", prepare=lambda p: shutil.copytree(template / "runs", p / "runs")):
                return {"outcome": "skipped", "detail": "cannot mount a read-only tmpfs here (needs root)"}
            mounts.append(ws / "ro")
        if case.user is not None:
            if os.geteuid() != 0:
                return {"outcome": "skipped", "detail": "needs root to run a case as another user"}
            for path in [ws, *ws.rglob("*")]:
                os.chmod(path, (path.stat().st_mode | 0o755) if path.is_dir() else (path.stat().st_mode | 0o644))
            work.chmod(0o755)
        protected = {key: _snapshot(ws / rel) for key, rel in RUNS.items() if key not in case.may_change}
        extra: dict = {}
        if case.concurrent:
            result = _run_concurrent(case, ws, env)
        elif case.needs == "tmpfs":
            result, extra = _disk_full(case, ws, env, mounts)
            if result is None:
                return {"outcome": "skipped", "detail": extra["skipped"]}
        else:
            try:
                result = _run(case.argv or [], ws, env, case.timeout, case.user)
            except PermissionError as exc:  # e.g. the interpreter lives under /root, which that user cannot read
                return {"outcome": "skipped", "detail": f"cannot run as uid {case.user}: {exc}"}
        result.update(extra)
        problem = None
        for key, before in protected.items():
            after = _snapshot(ws / RUNS[key])
            if after != before:
                changed = sorted(set(before.items()) ^ set(after.items()))
                problem = f"{key} run changed: {', '.join(sorted({c[0] for c in changed}))[:150]}"
                break
        if problem is None and case.check is not None:
            problem = case.check(ws, result)
        outcome, detail = classify_cli(case, result, problem)
        return {"outcome": outcome, "detail": detail, "code": result["code"], "seconds": result["seconds"]}
    finally:
        for mount in reversed(mounts):
            subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def _mount(where: Path, options: str, prepare: Callable[[Path], None] | None = None) -> bool:
    where.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    ro = "ro" in options.split(",")
    rw_options = ",".join(o for o in options.split(",") if o != "ro")
    if subprocess.run(["mount", "-t", "tmpfs", "-o", rw_options, "tmpfs", str(where)],
                      capture_output=True).returncode:
        return False
    if prepare is not None:
        prepare(where)
    if ro and subprocess.run(["mount", "-o", "remount,ro", str(where)], capture_output=True).returncode:
        subprocess.run(["umount", "-l", str(where)], capture_output=True)
        return False
    return True


def _run_concurrent(case: Case, ws: Path, env: dict[str, str]) -> dict:
    """Two processes on one run: the second starts when the first is inside its first checkpoint write."""
    slow = dict(env, SPARSETRAIN_TEST_WRITE_DELAY="0.5")
    start = time.monotonic()
    first = subprocess.Popen([sys.executable, "-m", "sparsetrain", *case.concurrent[0]], cwd=ws, env=slow,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory)
    deadline = time.monotonic() + (0 if "together" in case.name else 60)
    while time.monotonic() < deadline and not list(ws.glob("runs/*/seed_*/.*.tmp")) and first.poll() is None:
        time.sleep(0.02)
    second = subprocess.Popen([sys.executable, "-m", "sparsetrain", *case.concurrent[1]], cwd=ws, env=slow,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, preexec_fn=_limit_memory)
    results = []
    for process in (first, second):
        try:
            out, err = process.communicate(timeout=case.timeout)
            results.append((process.returncode, err))
        except subprocess.TimeoutExpired:
            process.kill()
            out, err = process.communicate()
            results.append((None, err))
    codes = [c for c, _ in results]
    errs = "\n".join(e for _, e in results)
    if None in codes:
        code = None
    elif any(c == 1 for c in codes) or "Traceback" in errs:
        code = 1
    elif sorted(codes) == [0, 2]:
        code = 2
        errs = next(e for c, e in results if c == 2)
    else:
        code = max(codes)
    return {"code": code, "stderr": errs, "stdout": "", "seconds": time.monotonic() - start}


def _disk_full(case: Case, ws: Path, env: dict[str, str], mounts: list[Path]) -> tuple[dict | None, dict]:
    """Train on a tmpfs that fills up part-way through; free the space; rerun; compare with an uninterrupted run."""
    where = ws / "small"
    args = ["train", *TINY, "--no-baseline", "--method", "rigl", "--epochs", "6", "--update-every", "2",
            "--model-option", "hidden=[256]", "--runs-dir", "small/runs"]
    if not _mount(where, "size=4m"):
        return None, {"skipped": "cannot mount a tmpfs here (needs root)"}
    mounts.append(where)
    _run([*args[:-1], "ref/runs"], ws, env, case.timeout)
    (checkpoint,) = list((ws / "ref/runs").glob("*/seed_0/checkpoint.pt"))
    size = checkpoint.stat().st_size
    free = shutil.disk_usage(where).free
    filler = where / "filler"
    with open(filler, "wb") as handle:
        handle.write(b"\0" * max(0, free - int(2.5 * size)))
    result = _run(args, ws, env, case.timeout)
    filler.unlink()
    rerun = _run(args, ws, env, case.timeout)
    import torch  # only here: the harness itself needs no torch

    exact = None
    masks = list((where / "runs").glob("*/seed_0/masks.pt"))
    if rerun["code"] != 0 or not masks:
        exact = f"the rerun after freeing space failed (exit {rerun['code']}): {rerun['stderr'].strip()[-200:]}"
    else:
        ref = torch.load(next((ws / "ref/runs").glob("*/seed_0/masks.pt")), weights_only=True)
        got = torch.load(masks[0], weights_only=True)
        metrics = [json.loads(x) for x in next((where / "runs").glob("*/seed_0/metrics.jsonl")).read_text().splitlines()]
        ref_metrics = [json.loads(x) for x in
                       next((ws / "ref/runs").glob("*/seed_0/metrics.jsonl")).read_text().splitlines()]
        strip = lambda rs: [{k: v for k, v in r.items() if k != "time"} for r in rs]  # noqa: E731
        if any(not torch.equal(ref[k], got[k]) for k in ref) or strip(metrics) != strip(ref_metrics):
            exact = "the resumed run differs from an uninterrupted one"
    if result["code"] == 0:
        result["stderr"] += "\n(the run finished: the disk did not fill)"
    return result, {"exact": exact}


def run_api_case(case: Case, work: Path, env: dict[str, str]) -> dict:
    script = work / "case.py"
    body = textwrap.dedent(case.code or "")
    script.write_text(API_PRELUDE + textwrap.dedent(f"""
        import json, logging, sys, traceback, warnings
        class _Grab(logging.Handler):
            def __init__(self):
                super().__init__(logging.WARNING); self.records = []
            def emit(self, record):
                self.records.append(record.getMessage())
        _grab = _Grab(); logging.getLogger("sparsetrain").addHandler(_grab)
        logging.getLogger("sparsetrain").setLevel(logging.WARNING)
        WRONG = None
        _out = {{}}
        with warnings.catch_warnings(record=True) as _w:
            warnings.simplefilter("always")
            try:
                exec(compile({body!r}, "case", "exec"))
                _out["raised"] = None
            except Exception as _exc:
                _frames = traceback.extract_tb(_exc.__traceback__)
                _out["raised"] = [type(_exc).__name__, str(_exc), _frames[-1].filename if _frames else ""]
        _out["warnings"] = _grab.records + [str(w.message) for w in _w
                                           if "sparsetrain" in (w.filename or "") or "sparsetrain" in str(w.message)]
        _out["wrong"] = WRONG
        print("@@" + json.dumps(_out))
        """))
    start = time.monotonic()
    try:
        done = subprocess.run([sys.executable, str(script)], cwd=work, env=env, capture_output=True, text=True,
                              timeout=case.timeout, preexec_fn=_limit_memory)
    except subprocess.TimeoutExpired:
        return {"outcome": "hang", "detail": f"no exit after {case.timeout:.0f} s", "seconds": case.timeout}
    seconds = time.monotonic() - start
    line = next((x for x in done.stdout.splitlines() if x.startswith("@@")), None)
    if line is None:
        return {"outcome": "traceback", "detail": done.stderr.strip()[-200:], "seconds": seconds}
    out = json.loads(line[2:])
    raised = out["raised"]
    if raised is not None:
        kind, message, where = raised
        ours = "sparsetrain" in where and kind not in ("AssertionError", "KeyError", "AttributeError",
                                                       "IndexError", "UnboundLocalError", "NameError")
        if ours and "\n" not in message.strip():
            return {"outcome": "ok", "detail": f"{kind}: {message[:160]}", "seconds": seconds}
        return {"outcome": "traceback", "detail": f"{kind} from {Path(where).name}: {message[:140]}",
                "seconds": seconds}
    if out["wrong"] is False:
        return {"outcome": "ok", "detail": "correct result", "seconds": seconds}
    if out["warnings"] and case.expect in ("either", "warn"):
        return {"outcome": "ok", "detail": f"warning: {out['warnings'][0][:160]}", "seconds": seconds}
    if out["warnings"]:
        return {"outcome": "silent", "detail": f"only a warning: {out['warnings'][0][:150]}", "seconds": seconds}
    return {"outcome": "silent", "detail": "accepted" + (", wrong result" if out["wrong"] else ""),
            "seconds": seconds}


# -- the workspace -------------------------------------------------------------------------------------------------
def make_template(template: Path, env: dict[str, str]) -> None:
    """runs/: a finished GMP run, a GraNet run interrupted at step 3, a finished 1-round lottery run."""
    template.mkdir(parents=True)
    done = _run(train("--method", "gmp", "--no-baseline", "--update-every", "2", "--seed", "0"), template, env, 300)
    assert done["code"] == 0, done["stderr"]
    interrupt = textwrap.dedent(f"""
        import os
        from sparsetrain.experiment import ExperimentConfig, Trainer, TrainerCallback, TrainingInterrupted
        class Stop(TrainerCallback):
            def on_step(self, trainer):
                if trainer.step == 3:
                    os.kill(os.getpid(), 2)
        config = ExperimentConfig.from_yaml({TINY_YAML!r})
        try:
            Trainer(config, "runs", callback=Stop(), plots=False).fit()
        except TrainingInterrupted:
            pass
        """)
    subprocess.run([sys.executable, "-c", interrupt], cwd=template, env=env, check=True, capture_output=True)
    lottery = _run(["lottery", *RECIPE, "--runs-dir", "runs", "--rounds", "1", "--controls"], template, env, 300)
    assert lottery["code"] == 0, lottery["stderr"]
    for path in sorted(template.glob("runs/*/seed_0")):
        if (path / "summary.json").exists() and path.parent.name.startswith("gmp-"):
            RUNS["finished"] = str(path.relative_to(template))
        elif path.parent.name.startswith("granet-"):
            RUNS["interrupted"] = str(path.relative_to(template))
        elif path.parent.name.startswith("lottery-"):
            RUNS["lottery"] = str(path.relative_to(template))
    assert set(RUNS) == {"finished", "interrupted", "lottery"}, RUNS


def run_case(case: Case, template: Path, scratch: Path, env: dict[str, str], safe: bool = False) -> dict:
    if safe and case.dangerous:
        return {"name": case.name, "outcome": "skipped", "detail": f"--safe: {case.dangerous} if accepted"}
    work = Path(tempfile.mkdtemp(dir=scratch))
    try:
        if case.argv is None and case.code is not None:
            result = run_api_case(case, work, env)
        else:
            result = run_cli_case(case, template, work, env)
    except Exception as exc:  # a broken case is reported, not hidden
        result = {"outcome": "harness error", "detail": f"{type(exc).__name__}: {exc}"[:200]}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return {"name": case.name, **result}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", type=Path, default=ROOT / "src", help="the source tree to attack (default: this "
                                                                       "checkout's src)")
    parser.add_argument("--jobs", type=int, default=2, help="cases run side by side (default: 2)")
    parser.add_argument("--only", nargs="+", default=None, help="run only cases whose name contains one of these "
                                                                 "texts")
    parser.add_argument("--safe", action="store_true", help="skip the cases that may harm the machine when the "
                                                             "code under test accepts them (for old code)")
    parser.add_argument("--no-doc", action="store_true", help="print only; do not write docs/benchmarks")
    parser.add_argument("--json", type=Path, default=None, help="also write the results as JSON here")
    parser.add_argument("--update", type=Path, default=None,
                        help="the --json of an earlier full pass: the cases run now replace theirs, and the table "
                             "(which names the cases rerun) covers them all")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="adversarial-"))
    scratch.chmod(0o755)
    env = _env(args.src.resolve(), scratch / "cache")
    started = time.monotonic()
    try:
        template = scratch / "template"
        make_template(template, env)
        cases = cli_cases() + api_cases()
        if args.only:
            cases = [c for c in cases if any(text in c.name for text in args.only)]
        with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
            results = list(pool.map(lambda c: run_case(c, template, scratch, env, args.safe), cases))
    finally:
        for mount in sorted(scratch.rglob("*"), reverse=True):
            if mount.is_mount():
                subprocess.run(["umount", "-l", str(mount)], capture_output=True)
        shutil.rmtree(scratch, ignore_errors=True)
    if args.update:
        fresh = {r["name"]: {**r, "rerun": True} for r in results}
        results = [fresh.get(r["name"], r) for r in json.loads(args.update.read_text())]
    rerun = [r["name"] for r in results if r.get("rerun")]
    counts = Counter(r["outcome"] for r in results)
    rows = [(i + 1, r["name"], r["outcome"], r.get("detail", "").replace("|", "/").replace("\n", " "))
            for i, r in enumerate(results)]
    summary = ", ".join(f"{counts.get(k, 0)} {k}" for k in OUTCOMES if counts.get(k)) + \
        (f", {counts['harness error']} harness errors" if counts.get("harness error") else "")
    print(f"{len(results)} cases in {time.monotonic() - started:.0f} s: {summary}")
    for number, name, outcome, detail in rows:
        if outcome != "ok":
            print(f"  {number:3d} {outcome:9s} {name}: {detail}")
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
    if not args.no_doc:
        sys.path.insert(0, str(ROOT / "benchmarks"))
        from _common import table, write_doc

        note = (f"A full pass (`python benchmarks/adversarial.py --json FILE`), then the cases named here rerun after "
                f"fixes (this command, `--update FILE`): {'; '.join(rerun)}.\n\n"
                if rerun else "")
        body = (f"{len(results)} cases: {summary}.\n\n" + note + __doc__.split("\n\n")[1].replace("\n", " ") +
                "\n\n" + table(["#", "case", "outcome", "detail"], rows))
        write_doc("adversarial", "Adversarial pass: bad inputs, broken files, faults, API misuse", body)
    return 0


if __name__ == "__main__":
    sys.exit(main())
