"""A plain float64 numpy forward pass, written from the architecture's definition.

Independent of the Numba kernels (no shared code): it takes dense float64 matrices — from
our weights' own fp32/int8 values, or dequantized by gguf-py from a GGUF file — so it can
check the backends on random models of every block type and every variant (GQA, biases,
NEOX RoPE, a separate head width, per-frequency RoPE factors).
"""
from __future__ import annotations

from typing import Callable

import numpy as np

from inference.config import ModelConfig
from inference.quant_types import BlockTensor
from inference.weights import ModelWeights, QTensor


def dense(t) -> np.ndarray:
    """fp32/fp16/int8/bf16 tensors as float64 (block types need gguf-py: see `gguf_dense`)."""
    if isinstance(t, QTensor):
        return t.dequantize().astype(np.float64)
    if isinstance(t, BlockTensor):
        if t.qtype in ("fp16", "bf16"):
            return t.floats().astype(np.float64)
        return gguf_dense(t)
    return np.asarray(t).astype(np.float64)


def gguf_dense(t: BlockTensor) -> np.ndarray:
    """A block tensor dequantized by gguf-py (an implementation independent of ours)."""
    import gguf
    qt = gguf.GGMLQuantizationType[t.qtype.upper()]
    return gguf.quants.dequantize(np.ascontiguousarray(t.data), qt).reshape(t.shape).astype(np.float64)


def reference_logits(w: ModelWeights, ids: list[int], get: Callable | None = None) -> np.ndarray:
    """Logits (len(ids), vocab) for the sequence `ids` starting at position 0.

    `get(name, layer)` supplies float64 tensors (default: `dense(w.get(name, layer))`).
    """
    c: ModelConfig = w.config
    get = get or (lambda name, layer=None: dense(w.get(name, layer)))
    hd, nh, nkv = c.head_dim, c.n_heads, c.n_kv_heads
    T = len(ids)
    x = get("tok_embeddings", None)[ids]                      # (T, dim)
    freq = 1.0 / c.rope_theta ** (np.arange(0, hd, 2) / hd)   # (hd/2,)
    if c.rope_freqs:
        freq = freq / get("rope_freqs", None)
    ang = np.arange(T)[:, None] * freq                        # (T, hd/2)
    cos, sin = np.cos(ang), np.sin(ang)

    def norm(v, g):
        return v / np.sqrt((v * v).mean(-1, keepdims=True) + c.norm_eps) * g

    def rope(v, heads):
        v = v.reshape(T, heads, hd)
        if c.rope_style == "neox":
            a, b = v[..., : hd // 2], v[..., hd // 2:]
            out = np.concatenate([a * cos[:, None] - b * sin[:, None], a * sin[:, None] + b * cos[:, None]], -1)
        else:
            a, b = v[..., 0::2], v[..., 1::2]
            out = np.stack([a * cos[:, None] - b * sin[:, None], a * sin[:, None] + b * cos[:, None]], -1)
        return out.reshape(T, heads * hd)

    mask = np.triu(np.full((T, T), -np.inf), 1)
    for l in range(c.n_layers):
        h = norm(x, get("attn_norm", l))
        q, k, v = h @ get("wq", l).T, h @ get("wk", l).T, h @ get("wv", l).T
        if c.qkv_bias:
            q, k, v = q + get("bq", l), k + get("bk", l), v + get("bv", l)
        q = rope(q, nh).reshape(T, nh, hd)
        k = rope(k, nkv).reshape(T, nkv, hd)
        v = v.reshape(T, nkv, hd)
        rep = nh // nkv
        k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
        s = np.einsum("thd,shd->hts", q, k) / np.sqrt(hd) + mask
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        att = np.einsum("hts,shd->thd", s, v).reshape(T, nh * hd)
        x = x + att @ get("wo", l).T
        h = norm(x, get("ffn_norm", l))
        a, b = h @ get("w1", l).T, h @ get("w3", l).T
        x = x + (a / (1 + np.exp(-a)) * b) @ get("w2", l).T
    out = get("output", None) if not c.shared_classifier else get("tok_embeddings", None)
    return norm(x, get("final_norm", None)) @ out.T


def greedy_reference(w: ModelWeights, prompt: list[int], n: int, get: Callable | None = None) -> list[int]:
    """n greedy tokens after `prompt` by the float64 forward (recomputing from scratch)."""
    seq = list(prompt)
    for _ in range(n):
        seq.append(int(np.argmax(reference_logits(w, seq, get)[-1])))
    return seq[len(prompt):]
