"""The CPU backend: one fused Numba forward over memory-mapped (or quantized) weights.

One forward pass is llama2.c's: embed, then per layer rmsnorm -> q/k/v -> RoPE ->
attention over the KV cache -> wo -> residual, rmsnorm -> w1/w3 -> SwiGLU -> w2 ->
residual; final rmsnorm and the classifier, computed for the last token only. The whole
pass is a single call into `kernels.cpu_forward.forward` (see there for why).
"""
from __future__ import annotations

import mmap
from typing import Sequence

import numba
import numpy as np

from kernels import cpu_forward, cpu_ops

from ..weights import MATRIX_NAMES, ModelWeights, QTensor, Tensor
from .base import Backend, MemoryInfo

_NO_SCALES = np.zeros(1, dtype=np.float32)
_NO_SCALES.flags.writeable = False


def _ro(a: np.ndarray) -> np.ndarray:
    """A read-only view: weights from a file map, from the quantizer or from random_weights
    then share one Numba type, so the forward is compiled (and cached) once per dtype."""
    v = a.view()
    v.flags.writeable = False
    return v


def _lazy_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros in anonymous memory that the OS maps in page by page as it is written.

    Why not np.zeros: numpy asks for transparent huge pages on big arrays, and the KV
    cache's first forward writes one row in every head's slab, so the kernel zeroes every
    2 MiB page of it at once: 9 s before a 7B model's first token on this machine (4.3 GB
    of cache), ~0.5 GB/s. Here each 4 KiB page is faulted in when a position first
    reaches it, a cost spread over the whole context.
    """
    n = int(np.prod(shape)) * 4
    buf = mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return np.frombuffer(buf, dtype=np.float32, count=n // 4).reshape(shape)


def _flat_stack(a: np.ndarray) -> tuple[np.ndarray, int]:
    """A (L, rows, cols) stack as (1-D view, elements between layers), zero-copy when the
    rows of each layer are contiguous (true for plain stacks and llama2.c v2 files)."""
    L, rows, cols = a.shape
    item = a.itemsize
    st = a.strides
    if st[2] == item and st[1] == cols * item and st[0] % item == 0 and st[0] >= rows * cols * item:
        n = (L - 1) * (st[0] // item) + rows * cols
        return np.lib.stride_tricks.as_strided(a, (n,), (item,), writeable=False), st[0] // item
    c = np.ascontiguousarray(a)
    return _ro(c.reshape(-1)), rows * cols


def _flat_matrix(t: Tensor) -> tuple[np.ndarray, np.ndarray, int]:
    """(flat values, flat scales, group size or 0) of one 2-D matrix (embeddings, classifier)."""
    if isinstance(t, QTensor):
        return (_ro(np.ascontiguousarray(t.q).reshape(-1)),
                _ro(np.ascontiguousarray(t.s, dtype=np.float32).reshape(-1)), t.group_size)
    w = np.asarray(t)
    if w.dtype != np.float32:
        w = w.astype(np.float32)  # Numba has no float16 arrays on the CPU
    return _ro(np.ascontiguousarray(w).reshape(-1)), _NO_SCALES, 0


#: Below this many weight bytes per token a model runs on one thread (see `_auto_threads`).
SMALL_MODEL_BYTES = 8 << 20


def _max_threads() -> int:
    return int(numba.config.NUMBA_NUM_THREADS)


class CpuBackend(Backend):
    """Runs a model with Numba kernels; KV cache in host memory."""

    name = "cpu"

    def __init__(self, weights: ModelWeights, max_batch: int = 128, threads: int | None = None) -> None:
        """`threads`: Numba threads for this backend's calls (None: see `_auto_threads`)."""
        c = self.config = weights.config
        self.weights = weights
        self.weight_type = weights.weight_type
        L = c.n_layers
        stacks = [getattr(weights, n) for n in MATRIX_NAMES]
        quant = all(isinstance(t, QTensor) for t in stacks) and len({t.group_size for t in stacks}) == 1
        mats, scales, wstride, sstride = [], [], [], []
        # Numba has no float16 arrays on the CPU: fp16 sources are widened to fp32 (a copy)
        float_dtype = np.float32
        for t in stacks:
            if quant:
                qf, qs = _flat_stack(t.q)
                sf, ss = _flat_stack(np.asarray(t.s, dtype=np.float32))
            else:
                arr = t.dequantize() if isinstance(t, QTensor) else np.asarray(t)
                if arr.dtype != float_dtype:
                    arr = arr.astype(float_dtype)
                qf, qs = _flat_stack(arr)
                sf, ss = _NO_SCALES, 0
            mats.append(qf)
            scales.append(sf)
            wstride.append(qs)
            sstride.append(ss)
        self._mats = tuple(mats)
        self._scales = tuple(scales)
        self._wstride = np.array(wstride, dtype=np.int64)
        self._sstride = np.array(sstride, dtype=np.int64)
        self._gs = stacks[0].group_size if quant else 0
        self._emb = _flat_matrix(weights.tok_embeddings)
        self._cls = self._emb if weights.output is weights.tok_embeddings else _flat_matrix(weights.output)
        self.attn_norm = _ro(np.ascontiguousarray(weights.attn_norm, dtype=np.float32))
        self.ffn_norm = _ro(np.ascontiguousarray(weights.ffn_norm, dtype=np.float32))
        self.final_norm = _ro(np.ascontiguousarray(weights.final_norm, dtype=np.float32))
        # (layer, kv head, position, head_dim): each head's keys are one contiguous run, so
        # attention streams them (a (position, kv_dim) layout reads 256 B of every 3 KB row)
        self.k_cache = _lazy_zeros((L, c.n_kv_heads, c.seq_len, c.head_dim))
        self.v_cache = _lazy_zeros((L, c.n_kv_heads, c.seq_len, c.head_dim))
        self.cos, self.sin = cpu_ops.rope_tables(c.seq_len, c.head_dim, c.rope_theta)
        self._logits = np.zeros((1, c.vocab_size), dtype=np.float32)
        self._bufs: dict[int, tuple[np.ndarray, ...]] = {}
        self.max_batch = max_batch
        self.threads = self._auto_threads() if threads is None else max(1, min(int(threads), _max_threads()))

    def _auto_threads(self) -> int:
        """All cores, except for models small enough to live in cache: there each parallel
        region's fork/join costs more than the work, and a second core that is busy with
        anything else (the UI, another process) stalls every region — measured on the
        bundled 1 MB model under load: 6,300 tok/s on one thread, 600 on two.
        NUMBA_NUM_THREADS caps the count for bigger models."""
        return 1 if self.weight_bytes_per_token() < SMALL_MODEL_BYTES else _max_threads()

    def _buffers(self, T: int) -> tuple[np.ndarray, ...]:
        b = self._bufs.get(T)
        if b is None:
            c = self.config
            z = lambda n: np.zeros((T, n), dtype=np.float32)  # noqa: E731
            b = (z(c.dim), z(c.dim), z(c.dim), z(c.kv_dim), z(c.kv_dim), z(c.dim), z(c.hidden_dim), z(c.hidden_dim))
            if len(self._bufs) > 4:
                self._bufs.clear()
            self._bufs[T] = b
        return b

    def forward(self, tokens: Sequence[int], start_pos: int) -> None:
        for i in range(0, len(tokens), self.max_batch):
            self._forward_chunk(tokens[i:i + self.max_batch], start_pos + i)

    def _forward_chunk(self, tokens: Sequence[int], start_pos: int) -> None:
        c = self.config
        T = len(tokens)
        if T == 0:
            return
        if start_pos < 0 or start_pos + T > c.seq_len:
            raise ValueError(f"positions {start_pos}..{start_pos + T - 1} exceed the context {c.seq_len}")
        ids = np.asarray(tokens, dtype=np.int64)
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise ValueError(f"token id out of range 0..{c.vocab_size - 1}")
        x, xb, q, k, v, att, hb, h3 = self._buffers(T)
        numba.set_num_threads(self.threads)  # per calling thread, so set where the work runs
        cpu_forward.forward(
            ids, start_pos, x, xb, q, k, v, att, hb, h3, self._logits[0],
            self._emb[0], self._emb[1], self._emb[2],
            self._mats, self._scales, self._wstride, self._sstride, self._gs,
            self.attn_norm, self.ffn_norm, self.final_norm,
            self._cls[0], self._cls[1], self._cls[2],
            self.k_cache, self.v_cache, self.cos, self.sin,
            c.n_heads, c.n_kv_heads, c.norm_eps)

    def logits(self) -> np.ndarray:
        return self._logits[0].copy()

    def argmax(self) -> int:
        return int(np.argmax(self._logits[0]))

    def memory(self) -> MemoryInfo:
        return MemoryInfo(weight_bytes=self.weights.nbytes(),
                          kv_cache_bytes=self.k_cache.nbytes + self.v_cache.nbytes)

    def weight_bytes_per_token(self) -> int:
        """Weight bytes one decode step reads (the embedding table only as classifier)."""
        w = self.weights
        total = sum(getattr(w, n).nbytes for n in MATRIX_NAMES) + w.output.nbytes
        return total + w.attn_norm.nbytes + w.ffn_norm.nbytes + w.final_norm.nbytes

    def describe(self) -> str:
        n = self.threads
        return f"CPU (numba {numba.__version__}, {n} thread{'s' if n > 1 else ''}, {cpu_forward.threading_layer()})"


def stream_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Bytes/s this machine's threads can stream from RAM, read the way the forward reads
    weights (best of `repeats`): the yardstick `bench` compares decode against."""
    return cpu_ops.stream_bandwidth(nbytes, repeats)
