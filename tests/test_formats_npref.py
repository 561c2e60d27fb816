"""A plain numpy Llama forward pass: the independent yardstick of the format tests.

It shares no code with the Numba backend, so a format reader that gets a permutation or
a split axis wrong cannot be hidden by a matching bug in the kernels. It is itself
checked here against the recorded llama2.c logits of the shipped model.
"""
from __future__ import annotations

import numpy as np

from inference.weights import ModelWeights, QTensor


def dense(t) -> np.ndarray:
    return t.dequantize() if isinstance(t, QTensor) else np.asarray(t, dtype=np.float32)


class NumpyLlama:
    """Token-by-token forward with a KV cache, written from the Llama-2 equations."""

    def __init__(self, w: ModelWeights) -> None:
        self.c = c = w.config
        self.w = {n: dense(getattr(w, n)) for n in ("tok_embeddings", "attn_norm", "ffn_norm", "final_norm",
                                                     "wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")}
        self.k = np.zeros((c.n_layers, c.seq_len, c.kv_dim), np.float32)
        self.v = np.zeros_like(self.k)
        hd = c.head_dim
        self.inv_freq = 1.0 / (c.rope_theta ** (np.arange(0, hd, 2, dtype=np.float64) / hd))

    def _norm(self, x: np.ndarray, g: np.ndarray) -> np.ndarray:
        return x / np.sqrt(np.mean(x * x) + self.c.norm_eps) * g

    def _rope(self, x: np.ndarray, n_heads: int, pos: int) -> np.ndarray:
        ang = pos * self.inv_freq
        cos, sin = np.cos(ang).astype(np.float32), np.sin(ang).astype(np.float32)
        h = x.reshape(n_heads, -1, 2)  # pairs (2i, 2i+1) within each head
        a, b = h[..., 0], h[..., 1]
        return np.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(-1)

    def step(self, token: int, pos: int) -> np.ndarray:
        c, w = self.c, self.w
        hd = c.head_dim
        x = w["tok_embeddings"][token].copy()
        for l in range(c.n_layers):
            h = self._norm(x, w["attn_norm"][l])
            q = self._rope(w["wq"][l] @ h, c.n_heads, pos)
            self.k[l, pos] = self._rope(w["wk"][l] @ h, c.n_kv_heads, pos)
            self.v[l, pos] = w["wv"][l] @ h
            att = np.empty(c.dim, np.float32)
            for head in range(c.n_heads):
                kvh = head // c.kv_mul
                ks = self.k[l, :pos + 1, kvh * hd:(kvh + 1) * hd]
                vs = self.v[l, :pos + 1, kvh * hd:(kvh + 1) * hd]
                s = ks @ q[head * hd:(head + 1) * hd] / np.sqrt(hd)
                p = np.exp(s - s.max())
                att[head * hd:(head + 1) * hd] = (p / p.sum()) @ vs
            x = x + w["wo"][l] @ att
            h = self._norm(x, w["ffn_norm"][l])
            a = w["w1"][l] @ h
            x = x + w["w2"][l] @ (a / (1 + np.exp(-a)) * (w["w3"][l] @ h))
        return w["output"] @ self._norm(x, w["final_norm"])

    def run(self, tokens: list[int]) -> np.ndarray:
        """Logits after every token, shape (len(tokens), vocab)."""
        return np.stack([self.step(t, i) for i, t in enumerate(tokens)])


def test_numpy_reference_matches_recorded_llama2c_logits(reference):
    from inference.checkpoint import load_llama2c
    from .conftest import ASSETS
    import os
    ref = NumpyLlama(load_llama2c(os.path.join(ASSETS, "stories260K.bin")))
    case = reference["cases"][0]
    ids = [1] + case["ids_after_bos"]
    got = ref.run(ids[:3])
    for pos in range(3):
        np.testing.assert_allclose(got[pos], np.asarray(case["first_logits"][pos], np.float32), atol=1e-4)
