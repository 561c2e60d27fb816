"""A plain float64 numpy forward pass, written from the architecture's definition.

Independent of the Numba kernels (no shared code), so it can check the backends on
random models of shapes the shipped model does not have.
"""
from __future__ import annotations

import numpy as np

from inference.weights import ModelWeights, QTensor


def _dense(t) -> np.ndarray:
    return (t.dequantize() if isinstance(t, QTensor) else np.asarray(t)).astype(np.float64)


def reference_logits(w: ModelWeights, ids: list[int]) -> np.ndarray:
    """Logits (len(ids), vocab) for the sequence `ids` starting at position 0."""
    c = w.config
    hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
    T = len(ids)
    x = _dense(w.tok_embeddings)[ids]                       # (T, dim)
    pos = np.arange(T)[:, None]
    freq = 1.0 / c.rope_theta ** (np.arange(0, hd, 2) / hd)  # (hd/2,)
    ang = pos * freq                                          # (T, hd/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + c.norm_eps) * g

    def rope(v, heads):
        v = v.reshape(T, heads, hd // 2, 2)
        a, b = v[..., 0], v[..., 1]
        out = np.stack([a * cos[:, None] - b * sin[:, None], a * sin[:, None] + b * cos[:, None]], -1)
        return out.reshape(T, heads * hd)

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(c.n_layers):
        h = norm(x, _dense(w.attn_norm[l]))
        q = rope(h @ _dense(w.wq[l]).T, nh).reshape(T, nh, hd)
        k = rope(h @ _dense(w.wk[l]).T, nkv).reshape(T, nkv, hd)
        v = (h @ _dense(w.wv[l]).T).reshape(T, nkv, hd)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", s, v).reshape(T, c.dim)
        x = x + att @ _dense(w.wo[l]).T
        h = norm(x, _dense(w.ffn_norm[l]))
        a, b = h @ _dense(w.w1[l]).T, h @ _dense(w.w3[l]).T
        x = x + (a / (1 + np.exp(-a)) * b) @ _dense(w.w2[l]).T
    return norm(x, _dense(w.final_norm)) @ _dense(w.output).T
