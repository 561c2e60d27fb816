"""The CPU backend: Numba kernels over memory-mapped (or quantized) weights.

One forward pass is llama2.c's: embed, then per layer rmsnorm -> q/k/v -> RoPE ->
attention over the KV cache -> wo -> residual, rmsnorm -> w1/w3 -> SwiGLU -> w2 ->
residual; final rmsnorm and the classifier, computed for the last token only.
"""
from __future__ import annotations

import os
import resource
from typing import Sequence

import numpy as np

from kernels import cpu_matmul, cpu_ops

from ..weights import ModelWeights, QTensor, Tensor
from .base import Backend, MemoryInfo


class _Mat:
    """One weight matrix ready for a kernel: contiguous 2-D views, fp32/fp16 or int8."""

    __slots__ = ("w", "q", "s", "gs")

    def __init__(self, t: Tensor) -> None:
        if isinstance(t, QTensor):
            self.w = None
            self.q = np.ascontiguousarray(t.q)
            self.s = np.ascontiguousarray(t.s, dtype=np.float32)
            self.gs = t.group_size
        else:
            self.w = np.ascontiguousarray(t)
            if self.w.dtype not in (np.float32, np.float16):
                self.w = self.w.astype(np.float32)
            self.q = self.s = None
            self.gs = 0

    def __call__(self, out: np.ndarray, x: np.ndarray) -> np.ndarray:
        if self.w is not None:
            cpu_matmul.matmul_f32(out, x, self.w)
        else:
            cpu_matmul.matmul_q8(out, x, self.q, self.s, self.gs)
        return out


class CpuBackend(Backend):
    """Runs a model with Numba kernels; KV cache in host memory."""

    name = "cpu"

    def __init__(self, weights: ModelWeights, max_batch: int = 128) -> None:
        c = self.config = weights.config
        self.weights = weights
        self.weight_type = weights.weight_type
        L = c.n_layers
        self.layers = [
            {name: _Mat(getattr(weights, name)[l]) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}
            for l in range(L)
        ]
        self.attn_norm = np.ascontiguousarray(weights.attn_norm, dtype=np.float32)
        self.ffn_norm = np.ascontiguousarray(weights.ffn_norm, dtype=np.float32)
        self.final_norm = np.ascontiguousarray(weights.final_norm, dtype=np.float32)
        self.classifier = _Mat(weights.output)
        emb = weights.tok_embeddings
        self.emb_q = isinstance(emb, QTensor)
        self.emb = emb
        self.k_cache = np.zeros((L, c.seq_len, c.kv_dim), dtype=np.float32)
        self.v_cache = np.zeros((L, c.seq_len, c.kv_dim), dtype=np.float32)
        self.cos, self.sin = cpu_ops.rope_tables(c.seq_len, c.head_dim, c.rope_theta)
        self._logits = np.zeros((1, c.vocab_size), dtype=np.float32)
        self._bufs: dict[int, dict[str, np.ndarray]] = {}
        self.max_batch = max_batch

    def _buffers(self, T: int) -> dict[str, np.ndarray]:
        b = self._bufs.get(T)
        if b is None:
            c = self.config
            z = lambda n: np.zeros((T, n), dtype=np.float32)  # noqa: E731
            b = dict(x=z(c.dim), xb=z(c.dim), xb2=z(c.dim), q=z(c.dim), k=z(c.kv_dim), v=z(c.kv_dim),
                     att=z(c.dim), h1=z(c.hidden_dim), h3=z(c.hidden_dim))
            if len(self._bufs) > 4:
                self._bufs.clear()
            self._bufs[T] = b
        return b

    def forward(self, tokens: Sequence[int], start_pos: int) -> None:
        c = self.config
        for i in range(0, len(tokens), self.max_batch):
            chunk = tokens[i:i + self.max_batch]
            self._forward_chunk(chunk, start_pos + i)

    def _forward_chunk(self, tokens: Sequence[int], start_pos: int) -> None:
        c = self.config
        T = len(tokens)
        if start_pos + T > c.seq_len:
            raise ValueError(f"positions {start_pos}..{start_pos + T - 1} exceed the context {c.seq_len}")
        b = self._buffers(T)
        x, xb, xb2, q, k, v, att, h1, h3 = (b[n] for n in ("x", "xb", "xb2", "q", "k", "v", "att", "h1", "h3"))
        for t, tok in enumerate(tokens):
            if self.emb_q:
                cpu_matmul.dequantize_row(x[t], self.emb.q, self.emb.s, int(tok), self.emb.group_size)
            else:
                x[t] = self.emb[int(tok)]
        eps = c.norm_eps
        end = start_pos + T
        for l, m in enumerate(self.layers):
            cpu_ops.rmsnorm(xb, x, self.attn_norm[l], eps)
            m["wq"](q, xb)
            m["wk"](k, xb)
            m["wv"](v, xb)
            cpu_ops.rope(q, self.cos, self.sin, start_pos, c.head_dim)
            cpu_ops.rope(k, self.cos, self.sin, start_pos, c.head_dim)
            kc, vc = self.k_cache[l], self.v_cache[l]
            kc[start_pos:end] = k
            vc[start_pos:end] = v
            cpu_ops.attention(att, q, kc, vc, start_pos, c.n_heads, c.n_kv_heads)
            m["wo"](xb2, att)
            cpu_ops.add_into(x, xb2)
            cpu_ops.rmsnorm(xb, x, self.ffn_norm[l], eps)
            m["w1"](h1, xb)
            m["w3"](h3, xb)
            cpu_ops.swiglu(h1, h3)
            m["w2"](xb2, h1)
            cpu_ops.add_into(x, xb2)
        last = x[T - 1:T]
        cpu_ops.rmsnorm(xb[:1], last, self.final_norm, eps)
        self.classifier(self._logits, xb[:1])

    def logits(self) -> np.ndarray:
        return self._logits[0].copy()

    def argmax(self) -> int:
        return int(np.argmax(self._logits[0]))

    def memory(self) -> MemoryInfo:
        return MemoryInfo(weight_bytes=self.weights.nbytes(),
                          kv_cache_bytes=self.k_cache.nbytes + self.v_cache.nbytes)

    def describe(self) -> str:
        import numba
        return f"CPU (numba {numba.__version__}, {numba.get_num_threads()} threads)"


def process_rss_bytes() -> int:
    """Resident set size of this process (Linux /proc, else peak RSS from getrusage)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
