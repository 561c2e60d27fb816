"""The Numba CPU backend against an independent numpy forward, on random model shapes."""
from __future__ import annotations

import numpy as np
import pytest

from inference.backends.cpu import CpuBackend
from inference.config import ModelConfig
from inference.weights import random_weights

from .numpy_reference import reference_logits

SHAPES = {
    "mha-shared": ModelConfig(dim=64, hidden_dim=160, n_layers=2, n_heads=4, n_kv_heads=4, vocab_size=100, seq_len=64),
    "gqa-separate": ModelConfig(dim=96, hidden_dim=200, n_layers=3, n_heads=8, n_kv_heads=2, vocab_size=130,
                                seq_len=64, shared_classifier=False),
    "mqa": ModelConfig(dim=64, hidden_dim=128, n_layers=2, n_heads=4, n_kv_heads=1, vocab_size=77, seq_len=40),
}


def _assert_token_by_token_and_batched(b: CpuBackend, ids: list[int], want: np.ndarray) -> None:
    """Decode `ids` one at a time, then as one prompt batch, against reference logits."""
    for pos, t in enumerate(ids):
        b.forward([t], pos)
        np.testing.assert_allclose(b.logits(), want[pos], atol=2e-4, rtol=1e-4)
    b.forward(ids, 0)  # one prefill call: same last logits
    np.testing.assert_allclose(b.logits(), want[-1], atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("name", list(SHAPES))
def test_matches_numpy_reference_token_by_token_and_batched(name):
    cfg = SHAPES[name]
    w = random_weights(cfg, seed=11, scale=0.08)
    ids = list(np.random.default_rng(0).integers(0, cfg.vocab_size, 23))
    _assert_token_by_token_and_batched(CpuBackend(w), ids, reference_logits(w, ids))


def test_default_model_against_numpy_reference(default_model, reference):
    ids = [1] + reference["cases"][2]["ids_after_bos"][:60]
    want = reference_logits(default_model.weights, ids)
    b = CpuBackend(default_model.weights)
    b.forward(ids, 0)
    np.testing.assert_allclose(b.logits(), want[-1], atol=1e-4)
    assert int(np.argmax(want[-1])) == b.argmax()


@pytest.mark.parametrize("group", [64, 32, 16])
def test_int8_matches_numpy_reference_on_the_dequantized_weights(group):
    """int8 groups (SIMD group dots for 64 and 32, the plain loop otherwise) against float64
    numpy run on exactly the values the int8 tensors represent."""
    from inference.quantize import quantize_weights
    from inference.weights import QTensor
    cfg = ModelConfig(dim=128, hidden_dim=192, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, seq_len=32)
    q = quantize_weights(random_weights(cfg, seed=3, scale=0.08), group)
    assert q.group_size == group and isinstance(q.wq[0], QTensor)
    ids = list(np.random.default_rng(1).integers(0, cfg.vocab_size, 12))
    _assert_token_by_token_and_batched(CpuBackend(q), ids, reference_logits(q, ids))


VARIANTS = {
    "qwen2-biases-neox": dict(arch="qwen2", qkv_bias=True, rope_style="neox"),
    "head-dim-wider-than-dim-over-heads": dict(head_dim=48),
    "rope-freqs-tensor": dict(rope_freqs=True, rope_theta=500000.0),
}


@pytest.mark.parametrize("name", list(VARIANTS))
def test_architecture_variants_match_numpy_reference(name):
    cfg = ModelConfig(dim=96, hidden_dim=160, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=70, seq_len=48,
                      **VARIANTS[name])
    w = random_weights(cfg, seed=4, scale=0.08)
    ids = list(np.random.default_rng(2).integers(0, cfg.vocab_size, 17))
    _assert_token_by_token_and_batched(CpuBackend(w), ids, reference_logits(w, ids))


def test_batched_decode_of_several_sequences_equals_each_alone():
    """forward_batch runs one token of each of several sequences (own slot, own position)
    in one pass; each row's logits equal that sequence decoded alone."""
    cfg = SHAPES["gqa-separate"]
    w = random_weights(cfg, seed=8, scale=0.08)
    rng = np.random.default_rng(3)
    prompts = [list(rng.integers(0, cfg.vocab_size, n)) for n in (5, 9, 2)]
    alone = []
    for p in prompts:
        b = CpuBackend(w)
        b.forward(p, 0)
        alone.append(b.logits())
    b = CpuBackend(w, slots=3)
    for slot, p in enumerate(prompts):
        b.forward(p[:-1], 0, slot=slot)
    got = b.forward_batch([p[-1] for p in prompts], [len(p) - 1 for p in prompts], [0, 1, 2])
    for row, want in zip(got, alone):
        np.testing.assert_allclose(row, want, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("wtype", ["q4_k", "q6_k", "q4_0", "q4_1", "int8", "fp32"])
def test_batched_decode_is_bit_identical_to_decoding_alone(wtype):
    """Up to FUSED_TOKENS sequences per step, a sequence's logits are exactly, bit for
    bit, what it gets decoded alone (the multi-token row kernel repeats the single-token
    arithmetic per token; rows go in pairs, and an odd vocabulary leaves the classifier a
    last row alone), so a request's output cannot depend on its neighbours."""
    from kernels.cpu_forward import FUSED_TOKENS

    cfg = ModelConfig(dim=256, hidden_dim=512, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, seq_len=32,
                      shared_classifier=False)
    w = random_weights(cfg, seed=21, wtype=wtype)
    rng = np.random.default_rng(5)
    n = FUSED_TOKENS
    prompts = [list(rng.integers(0, cfg.vocab_size, int(k))) for k in rng.integers(2, 9, n)]
    b = CpuBackend(w, slots=n)
    alone = []
    for slot, p in enumerate(prompts):
        b.forward(p[:-1], 0, slot=slot)
        b.forward(p[-1:], len(p) - 1, slot=slot)      # decoded alone: the one-token path
        alone.append(b.logits())
    for size in range(2, n + 1):
        got = b.forward_batch([p[-1] for p in prompts[:size]], [len(p) - 1 for p in prompts[:size]],
                              list(range(size)))
        for slot in range(size):
            np.testing.assert_array_equal(got[slot], alone[slot], err_msg=f"{wtype}: batch of {size}, slot {slot}")


def test_numpy_reference_matches_recorded_llama2c_logits(reference):
    """The float64 yardstick itself, against llama2.c's recorded logits of the shipped model."""
    import os

    from inference.formats.llama2c import load_llama2c

    from .conftest import ASSETS
    case = reference["cases"][0]
    ids = [1] + case["ids_after_bos"]
    got = reference_logits(load_llama2c(os.path.join(ASSETS, "stories260K.bin")), ids[:3])
    for pos in range(3):
        np.testing.assert_allclose(got[pos], np.asarray(case["first_logits"][pos], np.float32), atol=1e-4)


def test_a_gqa_model_over_hundreds_of_positions_matches_numpy_reference():
    """The other shapes stop at a few dozen positions; a chat runs to thousands."""
    n = 276
    cfg = ModelConfig(dim=48, hidden_dim=96, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=60, seq_len=n + 4)
    w = random_weights(cfg, seed=21, scale=0.08)
    ids = list(np.random.default_rng(5).integers(0, cfg.vocab_size, n))
    _assert_token_by_token_and_batched(CpuBackend(w), ids, reference_logits(w, ids))


@pytest.mark.parametrize("T,n", [(32, 32), (45, 768), (47, 48), (64, 17), (128, 2048), (200, 100)])
def test_prompt_activations_are_transposed_exactly(T, n):
    """The tiles' transposed activations (16 x 16 register blocks, the edges by value):
    every value moved, the token padding zero, nothing past the view written."""
    from kernels import cpu_forward as cf

    x = np.random.default_rng(T * n).standard_normal((T, n)).astype(np.float32)
    tp = cf._tile_tokens(T)
    xtf = np.full(n * tp + 7, 9.0, np.float32)
    xt = cf.transpose_tokens(x, xtf)
    want = np.zeros((n, tp), np.float32)
    want[:, :T] = x.T
    assert np.array_equal(xt, want)
    assert np.all(xtf[n * tp:] == 9.0)


def test_the_forward_gets_one_signature_whatever_the_source(tmp_path, monkeypatch):
    """Numba types read-only arrays apart from writable ones, so an array the backend
    passes straight from a file's memory map (a GGUF norm) would compile a second copy
    of the fused forward (~20 s on a first start) for GGUF models. Every array the
    forward gets is writable, whether the weights come from a mapped file or not."""
    pytest.importorskip("gguf")
    from inference.formats import open_source
    from kernels import cpu_forward

    from .test_formats_gguf_blocks import _config, write_gguf_model

    path = str(tmp_path / "m.gguf")
    write_gguf_model(path, random_weights(_config(), seed=1, scale=0.08), "q4_0")
    seen: list[tuple] = []
    real = cpu_forward.forward
    monkeypatch.setattr(cpu_forward, "forward", lambda *a: (seen.append(a), real(*a))[1])
    for w in (open_source(path).weights(), random_weights(SHAPES["mha-shared"])):
        CpuBackend(w).forward([1, 2], 0)
    assert len(seen) == 2
    for args in seen:
        arrays = [a for a in args if isinstance(a, np.ndarray)]
        assert arrays and all(a.flags.writeable and a.flags.c_contiguous for a in arrays)
