"""GGUF files in every supported block type (and mixes), through the whole CPU forward,
against a float64 numpy forward on weights that gguf-py (an independent implementation)
reads and dequantizes from the same file. Fixtures are written with gguf-py's writer."""
from __future__ import annotations

import os

import numpy as np
import pytest

from inference.architecture import spec, tensor_keys
from inference.backends.cpu import CpuBackend
from inference.config import ModelConfig
from inference.errors import ModelFormatError
from inference.formats import open_source
from inference.quant_types import QTYPES, random_blocks
from inference.weights import ModelWeights, random_weights

from .numpy_reference import reference_logits

gguf = pytest.importorskip("gguf")

#: Types gguf-py can quantize from floats; the others get random (valid) blocks.
_GGUF_QUANTIZES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "bf16")
BLOCK_TYPES = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q2_k", "q3_k", "q4_k", "q5_k", "q6_k",
               "iq4_nl", "iq4_xs")


def write_gguf_model(path: str, w: ModelWeights, types, seed: int = 0) -> None:
    """Write `w` as a GGUF file with gguf-py. `types`: one type name for every matrix, or
    a function (name, layer) -> type. Float weights are converted by gguf-py; types it
    cannot quantize get random blocks of the right shape (any finite scales are valid)."""
    c = w.config
    rng = np.random.default_rng(seed)
    pick = types if callable(types) else (lambda name, layer: types)
    wr = gguf.GGUFWriter(path, c.arch)
    a = c.arch
    wr.add_uint32(f"{a}.context_length", c.seq_len)
    wr.add_uint32(f"{a}.embedding_length", c.dim)
    wr.add_uint32(f"{a}.block_count", c.n_layers)
    wr.add_uint32(f"{a}.feed_forward_length", c.hidden_dim)
    wr.add_uint32(f"{a}.attention.head_count", c.n_heads)
    wr.add_uint32(f"{a}.attention.head_count_kv", c.n_kv_heads)
    if c.head_dim != c.dim // c.n_heads:
        wr.add_uint32(f"{a}.attention.key_length", c.head_dim)
        wr.add_uint32(f"{a}.attention.value_length", c.head_dim)
    wr.add_float32(f"{a}.attention.layer_norm_rms_epsilon", c.norm_eps)
    wr.add_float32(f"{a}.rope.freq_base", c.rope_theta)
    for name, layer in tensor_keys(c):
        s = spec(name, c)
        t = w.get(name, layer)
        f = np.asarray(t, dtype=np.float32) if not hasattr(t, "qtype") and not hasattr(t, "q") else None
        gname = s.key("gguf", layer)
        if not s.matrix:
            wr.add_tensor(gname, np.ascontiguousarray(t, dtype=np.float32))
            continue
        qtype = pick(name, layer)
        rows, cols = s.shape(c)
        if qtype == "fp32":
            wr.add_tensor(gname, f)
        elif qtype == "fp16":
            wr.add_tensor(gname, f.astype(np.float16))
        else:
            gt = gguf.GGMLQuantizationType[qtype.upper()]
            if qtype in _GGUF_QUANTIZES:
                data = gguf.quants.quantize(f, gt)
            else:
                data = random_blocks(qtype, rows, cols, rng, scale=0.08).data
            wr.add_tensor(gname, data, raw_dtype=gt)   # uint8 blocks: gguf-py derives the shape
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def gguf_py_tensors(path: str, config: ModelConfig):
    """(name, layer) -> float64 tensor, as gguf-py reads and dequantizes the file."""
    r = gguf.GGUFReader(path)
    by_name = {t.name: t for t in r.tensors}

    def get(name: str, layer: int | None = None) -> np.ndarray:
        t = by_name[spec(name, config).key("gguf", layer)]
        arr = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type)
        return arr.reshape(tuple(int(d) for d in reversed(t.shape))).astype(np.float64)

    return get


def _config(arch: str = "llama", **kw) -> ModelConfig:
    base = dict(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=80, seq_len=64,
                arch=arch, rope_theta=10000.0)
    if arch == "qwen2":
        base.update(rope_style="neox", qkv_bias=True)
    base.update(kw)
    return ModelConfig(**base)


def _check_against_reference(path: str, n_steps: int = 4) -> None:
    src = open_source(path)
    w = src.weights()
    get = gguf_py_tensors(path, src.config)
    ids = [1, 7, 42, 3, 19, 60, 5]
    want = reference_logits(w, ids, get)
    b = CpuBackend(w)
    scale = float(np.abs(want).max()) + 1.0
    for pos, t in enumerate(ids):                   # decode path, token by token
        b.forward([t], pos)
        np.testing.assert_allclose(b.logits(), want[pos], atol=2e-5 * scale, rtol=1e-4)
    b.forward(ids, 0)                               # prompt path (rows dequantized once, many tokens)
    np.testing.assert_allclose(b.logits(), want[-1], atol=2e-5 * scale, rtol=1e-4)
    seq = list(ids)
    for _ in range(n_steps):                        # greedy continuation agrees
        nxt = int(np.argmax(reference_logits(w, seq, get)[-1]))
        assert b.argmax() == nxt
        b.forward([nxt], len(seq))
        seq.append(nxt)
    vocab = src.config.vocab_size
    long = [(7 * i + 3) % vocab for i in range(45)]
    for T in (20, 45):                              # 4 x 4 blocks; cpu_gemm tiles, one partial
        b.forward(long[:T], 0)
        np.testing.assert_allclose(b.logits(), reference_logits(w, long[:T], get)[-1],
                                   atol=2e-5 * scale, rtol=1e-4)


