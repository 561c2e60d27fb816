"""Quantizing float weights: int8 groups (W8A32) and Q4_0, the load plan, the llama2.c v2
file, and `llama-chat quantize` / `llama-chat bench` end to end on tiny models."""
from __future__ import annotations

import json
import os
import struct

import numpy as np
import pytest

from app.cli import main
from inference import quantize as qz
from inference.backends.cpu import CpuBackend
from inference.config import SHAPES, ModelConfig
from inference.formats.llama2c import load_llama2c
from inference.quantize import quantize_weights
from inference.quantize import choose_group_size, quantize_q4_0, quantize_q8, resolve_plan
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


def test_quantize_q4_0_is_ggml_q4_0_bit_for_bit():
    """Our int4 quantizer writes exactly the blocks gguf-py's reference Q4_0 quantizer does
    (an independent implementation of llama.cpp's quantize_row_q4_0_ref)."""
    gguf = pytest.importorskip("gguf")
    rng = np.random.default_rng(2)
    w = (rng.standard_normal((19, 256)) * rng.uniform(0.001, 10, (19, 1))).astype(np.float32)
    w[3, 32:64] = 0.0                          # an all-zero block: d = 0
    w[4, :32] = -5.0                           # the largest magnitude negative
    ours = quantize_q4_0(w)
    ref = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_0)
    np.testing.assert_array_equal(ours.data, ref.reshape(ours.data.shape))
    back = gguf.quants.dequantize(ours.data, gguf.GGMLQuantizationType.Q4_0)
    assert np.abs(back - w).max() <= np.abs(w).max() / 8 + 1e-6


def test_choose_group_size_divides_every_input_width():
    for cfg in SHAPES.values():
        g = choose_group_size(cfg)
        assert g <= 64 and cfg.dim % g == 0 and cfg.hidden_dim % g == 0 and cfg.q_dim % g == 0
    assert choose_group_size(SHAPES["stories110M"]) == 64
    assert choose_group_size(SHAPES["llama2-7b"], 32) == 32


def test_the_one_quantization_rule():
    small, big = SHAPES["stories15M"], SHAPES["stories110M"]
    assert resolve_plan(small, True, None) == "none" and resolve_plan(big, True, None) == "int8"
    assert resolve_plan(big, False, None) == "none"          # GGUF blocks are never re-quantized by default
    assert resolve_plan(small, True, "int4") == "int4" and resolve_plan(big, True, "none") == "none"
    with pytest.raises(Exception, match="unknown quantization"):
        resolve_plan(big, True, "int3")


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
    for name, layer in (("tok_embeddings", None), ("wq", 0), ("wk", 3), ("w2", 4), ("w3", 1)):
        got, want = w.get(name, layer), ref.get(name, layer)
        np.testing.assert_array_equal(got.q, want.q)
        np.testing.assert_array_equal(got.s, want.s)


def test_quantize_output_walks_like_runq_c(v2_file, default_model):
    """Walk the file the way runq.c maps it (its own order and pointer arithmetic, not our
    reader): 256-byte header, fp32 norms, then per tensor int8 values followed by
    values/GS fp32 scales; the walk must end exactly at the end of the file."""
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
    np.testing.assert_array_equal(tensors[1 + layers][1], ref.wk[0].s.reshape(-1))     # wk, layer 0
    np.testing.assert_array_equal(tensors[1 + 6 * layers - 1][0], ref.w2[-1].q.reshape(-1))


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
    print(f"int8 argmax agrees with fp32 greedy at {agree}/{total} = {100 * rate:.1f}% of positions")
    assert rate >= 0.95


