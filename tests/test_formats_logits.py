"""The same tiny model in every format gives the llama2.c path's weights and logits.

Fixtures (tests/data/formats, written by make_fixtures.py with torch / safetensors / gguf)
hold weights that fp16, bf16 and Q8_0 represent exactly, so every reader must reproduce
the llama2.c file bit for bit (HF files keep their q/k rows in NEOX order and run with
NEOX RoPE); logits are compared through the float64 numpy reference and through the real
loader + CPU backend.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from inference.formats import detect_format, open_source
from inference.formats.llama2c import neox_to_interleaved
from inference.quantize import quantize_weights
from inference.weights import MATRIX_NAMES, BlockTensor, QTensor

from .conftest import DATA
from .numpy_reference import dense, reference_logits

FIX = os.path.join(DATA, "formats")
TOKENS = [1, 5, 9, 3, 17, 30, 2, 11, 11, 0, 31, 7]
CASES = {  # fixture -> (format, stored dtype, shared classifier)
    "meta1": ("meta-pth", "fp32", False),
    "meta2": ("meta-pth", "fp16", False),
    "meta_legacy": ("meta-pth", "bf16", True),
    "meta1/consolidated.00.pth": ("meta-pth", "fp32", False),
    "hf": ("hf-safetensors", "fp32", False),
    "hf_sharded": ("hf-safetensors", "bf16", True),
    "hf/model.safetensors": ("hf-safetensors", "fp32", False),
    "tiny-f16.gguf": ("gguf", "fp16", False),
    "tiny-q8_0.gguf": ("gguf", "q8_0", True),
}
ALL_TENSORS = list(MATRIX_NAMES) + ["tok_embeddings", "output", "attn_norm", "ffn_norm", "final_norm"]


def load(path: str):
    """Open and read every tensor, as the loader does."""
    return open_source(path)


def _tensors(src, name: str) -> list[np.ndarray]:
    """A tensor as float64, one entry per layer (or one for a global), q/k rows in the
    interleaved order the llama2.c reference uses."""
    w = src.weights()
    c = src.config
    layers = range(c.n_layers) if name not in ("tok_embeddings", "output", "final_norm") else (None,)
    out = []
    for layer in layers:
        t = dense(w.get(name, layer))
        if name in ("wq", "wk") and c.rope_style == "neox":
            t = neox_to_interleaved(t, c.n_heads if name == "wq" else c.n_kv_heads)
        out.append(t)
    return out


@pytest.fixture(autouse=True)
def _private_cache(tmp_path, monkeypatch):
    """GGUF tokenizers are written to the user cache: keep the tests' copies out of it."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))



@pytest.fixture(scope="module")
def base():
    res = load(os.path.join(FIX, "tiny.bin"))
    assert res.format == "llama2c"
    return res


@pytest.fixture(scope="module")
def base_logits(base):
    return reference_logits(base.weights(), TOKENS)


@pytest.mark.parametrize("name", list(CASES))
def test_detected_by_content_and_described(name):
    fmt, dtype, shared = CASES[name]
    path = os.path.join(FIX, name)
    assert detect_format(path) == fmt
    src = open_source(path)
    assert (src.format, src.dtype, src.config.shared_classifier) == (fmt, dtype, shared)
    assert src.config.rope_style == ("neox" if fmt == "hf-safetensors" else "interleaved")
    src.check()


@pytest.mark.parametrize("name", list(CASES))
def test_weights_equal_llama2c_file(name, base):
    res = load(os.path.join(FIX, name))
    assert res.config.dim == base.config.dim and res.config.hidden_dim == base.config.hidden_dim
    assert (res.config.n_heads, res.config.n_kv_heads) == (base.config.n_heads, base.config.n_kv_heads)
    for t in ALL_TENSORS:
        for a, b in zip(_tensors(res, t), _tensors(base, t)):
            np.testing.assert_array_equal(a, b, err_msg=t)


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_logits_equal_llama2c_path(name, base_logits):
    res = load(os.path.join(FIX, name))
    np.testing.assert_allclose(reference_logits(res.weights(), TOKENS), base_logits, atol=1e-5, rtol=0)


def test_q8_0_blocks_are_used_as_stored():
    w = load(os.path.join(FIX, "tiny-q8_0.gguf")).weights()
    t = w.wq[0]
    assert isinstance(t, BlockTensor) and t.qtype == "q8_0" and t.data.shape == (32, 34)
    assert w.weight_type == "q8_0"
    base = t.data.base
    while getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, memoryview) or hasattr(base, "close")   # a view of the file's map


