"""The on-disk cache of quantized weights: built once, then memory-mapped; damaged,
stale or foreign caches are rebuilt, never used; the settings are part of the key."""
from __future__ import annotations

import os
import shutil

import numpy as np
import pytest

from inference import quant_cache as qc
from inference.backends.cpu import CpuBackend
from inference.config import ModelConfig
from inference.formats import open_source
from inference.loader import load_model
from inference.quantize import quantize_weights
from inference.weights import QTensor, random_weights

from .conftest import ASSETS, DATA

MODEL = os.path.join(ASSETS, "stories260K.bin")
CONVERTED = os.path.join(DATA, "stories260K-converted")


@pytest.fixture()
def cached_source(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "model.bin"
    shutil.copy(MODEL, src)
    return str(src)


def _only_cache_file() -> str:
    files = [f for f in os.listdir(qc.cache_dir()) if f.endswith(".gguf")]
    assert len(files) == 1, files
    return os.path.join(qc.cache_dir(), files[0])


def _refuse_quantization(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("re-quantized although the cache is valid")
    monkeypatch.setattr(qc, "quantize_matrix", boom)


def _quantized(path: str, plan: str = "int8", gs: int = 64):
    return qc.quantized_weights(open_source(path), path, plan, gs)


def test_cache_is_built_once_then_memory_mapped(cached_source, monkeypatch):
    first = _quantized(cached_source)
    path = _only_cache_file()
    mtime = os.stat(path).st_mtime_ns
    _refuse_quantization(monkeypatch)
    second = _quantized(cached_source)
    assert os.stat(path).st_mtime_ns == mtime
    t = second.wq[0]
    assert isinstance(t, QTensor) and not t.q.flags.writeable and not t.q.flags.owndata  # views of the map
    for key, a in first.tensors.items():
        b = second.tensors[key]
        if isinstance(a, QTensor):
            np.testing.assert_array_equal(a.q, b.q)
            np.testing.assert_array_equal(a.s, b.s)
    ref = quantize_weights(open_source(cached_source).weights(), 64)
    np.testing.assert_array_equal(second.w2[3].q, ref.w2[3].q)


@pytest.mark.parametrize("damage", ["truncate", "trailer", "body", "middle_bit", "zeroed_page", "header", "garbage"])
def test_damaged_cache_is_rebuilt_never_used(cached_source, damage):
    good = _quantized(cached_source)
    path = _only_cache_file()
    with open(path, "rb") as f:
        original = f.read()
    data = bytearray(original)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "trailer":
        data[-10] ^= 0xFF
    elif damage == "body":
        data[300] ^= 0x55
    elif damage == "middle_bit":                    # one bit anywhere: the whole body is summed
        data[len(data) // 2 + 3] ^= 0x01
    elif damage == "zeroed_page":
        mid = (len(data) // 2) & ~4095
        data[mid:mid + 4096] = bytes(4096)
    elif damage == "header":
        data[4:8] = (7).to_bytes(4, "little")       # GGUF version
    else:
        data = bytearray(b"not a cache")
    # a new inode, as a copy or a crashed writer would leave: rewriting the mapped file in
    # place would SIGBUS the arrays still mapped from it (true of any mmap-based loader)
    with open(path + ".x", "wb") as f:
        f.write(bytes(data))
    os.replace(path + ".x", path)
    again = _quantized(cached_source)
    with open(_only_cache_file(), "rb") as f:
        assert f.read() == original
    np.testing.assert_array_equal(again.w3[2].q, good.w3[2].q)


def test_changed_source_gets_a_new_cache_and_the_stale_one_goes(cached_source):
    _quantized(cached_source)
    old = _only_cache_file()
    st = os.stat(cached_source)
    os.utime(cached_source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    _quantized(cached_source)
    new = _only_cache_file()
    assert new != old and not os.path.exists(old)


def test_a_rewrite_with_the_same_size_and_mtime_is_noticed(cached_source):
    """The key covers sampled content, not only size and mtime."""
    first = _quantized(cached_source)
    st = os.stat(cached_source)
    data = bytearray(open(cached_source, "rb").read())
    off = len(data) // 2 & ~3
    data[off:off + 4] = np.float32(7.0).tobytes()     # one weight changed mid-file
    with open(cached_source, "r+b") as f:
        f.write(bytes(data))
    os.utime(cached_source, ns=(st.st_atime_ns, st.st_mtime_ns))
    second = _quantized(cached_source)
    changed = [k for k, t in first.tensors.items() if isinstance(t, QTensor)
               and not np.array_equal(t.q, second.tensors[k].q)]
    assert changed, "a stale cache was used"


def test_group_size_and_plan_are_cache_settings(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = ModelConfig(dim=128, hidden_dim=256, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=64, seq_len=16)
    from tests.test_formats_gguf_blocks import write_gguf_model
    src = str(tmp_path / "src.gguf")
    write_gguf_model(src, random_weights(cfg, seed=5), "fp16")
    a = _quantized(src, "int8", 32)
    assert a.group_size == 32 and a.wq[0].s.shape == (128, 4)
    b = _quantized(src, "int8", 64)
    assert b.group_size == 64 and b.wq[0].s.shape == (128, 2)
    assert _only_cache_file()                       # the other setting's cache was replaced
    c = _quantized(src, "int4")
    assert c.weight_type == "q4_0"
    assert len([f for f in os.listdir(qc.cache_dir()) if f.endswith(".gguf")]) == 2   # one per plan


def test_killed_build_leaves_no_temp_file_forever(cached_source):
    os.makedirs(qc.cache_dir(), exist_ok=True)
    dead = os.path.join(qc.cache_dir(), "model.abc.0123.int8.gguf.999999999.tmp")   # no such pid
    with open(dead, "wb") as f:
        f.write(b"\0" * 1000)
    _quantized(cached_source)
    assert not os.path.exists(dead)


@pytest.mark.parametrize("name", ["hf", "meta2", "stories260K.gguf"])
def test_int8_from_other_formats_is_cached_and_matches(name, tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    path = os.path.join(CONVERTED, name)
    fp32 = load_model(path, quant="none")
    calls: list[tuple[int, int]] = []
    first = load_model(path, quant="int8", progress=lambda d, t: calls.append((d, t)))
    assert first.weights.weight_type == "int8" and calls and calls[-1][0] == calls[-1][1]
    files = os.listdir(tmp_path / "llama-chat" / "quant")
    assert len(files) == 1
    calls.clear()
    second = load_model(path, quant="int8", progress=lambda d, t: calls.append((d, t)))
    assert calls == []  # warm: mapped, not quantized again
    ref = quantize_weights(fp32.weights, 64)
    ids = [1, 403, 407, 261, 378]
    outs = []
    for w in (ref, first.weights, second.weights):
        b = CpuBackend(w)
        b.forward(ids, 0)
        outs.append(b.logits())
    np.testing.assert_array_equal(outs[0], outs[1])
    np.testing.assert_array_equal(outs[0], outs[2])
    assert second.tokenizer.encode("Once upon a time") == ids


def test_unwritable_cache_quantizes_in_memory_with_a_note(cached_source, tmp_path, monkeypatch, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    (ro / "llama-chat").write_text("a file where the cache dir should be")
    monkeypatch.setenv("XDG_CACHE_HOME", str(ro))
    w = _quantized(cached_source)
    assert w.weight_type == "int8"
    err = capsys.readouterr().err
    assert err.startswith("llama-chat: warning:") and "in memory" in err


def test_body_digest_sees_every_byte_and_chunk_order():
    rng = np.random.default_rng(3)
    body = 3 * qc._DIGEST_CHUNK + 13                  # several chunks and a ragged tail
    data = rng.integers(0, 256, body, dtype=np.uint8)
    ref = qc.body_digest(data, body)
    assert ref == qc.body_digest(data.copy(), body)
    for pos in (0, 1, qc._DIGEST_CHUNK + 7, body // 2, body - 1):
        bad = data.copy()
        bad[pos] ^= 0x80
        assert qc.body_digest(bad, body) != ref, pos
    swapped = data.copy()
    c = qc._DIGEST_CHUNK
    swapped[:c], swapped[c:2 * c] = data[c:2 * c].copy(), data[:c].copy()
    assert qc.body_digest(swapped, body) != ref
    big = rng.integers(0, 256, 5 * c + 5, dtype=np.uint8)
    one = qc.body_digest(big, big.size)
    old = qc._DIGEST_PARALLEL
    try:
        qc._DIGEST_PARALLEL = 0
        assert qc.body_digest(big, big.size) == one
    finally:
        qc._DIGEST_PARALLEL = old


def test_load_model_default_plan(cached_source):
    tok = os.path.join(ASSETS, "tok512.bin")
    m = load_model(cached_source, tok, "int8")
    assert m.weights.weight_type == "int8" and m.source_dtype == "fp32"
    assert _only_cache_file()
    assert load_model(cached_source, tok, None).weights.weight_type == "fp32"   # 260K params: stays fp32
