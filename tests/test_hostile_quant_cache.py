"""A damaged, foreign or hostile quantized-weights cache is never used: whatever sits at
the cache path (a flipped bit anywhere, a lying trailer, a FIFO, a directory, a device),
loading rebuilds or quantizes in memory and gives the weights a fresh quantization gives."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inference import quant_cache as qc
from inference.formats import open_source

from .hostile import FORMATS, LIES, budget, flip, overwrite, packed_lie

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    """A copy of the tiny model, its cache file's path and bytes, and the right int8 weights."""
    d = tmp_path_factory.mktemp("qc")
    os.environ["XDG_CACHE_HOME"] = str(d / "cache")
    try:
        src = str(d / "tiny.bin")
        shutil.copy(os.path.join(FORMATS, "tiny.bin"), src)
        w = qc.quantized_weights(open_source(src), src, "int8", 32)
        files = [f for f in os.listdir(qc.cache_dir()) if f.endswith(".gguf")]
        assert len(files) == 1
        path = os.path.join(qc.cache_dir(), files[0])
        yield src, path, open(path, "rb").read(), {k: (t.q.copy(), t.s.copy()) for k, t in w.tensors.items()
                                                    if hasattr(t, "q")}
    finally:
        os.environ.pop("XDG_CACHE_HOME", None)


def _check(built, monkeypatch) -> None:
    src, path, _, want = built
    monkeypatch.setenv("XDG_CACHE_HOME", os.path.dirname(os.path.dirname(os.path.dirname(path))))
    with budget(20):
        w = qc.quantized_weights(open_source(src), src, "int8", 32)
    for k, (q, s) in want.items():
        np.testing.assert_array_equal(w.tensors[k].q, q)
        np.testing.assert_array_equal(w.tensors[k].s, s)


def _replace(path: str, data: bytes) -> None:
    """A new inode at the path (rewriting a mapped file in place would SIGBUS its views)."""
    with open(path + ".new", "wb") as f:
        f.write(data)
    os.replace(path + ".new", path)


@given(data=st.data())
@FUZZ
def test_fuzzed_cache_files_are_rebuilt(built, monkeypatch, data):
    src, path, raw, _ = built
    kind = data.draw(st.sampled_from(["truncate", "flip", "trailer-lie", "append"]))
    if kind == "truncate":
        mutated = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        mutated = flip(raw, data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(0, 7)))
    elif kind == "trailer-lie":
        pos = len(raw) - qc._TRAILER.size + data.draw(st.integers(0, qc._TRAILER.size - 4))
        mutated = overwrite(raw, pos, packed_lie(data.draw(st.sampled_from(LIES)), "<I"))
    else:
        mutated = raw + bytes(data.draw(st.integers(1, 100)))
    _replace(path, mutated)
    _check(built, monkeypatch)
    assert open(path, "rb").read() == raw   # rebuilt, byte for byte


@pytest.mark.parametrize("kind", ["fifo", "directory", "dev-zero", "dangling", "empty", "unreadable"])
def test_whatever_sits_at_the_cache_path(built, monkeypatch, capsys, kind):
    src, path, raw, _ = built
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.remove(path)
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "directory":
        os.mkdir(path)
        open(os.path.join(path, "x"), "w").close()
    elif kind == "dev-zero":
        os.symlink("/dev/zero", path)
    elif kind == "dangling":
        os.symlink(path + ".nowhere", path)
    elif kind == "empty":
        open(path, "w").close()
    else:
        _replace(path, raw[:100])
        os.chmod(path, 0)
    _check(built, monkeypatch)
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if kind == "directory":  # cannot be replaced: quantized in memory, with a one-line note
        assert err.startswith("llama-chat: warning:") and len(err.strip().splitlines()) == 1
        shutil.rmtree(path)
        _check(built, monkeypatch)
    assert open(path, "rb").read() == raw


def test_stale_temp_files_are_removed(built, monkeypatch):
    src, path, raw, _ = built
    dead = f"{path}.999999999.tmp"
    with open(dead, "wb") as f:
        f.write(b"\0" * 1000)
    os.remove(path)
    _check(built, monkeypatch)
    assert not os.path.exists(dead)
