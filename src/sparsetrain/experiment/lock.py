"""One process per directory: an OS-level lock on a run (or study) directory while it is written.

A process that trains a run holds an exclusive ``flock`` on ``<dir>/.lock`` from before it writes the first
file until it is done. The kernel releases the lock when the process ends in any way (SIGKILL and power loss
included), so a killed run never blocks its own resume; a second process that asks for the lock while the first
holds it gets :class:`DirectoryLocked` at once, naming the directory and the holder's PID (written into the lock
file), and writes nothing.

The lock file is removed when the lock is released. A process that opened the file just before it was removed
would lock a file no longer in the directory; :meth:`DirectoryLock.acquire` checks that the file it locked is
still the one at the path and tries again otherwise, so two holders can never coexist.

POSIX only (``fcntl``); on other platforms the lock is a no-op with a logged warning.
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from types import TracebackType

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

__all__ = ["DirectoryLock", "DirectoryLocked", "LOCK_FILE"]

logger = logging.getLogger(__name__)

#: The lock file inside a locked directory.
LOCK_FILE = ".lock"


class DirectoryLocked(RuntimeError):
    """Another live process holds the directory's lock; the message names the directory and its PID."""


class DirectoryLock:
    """An exclusive, non-blocking, re-entrant lock on a directory (created if missing when acquired).

    Args:
        directory: the directory to lock.
        what: how the error names it, e.g. "run runs/granet-1a2b3c4d/seed_0".

    Usage::

        with DirectoryLock(run_dir, f"run {name}"):
            ...   # write the run's files
    """

    def __init__(self, directory: str | os.PathLike[str], what: str | None = None) -> None:
        self.directory = Path(directory)
        self.what = what or str(self.directory)
        self._fd: int | None = None
        self._depth = 0

    @property
    def path(self) -> Path:
        return self.directory / LOCK_FILE

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock (again, if this object holds it already).

        Raises:
            DirectoryLocked: another process holds it.
            OSError: the directory cannot be created or the lock file opened (read-only, no permission...).
        """
        if self._fd is not None:
            self._depth += 1
            return
        if fcntl is None:
            logger.warning("no fcntl on this platform: %s is not locked against other processes", self.what)
            self._depth += 1
            return
        self.directory.mkdir(parents=True, exist_ok=True)
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _read_pid(fd)
                os.close(fd)
                raise DirectoryLocked(f"{self.what} is in use by another process (PID {holder}); wait for it to "
                                      "finish or stop it, then run the command again") from None
            except BaseException:
                os.close(fd)
                raise
            try:
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)  # the holder removed the file between our open and our lock: take the new one
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd, self._depth = fd, 1

    def release(self) -> None:
        """Give the lock back (the last of nested acquires removes the lock file and unlocks)."""
        if self._depth == 0:
            return
        self._depth -= 1
        if self._depth or self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(fd)

    def __enter__(self) -> DirectoryLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, value: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.release()

    def __getstate__(self) -> dict[str, object]:  # a copy (deepcopy, pickle) never holds the lock
        return {"directory": self.directory, "what": self.what, "_fd": None, "_depth": 0}


def _read_pid(fd: int) -> str:
    """The PID the holder wrote into the lock file ("unknown" if it has not written it within 0.2 s)."""
    for _ in range(20):
        try:
            text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
        except OSError:
            text = ""
        if text.isdigit():
            return text
        time.sleep(0.01)
    return "unknown"