def test_quantize_int4_writes_a_gguf_that_runs_like_its_dequantized_weights(tmp_path, reference, capsys):
    """stories260K's hidden width 172 is no multiple of 32, so int4 is refused in one line
    before any tensor is converted (by the quantize command and by a load alike); a random
    model of Q4_0-compatible widths round-trips through the GGUF it writes."""
    assert main(["quantize", MODEL, "--quant", "int4", "-o", str(tmp_path / "x.gguf")]) == 2
    assert main(["generate", "-m", MODEL, "--quant", "int4", "-p", "x", "-n", "1"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err == ["llama-chat: error: int4 (Q4_0) needs rows that are a multiple of 32 values; this model has 172"] * 2
    assert not (tmp_path / "x.gguf").exists()
    from tests.test_formats_gguf_blocks import write_gguf_model
    cfg = ModelConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, seq_len=32)
    w = random_weights(cfg, seed=4, scale=0.1)
    src = tmp_path / "f32.gguf"
    write_gguf_model(str(src), w, "fp32")
    out = tmp_path / "q4.gguf"
    assert main(["quantize", str(src), "--quant", "int4", "-o", str(out)]) == 0
    from inference.formats import open_source
    q = open_source(str(out)).weights()
    assert q.weight_type == "q4_0" and q.config.with_(norm_eps=cfg.norm_eps) == cfg   # eps is stored as f32
    np.testing.assert_array_equal(q.wq[1].data, quantize_q4_0(w.wq[1]).data)


def test_quantize_keeps_stored_blocks_and_refuses_a_source_with_nothing_to_quantize(tmp_path, capsys):
    """Blocks are never quantized again: an all-block file is refused (it used to be
    written unchanged under a 'Q4_0' label, or to fail with an internal error for int8);
    a mixed one becomes Q4_0 where it was float and keeps its blocks, which a llama2.c
    v2 file cannot hold."""
    from inference.formats import open_source
    from tests.test_formats_gguf_blocks import write_gguf_model
    cfg = ModelConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=96, seq_len=32)
    w = random_weights(cfg, seed=5, scale=0.1)
    blocks, mixed = tmp_path / "q8.gguf", tmp_path / "mixed.gguf"
    write_gguf_model(str(blocks), w, "q8_0")
    write_gguf_model(str(mixed), w, lambda name, layer: "q8_0" if name == "w2" else "fp16")
    out = tmp_path / "out"
    for quant in ("int8", "int4"):
        assert main(["quantize", str(blocks), "--quant", quant, "-o", str(out)]) == 2
    assert main(["quantize", str(mixed), "-o", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all("already quantized (q8_0): there is nothing to quantize" in e for e in err[:2])
    assert "holds q8_0 matrices, which a llama2.c v2 file cannot" in err[2]
    assert main(["quantize", str(mixed), "--quant", "int4", "-o", str(out)]) == 0
    assert "GGUF, Q4_0 (and the source's q8_0 blocks as they were)" in capsys.readouterr().err
    q = open_source(str(out))
    assert q.matrix_types() == {"q4_0": 13, "q8_0": 2}   # 6 a layer and the embedding; w2 kept
    np.testing.assert_array_equal(q.weights().w2[0].data, open_source(str(mixed)).weights().w2[0].data)


def test_quantize_command_bad_input_is_one_line(tmp_path, capsys):
    assert main(["quantize", str(tmp_path / "missing.bin")]) == 2
    bad = tmp_path / "junk.bin"
    bad.write_bytes(b"\x00" * 100)
    assert main(["quantize", str(bad)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("llama-chat: error:") for e in err)


# ---------------------------------------------------------------------------- bench

@pytest.mark.parametrize("quant", ["int8", "q4_0", "q4_k", "q6_k"])
def test_bench_json_on_a_tiny_random_shape(capsys, quant):
    rc = main(["bench", "--random", "stories260K" if quant == "int8" else "smollm2-135m", "--quant", quant,
               "--prompt-tokens", "8", "--gen-tokens", "8", "--repeat", "2", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    for key in ("decode_tok_s", "prefill_tok_s", "ttft_s", "load_s", "peak_rss_mb", "weight_bytes", "bandwidth_gb_s"):
        assert isinstance(res[key], (int, float)) and res[key] > 0, key
    assert quant in res["weight_type"].split("+") and len(res["decode_runs_tok_s"]) == 2
    assert res["cpu"].endswith(f"{os.cpu_count()} logical CPUs")   # figures say which machine made them


def test_bench_model_reports_cold_and_warm_load(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    rc = main(["bench", "--model", MODEL, "--quant", "int8", "--prompt-tokens", "4", "--gen-tokens", "4",
               "--repeat", "1", "--json"])
    assert rc == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert res["load_cold_s"] > 0 and res["load_s"] > 0 and res["weight_type"] == "int8"
    assert res.get("bandwidth_fraction") is None            # 1 MB of weights live in the caches
    assert os.listdir(tmp_path) == []                         # the user's cache is untouched


def test_bench_bad_input_is_one_line(capsys):
    assert main(["bench", "--random", "stories260K", "--prompt-tokens", "500", "--gen-tokens", "100"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "context" in err[0]
    assert main(["bench", "--model", MODEL, "--quant", "q4_k"]) == 2


def test_bench_random_weights_that_cannot_fit_in_memory_are_refused_before_drawing(capsys, monkeypatch):
    """random_nbytes is what random_weights fills, type by type; a shape over the memory
    available is one line before any byte is drawn (before: it filled RAM until killed)."""
    from app.commands import bench
    from inference.weights import random_nbytes

    for shape in ("stories15M", "smollm2-135m"):
        cfg = bench.SHAPES[shape]
        for wt in ("fp32", "fp16", "bf16", "int8", "q4_0", "q4_k", "q5_k", "q6_k", "q8_0", "iq4_xs"):
            assert random_nbytes(cfg, wt, 32) == random_weights(cfg, wtype=wt, group_size=32).nbytes(), (shape, wt)
    monkeypatch.setattr(bench, "available_memory", lambda: 4 << 30)
    assert main(["bench", "--random", "llama2-13b", "--quant", "none"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["llama-chat: error: --random llama2-13b in fp32 needs 48.5 GiB for its weights, more than the "
                   "4.0 GiB of memory available; draw a smaller type (--quant int8, q4_k …) or shape"]


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


def test_random_weights_are_drawn_in_their_type():
    cfg = ModelConfig(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=50, seq_len=16,
                      shared_classifier=False)
    w = random_weights(cfg, seed=1, wtype="int8", group_size=64)
    w.check_shapes()
    assert w.weight_type == "int8" and w.group_size == 64
    for name in ("tok_embeddings", "output"):
        t = getattr(w, name)
        assert t.q.dtype == np.int8 and t.s.dtype == np.float32, name
    assert 0.01 < float(w.w1[0].dequantize().std()) < 0.04       # about the fp32 draw's N(0, 0.02)
    with pytest.raises(ValueError, match="does not divide"):
        random_weights(cfg, wtype="int8", group_size=48)
    for wtype in ("q4_0", "q4_k", "q6_k", "fp16", "bf16"):
        b = CpuBackend(random_weights(cfg, seed=2, wtype=wtype))
        b.forward([1, 2, 3], 0)
        assert np.isfinite(b.logits()).all(), wtype
