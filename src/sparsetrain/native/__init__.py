"""Small C kernels compiled on first use, loaded with :mod:`ctypes`.

Two hot paths cannot be made fast from Python with stock PyTorch ops, because each torch op is another pass over
memory: the masked optimizer step (masking gradients costs a full extra pass next to the optimizer's own) and the
sparse-times-dense product of a pruned Linear layer (torch's CSR matmul is several times short of what the sparsity
allows). Their C sources ship in this package (``*.c``, with the headers they share, ``*.h``); :func:`load_library`
compiles one with the system C compiler the first time it is needed (about a second), caches the shared object per
source (headers included), compiler and CPU, and loads it. No torch headers are involved, so there is nothing to
build at install time.

Everything that uses a kernel has a pure-PyTorch path with the same results, used when the kernel is unavailable:
no C compiler, a compile error, a platform other than Linux/macOS, or ``SPARSETRAIN_NATIVE=0`` in the environment.
The reason is logged once at INFO level.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Mapping, Sequence
from functools import lru_cache
from pathlib import Path
from typing import Any

from ..atomic import replace_durably

__all__ = ["NativeUnavailable", "Signature", "cache_dir", "compiler", "load_library", "native_enabled", "try_load"]

logger = logging.getLogger(__name__)

_SOURCES = Path(__file__).resolve().parent
_FLAGS = ("-O3", "-march=native", "-ffp-contract=off", "-fno-math-errno", "-fopenmp", "-fPIC", "-shared", "-std=c11")
_LOCK = threading.Lock()


class NativeUnavailable(RuntimeError):
    """A kernel library could not be built or loaded (the pure-PyTorch path is used instead)."""


def native_enabled() -> bool:
    """False when ``SPARSETRAIN_NATIVE`` is set to 0/false/no/off."""
    value = os.environ.get("SPARSETRAIN_NATIVE")
    # Read on every kernel call (it can be switched at run time): the common cases return without string work.
    if value is None or value == "1":
        return True
    return value.strip().lower() not in {"0", "false", "no", "off"}


def compiler() -> str | None:
    """The C compiler: ``$CC`` if set, else the first of cc, gcc, clang on the PATH."""
    if os.environ.get("CC"):
        return shutil.which(os.environ["CC"])
    return next((found for name in ("cc", "gcc", "clang") if (found := shutil.which(name))), None)


def cache_dir() -> Path:
    """Where built libraries live: ``$SPARSETRAIN_CACHE/native`` or ``~/.cache/sparsetrain/native``."""
    root = os.environ.get("SPARSETRAIN_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "sparsetrain")
    return Path(root) / "native"


def _cpu_signature() -> str:
    """CPU model and feature flags: ``-march=native`` code must not run on another CPU sharing the cache."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as handle:
            lines = [line for line in handle if line.startswith(("model name", "flags"))]
        return "".join(sorted(set(lines)))
    except OSError:
        return platform.processor() or platform.machine()


@lru_cache(maxsize=None)
def load_library(name: str) -> ctypes.CDLL:
    """Compile (once per source/compiler/CPU) and load ``native/<name>.c``.

    Raises:
        NativeUnavailable: native kernels are disabled, or there is no compiler, or the build failed.
    """
    if not native_enabled():
        raise NativeUnavailable("SPARSETRAIN_NATIVE=0")
    if not sys.platform.startswith(("linux", "darwin")):
        raise NativeUnavailable(f"native kernels are built on Linux and macOS only, not {sys.platform}")
    cc = compiler()
    if cc is None:
        raise NativeUnavailable("no C compiler found (set CC, or install gcc)")
    source = _SOURCES / f"{name}.c"
    # Every header counts: a source that includes one must be rebuilt when it changes.
    text = source.read_bytes() + b"".join(header.read_bytes() for header in sorted(_SOURCES.glob("*.h")))
    key = hashlib.sha256(text + cc.encode() + " ".join(_FLAGS).encode() + _cpu_signature().encode()).hexdigest()
    target = cache_dir() / f"{name}-{key[:16]}.so"
    with _LOCK:
        if not target.exists():
            _build(cc, source, target)
    try:
        return ctypes.CDLL(str(target))
    except OSError as error:
        raise NativeUnavailable(f"cannot load {target}: {error}") from error


def _build(cc: str, source: Path, target: Path) -> None:
    """Compile into a temporary file and rename it into place, so concurrent builders never see half a file."""
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
        os.close(handle)
    except OSError as error:
        raise NativeUnavailable(f"cannot write to {target.parent} (set SPARSETRAIN_CACHE): {error}") from error
    command = [cc, *_FLAGS, str(source), "-o", partial, "-lm"]
    logger.info("building native kernels: %s", " ".join(command))
    try:
        result = subprocess.run(command, capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise NativeUnavailable(f"{cc} failed on {source.name}: {result.stderr.strip()[-2000:]}")
        replace_durably(partial, target)
    except (OSError, subprocess.TimeoutExpired) as error:
        raise NativeUnavailable(f"cannot run {cc}: {error}") from error
    finally:
        if os.path.exists(partial):
            os.unlink(partial)


_failed: dict[str, str] = {}


#: A C function's ctypes signature: (restype, argtypes).
Signature = tuple[Any, Sequence[Any]]


def try_load(name: str, signatures: Mapping[str, Signature] | None = None) -> ctypes.CDLL | None:
    """:func:`load_library`, or None when unavailable; a failure is remembered (and logged once), never retried.

    The hot paths call this on every use, so a missing compiler must not be looked for, nor a broken build
    rerun, each time. ``SPARSETRAIN_NATIVE`` is read on every call, so it can be switched at run time.

    Args:
        name: the source ``native/<name>.c``.
        signatures: function name -> (restype, argtypes), set once on the loaded library.
    """
    if not native_enabled():
        return None
    if name in _failed:
        return None
    try:
        library = load_library(name)
    except NativeUnavailable as error:
        _failed[name] = str(error)
        logger.info("native kernels %r unavailable, using the PyTorch path: %s", name, error)
        return None
    if signatures and not library.__dict__.get("_sparsetrain_signed", False):
        for function, (restype, argtypes) in signatures.items():
            getattr(library, function).restype = restype
            getattr(library, function).argtypes = list(argtypes)
        library._sparsetrain_signed = True
    return library
