"""The build-and-load machinery of sparsetrain.native: real compiler, real shared object, cache and fallback."""

from __future__ import annotations

import ctypes

import pytest
import torch

from sparsetrain import native


@pytest.fixture
def fresh_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_failed", {})
    native.load_library.cache_clear()
    yield tmp_path
    native.load_library.cache_clear()


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")
def test_builds_caches_and_runs_a_kernel(fresh_cache):
    library = native.load_library("selftest")
    built = list((fresh_cache / "native").glob("selftest-*.so"))
    assert len(built) == 1
    x = torch.arange(5, dtype=torch.float32)
    y = torch.ones(5)
    library.selftest_axpy(ctypes.c_int64(5), ctypes.c_float(2.0), ctypes.c_void_p(x.data_ptr()),
                          ctypes.c_void_p(y.data_ptr()))
    assert y.tolist() == [1.0, 3.0, 5.0, 7.0, 9.0]
    # A second load in a fresh process-level cache reuses the built file instead of compiling again.
    mtime = built[0].stat().st_mtime_ns
    native.load_library.cache_clear()
    native.load_library("selftest")
    assert built[0].stat().st_mtime_ns == mtime


def test_disabled_by_environment(fresh_cache, monkeypatch):
    monkeypatch.setenv("SPARSETRAIN_NATIVE", "0")
    with pytest.raises(native.NativeUnavailable, match="SPARSETRAIN_NATIVE"):
        native.load_library("selftest")
    assert native.try_load("selftest") is None


def test_missing_compiler_is_reported(fresh_cache, monkeypatch):
    monkeypatch.setenv("CC", "no-such-compiler-xyz")
    with pytest.raises(native.NativeUnavailable, match="no C compiler"):
        native.load_library("selftest")


@pytest.fixture
def broken_source(tmp_path, monkeypatch):
    """A kernel directory holding ``broken.c``, which no compiler accepts."""
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    broken = tmp_path / "src"
    broken.mkdir()
    (broken / "broken.c").write_text("this is not C\n")
    monkeypatch.setattr(native, "_SOURCES", broken)
    return broken


def test_compile_error_is_reported_not_raised_as_oserror(fresh_cache, broken_source):
    with pytest.raises(native.NativeUnavailable, match="failed on broken.c"):
        native.load_library("broken")
    assert not list((fresh_cache / "native").glob("*.so"))


def test_unwritable_cache_is_reported(tmp_path, monkeypatch):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    monkeypatch.setenv("SPARSETRAIN_CACHE", str(blocker))
    native.load_library.cache_clear()
    try:
        if native.compiler() is None:
            pytest.skip("no C compiler on this machine")
        with pytest.raises(native.NativeUnavailable, match="SPARSETRAIN_CACHE"):
            native.load_library("selftest")
    finally:
        native.load_library.cache_clear()


def test_a_failed_build_is_not_retried(fresh_cache, broken_source, monkeypatch):
    calls = []
    real_run = native.subprocess.run
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: calls.append(a) or real_run(*a, **k))
    assert native.try_load("broken") is None
    assert native.try_load("broken") is None
    assert len(calls) == 1


def test_a_changed_header_rebuilds_the_sources_that_include_it(fresh_cache, tmp_path, monkeypatch):
    if native.compiler() is None:
        pytest.skip("no C compiler on this machine")
    sources = tmp_path / "src"
    sources.mkdir()
    (sources / "shared.h").write_text("#define SCALE 2.0f\n")
    (sources / "user.c").write_text('#include "shared.h"\nfloat user_scale(void) { return SCALE; }\n')
    monkeypatch.setattr(native, "_SOURCES", sources)
    library = native.load_library("user")
    library.user_scale.restype = ctypes.c_float
    assert library.user_scale() == 2.0
    (sources / "shared.h").write_text("#define SCALE 3.0f\n")
    native.load_library.cache_clear()
    library = native.load_library("user")
    library.user_scale.restype = ctypes.c_float
    assert library.user_scale() == 3.0
    assert len(list((fresh_cache / "native").glob("user-*.so"))) == 2


@pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")
def test_try_load_sets_the_signatures_once(fresh_cache):
    signatures = {"selftest_axpy": (None, [ctypes.c_int64, ctypes.c_float, ctypes.c_void_p, ctypes.c_void_p])}
    library = native.try_load("selftest", signatures)
    x, y = torch.ones(3), torch.zeros(3)
    library.selftest_axpy(3, 0.5, x.data_ptr(), y.data_ptr())  # plain Python numbers: converted by argtypes
    assert y.tolist() == [0.5, 0.5, 0.5]
    assert native.try_load("selftest", signatures) is library