@pytest.mark.parametrize("qtype", ("fp32", "fp16", "bf16") + BLOCK_TYPES)
def test_each_block_type_matches_float64_reference(tmp_path, qtype):
    cfg = _config()
    path = str(tmp_path / f"{qtype}.gguf")
    write_gguf_model(path, random_weights(cfg, seed=3, scale=0.08), qtype)
    src = open_source(path)
    assert src.matrix_types() == {qtype: 1 + 7 * cfg.n_layers}
    _check_against_reference(path)


def test_a_mixed_file_like_q4_k_m(tmp_path):
    """One file, many types: per layer and per tensor, as llama.cpp's Q4_K_M mixes them."""
    cfg = _config(n_layers=3, shared_classifier=False)
    mix = {"wq": "q4_k", "wk": "q4_k", "wv": "q6_k", "wo": "q4_k", "w1": "q4_k", "w3": "q4_k", "w2": "q6_k"}

    def types(name: str, layer: int | None) -> str:
        if name == "tok_embeddings":
            return "q4_k"
        if name == "output":
            return "q6_k"
        if layer == 1:
            return {"w2": "q5_0", "wv": "q8_0"}.get(name, "q4_1")
        return mix[name]

    path = str(tmp_path / "mix.gguf")
    write_gguf_model(path, random_weights(cfg, seed=5, scale=0.08), types)
    assert set(open_source(path).matrix_types()) == {"q4_k", "q6_k", "q5_0", "q8_0", "q4_1"}
    _check_against_reference(path)


def test_qwen2_with_biases_and_neox_rope(tmp_path):
    cfg = _config("qwen2", n_heads=8, n_kv_heads=2)
    path = str(tmp_path / "qwen2.gguf")
    write_gguf_model(path, random_weights(cfg, seed=7, scale=0.08), "q8_0")
    src = open_source(path)
    assert src.config.arch == "qwen2" and src.config.qkv_bias and src.config.rope_style == "neox"
    _check_against_reference(path)


def test_head_dim_that_is_not_dim_over_heads(tmp_path):
    cfg = _config(n_heads=4, n_kv_heads=2, head_dim=96)   # q_dim 384 != dim 256
    path = str(tmp_path / "hd.gguf")
    write_gguf_model(path, random_weights(cfg, seed=9, scale=0.08), "fp32")
    assert open_source(path).config.q_dim == 384
    _check_against_reference(path)


def test_unsupported_block_type_is_named_with_its_tensor(tmp_path):
    cfg = _config(n_layers=1)
    path = str(tmp_path / "iq2.gguf")

    def types(name, layer):
        return "iq2_xxs" if name == "w2" else "q4_0"

    w = random_weights(cfg, seed=1, scale=0.08)
    orig = QTYPES.copy()
    try:   # IQ2_XXS blocks are 66 bytes per 256 values; random bytes stand in for them
        from inference.quant_types import QType
        QTYPES["iq2_xxs"] = QType("iq2_xxs", 16, 256, 66, (0,), 100)
        write_gguf_model(path, w, types)
    finally:
        QTYPES.clear()
        QTYPES.update(orig)
    with pytest.raises(ModelFormatError, match=r"blk\.0\.ffn_down\.weight is IQ2_XXS"):
        open_source(path)


def test_real_smollm2_q4_1_reproduces_the_float64_reference(smollm2_reference):
    """The shipped Q4_1 chat model (Q8_0 tied embedding): greedy ids from prompt ids equal
    the float64 reference computed on gguf-dequantized weights."""
    path, ref = smollm2_reference
    w = open_source(path).weights()
    b = CpuBackend(w)
    for case in ref["chat_greedy"]:
        ids = case["prompt_ids"]
        b.forward(ids, 0)
        top5 = [int(i) for i, _ in case["first_logits_top5"]]
        lg = b.logits()
        assert [int(i) for i in np.argsort(-lg)[:5]] == top5
        np.testing.assert_allclose([lg[i] for i in top5], [v for _, v in case["first_logits_top5"]], atol=1e-3)
        out, pos = [], len(ids)
        for _ in case["greedy_ids"]:
            t = b.argmax()
            out.append(t)
            b.forward([t], pos)
            pos += 1
        assert out == case["greedy_ids"]


@pytest.fixture(scope="module")
def smollm2_reference():
    import json

    from .conftest import SHARED, shared_model
    path = shared_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    ref_path = os.path.join(SHARED, "reference", "smollm2_q4_1_reference.json")
    if not os.path.exists(ref_path):
        pytest.skip("no SmolLM2 reference")
    with open(ref_path) as f:
        return path, json.load(f)
