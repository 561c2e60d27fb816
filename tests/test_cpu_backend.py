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
    """The SIMD group dots (64, 32) and the plain loop (other sizes) against float64 numpy
    run on exactly the weights the int8 tensors represent."""
    from dataclasses import replace

    from inference.quantize import quantize_weights
    from inference.weights import QTensor
    cfg = ModelConfig(dim=128, hidden_dim=192, n_layers=2, n_heads=4, n_kv_heads=2, vocab_size=97, seq_len=32)
    q = quantize_weights(random_weights(cfg, seed=3, scale=0.08), group)
    assert q.group_size == group
    deq = replace(q, **{n: getattr(q, n).dequantize() for n in ("tok_embeddings", "wq", "wk", "wv", "wo", "w1", "w2", "w3")})
    deq.output = deq.tok_embeddings
    assert isinstance(q.wq, QTensor)
    ids = list(np.random.default_rng(1).integers(0, cfg.vocab_size, 12))
    _assert_token_by_token_and_batched(CpuBackend(q), ids, reference_logits(deq, ids))
