"""The same tiny model in every format gives the llama2.c path's weights and logits.

Fixtures (tests/data/formats, written by make_fixtures.py with torch / safetensors / gguf)
hold weights that fp16, bf16 and Q8_0 represent exactly, so every reader must reproduce
the llama2.c file bit for bit; logits are compared through the numpy reference and
through the real loader + CPU backend.
"""
from __future__ import annotations

import os

import numpy as np
import pytest

from inference.formats import detect_format, load, open_source
from inference.weights import MATRIX_NAMES, QTensor

from .conftest import DATA
from .test_formats_npref import NumpyLlama, dense

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
    "tiny-q8_0.gguf": ("gguf", "int8", True),
}
ALL_TENSORS = list(MATRIX_NAMES) + ["tok_embeddings", "output", "attn_norm", "ffn_norm", "final_norm"]


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
    return NumpyLlama(base.weights).run(TOKENS)


@pytest.mark.parametrize("name", list(CASES))
def test_detected_by_content_and_described(name):
    fmt, dtype, shared = CASES[name]
    path = os.path.join(FIX, name)
    assert detect_format(path) == fmt
    src = open_source(path)
    assert (src.format, src.dtype, src.config.shared_classifier) == (fmt, dtype, shared)
    src.check_layer0()


@pytest.mark.parametrize("name", list(CASES))
def test_weights_equal_llama2c_file(name, base):
    res = load(os.path.join(FIX, name))
    assert res.config.dim == base.config.dim and res.config.hidden_dim == base.config.hidden_dim
    assert (res.config.n_heads, res.config.n_kv_heads) == (base.config.n_heads, base.config.n_kv_heads)
    for t in ALL_TENSORS:
        np.testing.assert_array_equal(dense(getattr(res.weights, t)), dense(getattr(base.weights, t)), err_msg=t)


@pytest.mark.parametrize("name", list(CASES))
def test_numpy_logits_equal_llama2c_path(name, base_logits):
    res = load(os.path.join(FIX, name))
    np.testing.assert_allclose(NumpyLlama(res.weights).run(TOKENS), base_logits, atol=1e-5, rtol=0)


def test_q8_0_is_kept_as_int8_groups_of_32_without_requantizing():
    w = load(os.path.join(FIX, "tiny-q8_0.gguf")).weights
    assert isinstance(w.wq, QTensor) and w.wq.group_size == 32 and w.wq.q.dtype == np.int8
    assert w.wq.q.shape == (2, 32, 32) and w.wq.s.shape == (2, 32, 1)
    assert w.weight_type == "int8"
    # the fixture puts one |q| = 127 in every block, so the stored values are used as they are
    assert np.all(np.abs(w.w2.q).reshape(2, 32, 2, 32).max(axis=-1) == 127)


def test_fp16_option_halves_host_memory():
    w = load(os.path.join(FIX, "meta2"), float_dtype=np.float16).weights
    assert w.wq.dtype == np.float16 and w.weight_type == "fp16"
    assert w.attn_norm.dtype == np.float32


def test_meta_hidden_dim_derivation():
    from inference.formats.meta_pth import meta_hidden_dim
    assert meta_hidden_dim(4096, 256, None) == 11008           # Llama-2 7B
    assert meta_hidden_dim(5120, 256, None) == 13824           # Llama-2 13B
    assert meta_hidden_dim(8192, 4096, 1.3) == 28672           # Llama-2 70B
    assert meta_hidden_dim(64, 4, None) == 172                 # stories260K
    # the legacy fixture's params.json has no hidden_dim: 0.75 * 85 -> 63 -> multiple of 16 = 64
    assert open_source(os.path.join(FIX, "meta_legacy")).config.hidden_dim == 64


def test_hf_unpermute_inverts_the_hf_permutation():
    from inference.formats.safetensors import unpermute_rows
    rng = np.random.default_rng(0)
    w = rng.standard_normal((24, 5)).astype(np.float32)
    for heads in (1, 2, 3):
        hf = w.reshape(heads, 24 // heads // 2, 2, 5).transpose(0, 2, 1, 3).reshape(24, 5)
        np.testing.assert_array_equal(unpermute_rows(hf, heads), w)


def test_gguf_tokenizer_comes_from_metadata(tmp_path, monkeypatch):
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from inference.tokenizer import load_tokenizer
    res = load(os.path.join(FIX, "tiny-f16.gguf"))
    assert res.tokenizer_path and res.tokenizer_path.startswith(str(tmp_path))
    tok = load_tokenizer(res.tokenizer_path, res.config.vocab_size)
    assert tok.pieces[3:6] == [b" a", b" b", b" c"]
    assert tok.pieces[6:8] == [b" the", b" cat"] and tok.scores[4] == -1.0
    assert (tok.bos_id, tok.eos_id) == (1, 2) and tok.token_bytes[2] == b""
    again = load(os.path.join(FIX, "tiny-f16.gguf"))  # cached: same file, not rewritten
    assert again.tokenizer_path == res.tokenizer_path


@pytest.fixture(scope="module")
def tiny_tokenizer(tmp_path_factory):
    """A 32-token tokenizer.bin for the fixtures that carry none (from the GGUF's vocabulary)."""
    from inference.formats.gguf import read_gguf, write_llama2c_tokenizer
    meta, _, _ = read_gguf(os.path.join(FIX, "tiny-f16.gguf"))
    out = str(tmp_path_factory.mktemp("tok") / "tokenizer.bin")
    write_llama2c_tokenizer(meta, "tiny-f16.gguf", out)
    return out


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
    # Q8_0 stays int8: its SIMD group dot sums in another order than the fp32 row dot, so
    # the two differ by float rounding, ~1e-5 on logits of magnitude ~20 (1e-6 of the scale)
    np.testing.assert_allclose(got, cpu_base_logits, atol=5e-5, rtol=0)
    np.testing.assert_allclose(got, base_logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("name", ["meta2", "hf_sharded", "tiny-f16.gguf"])
def test_streaming_int8_equals_quantizing_afterwards(name):
    """quant='int8' quantizes layer by layer while reading, with the same result as the core's quantizer."""
    from inference.quantize import quantize_weights
    streamed = load(os.path.join(FIX, name), quant="int8").weights
    after = quantize_weights(load(os.path.join(FIX, name)).weights)
    assert streamed.weight_type == "int8"
    for t in ALL_TENSORS:
        a, b = getattr(streamed, t), getattr(after, t)
        if isinstance(b, QTensor):
            assert isinstance(a, QTensor) and a.group_size == b.group_size, t
            np.testing.assert_array_equal(a.q, b.q, err_msg=t)
            np.testing.assert_array_equal(a.s, b.s, err_msg=t)
        else:
            np.testing.assert_array_equal(a, b, err_msg=t)
    assert (streamed.output is streamed.tok_embeddings) == (after.output is after.tok_embeddings)


def test_gguf_tokenizers_we_cannot_represent_are_not_used():
    from inference.formats.gguf import tokenizer_problem
    toks = {"tokenizer.ggml.tokens": ["<unk>", "<s>", "</s>"], "tokenizer.ggml.model": "llama"}
    assert tokenizer_problem(toks) is None
    assert "gpt2" in tokenizer_problem({**toks, "tokenizer.ggml.model": "gpt2"})
    assert "bos_token_id 5" in tokenizer_problem({**toks, "tokenizer.ggml.bos_token_id": 5})
    assert "no tokenizer" in tokenizer_problem({})
