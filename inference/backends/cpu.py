"""The CPU backend: one fused Numba forward over memory-mapped weights of any storage type.

One forward pass is llama2.c's: embed, then per layer rmsnorm -> q/k/v (+ biases) ->
RoPE -> attention over the KV cache -> wo -> residual, rmsnorm -> w1/w3 -> SwiGLU -> w2
-> residual; final rmsnorm and the classifier for the tokens whose logits are wanted. The
whole pass is a single call into `kernels.cpu_forward.forward`; this class turns the
weights into the tables of (type, address, ...) it reads, and holds the KV cache.

The cache has `slots` independent sequences (one for the chat, several for a server
decoding requests together); `forward` runs one sequence, `forward_batch` any mix of
tokens, positions and slots.
"""
from __future__ import annotations

import mmap
from typing import Any, Callable, Sequence

import numba
import numpy as np

from kernels import compute_thread, cpu_blocks, cpu_forward, cpu_stream, numba_setup

from ..architecture import MATRIX_NAMES
from ..errors import BackendError
from ..rope import rope_tables
from ..weights import BlockTensor, ModelWeights, QTensor, Tensor, tensor_type
from .base import Backend, MemoryInfo, R, cache_positions, check_entries, finite_argmax

#: Storage type name -> kernel type code.
CODES = {"fp32": cpu_blocks.F32, "fp16": cpu_blocks.F16, "bf16": cpu_blocks.BF16, "int8": cpu_blocks.I8,
         "q4_0": cpu_blocks.Q4_0, "q4_1": cpu_blocks.Q4_1, "q5_0": cpu_blocks.Q5_0, "q5_1": cpu_blocks.Q5_1,
         "q8_0": cpu_blocks.Q8_0, "q2_k": cpu_blocks.Q2_K, "q3_k": cpu_blocks.Q3_K, "q4_k": cpu_blocks.Q4_K,
         "q5_k": cpu_blocks.Q5_K, "q6_k": cpu_blocks.Q6_K, "iq4_nl": cpu_blocks.IQ4_NL,
         "iq4_xs": cpu_blocks.IQ4_XS}
#: Below this many weight bytes per token a model runs on one thread (see `_auto_threads`).
SMALL_MODEL_BYTES = 8 << 20

_DUMMY = np.zeros(1, dtype=np.float32)