def test_fp16_weights_stay_fp16_and_norms_become_fp32():
    w = load(os.path.join(FIX, "meta2")).weights()
    assert w.wq[0].dtype == np.float16 and w.weight_type == "fp16"
    assert w.attn_norm[0].dtype == np.float32


def test_meta_hidden_dim_derivation():
    from inference.formats.meta_pth import meta_hidden_dim
    assert meta_hidden_dim(4096, 256, None) == 11008           # Llama-2 7B
    assert meta_hidden_dim(5120, 256, None) == 13824           # Llama-2 13B
    assert meta_hidden_dim(8192, 4096, 1.3) == 28672           # Llama-2 70B
    assert meta_hidden_dim(64, 4, None) == 172                 # stories260K
    # the legacy fixture's params.json has no hidden_dim: 0.75 * 85 -> 63 -> multiple of 16 = 64
    assert open_source(os.path.join(FIX, "meta_legacy")).config.hidden_dim == 64


def test_neox_to_interleaved_inverts_the_hf_permutation():
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 5)).astype(np.float32)
    for heads in (1, 2, 3):
        hf = w.reshape(heads, 24 // heads // 2, 2, 5).transpose(0, 2, 1, 3).reshape(24, 5)
        np.testing.assert_array_equal(neox_to_interleaved(hf, heads), w)


def test_gguf_tokenizer_comes_from_metadata():
    src = load(os.path.join(FIX, "tiny-f16.gguf"))
    tok = src.tokenizer()
    assert tok.vocab_size == src.config.vocab_size
    assert tok.token_bytes[3:6] == [b" a", b" b", b" c"]
    assert tok.token_bytes[6:8] == [b" the", b" cat"] and tok.scores[4] == -1.0
    assert (tok.bos_id, tok.eos_id) == (1, 2)


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A 32-token tokenizer.bin for the fixtures that carry none (the GGUF's vocabulary,
    written in llama2.c's format: int32 max length, then (f32 score, i32 length, bytes))."""
    import struct
    tok = load(os.path.join(FIX, "tiny-f16.gguf")).tokenizer()
    out = tmp_path_factory.mktemp("tok") / "tokenizer.bin"
    pieces = [p.replace("\u2581".encode(), b" ") for p in tok.pieces]
    body = b"".join(struct.pack("<fi", s, len(p)) + p for p, s in zip(pieces, tok.scores))
    out.write_bytes(struct.pack("<i", max(len(p) for p in pieces)) + body)
    return str(out)


@pytest.fixture(scope="module")
def cpu_base_logits(base, tiny_tokenizer):
    return _cpu_logits(os.path.join(FIX, "tiny.bin"), tiny_tokenizer)


def _cpu_logits(path: str, tokenizer: str | None) -> np.ndarray:
    from inference.backends.cpu import CpuBackend
    from inference.loader import load_model
    loaded = load_model(path, tokenizer, quant="none")
    be = CpuBackend(loaded.weights)
    out = []
    for pos, t in enumerate(TOKENS):
        be.forward([t], pos)
        out.append(be.logits().copy())
    return np.stack(out)


@pytest.mark.parametrize("name", list(CASES))
def test_loader_and_cpu_backend_equal_llama2c_path(name, tiny_tokenizer, cpu_base_logits, base_logits):
    tok = None if name.endswith(".gguf") else tiny_tokenizer
    got = _cpu_logits(os.path.join(FIX, name), tok)
    # Q8_0 stays in its blocks: its dot sums in another order than the fp32 row dot, so
    # the two differ by float rounding, ~1e-5 on logits of magnitude ~20 (1e-6 of the scale)
    np.testing.assert_allclose(got, cpu_base_logits, atol=5e-5, rtol=0)
    np.testing.assert_allclose(got, base_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["meta2", "hf_sharded", "tiny-f16.gguf"])
def test_cached_int8_equals_quantizing_in_memory(name, tmp_path, monkeypatch):
    """quant='int8' through the on-disk cache gives exactly what quantizing the float
    weights in memory gives."""
    from inference.quant_cache import quantized_weights
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    src = load(os.path.join(FIX, name))
    cached = quantized_weights(src, os.path.join(FIX, name), "int8")
    after = quantize_weights(src.weights())
    assert cached.weight_type == "int8"
    for key, b in after.tensors.items():
        a = cached.tensors[key]
        if isinstance(b, QTensor):
            assert isinstance(a, QTensor) and a.group_size == b.group_size, key
            np.testing.assert_array_equal(a.q, b.q, err_msg=str(key))
            np.testing.assert_array_equal(a.s, b.s, err_msg=str(key))
        else:
            np.testing.assert_array_equal(a, b, err_msg=str(key))
