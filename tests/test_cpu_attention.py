"""The CPU attention kernel against float64 numpy: MHA, GQA and MQA head layouts, tokens
of one call in different slots and positions, and each token's result alone."""
from __future__ import annotations

import math

import numpy as np
import pytest

from kernels import cpu_forward as F


def reference(q, kc, vc, layer, positions, slots, n_heads, n_kv, hd) -> np.ndarray:
    out = np.zeros((q.shape[0], n_heads * hd))
    for t in range(q.shape[0]):
        n = positions[t] + 1
        for h in range(n_heads):
            kh = h // (n_heads // n_kv)
            keys = kc[slots[t], layer, kh, :n].astype(np.float64)
            values = vc[slots[t], layer, kh, :n].astype(np.float64)
            s = keys @ q[t, h * hd:(h + 1) * hd].astype(np.float64) / math.sqrt(hd)
            e = np.exp(s - s.max())
            out[t, h * hd:(h + 1) * hd] = e @ values / e.sum()
    return out


def run(q, kc, vc, layer, positions, slots, n_heads, n_kv, hd) -> np.ndarray:
    out = np.full((q.shape[0], n_heads * hd), np.nan, np.float32)
    F.attention(out, q, kc, vc, layer, positions, slots, n_heads, n_kv, hd)
    return out


@pytest.mark.parametrize("n_heads,n_kv,hd,context", [(12, 12, 64, 700), (9, 3, 64, 600), (8, 2, 32, 300),
                                                     (4, 1, 16, 260), (4, 2, 128, 300)])
def test_matches_float64_and_each_token_alone(n_heads, n_kv, hd, context):
    rng = np.random.default_rng(n_heads * 100 + n_kv)
    kc = (rng.standard_normal((3, 2, n_kv, context, hd)) * 2).astype(np.float32)
    vc = rng.standard_normal((3, 2, n_kv, context, hd)).astype(np.float32)
    edges = [0, 1, 15, 16, 17, 255, context - 1]
    for T in (1, 3, 20):
        positions = np.array((edges + list(rng.integers(0, context, T)))[:T], np.int64)
        slots = rng.integers(0, 3, T).astype(np.int64)
        q = (rng.standard_normal((T, n_heads * hd)) * 2).astype(np.float32)
        got = run(q, kc, vc, 1, positions, slots, n_heads, n_kv, hd)
        want = reference(q, kc, vc, 1, positions, slots, n_heads, n_kv, hd)
        np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * np.abs(want).max())
        for t in range(T):   # a token's result does not depend on its batch
            alone = run(q[t:t + 1], kc, vc, 1, positions[t:t + 1], slots[t:t + 1], n_heads, n_kv, hd)
            assert np.array_equal(alone[0], got[t])
