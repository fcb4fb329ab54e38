"""sparsetrain.atomic: every file is written whole or not at all, fsync'ed, and nothing else in src/ writes files."""

import ast
import json
import os
from pathlib import Path

import pytest

from sparsetrain import atomic

SRC = Path(__file__).resolve().parents[1] / "src" / "sparsetrain"


def test_writers_round_trip_create_directories_and_leave_no_temp_file(tmp_path):
    atomic.write_text("héllo\n", tmp_path / "a" / "b.txt")
    atomic.write_bytes(b"\x00\x01", tmp_path / "c.bin")
    atomic.write_json({"b": 1, "a": [1.5, None]}, tmp_path / "d.json", sort_keys=True)
    assert (tmp_path / "a" / "b.txt").read_text(encoding="utf-8") == "héllo\n"
    assert (tmp_path / "c.bin").read_bytes() == b"\x00\x01"
    assert (tmp_path / "d.json").read_text() == '{\n  "a": [\n    1.5,\n    null\n  ],\n  "b": 1\n}\n'
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["a", "b.txt", "c.bin", "d.json"]


def test_a_failed_write_keeps_the_old_file_and_removes_its_temporary(tmp_path):
    path = atomic.write_text("old", tmp_path / "f.txt")

    def fail(handle):
        handle.write(b"half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic.atomic_write(path, fail)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]
    with pytest.raises(TypeError):
        atomic.write_json({"x": object()}, path)
    assert path.read_text() == "old" and os.listdir(tmp_path) == ["f.txt"]


def test_keep_previous_and_directories(tmp_path):
    path = tmp_path / "ck"
    atomic.write_text("1", path)
    atomic.atomic_write(path, lambda h: h.write(b"2"), keep_previous=tmp_path / "ck.prev")
    assert path.read_text() == "2" and (tmp_path / "ck.prev").read_text() == "1"
    with pytest.raises(IsADirectoryError, match="is a directory"):
        atomic.write_text("x", tmp_path)


def test_the_file_and_its_directory_are_fsynced(tmp_path, monkeypatch):
    synced = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: synced.append(os.readlink(f"/proc/self/fd/{fd}")) or real(fd))
    path = tmp_path / "f.txt"
    atomic.write_text("x", path)
    assert len(synced) == 2 and synced[0].endswith(".tmp") and synced[1] == str(tmp_path)
    synced.clear()
    atomic.append_line("a", tmp_path / "log.jsonl")
    assert synced == [str(tmp_path / "log.jsonl")]
    synced.clear()
    (tmp_path / "built").write_bytes(b"so")
    atomic.replace_durably(tmp_path / "built", tmp_path / "lib.so")
    assert synced == [str(tmp_path / "built"), str(tmp_path)] and (tmp_path / "lib.so").read_bytes() == b"so"


def test_append_line_and_remove_temp_files(tmp_path):
    atomic.append_line('{"epoch": 1}', tmp_path / "m.jsonl")
    atomic.append_line('{"epoch": 2}', tmp_path / "m.jsonl")
    assert [json.loads(x)["epoch"] for x in (tmp_path / "m.jsonl").read_text().splitlines()] == [1, 2]
    (tmp_path / ".checkpoint.pt.abc123.tmp").write_bytes(b"cut short")
    (tmp_path / "keep.tmp").write_bytes(b"not ours: no leading dot")
    assert [p.name for p in atomic.remove_temp_files(tmp_path)] == [".checkpoint.pt.abc123.tmp"]
    assert sorted(os.listdir(tmp_path)) == ["keep.tmp", "m.jsonl"]


def test_copy_file(tmp_path):
    (tmp_path / "a").write_bytes(b"payload" * 1000)
    atomic.copy_file(tmp_path / "a", tmp_path / "sub" / "b")
    assert (tmp_path / "sub" / "b").read_bytes() == b"payload" * 1000
    assert os.listdir(tmp_path / "sub") == ["b"]


def test_write_figure_writes_the_bytes_savefig_writes(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2), dpi=50)
    FigureCanvasAgg(fig)
    fig.subplots().plot([0, 1], [1, 0])
    fig.savefig(tmp_path / "direct.png", dpi=50)
    atomic.write_figure(fig, tmp_path / "atomic.png", dpi=50)
    assert (tmp_path / "atomic.png").read_bytes() == (tmp_path / "direct.png").read_bytes()
    atomic.write_figure(fig, tmp_path / "f.svg")
    assert (tmp_path / "f.svg").read_text().lstrip().startswith("<?xml")


# Calls that write a file, and the places allowed to make them: each writes into a handle atomic_write opened,
# except the rename of a damaged checkpoint when a run directory is set up (no bytes written).
_METHODS = {"write_text", "write_bytes", "savefig", "rename", "touch"}
_FUNCTIONS = {"torch.save", "os.replace", "os.rename", "shutil.move", "shutil.copy", "shutil.copyfile", "json.dump",
              "np.save", "np.savez", "np.savez_compressed", "safetensors.torch.save_file"}
_ALLOWED = {("atomic.py", "*"), ("checkpoint_io.py", "torch.save"), ("data/cache.py", "np.savez_compressed"),
            ("experiment/run_setup.py", "os.replace"),
            ("cli/__init__.py", "open")}  # os.devnull as stdout after a broken pipe: no file is written


def _dotted(node: ast.AST) -> str:
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    return node.id if isinstance(node, ast.Name) else "?"


def _file_writes(path: Path) -> list[tuple[str, int]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if not isinstance(node, ast.Call):
            continue
        name = _dotted(node.func)
        if name in _FUNCTIONS:
            found.append((name, node.lineno))
        elif isinstance(node.func, ast.Attribute) and (node.func.attr in _METHODS or (
                node.func.attr == "replace" and len(node.args) == 1 and name != "dataclasses.replace")):  # Path.replace
            found.append((node.func.attr, node.lineno))
        elif name == "open" and len(node.args) > 1 and isinstance(node.args[1], ast.Constant) \
                and set(str(node.args[1].value)) & set("wax+"):
            found.append(("open", node.lineno))
    return found


def test_the_scan_finds_file_writes(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os, torch\nPath('a').write_text('x')\ntorch.save({}, 'b')\nos.replace('c', 'd')\n"
                      "open('e', 'w')\nfig.savefig('f.png')\nwrite_text('ok', 'g')\nopen('h')\np.replace(q)\n"
                      "'a'.replace('b', 'c')\n")
    assert [name for name, _ in _file_writes(sample)] == ["write_text", "torch.save", "os.replace", "open", "savefig",
                                                          "replace"]


def test_no_module_but_atomic_writes_files():
    offenders = []
    for path in sorted(SRC.rglob("*.py")):
        rel = path.relative_to(SRC).as_posix()
        for name, line in _file_writes(path):
            if (rel, "*") not in _ALLOWED and (rel, name) not in _ALLOWED:
                offenders.append(f"{rel}:{line} {name}")
    assert offenders == [], "write files with sparsetrain.atomic: " + ", ".join(offenders)


def test_written_files_get_the_mode_open_would_give_them(tmp_path):
    import os
    import stat

    from sparsetrain.atomic import write_text

    plain = tmp_path / "plain.txt"
    plain.write_text("x")
    atomic = write_text("x", tmp_path / "atomic.txt")
    assert stat.S_IMODE(os.stat(atomic).st_mode) == stat.S_IMODE(os.stat(plain).st_mode)
