"""Every file sparsetrain writes is written here: atomically, and durably.

A write goes to a temporary file in the target's directory (``.<name>.<random>.tmp``), which is flushed and
``fsync``'ed, then renamed over the target with ``os.replace`` (atomic on POSIX and Windows), and the directory
is ``fsync``'ed so the rename itself survives a power cut. A reader sees the old file or the new one, never a
half-written one, whatever kills the process (even SIGKILL); a crash leaves at most a temporary file, which
:func:`remove_temp_files` clears.

The one exception is a log that grows line by line (``metrics.jsonl``, ``topology.jsonl``): :func:`append_line`
appends (and fsyncs, unless the caller syncs later with :func:`sync_file`), and its reader drops a torn last line.

Test hook: the environment variable ``SPARSETRAIN_TEST_WRITE_DELAY`` (seconds) makes every atomic write sleep
between its temporary file and the rename, so crash tests can kill a process inside that window.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO

__all__ = ["TEMP_SUFFIX", "WRITE_DELAY_ENV", "append_line", "atomic_write", "copy_file", "remove_temp_files",
           "replace_durably", "sync_file", "write_bytes", "write_figure", "write_json", "write_text"]

#: Test-only: seconds each atomic write sleeps between its temporary file and the rename.
WRITE_DELAY_ENV = "SPARSETRAIN_TEST_WRITE_DELAY"
#: Suffix of the temporary files (``.<target name>.<random>.tmp``).
TEMP_SUFFIX = ".tmp"


def _umask_mode() -> int:
    """0666 less the process umask: the mode a file created with ``open(path, "w")`` gets."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


_FILE_MODE = _umask_mode()


def _fsync_directory(directory: Path) -> None:
    """Make a rename durable; not possible on every platform (Windows), so best effort."""
    try:
        sync_file(directory)
    except OSError:
        pass


def replace_durably(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """Rename a finished file ``source`` over ``target``: fsync ``source``, ``os.replace``, fsync the directory.

    For files another program wrote (a compiler's output); Python writers use :func:`atomic_write`.
    """
    fd = os.open(source, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(source, target)
    _fsync_directory(Path(target).parent)


def atomic_write(path: str | os.PathLike[str], write: Callable[[BinaryIO], Any], *,
                 keep_previous: str | os.PathLike[str] | None = None) -> Path:
    """Write a file atomically: ``write(handle)`` into a temp file in the same directory, fsync, ``os.replace``.

    Args:
        path: the target file; its directory is created if missing.
        write: fills the open binary handle.
        keep_previous: if given, an existing target is renamed to this file just before the new one takes its
            place (one generation of history; a crash between the two renames leaves only this file).

    Returns:
        The target path.

    Raises:
        IsADirectoryError: ``path`` is a directory.
        OSError: the file system refused (no space left, read-only, permission denied...), named by the target's
            path, even where a writer (``torch.save``) wrapped it in another exception.
        Whatever else ``write`` raises; the target is then untouched and no temporary file is left behind.
    """
    target = Path(path)
    if target.is_dir():
        raise IsADirectoryError(f"path={str(target)!r} is a directory, expected a file path")
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=TEMP_SUFFIX, dir=target.parent)
    try:
        os.fchmod(fd, _FILE_MODE)  # mkstemp makes 0600; files get the mode open() would give them
        with os.fdopen(fd, "wb") as handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        delay = os.environ.get(WRITE_DELAY_ENV)
        if delay:
            time.sleep(float(delay))
        if keep_previous is not None and target.exists():
            os.replace(target, keep_previous)
        os.replace(tmp_name, target)
    except BaseException as exc:
        try:
            os.unlink(tmp_name)
        except FileNotFoundError:
            pass
        fault = _file_system_fault(exc, target, tmp_name)
        if fault is not None:
            raise fault from None
        raise
    _fsync_directory(target.parent)
    return target


def _file_system_fault(exc: BaseException, target: Path, tmp_name: str) -> OSError | None:
    """The OSError behind a failed write, named by the target (None: not a file-system fault, or already named).

    ``torch.save`` reports a full disk as ``RuntimeError: [enforce fail at inline_container.cc...]`` with the
    OSError only in its context; a failed ``write()`` names no file; a failed rename names the temporary file.
    """
    seen: BaseException | None = exc
    for _ in range(8):
        if seen is None or isinstance(seen, OSError):
            break
        seen = seen.__cause__ or seen.__context__
    if not isinstance(seen, OSError) or seen.errno is None:
        return None
    if seen is exc and seen.filename not in (None, tmp_name):
        return None
    return type(seen)(seen.errno, seen.strerror, str(target))


def write_bytes(data: bytes, path: str | os.PathLike[str]) -> Path:
    """Write ``data`` to ``path`` atomically; returns the path."""
    return atomic_write(path, lambda handle: handle.write(data))


def write_text(text: str, path: str | os.PathLike[str]) -> Path:
    """Write ``text`` (UTF-8) to ``path`` atomically; returns the path."""
    return write_bytes(text.encode("utf-8"), path)


def write_json(obj: Any, path: str | os.PathLike[str], *, sort_keys: bool = False,
               default: Callable[[Any], Any] | None = None) -> Path:
    """Write ``obj`` as indented JSON (two spaces, a final newline) to ``path`` atomically; returns the path.

    Args:
        obj: a JSON-able object.
        path: the target file.
        sort_keys: sort the keys of every object.
        default: converts values ``json`` cannot (see :func:`json.dumps`).
    """
    return write_text(json.dumps(obj, indent=2, sort_keys=sort_keys, default=default) + "\n", path)


def copy_file(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Copy the file ``source`` to ``path`` atomically; returns the path."""
    with open(source, "rb") as original:
        return atomic_write(path, lambda handle: shutil.copyfileobj(original, handle))


def write_figure(figure: Any, path: str | os.PathLike[str], **savefig: Any) -> Path:
    """Save a matplotlib figure to ``path`` atomically, in the format its suffix names; returns the path.

    Args:
        figure: a ``matplotlib.figure.Figure``.
        path: the target file (``.png``, ``.pdf``, ``.svg``...).
        **savefig: passed to ``figure.savefig`` (``dpi``...).
    """
    target = Path(path)
    return atomic_write(target, lambda handle: figure.savefig(handle, format=target.suffix.lstrip(".") or "png",
                                                              **savefig))


def append_line(line: str, path: str | os.PathLike[str], *, sync: bool = True) -> None:
    """Append ``line`` and a newline to ``path`` (created if missing) and fsync it.

    Appending is not atomic: a crash can leave a torn last line, which the file's reader must drop.

    Args:
        line: the text, without its newline.
        path: the file.
        sync: fsync now. False leaves the line in the operating system's cache (it survives the process being
            killed, not a power cut) for a caller that calls :func:`sync_file` before anything depends on it.
    """
    with open(path, "a", encoding="utf-8") as handle:
        handle.write(line + "\n")
        handle.flush()
        if sync:
            os.fsync(handle.fileno())


def sync_file(path: str | os.PathLike[str]) -> None:
    """fsync ``path`` if it exists (a file's lines appended with ``sync=False``, or a directory's entries)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def remove_temp_files(directory: str | os.PathLike[str]) -> list[Path]:
    """Delete the temporary files that writes cut short by a crash left in ``directory``.

    Args:
        directory: a directory written with :func:`atomic_write` and its wrappers.

    Returns:
        The files removed.
    """
    removed = []
    for stale in Path(directory).glob(f".*{TEMP_SUFFIX}"):
        try:
            stale.unlink()
            removed.append(stale)
        except FileNotFoundError:  # another process cleaned it
            pass
    return removed
