"""int8 (W8A32) quantization: exactness, the llama2.c v2 file, the on-disk cache, and
`llama-chat quantize` / `llama-chat bench` end to end on tiny models."""
from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest

from app.cli import main
from inference import quantize as qz
from inference.backends.cpu import CpuBackend
from inference.checkpoint import load_llama2c
from inference.config import SHAPES, ModelConfig
from inference.quantize import choose_group_size, quantize_cached, quantize_q8, quantize_weights, resolve_quant
from inference.weights import random_weights

from .conftest import ASSETS

MODEL = os.path.join(ASSETS, "stories260K.bin")


# ------------------------------------------------------------------------- quantize_q8

def test_quantize_q8_is_symmetric_per_group_and_dequantizes_exactly():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 5, 128)).astype(np.float32)
    w[1, 2, 64:] = 0.0                       # an all-zero group
    t = quantize_q8(w, 32)
    assert t.q.dtype == np.int8 and t.q.shape == w.shape and t.s.shape == (3, 5, 4)
    assert np.abs(t.q.astype(np.int32)).max() <= 127
    groups = w.reshape(3, 5, 4, 32)
    np.testing.assert_array_equal(t.s, np.abs(groups).max(-1) / np.float32(127))
    assert t.s[1, 2, 2] == 0 and t.s[1, 2, 3] == 0 and not t.q[1, 2, 64:].any()
    deq = t.dequantize()
    manual = t.q.reshape(3, 5, 4, 32).astype(np.float32) * t.s[..., None]
    np.testing.assert_array_equal(deq, manual.reshape(w.shape))   # value = scale x int8, exactly
    assert (np.abs(deq - w).reshape(3, 5, 4, 32) <= t.s[..., None] * 0.5 + 1e-7).all()
    # every group's largest magnitude maps to +-127
    assert (np.abs(t.q.reshape(3, 5, 4, 32)).max(-1)[t.s > 0] == 127).all()


def test_quantize_q8_chunked_equals_single_pass_and_accepts_fp16(monkeypatch):
    rng = np.random.default_rng(1)
    w = rng.standard_normal((37, 96)).astype(np.float32)
    whole = quantize_q8(w, 32)
    monkeypatch.setattr(qz, "_CHUNK_ELEMS", 96 * 5)         # 5 rows per chunk
    chunked = quantize_q8(w, 32)
    np.testing.assert_array_equal(whole.q, chunked.q)
    np.testing.assert_array_equal(whole.s, chunked.s)
    h = quantize_q8(w.astype(np.float16), 32)
    assert h.q.shape == w.shape and h.s.dtype == np.float32
    with pytest.raises(ValueError):
        quantize_q8(w, 64)                                   # 64 does not divide 96


def test_choose_group_size_divides_every_input_width():
    for cfg in SHAPES.values():
        g = choose_group_size(cfg)
        assert g <= 64 and cfg.dim % g == 0 and cfg.hidden_dim % g == 0
    assert choose_group_size(SHAPES["stories110M"]) == 64
    assert choose_group_size(SHAPES["llama2-7b"], 32) == 32


def test_resolve_quant_policy():
    small = SimpleNamespace(config=SHAPES["stories15M"], weight_type="fp32")
    big = SimpleNamespace(config=SHAPES["stories110M"], weight_type="fp32")
    int8 = SimpleNamespace(config=SHAPES["stories15M"], weight_type="int8")
    assert resolve_quant(small, None) == "none" and resolve_quant(big, None) == "int8"
    assert resolve_quant(small, "int8") == "int8" and resolve_quant(big, "none") == "none"
    assert resolve_quant(int8, "none") == "int8"             # an int8 file stays int8


# --------------------------------------------------------------- the v2 file + accuracy

@pytest.fixture(scope="module")
def v2_file(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("q8") / "stories260K-q8.bin")
    assert main(["quantize", MODEL, "-o", out]) == 0
    return out