def _lazy_zeros(shape: tuple[int, ...]) -> np.ndarray:
    """float32 zeros in anonymous memory that the OS maps in page by page as it is written.

    Why not np.zeros: numpy asks for transparent huge pages on big arrays, and the KV
    cache's first forward writes one row in every head's slab, so the kernel zeroes every
    2 MiB page of it at once (seconds for a 7B model). Here each 4 KiB page is faulted in
    when a position first reaches it, a cost spread over the whole context.
    """
    n = int(np.prod(shape)) * 4
    try:
        buf = mmap.mmap(-1, max(n, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    except OSError as e:
        raise BackendError(f"cannot reserve {n / 2**30:.1f} GiB for the KV cache ({e.strerror}); "
                           f"use a shorter --ctx") from None
    return np.frombuffer(buf, dtype=np.float32, count=n // 4).reshape(shape)


def _address(a: np.ndarray) -> int:
    return int(a.__array_interface__["data"][0])


def _rows_contiguous(a: np.ndarray) -> np.ndarray:
    """`a` with each row a contiguous run and rows one after another (a view if it is)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


def dequantize(t: Tensor) -> np.ndarray:
    """Any matrix's values as fp32, decoded by the same kernels the forward uses."""
    if isinstance(t, np.ndarray) and t.dtype == np.float32:
        return t
    tab, keep = _table(t)
    rows, cols = t.shape
    out = np.empty((rows, cols), dtype=np.float32)
    compute_thread.call(cpu_forward.dequantize_rows, tab, out)
    del keep
    return out


def _table(t: Tensor) -> tuple[np.ndarray, list]:
    """The kernel's five-int64 description of a matrix, and the arrays it points into."""
    rows, cols = t.shape
    code = CODES[tensor_type(t)]
    if isinstance(t, QTensor):
        q = _rows_contiguous(t.q)
        s = np.ascontiguousarray(t.s, dtype=np.float32)
        return np.array([code, _address(q), _address(s), cols, t.group_size], np.int64), [q, s]
    if isinstance(t, BlockTensor):
        d = _rows_contiguous(t.data)
        return np.array([code, _address(d), _address(_DUMMY), d.shape[1], 0], np.int64), [d]
    a = _rows_contiguous(np.asarray(t))
    return np.array([code, _address(a), _address(_DUMMY), cols * a.itemsize, 0], np.int64), [a]


def _max_threads() -> int:
    return int(numba.config.NUMBA_NUM_THREADS)


class CpuBackend(Backend):
    """Runs a model with Numba kernels; KV cache in host memory."""

    name = "cpu"

    def __init__(self, weights: ModelWeights, max_batch: int = 128, threads: int | None = None,
                 context: int | None = None, slots: int = 1) -> None:
        """`threads`: Numba threads for this backend's calls (None: see `_auto_threads`).
        `context`: positions the KV cache holds per slot (default: the model's, at most
        DEFAULT_MAX_CONTEXT). `slots`: independent sequences in the cache."""
        c = weights.config
        n_ctx = cache_positions(c, context, slots)
        self.config = c.with_(seq_len=n_ctx)
        self.weights = weights
        self.weight_type = weights.weight_type
        self.slots = slots
        L = c.n_layers
        self._keep: list = []
        self._mtab = np.zeros((L, len(MATRIX_NAMES), 5), dtype=np.int64)
        for layer in range(L):
            for m, name in enumerate(MATRIX_NAMES):
                self._mtab[layer, m] = self._describe(weights.get(name, layer))
        self._etab = self._describe(weights.get("tok_embeddings"))
        self._ctab = self._describe(weights.get("output"))
        stack = lambda name: np.ascontiguousarray(  # noqa: E731
            np.stack([np.asarray(weights.get(name, layer), dtype=np.float32) for layer in range(L)]))
        self.attn_norm, self.ffn_norm = stack("attn_norm"), stack("ffn_norm")
        # a copy: a GGUF norm is a read-only view of the file's map, and Numba types
        # read-only arrays apart, so each kind of source would compile its own forward
        self.final_norm = np.array(weights.get("final_norm"), dtype=np.float32)
        if c.qkv_bias:
            self.bias = np.concatenate([stack("bq"), stack("bk"), stack("bv")], axis=1)
        else:
            self.bias = np.zeros((1, 1), dtype=np.float32)
        # (slot, layer, kv head, position, head_dim): each head's keys are one contiguous
        # run, so attention streams them
        shape = (slots, L, c.n_kv_heads, n_ctx, c.head_dim)
        self.k_cache = _lazy_zeros(shape)
        self.v_cache = _lazy_zeros(shape)
        factors = np.asarray(weights.get("rope_freqs"), np.float32) if c.rope_freqs else None
        self.cos, self.sin = rope_tables(c, n_ctx, factors)
        self._logits = np.zeros((1, c.vocab_size), dtype=np.float32)
        self._bufs: dict[tuple[int, int], tuple[np.ndarray, ...]] = {}
        self.max_batch = max_batch
        self.threads = self._auto_threads() if threads is None else max(1, min(int(threads), _max_threads()))

    def _describe(self, t: Tensor) -> np.ndarray:
        tab, keep = _table(t)
        self._keep.extend(keep)
        return tab

    @property
    def n_ctx(self) -> int:
        return self.config.seq_len

    def _auto_threads(self) -> int:
        """All cores, except for models small enough to live in cache: there each parallel
        region's fork/join costs more than the work, and a second core that is busy with
        anything else (the UI, another process) stalls every region. NUMBA_NUM_THREADS
        caps the count for bigger models."""
        return 1 if self.weight_bytes_per_token() < SMALL_MODEL_BYTES else _max_threads()

    def _buffers(self, T: int, K: int) -> tuple[np.ndarray, ...]:
        b = self._bufs.get((T, K))
        if b is None:
            c = self.config
            z = lambda n, rows=T: np.zeros((rows, n), dtype=np.float32)  # noqa: E731
            b = (z(c.dim), z(c.dim), z(c.q_dim), z(c.kv_dim), z(c.kv_dim), z(c.q_dim), z(c.hidden_dim),
                 z(c.hidden_dim), z(c.dim, K), z(c.vocab_size, K),
                 cpu_forward.scratch(self.threads, T, max(c.dim, c.q_dim, c.hidden_dim)))
            if len(self._bufs) > 4:
                self._bufs.clear()
            self._bufs[(T, K)] = b
        return b

    # -- running ---------------------------------------------------------------------
    def forward(self, tokens: Sequence[int], start_pos: int, slot: int = 0) -> None:
        """Run `tokens` of one sequence at positions start_pos..; keep the last logits."""
        n = len(tokens)
        for i in range(0, n, self.max_batch):
            chunk = np.asarray(tokens[i:i + self.max_batch], dtype=np.int64)
            pos = np.arange(start_pos + i, start_pos + i + chunk.size, dtype=np.int64)
            out = self._run(chunk, pos, np.full(chunk.size, slot, dtype=np.int64), last_only=True)
            self._logits = out

    def forward_batch(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int]) -> np.ndarray:
        """Run one token per entry (token, position, slot) in one pass, every weight row
        read once for all of them; returns their logits (n, vocab), float32."""
        ids = np.asarray(tokens, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        sl = np.asarray(slots, dtype=np.int64)
        if not ids.shape == pos.shape == sl.shape or ids.ndim != 1:
            raise ValueError("tokens, positions and slots must be 1-D and of one length")
        out = self._run(ids, pos, sl, last_only=False)
        self._logits = out[-1:]
        return out.copy()

    def run_loop(self, fn: Callable[..., R], *args: Any, on_interrupt: Callable[[], None] | None = None) -> R:
        """See `Backend.run_loop`: on the compute thread."""
        return compute_thread.call_interruptible(fn, args, on_interrupt)

    def _run(self, ids: np.ndarray, pos: np.ndarray, sl: np.ndarray, last_only: bool) -> np.ndarray:
        c = self.config
        T = ids.size
        if T == 0:
            return self._logits
        check_entries(c, self.slots, ids, pos, sl, ValueError)
        rows = np.array([T - 1], np.int64) if last_only else np.arange(T, dtype=np.int64)
        return compute_thread.call(self._forward_here, ids, pos, sl, rows, self._buffers(T, rows.size))

    def _forward_here(self, ids, pos, sl, rows, bufs) -> np.ndarray:
        """The kernel call, on the compute thread (see kernels.compute_thread); returns
        the logits buffer it filled."""
        c = self.config
        x, xb, q, k, v, att, hb, h3, xc, logits, scratch = bufs
        numba.set_num_threads(self.threads)  # per calling thread, so set where the work runs
        cpu_forward.forward(
            ids, pos, sl, x, xb, q, k, v, att, hb, h3, xc, logits, rows, scratch,
            self._mtab, self._etab, self._ctab, self.attn_norm, self.ffn_norm, self.final_norm,
            self.bias, c.qkv_bias, self.k_cache, self.v_cache, self.cos, self.sin,
            c.n_heads, c.n_kv_heads, c.head_dim, c.rope_style == "neox", c.norm_eps)
        return logits

    def logits(self) -> np.ndarray:
        return self._logits[-1].copy()

    def argmax(self) -> int:
        return finite_argmax(self._logits[-1])

    def memory(self) -> MemoryInfo:
        return MemoryInfo(weight_bytes=self.weights.nbytes(),
                          kv_cache_bytes=self.k_cache.nbytes + self.v_cache.nbytes)

    def weight_bytes_per_token(self) -> int:
        """Weight bytes one decode step reads (the embedding table only as classifier)."""
        w, c = self.weights, self.config
        total = sum(w.get(n, layer).nbytes for n in MATRIX_NAMES for layer in range(c.n_layers))
        return total + w.get("output").nbytes + self.attn_norm.nbytes + self.ffn_norm.nbytes

    def describe(self) -> str:
        n = self.threads
        return f"CPU (numba {numba.__version__}, {n} thread{'s' if n > 1 else ''}, {numba_setup.threading_layer()})"


def stream_bandwidth(nbytes: int, repeats: int = 5) -> float:
    """Bytes/s this machine's threads can stream from RAM, read the way the forward reads
    weights (best of `repeats`): the yardstick `bench` compares decode against."""
    return compute_thread.call(cpu_stream.stream_bandwidth, nbytes, repeats)