def test_quantize_command_writes_v2_that_loads_with_the_same_config(v2_file, default_model):
    w = load_llama2c(v2_file)
    assert w.weight_type == "int8" and w.config == default_model.config
    ref = quantize_weights(default_model.weights, 64)        # group size shrinks to 4 here
    assert w.group_size == ref.group_size == choose_group_size(default_model.config)
    for name in ("tok_embeddings", "wq", "wk", "w2", "w3"):
        got, want = getattr(w, name), getattr(ref, name)
        np.testing.assert_array_equal(got.q, want.q)
        np.testing.assert_array_equal(got.s, want.s)
        g = got.group_size
        manual = got.q.reshape(*got.q.shape[:-1], -1, g).astype(np.float32) * got.s[..., None]
        np.testing.assert_array_equal(got.dequantize(), manual.reshape(got.q.shape))
    # same bytes as the core's (in-memory) writer
    from inference.checkpoint import write_llama2c_v2
    other = v2_file + ".core.bin"
    write_llama2c_v2(other, ref)
    with open(v2_file, "rb") as a, open(other, "rb") as b:
        assert a.read() == b.read()


def test_quantize_output_walks_like_runq_c(v2_file, default_model):
    """Walk the file the way runq.c maps it (its own order and pointer arithmetic, not our
    reader): 256-byte header, fp32 norms, then per tensor int8 values followed by
    values/GS fp32 scales; the walk must end exactly at the end of the file."""
    import struct
    raw = open(v2_file, "rb").read()
    magic, version, dim, hidden, layers, heads, kv_heads, vocab, seq_len, shared, gs = \
        struct.unpack_from("<Ii7iBi", raw, 0)
    assert (magic, version) == (0x616B3432, 2)
    c = default_model.config
    assert (dim, hidden, layers, heads, kv_heads, vocab, seq_len, bool(shared)) == \
        (c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, c.vocab_size, c.seq_len, c.shared_classifier)
    off = 256 + 4 * (2 * layers * dim + dim)
    head_size = dim // heads
    sizes = [vocab * dim]                                          # q_tokens
    for each in (dim * heads * head_size, dim * kv_heads * head_size, dim * kv_heads * head_size,
                 heads * head_size * dim, dim * hidden, hidden * dim, dim * hidden):
        sizes += [each] * layers                                   # wq wk wv wo w1 w2 w3
    if not shared:
        sizes.append(dim * vocab)
    tensors = []
    for n in sizes:
        q = np.frombuffer(raw, np.int8, n, off)
        off += n
        s = np.frombuffer(raw, np.float32, n // gs, off)
        off += 4 * (n // gs)
        tensors.append((q, s))
    assert off == len(raw)
    ref = quantize_weights(default_model.weights, 64)
    np.testing.assert_array_equal(tensors[0][0], ref.tok_embeddings.q.reshape(-1))
    np.testing.assert_array_equal(tensors[1 + layers][1], ref.wk.s[0].reshape(-1))     # wk, layer 0
    np.testing.assert_array_equal(tensors[1 + 6 * layers - 1][0], ref.w2.q[-1].reshape(-1))


def test_int8_argmax_agrees_with_fp32_teacher_forced(v2_file, reference):
    be = CpuBackend(load_llama2c(v2_file))
    agree = total = 0
    for case in reference["cases"]:
        ids = [1] + case["ids_after_bos"]
        n_prompt = len(case["prompt_ids"])
        for pos in range(len(ids) - 1):
            be.forward([ids[pos]], pos)
            if pos + 1 >= n_prompt:                          # positions whose fp32 argmax is known
                agree += be.argmax() == ids[pos + 1]
                total += 1
    rate = agree / total
    print(f"int8 (group size {be._gs}) argmax agrees with fp32 greedy at {agree}/{total} = {100 * rate:.1f}% of positions")
    assert rate >= 0.95


def test_quantize_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing.bin")]) == 2
    bad = tmp_path / "junk.bin"
    bad.write_bytes(b"\x00" * 100)
    assert main(["quantize", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("llama-chat: error:") for e in err)


# ---------------------------------------------------------------------------- the cache

@pytest.fixture()
def cached_source(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    src = tmp_path / "model.bin"
    shutil.copy(MODEL, src)
    return str(src)


def _only_cache_file() -> str:
    files = [f for f in os.listdir(qz.cache_dir()) if f.endswith(".q8.bin")]
    assert len(files) == 1, files
    return os.path.join(qz.cache_dir(), files[0])


def _refuse_quantization(monkeypatch):
    def boom(*a, **k):
        raise AssertionError("re-quantized although the cache is valid")
    monkeypatch.setattr(qz, "quantize_q8", boom)


def test_cache_is_built_once_then_memory_mapped(cached_source, monkeypatch):
    fp = load_llama2c(cached_source)
    first = quantize_cached(fp, cached_source)
    path = _only_cache_file()
    mtime = os.stat(path).st_mtime_ns
    _refuse_quantization(monkeypatch)
    second = quantize_cached(fp, cached_source)
    assert os.stat(path).st_mtime_ns == mtime
    assert isinstance(second.wq.q.base, (np.ndarray, memoryview)) or second.wq.q.base is not None
    assert not second.wq.q.flags.writeable and not second.wq.s.flags.owndata   # views of the map
    for name in ("tok_embeddings", "wq", "w1", "w2"):
        np.testing.assert_array_equal(getattr(first, name).q, getattr(second, name).q)
        np.testing.assert_array_equal(getattr(first, name).s, getattr(second, name).s)
    assert second.config == fp.config


@pytest.mark.parametrize("damage", ["truncate", "trailer", "body", "middle_bit", "zeroed_page", "header", "garbage"])
def test_damaged_cache_is_rebuilt_never_used(cached_source, damage):
    fp = load_llama2c(cached_source)
    good = quantize_cached(fp, cached_source)
    path = _only_cache_file()
    with open(path, "rb") as f:
        original = f.read()
    data = bytearray(original)
    if damage == "truncate":
        data = data[: len(data) // 2]
    elif damage == "trailer":
        data[-10] ^= 0xFF
    elif damage == "body":
        data[256 + 40] ^= 0x55
    elif damage == "middle_bit":                    # one bit anywhere: the whole body is summed
        data[len(data) // 2 + 3] ^= 0x01
    elif damage == "zeroed_page":
        mid = (len(data) // 2) & ~4095
        data[mid:mid + 4096] = bytes(4096)
    elif damage == "header":
        data[8:12] = (999).to_bytes(4, "little")    # dim
    else:
        data = bytearray(b"not a cache")
    # a new inode, as a copy or a crashed writer would leave: rewriting the mapped file in
    # place would SIGBUS the arrays still mapped from it (true of any mmap-based loader)
    with open(path + ".x", "wb") as f:
        f.write(bytes(data))
    os.replace(path + ".x", path)
    again = quantize_cached(fp, cached_source)
    with open(_only_cache_file(), "rb") as f:
        assert f.read() == original
    np.testing.assert_array_equal(again.w3.q, good.w3.q)
    np.testing.assert_array_equal(again.attn_norm, good.attn_norm)


def test_changed_source_gets_a_new_cache_and_the_stale_one_goes(cached_source):
    fp = load_llama2c(cached_source)
    quantize_cached(fp, cached_source)
    old = _only_cache_file()
    st = os.stat(cached_source)
    os.utime(cached_source, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    quantize_cached(fp, cached_source)
    new = _only_cache_file()
    assert new != old and not os.path.exists(old)


def test_group_size_is_a_cache_setting(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    cfg = ModelConfig(dim=128, hidden_dim=256, n_layers=1, n_heads=4, n_kv_heads=4, vocab_size=64, seq_len=16)
    w = random_weights(cfg, seed=5)
    src = tmp_path / "src.bin"
    src.write_bytes(b"stands in for the fp32 file" * 10)
    a = quantize_cached(w, str(src), 32)
    assert a.group_size == 32 and a.wq.s.shape == (1, 128, 4)
    b = quantize_cached(w, str(src), 64)
    assert b.group_size == 64 and b.wq.s.shape == (1, 128, 2)
    assert _only_cache_file()                       # the other setting's cache was replaced
    np.testing.assert_array_equal(quantize_cached(w, str(src), 64).w2.q, b.w2.q)
    assert main(["generate", "--group-size", "0", "-n", "1"]) == 2
    assert "group size must be at least 1" in capsys.readouterr().err


def test_load_model_int8_goes_through_the_cache(cached_source, default_model):
    from inference.loader import load_model
    tok = os.path.join(ASSETS, "tok512.bin")
    m = load_model(cached_source, tok, "int8")
    assert m.weights.weight_type == "int8" and m.source_dtype == "fp32"
    assert _only_cache_file()
    assert load_model(cached_source, tok, None).weights.weight_type == "fp32"   # 260K params: stays fp32


# ---------------------------------------------------------------------------- bench

def test_bench_json_on_a_tiny_random_shape(capsys):
    rc = main(["bench", "--random", "stories260K", "--quant", "int8", "--prompt-tokens", "8",
               "--gen-tokens", "8", "--repeat", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("decode_tok_s", "prefill_tok_s", "ttft_s", "load_s", "peak_rss_mb", "weight_bytes", "bandwidth_gb_s"):
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    assert res["weight_type"] == "int8" and len(res["decode_runs_tok_s"]) == 2


def test_bench_model_reports_cold_and_warm_load(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rc = main(["bench", "--model", MODEL, "--quant", "int8", "--prompt-tokens", "4", "--gen-tokens", "4",
               "--repeat", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["load_cold_s"] > 0 and res["load_s"] > 0 and res["weight_type"] == "int8"
    assert os.listdir(tmp_path) == []                         # the user's cache is untouched


def test_bench_bad_input_is_one_line(capsys):
    assert main(["bench", "--random", "stories260K", "--prompt-tokens", "500", "--gen-tokens", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "context" in err[0]


def test_separate_classifier_random_model_quantizes_and_runs():
    cfg = ModelConfig(dim=64, hidden_dim=96, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50,
                      seq_len=32, shared_classifier=False)
    w = random_weights(cfg, seed=3, scale=0.1)
    q = quantize_weights(w, 32)
    assert q.output is not q.tok_embeddings and q.output.group_size == 32
    a, b = CpuBackend(w), CpuBackend(q)
    a.forward([1, 2, 3], 0)
    b.forward([1, 2, 3], 0)
    assert np.abs(a.logits() - b.logits()).max() < 0.05 * np.abs(a.logits()).max() + 1e-3


def test_body_digest_sees_every_byte_and_chunk_order():
    rng = np.random.default_rng(3)
    body = 3 * qz._DIGEST_CHUNK + 13                  # several chunks and a ragged tail
    data = rng.integers(0, 256, body, dtype=np.uint8)
    ref = qz.body_digest(data, body)
    assert ref == qz.body_digest(data.copy(), body)
    for pos in (0, 1, qz._DIGEST_CHUNK + 7, body // 2, body - 1):
        bad = data.copy()
        bad[pos] ^= 0x80
        assert qz.body_digest(bad, body) != ref, pos
    swapped = data.copy()
    c = qz._DIGEST_CHUNK
    swapped[:c], swapped[c:2 * c] = data[c:2 * c].copy(), data[:c].copy()
    assert qz.body_digest(swapped, body) != ref
    # the two-thread path computes the same digest as the one-thread path
    big = rng.integers(0, 256, 5 * c + 5, dtype=np.uint8)
    one = qz.body_digest(big, big.size)
    old = qz._DIGEST_PARALLEL
    try:
        qz._DIGEST_PARALLEL = 0
        assert qz.body_digest(big, big.size) == one
    finally:
        qz._DIGEST_PARALLEL = old


def test_random_int8_weights_are_drawn_without_an_fp32_copy():
    from inference.weights import random_weights_q8
    cfg = ModelConfig(dim=128, hidden_dim=320, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=16,
                      shared_classifier=False)
    w = random_weights_q8(cfg, 64, seed=1)
    w.check_shapes()
    assert w.weight_type == "int8" and w.group_size == 64
    for name in ("tok_embeddings", "wq", "wk", "w2", "output"):
        t = getattr(w, name)
        assert t.q.dtype == np.int8 and t.s.dtype == np.float32, name
    deq = w.w1.dequantize()
    assert 0.01 < float(deq.std()) < 0.04              # about the fp32 draw's N(0, 0.02)
    assert w.output is not w.tok_embeddings
    with pytest.raises(ValueError, match="does not divide"):
        random_weights_q8(cfg, 48)
    b = CpuBackend(w)
    b.forward([1, 2, 3], 0)
    assert np.isfinite(b.logits()).all()
