"""The CUDA backend's orchestration, checked on the CPU with numpy stand-ins for the kernels.

`kernels.cuda_driver` is replaced by an emulator whose "device pointers" are host
addresses of numpy buffers and whose kernels are numpy versions of kernels/cuda/*.cu
(same arguments, same LinearArgs struct). Everything the backend itself decides is then
exercised without a GPU: weight layout (fused QKV rows, interleaved w1/w3, int8 scales),
buffer offsets, the RMSNorm chain (sum-of-squares slots, x * norm weight), positions and
tokens read from device memory, graph capture/replay, chunked prefill, the layer split
with its activation hand-over, and speculative decoding. The CUDA C itself is covered by
the NVRTC compile tests and, on a GPU, by test_cuda_backend.py.
"""
from __future__ import annotations

import ctypes
import math
import types

import numpy as np
import pytest

from inference.backends.cuda import BLOCK_CFG, LINEAR_CFG
from inference.backends.cuda_layout import BLOCK_CODES
from inference.config import SHAPES, ModelConfig
from inference.errors import BackendError
from inference.weights import random_weights

from .test_cuda_backend import MIXED_PLAN, _stepwise

# ------------------------------------------------------------------ device memory
_live: dict[int, int] = {}   # id(buffer) -> bytes, for mem_info


def _view(ptr: int, dtype, count: int) -> np.ndarray:
    """`count` elements of `dtype` at a fake device address (a real host address)."""
    dt = np.dtype(dtype)
    raw = np.ctypeslib.as_array((ctypes.c_uint8 * (int(count) * dt.itemsize)).from_address(int(ptr)))
    return raw.view(dt)


class FakeDevice:
    def __init__(self, ordinal: int) -> None:
        self.ordinal, self.name, self.cc, self.arch = ordinal, "Emulated GPU", (9, 0), "sm_90"
        self.sm_count, self.max_smem_optin = 132, 227 * 1024
        self.ctx = ordinal

    def use(self) -> None:
        pass

    def mem_info(self) -> tuple[int, int]:
        used = sum(_live.values())
        return (8 << 30) - used, 8 << 30

    def release(self) -> None:
        pass


class FakeBuffer:
    pitched = 0   # pitched uploads made (w1/w3 interleaved on the way)

    def __init__(self, device: FakeDevice, nbytes: int, what: str = "buffer") -> None:
        self.device, self.nbytes = device, int(nbytes)
        arr = np.full(max(self.nbytes, 1) + 64, 0xCD, dtype=np.uint8)  # garbage, like cuMemAlloc
        off = (-arr.ctypes.data) % 64
        self._arr = arr  # owned by the buffer: a freed address may be reused by numpy
        self.ptr = arr.ctypes.data + off
        _live[id(self)] = self.nbytes

    def upload(self, host: np.ndarray, offset: int = 0) -> None:
        assert offset + host.nbytes <= self.nbytes
        ctypes.memmove(self.ptr + offset, np.ascontiguousarray(host).ctypes.data, host.nbytes)

    def upload_rows(self, host: np.ndarray, offset: int, pitch: int) -> None:
        rows = host.shape[0]
        width = host.nbytes // rows
        assert host.flags.c_contiguous and pitch >= width and offset + (rows - 1) * pitch + width <= self.nbytes
        dst = _view(self.ptr + offset, np.uint8, (rows - 1) * pitch + width)
        rows_view = np.lib.stride_tricks.as_strided(dst, shape=(rows, width), strides=(pitch, 1))
        rows_view[:] = host.reshape(rows, -1).view(np.uint8)
        FakeBuffer.pitched += 1

    def download(self, host: np.ndarray, offset: int = 0) -> None:
        ctypes.memmove(host.ctypes.data, self.ptr + offset, host.nbytes)

    def read_into(self, host_ptr: int, nbytes: int) -> None:
        ctypes.memmove(host_ptr, self.ptr, nbytes)

    def free(self) -> None:
        _live.pop(id(self), None)
        self._arr = None
        self.ptr = 0


class FakeStream:
    def __init__(self, device: FakeDevice) -> None:
        self.device, self.capture = device, None
        self.handle = object()

    def _do(self, fn) -> None:
        (self.capture.append(fn) if self.capture is not None else fn())

    def synchronize(self) -> None:
        pass

    def wait(self, event) -> None:
        pass

    def upload_ptr_async(self, dst: int, host_ptr: int, nbytes: int) -> None:
        data = ctypes.string_at(host_ptr, nbytes)   # staged now, like a pageable upload
        self._do(lambda: ctypes.memmove(dst, data, nbytes))

    def memset32(self, ptr: int, value: int, count: int) -> None:
        self._do(lambda: _view(ptr, np.uint32, count).fill(value))

    def copy(self, dst: int, src: int, nbytes: int) -> None:
        self._do(lambda: ctypes.memmove(dst, src, nbytes))

    def copy_peer(self, dst: FakeBuffer, src: FakeBuffer, nbytes: int) -> None:
        self._do(lambda: ctypes.memmove(dst.ptr, src.ptr, nbytes))

    def destroy(self) -> None:
        self.handle = None


class FakeEvent:
    def __init__(self, device: FakeDevice, timing: bool = False) -> None:
        pass

    def record(self, stream: FakeStream) -> None:
        pass


class FakeGraph:
    launches = 0

    def __init__(self, stream: FakeStream, body) -> None:
        self.stream, stream.capture = stream, []
        try:
            body()
            self.nodes = stream.capture
        finally:
            stream.capture = None

    def launch(self) -> None:
        FakeGraph.launches += 1
        for fn in self.nodes:
            fn()

    def destroy(self) -> None:
        pass


# ------------------------------------------------------------------ kernels in numpy
# Block types: decoded from the planar planes unit by unit, with the offsets and bit
# positions linear_blocks.cu uses (independently of the CPU's decoders of the native
# blocks, which the tests compare against).
_MAGIC_OFF = {"q4_0": 8, "q4_1": 0, "q5_0": 16, "q5_1": 0, "q8_0": 0, "q4_k": 0, "q5_k": 0, "q6_k": 32, "iq4_nl": 0}
_IQ4 = np.array([-127, -104, -83, -65, -49, -35, -22, -10, 1, 13, 25, 38, 53, 69, 89, 113], np.float64)


def _f16(u16: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(u16, dtype=np.uint16).view(np.float16).astype(np.float64)


def _kscale_min(h: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 on header bytes h (..., 16): the scales are bytes 4..15."""
    q = h[..., 4:16].astype(np.int64)
    if j < 4:
        return q[..., j] & 63, q[..., j + 4] & 63
    return (q[..., j + 4] & 0xF) | ((q[..., j - 4] >> 6) << 4), (q[..., j + 4] >> 4) | ((q[..., j] >> 6) << 4)


def _decode_blocks(bt: str, P, in_dim: int) -> np.ndarray:
    """(rows, in_dim) float64 values of one part in the planar layout."""
    rows = P.rows
    vals = 256 if bt in ("q4_k", "q5_k", "q6_k") else 32
    nb = in_dim // vals
    qbytes = {"q8_0": 32}.get(bt, 16 if vals == 32 else 128)
    for ptr, align in ((P.W, 16), (P.S, 16 if vals == 256 else 2), (P.S2, 2)):
        assert ptr % align == 0, (bt, "misaligned plane")
    W = _view(P.W, np.uint8, rows * nb * qbytes).reshape(rows, nb, qbytes).astype(np.int64)
    out = np.zeros((rows, nb, vals))
    off = _MAGIC_OFF[bt]
    if vals == 32:
        if bt == "q8_0":
            lo, hi = W[..., :16].astype(np.uint8).view(np.int8).astype(np.int64), \
                W[..., 16:].astype(np.uint8).view(np.int8).astype(np.int64)
        elif bt == "iq4_nl":
            lo, hi = _IQ4[W & 15], _IQ4[W >> 4]
        else:
            lo, hi = W & 15, W >> 4
        c = np.zeros((rows, nb))
        if bt in ("q4_0", "q8_0", "iq4_nl"):
            d = _f16(_view(P.S, np.uint16, rows * nb).reshape(rows, nb))
        elif bt == "q4_1":
            s = _view(P.S, np.uint32, rows * nb).reshape(rows, nb)
            d, c = _f16(s & 0xFFFF), _f16(s >> 16)
        else:
            if bt == "q5_0":
                qh = _view(P.S, np.uint32, rows * nb).reshape(rows, nb).astype(np.int64)
                d = _f16(_view(P.S2, np.uint16, rows * nb).reshape(rows, nb))
            else:
                s = _view(P.S, np.uint32, rows * nb * 2).reshape(rows, nb, 2)
                d, c, qh = _f16(s[..., 0] & 0xFFFF), _f16(s[..., 0] >> 16), s[..., 1].astype(np.int64)
            k = np.arange(16)
            lo = lo | (((qh[..., None] >> k) & 1) << 4)
            hi = hi | (((qh[..., None] >> (16 + k)) & 1) << 4)
        out[..., :16] = d[..., None] * (lo - off) + c[..., None]
        out[..., 16:] = d[..., None] * (hi - off) + c[..., None]
        return out.reshape(rows, in_dim)
    U = W.reshape(rows, nb, 8, 16)
    if bt in ("q4_k", "q5_k"):
        side = 16 if bt == "q4_k" else 48
        S = _view(P.S, np.uint8, rows * nb * side).reshape(rows, nb, side)
        h = S[..., :16]
        d, dmin = _f16(h[..., 0:2].copy().view(np.uint16)[..., 0]), _f16(h[..., 2:4].copy().view(np.uint16)[..., 0])
        for u in range(8):
            j, half = u >> 1, u & 1
            c = 64 * j + 16 * half
            lo, hi = U[:, :, u] & 15, U[:, :, u] >> 4
            if bt == "q5_k":
                qh = S[..., 16 + 16 * half:32 + 16 * half].astype(np.int64)
                lo, hi = lo | (((qh >> (2 * j)) & 1) << 4), hi | (((qh >> (2 * j + 1)) & 1) << 4)
            s0, m0 = _kscale_min(h, 2 * j)
            s1, m1 = _kscale_min(h, 2 * j + 1)
            out[:, :, c:c + 16] = (d * s0)[..., None] * lo - (dmin * m0)[..., None]
            out[:, :, c + 32:c + 48] = (d * s1)[..., None] * hi - (dmin * m1)[..., None]
        return out.reshape(rows, in_dim)
    assert bt == "q6_k"
    S = _view(P.S, np.uint8, rows * nb * 80).reshape(rows, nb, 80)
    sc = S[..., 64:80].copy().view(np.int8).astype(np.float64)
    d = _f16(_view(P.S2, np.uint16, rows * nb).reshape(rows, nb))
    for u in range(8):
        n, m = u >> 2, u & 3
        qh = S[..., 32 * n + 16 * (m & 1):32 * n + 16 * (m & 1) + 16].astype(np.int64)
        sh = 2 * (m >> 1)
        lo = (U[:, :, u] & 15) | (((qh >> sh) & 3) << 4)
        hi = (U[:, :, u] >> 4) | (((qh >> (sh + 4)) & 3) << 4)
        c = 128 * n + 16 * m
        out[:, :, c:c + 16] = (d * sc[..., 8 * n + m])[..., None] * (lo - 32)
        out[:, :, c + 64:c + 80] = (d * sc[..., 8 * n + m + 4])[..., None] * (hi - 32)
    return out.reshape(rows, in_dim)


def _decode_float(wt: int, P, in_dim: int, gsize: int) -> np.ndarray:
    dt = {0: np.float32, 1: np.float16, 2: np.int8}[wt]
    W = _view(P.W, dt, P.rows * in_dim).reshape(P.rows, in_dim).astype(np.float64)
    if wt == 2:
        S = _view(P.S, np.float32, P.rows * in_dim // gsize).reshape(P.rows, in_dim // gsize)
        W = (W.reshape(P.rows, in_dim // gsize, gsize) * S[:, :, None]).reshape(P.rows, in_dim)
    return W


_BLOCK_NAMES = {code: name for name, code in BLOCK_CODES.items()}


def _linear(name: str, grid, block: int, a) -> None:
    """linear.cu / linear_blocks.cu: checks the launch's grid against the parts, decodes
    every part's rows and runs the epilogue on exactly those rows."""
    nt_tile = int(name.rsplit("_t", 1)[1])
    blocks_kernel = name.startswith("linear_blocks")
    rows, ind, nt = a.rows, a.in_dim, a.ntok
    assert 1 <= a.nparts <= 3 and grid[1] == -(-nt // nt_tile)
    if blocks_kernel:
        nw, r, ks, _ = BLOCK_CFG[nt_tile]
    else:
        wt = int(name.split("_")[1][1:])
        nw, r, ks, _ = LINEAR_CFG[("fp32", "fp16", "int8")[wt]]
        assert a.nparts == 1
    assert block == nw * 32
    per_block = nw // ks * r
    acc = np.zeros((nt, rows))
    mask = np.zeros(rows, dtype=bool)
    x = _view(a.x, np.float32, nt * ind).reshape(nt, ind).astype(np.float64)
    if a.ss:
        x *= (1.0 / np.sqrt(_view(a.ss, np.float32, nt).astype(np.float64) / ind + a.eps))[:, None]
    assert not a.nw      # the backend folds every norm weight into xw
    b0 = 0
    for j in range(a.nparts):
        P = a.part[j]
        assert P.block0 == b0, "part grid blocks"
        b0 += -(-P.rows // per_block)
        if blocks_kernel:
            W = _decode_blocks(_BLOCK_NAMES[P.type], P, ind)
        else:
            W = _decode_float(wt, P, ind, a.gsize)
        assert not mask[P.row0:P.row0 + P.rows].any()
        mask[P.row0:P.row0 + P.rows] = True
        acc[:, P.row0:P.row0 + P.rows] = x @ W.T
    assert grid[0] == b0, "grid size"
    sel = np.flatnonzero(mask)
    if a.mode == 0:
        out = _view(a.out, np.float32, nt * rows).reshape(nt, rows)
        out[:, sel] = acc[:, sel]
    elif a.mode == 1:
        out = _view(a.out, np.float32, nt * rows).reshape(nt, rows)
        out[:, sel] += acc[:, sel]
        if a.ss_out:
            _view(a.ss_out, np.float32, nt)[:] += np.sum(out[:, sel].astype(np.float64) ** 2, axis=1)
        if a.xw_out:
            xw = _view(a.xw_out, np.float32, nt * rows).reshape(nt, rows)
            xw[:, sel] = out[:, sel] * _view(a.nw_next, np.float32, rows)[sel]
    elif a.mode == 2:
        assert mask[0::2].tolist() == mask[1::2].tolist()
        g, u = acc[:, 0::2], acc[:, 1::2]
        out = _view(a.out, np.float32, nt * rows // 2).reshape(nt, rows // 2)
        pairs = sel[0::2] // 2
        out[:, pairs] = (g / (1 + np.exp(-g)) * u)[:, pairs]
    elif a.mode == 4:
        out = _view(a.out, np.float32, nt * rows).reshape(nt, rows)
        gate = _view(a.gate, np.float32, nt * rows).reshape(nt, rows)[:, sel].astype(np.float64)
        out[:, sel] = gate / (1 + np.exp(-gate)) * acc[:, sel]
    else:
        assert a.mode == 3 and a.freq and a.seq
        qd, kv, hd = a.q_dim, a.kv_dim, a.head_dim
        assert rows == qd + 2 * kv and all(m % 2 == 0 for m in (P.row0 for P in a.part[:a.nparts]))
        seq = _view(a.seq, np.int32, 3 * nt).reshape(nt, 3)
        freq = _view(a.freq, np.float32, hd // 2)
        if a.bias:
            acc = acc + _view(a.bias, np.float32, rows)
        q = _view(a.out, np.float32, nt * qd).reshape(nt, qd)
        for t in range(nt):
            _, p, slot = (int(v) for v in seq[t])
            kc = _view(a.kcache + (slot * a.ctx + p) * kv * 4, np.float32, kv)
            vc = _view(a.vcache + (slot * a.ctx + p) * kv * 4, np.float32, kv)
            v = acc[t].copy()
            for lo, n in ((0, qd), (qd, kv)):
                i = np.arange(0, n, 2)
                ang = (np.float32(p) * freq[(i % hd) // 2]).astype(np.float32).astype(np.float64)
                c, s = np.cos(ang), np.sin(ang)
                x0, x1 = v[lo + i].copy(), v[lo + i + 1].copy()
                v[lo + i], v[lo + i + 1] = x0 * c - x1 * s, x0 * s + x1 * c
            qsel = sel[sel < qd]
            q[t, qsel] = v[qsel]
            ksel = sel[(sel >= qd) & (sel < qd + kv)]
            kc[ksel - qd] = v[ksel]
            vsel = sel[sel >= qd + kv]
            vc[vsel - qd - kv] = v[vsel]


def _attention(grid, q, kc, vc, out, seq_ptr, q_dim, kv_dim, hd, kv_mul, scale, ctx, part, counters) -> None:
    nh, _, nt = grid
    seq = _view(seq_ptr, np.int32, 3 * nt).reshape(nt, 3)
    Q = _view(q, np.float32, nt * q_dim).reshape(nt, nh, hd)
    O = _view(out, np.float32, nt * q_dim).reshape(nt, nh, hd)
    assert not _view(counters, np.uint32, nt * nh).any()
    for t in range(nt):
        _, p, slot = (int(v) for v in seq[t])
        m = p + 1
        K = _view(kc + slot * ctx * kv_dim * 4, np.float32, m * kv_dim).reshape(m, -1, hd)
        V = _view(vc + slot * ctx * kv_dim * 4, np.float32, m * kv_dim).reshape(m, -1, hd)
        for h in range(nh):
            s = K[:, h // kv_mul].astype(np.float64) @ Q[t, h] * scale
            e = np.exp(s - s.max())
            O[t, h] = (e / e.sum()) @ V[:, h // kv_mul]


def _embed(grid, seq_ptr, emb, x, ss, dim, nw, xw) -> None:
    nt = grid[0]
    ids = _view(seq_ptr, np.int32, 3 * nt).reshape(nt, 3)[:, 0]
    E = _view(emb, np.float32, (int(ids.max()) + 1) * dim).reshape(-1, dim)
    X = E[ids]
    _view(x, np.float32, nt * dim)[:] = X.reshape(-1)
    _view(xw, np.float32, nt * dim)[:] = (X * _view(nw, np.float32, dim)).reshape(-1)
    _view(ss, np.float32, nt)[:] = np.sum(X.astype(np.float64) ** 2, axis=1)


def _embed_i8(grid, seq_ptr, q, s, gsize, x, ss, dim, nw, xw) -> None:
    nt = grid[0]
    ids = _view(seq_ptr, np.int32, 3 * nt).reshape(nt, 3)[:, 0]
    n = int(ids.max()) + 1
    Q = _view(q, np.int8, n * dim).reshape(n, dim)[ids].astype(np.float32)
    S = _view(s, np.float32, n * dim // gsize).reshape(n, dim // gsize)[ids]
    X = (Q.reshape(nt, dim // gsize, gsize) * S[:, :, None]).reshape(nt, dim)
    _view(x, np.float32, nt * dim)[:] = X.reshape(-1)
    _view(xw, np.float32, nt * dim)[:] = (X * _view(nw, np.float32, dim)).reshape(-1)
    _view(ss, np.float32, nt)[:] = np.sum(X.astype(np.float64) ** 2, axis=1)


def _sumsq(grid, x, ss, dim, nw, xw) -> None:
    nt = grid[0]
    X = _view(x, np.float32, nt * dim).reshape(nt, dim)
    _view(xw, np.float32, nt * dim)[:] = (X * _view(nw, np.float32, dim)).reshape(-1)
    _view(ss, np.float32, nt)[:] = np.sum(X.astype(np.float64) ** 2, axis=1)


def _argmax(grid, logits, n, out_i, out_v) -> None:
    lg = _view(logits, np.float32, n)
    _view(out_i, np.int32, 1)[0] = int(np.argmax(lg))
    _view(out_v, np.float32, 1)[0] = lg.max()


def _topk(grid, logits, n, k, scratch, out_i, out_v) -> None:
    lg = _view(logits, np.float32, n)
    idx = np.argsort(-lg, kind="stable")[:k]
    _view(out_i, np.int32, k)[:] = idx
    _view(out_v, np.float32, k)[:] = lg[idx]


def _fill(dtype):
    def fill(grid, p, n, seed, *scale_offset) -> None:
        rng = np.random.default_rng(seed)
        if dtype == np.uint32:
            _view(p, np.uint32, n)[:] = rng.integers(0, 1 << 32, n, dtype=np.uint32)
            return
        v = rng.uniform(-1, 1, n)
        if dtype == np.int8:
            _view(p, np.int8, n)[:] = np.rint(127 * v)
        else:
            scale = scale_offset[0]
            offset = scale_offset[1] if len(scale_offset) > 1 else 0.0
            _view(p, dtype, n)[:] = offset + scale * v
    return fill


def _set_u16(grid, p, n, stride, value) -> None:
    assert p % 2 == 0
    _view(p, np.uint16, (n - 1) * stride + 1)[::stride] = value


_KERNELS = {"attention_split": _attention, "embed": _embed, "embed_i8": _embed_i8, "sumsq": _sumsq, "argmax": _argmax,
            "topk": _topk, "fill_f32": _fill(np.float32), "fill_f16": _fill(np.float16),
            "fill_i8": _fill(np.int8), "fill_u32": _fill(np.uint32), "set_u16": _set_u16}


class FakeKernel:
    def __init__(self, name: str, signature: str) -> None:
        self.name, self.signature = name, signature

    def set_max_dynamic_smem(self, nbytes: int) -> None:
        pass

    def launch(self, stream: FakeStream, grid, block: int, smem: int, *args) -> None:
        assert len(args) == len(self.signature), self.name
        grid = tuple(list(grid) + [1, 1])[:3]
        if self.name.startswith("linear_"):
            a = type(args[0]).from_buffer_copy(args[0])   # launch copies its parameters
            fn = lambda: _linear(self.name, grid, block, a)  # noqa: E731
        else:
            fn = lambda: _KERNELS[self.name](grid, *args)  # noqa: E731
        stream._do(fn)


class FakeModule:
    def __init__(self, device: FakeDevice, cubin: bytes, name: str) -> None:
        pass

    def kernel(self, name: str, signature: str) -> FakeKernel:
        return FakeKernel(name, signature)

    def unload(self) -> None:
        pass


class FakeDriverAPI:
    """The few driver calls `cuda_driver.StagedUploader` makes, on host memory: pinned
    buffers are numpy arrays, "device" addresses host ones, async copies happen at once.
    So the real uploader (its threads, chunks, pitches and error path) runs here."""

    class CUresult:
        CUDA_SUCCESS = 0
        CUDA_ERROR_OUT_OF_MEMORY = 2

    class CUstream_flags:
        CU_STREAM_NON_BLOCKING = 1

    class CUmemorytype:
        CU_MEMORYTYPE_HOST, CU_MEMORYTYPE_DEVICE = 1, 2

    class CUDA_MEMCPY2D:
        pass

    def __init__(self) -> None:
        self._pinned: dict[int, np.ndarray] = {}
        self.copies = 0
        self.fail_after: int | None = None     # raise an error from the n-th copy on

    def _copied(self) -> int:
        self.copies += 1
        if self.fail_after is not None and self.copies > self.fail_after:
            return 999
        return 0

    def cuMemHostAlloc(self, n, flags):
        a = np.zeros(n, np.uint8)
        self._pinned[a.ctypes.data] = a
        return 0, a.ctypes.data

    def cuMemFreeHost(self, p):
        self._pinned.pop(p, None)
        return (0,)

    def cuCtxSetCurrent(self, ctx):
        return (0,)

    def cuStreamCreate(self, flags):
        return 0, object()

    def cuStreamSynchronize(self, h):
        return (0,)

    def cuStreamDestroy(self, h):
        return (0,)

    def cuMemcpyHtoDAsync(self, dst, src, n, stream):
        ctypes.memmove(int(dst), int(src), int(n))
        return (self._copied(),)

    def cuMemcpy2DAsync(self, p, stream):
        for r in range(p.Height):
            ctypes.memmove(int(p.dstDevice) + r * p.dstPitch, p.srcHost + r * p.srcPitch, p.WidthInBytes)
        return (self._copied(),)


@pytest.fixture
def fake_driver(monkeypatch):
    from kernels import cuda_driver
    api = FakeDriverAPI()
    monkeypatch.setattr(cuda_driver, "_driver", lambda: api)
    return api


@pytest.fixture
def emulated(monkeypatch, fake_driver):
    """The CUDA backend module, running on the emulator (the real StagedUploader, with
    small chunks so matrices arrive in many pieces from three threads)."""
    import inference.backends.cuda as backend
    from kernels import cuda_compile, cuda_driver
    fake = types.SimpleNamespace(init=lambda: 2, GiB=float(1 << 30), Device=FakeDevice, Buffer=FakeBuffer,
                                 Stream=FakeStream, Event=FakeEvent, Graph=FakeGraph, Module=FakeModule,
                                 CudaError=cuda_driver.CudaError, USE_CPU=cuda_driver.USE_CPU,
                                 INSTALL=cuda_driver.INSTALL, LESS_MEMORY=cuda_driver.LESS_MEMORY,
                                 StagedUploader=lambda device, chunk=0: cuda_driver.StagedUploader(
                                     device, threads=3, chunk=16 << 10))
    monkeypatch.setattr(backend, "cu", fake)
    monkeypatch.setattr(cuda_compile, "get_cubin", lambda *a, **k: b"")
    yield backend


# ------------------------------------------------------------------ tests
SEQ = [1, 5, 9, 2, 7, 3, 11, 4, 8, 6]


def _model(dim=64, hidden=96, layers=3, heads=4, kv_heads=2, vocab=100, seq=32, shared=True, seed=0):
    cfg = ModelConfig(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                      vocab_size=vocab, seq_len=seq, shared_classifier=shared)
    return random_weights(cfg, seed=seed, scale=0.1)


def _close(a, b, rtol=1e-4) -> bool:
    return float(np.max(np.abs(a - b))) <= rtol * max(1.0, float(np.abs(a).max()))


@pytest.mark.parametrize("quant", ["fp32", "fp16", "int8"])
@pytest.mark.parametrize("shape", [dict(), dict(kv_heads=4, shared=False), dict(heads=4, kv_heads=1, hidden=172)])
def test_emulated_backend_matches_cpu(emulated, quant, shape) -> None:
    from app.commands.validate import prepare_weights
    from inference.backends.cpu import CpuBackend
    w = prepare_weights(_model(**shape), quant)
    cpu, gpu = CpuBackend(w), emulated.CudaBackend(w, quant=quant)
    for a, b in zip(_stepwise(cpu, SEQ, 4), _stepwise(gpu, SEQ, 4)):
        assert _close(a, b)
    assert gpu.argmax() == int(np.argmax(cpu.logits()))
    assert gpu.weight_type == quant
    gpu.close()


def test_emulated_uploads_are_staged_in_chunks(emulated, fake_driver) -> None:
    gpu = emulated.CudaBackend(_model(layers=2), quant="fp32")
    assert gpu.upload_mode == "staged" and fake_driver.copies > 20
    gpu.close()


def test_emulated_staged_upload_error_falls_back_to_plain_copies(emulated, fake_driver, monkeypatch) -> None:
    from inference.backends.cpu import CpuBackend
    fake_driver.fail_after = 3
    w = _model(layers=3)
    gpu = emulated.CudaBackend(w, quant="fp32")
    assert gpu.upload_mode.startswith("plain (staged upload failed")
    for a, b in zip(_stepwise(CpuBackend(w), SEQ, 4), _stepwise(gpu, SEQ, 4)):
        assert _close(a, b)
    monkeypatch.setenv("LLAMA_CHAT_CUDA_STAGED", "0")
    assert emulated.CudaBackend(w, quant="fp32").upload_mode == "plain"


def test_emulated_w1_w3_interleave_on_upload_without_a_host_copy(emulated, monkeypatch) -> None:
    monkeypatch.setenv("LLAMA_CHAT_CUDA_STAGED", "0")
    before = FakeBuffer.pitched
    gpu = emulated.CudaBackend(_model(layers=2), quant="fp32")
    assert FakeBuffer.pitched - before == 2 * 2      # w1 and w3 of each layer: pitched copies
    gpu.close()


def test_emulated_refused_pitched_upload_falls_back_to_a_host_copy(emulated, monkeypatch) -> None:
    from inference.backends.cpu import CpuBackend

    def refuse(self, host, offset, pitch):
        from kernels.cuda_driver import CudaError
        raise CudaError("CUDA pitched upload failed: CUDA_ERROR_INVALID_VALUE")

    monkeypatch.setattr(FakeBuffer, "upload_rows", refuse)
    monkeypatch.setattr(emulated, "_PITCHED", [True])
    monkeypatch.setenv("LLAMA_CHAT_CUDA_STAGED", "0")
    w = _model(layers=2)
    gpu = emulated.CudaBackend(w, quant="fp32")
    assert emulated._PITCHED == [False]
    for a, b in zip(_stepwise(CpuBackend(w), SEQ, 4), _stepwise(gpu, SEQ, 4)):
        assert _close(a, b)


def test_emulated_decode_replays_one_graph(emulated) -> None:
    gpu = emulated.CudaBackend(_model(), quant="fp32")
    before = FakeGraph.launches
    _stepwise(gpu, SEQ, 3)
    assert FakeGraph.launches - before == len(SEQ) - 3   # every single-token step is a replay
    gpu.close()


def test_emulated_default_model_matches_cpu(emulated) -> None:
    from inference.backends.cpu import CpuBackend
    from inference.loader import load_model
    w = load_model().weights
    cpu, gpu = CpuBackend(w), emulated.CudaBackend(w, quant="fp32")
    for a, b in zip(_stepwise(cpu, SEQ, 5), _stepwise(gpu, SEQ, 5)):
        assert _close(a, b)


def test_emulated_chunked_prefill_and_rollback(emulated) -> None:
    w = _model(seed=2)
    a, b = emulated.CudaBackend(w, quant="fp32", max_batch=3), emulated.CudaBackend(w, quant="fp32")
    a.forward(SEQ, 0)
    ref = _stepwise(b, SEQ, 1)[-1]
    assert _close(a.logits(), ref)
    a.forward(SEQ[4:], 4)
    assert _close(a.logits(), ref)


@pytest.mark.parametrize("quant", ["fp32", "int8"])
def test_emulated_layer_split(emulated, quant) -> None:
    from app.commands.validate import prepare_weights
    w = prepare_weights(_model(layers=5, seed=3), quant)
    one = emulated.CudaBackend(w, quant=quant)
    three = emulated.CudaBackend(w, quant=quant, gpu_mem=[1, 2, 2], devices=[0, 0, 1])
    assert "layers split 1/2/2" in three.describe()
    for a, b in zip(_stepwise(one, SEQ, 4), _stepwise(three, SEQ, 4)):
        assert _close(a, b, 1e-5)
    with pytest.raises(BackendError):
        emulated.CudaBackend(w, quant=quant, gpu_mem=[1, 1, 1])   # the emulator has 2 GPUs


def test_emulated_nan_logits_are_refused_by_argmax_and_topk(emulated) -> None:
    """The device argmax's value comes back with its id (one 8-byte read): NaN logits
    (here from a NaN norm weight) raise NonFiniteError, with speculation on or off."""
    from inference.errors import NonFiniteError
    w = _model(seed=5)
    w.final_norm[3] = np.nan
    for speculate in (True, False):
        be = emulated.CudaBackend(w, quant="fp32", speculate=speculate)
        be.forward(SEQ[:4], 0)
        with pytest.raises(NonFiniteError):
            be.argmax()
        with pytest.raises(NonFiniteError):
            be.topk(5)
        be.close()


def test_emulated_speculation(emulated) -> None:
    w = _model(seed=4)
    a = emulated.CudaBackend(w, quant="fp32", speculate=True)
    b = emulated.CudaBackend(w, quant="fp32", speculate=False)
    for be in (a, b):
        be.forward(SEQ[:5], 0)
    t = a.argmax()
    assert a._spec == (5, t, 0)                # the next step is already running (slot 0)
    assert t == b.argmax() == a.argmax()
    assert _close(a.logits(), b.logits(), 1e-6)
    assert list(a.topk(7)[0]) == list(b.topk(7)[0])
    before = FakeGraph.launches
    a.forward([t], 5)                          # confirmed: nothing new is launched
    assert FakeGraph.launches == before and a._spec is None
    b.forward([t], 5)
    assert _close(a.logits(), b.logits(), 1e-6)
    t2 = a.argmax()
    other = (t2 + 1) % w.config.vocab_size
    for be in (a, b):                          # missed: the step is redone with the real token
        be.forward([other], 6)
    assert _close(a.logits(), b.logits(), 1e-6)
    assert a.argmax() == b.argmax()
    for be in (a, b):                          # a new prompt chunk overwrites the speculation
        be.forward(SEQ[1:4], 1)
    assert _close(a.logits(), b.logits(), 1e-6)
    last = w.config.seq_len - 1                # no speculation past the context
    a.forward([3], last)
    a.argmax()
    assert a._spec is None


def test_emulated_random_weights_and_memory(emulated) -> None:
    for quant in ("int8", "fp16", "fp32"):
        be = emulated.CudaBackend.random(SHAPES["stories260K"], quant, seed=1)
        be.forward([1, 2, 3], 0)
        lg = be.logits()
        assert np.all(np.isfinite(lg)) and lg.std() > 0
        m = be.memory()
        assert m.weight_bytes > 0 and m.kv_cache_bytes > 0 and m.device_total == 16 << 30 or m.device_total
        assert be.weight_bytes_per_token() > 0
        be.close()
        with pytest.raises(BackendError):
            be.forward([1], 0)


def test_emulated_errors(emulated) -> None:
    w = _model()
    be = emulated.CudaBackend(w, quant="fp32")
    for tokens, pos in (([w.config.vocab_size], 0), ([1, 2], w.config.seq_len - 1), ([], 0), ([-1], 0)):
        with pytest.raises(BackendError):
            be.forward(tokens, pos)
    with pytest.raises(BackendError):
        emulated.CudaBackend(w, quant="int4")
    huge = ModelConfig(dim=8192, hidden_dim=28672, n_layers=80, n_heads=64, n_kv_heads=8,
                       vocab_size=32000, seq_len=4096)
    with pytest.raises(BackendError) as e:
        emulated.CudaBackend.random(huge, "fp16")
    assert "GiB" in str(e.value) and "--device cpu" in str(e.value) and "\n" not in str(e.value)


def test_rows_per_block_matches_the_tiles() -> None:
    for nw, r, ks, u in (*LINEAR_CFG.values(), *BLOCK_CFG.values()):
        assert r % 2 == 0 and nw % ks == 0 and u >= 1 and math.log2(nw).is_integer()
        assert r // 2 * 8 <= 32   # the pair epilogue gives each (row pair, token) its own lane


# ------------------------------------------------------------------ GGUF block types
BLOCK_TYPES = tuple(BLOCK_CODES)


def _cfg(dim=256, hidden=512, layers=2, heads=4, kv_heads=2, vocab=300, seq=40, shared=False, **kw) -> ModelConfig:
    return ModelConfig(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads, n_kv_heads=kv_heads,
                       vocab_size=vocab, seq_len=seq, shared_classifier=shared, **kw)


def _agree(cpu, gpu, tokens=SEQ, prefill=4, rtol=1e-4) -> None:
    """Prefill then decode step by step: every step's logits within rtol x max(1, max|logit|)
    of the CPU's, and the same greedy token (the device's argmax)."""
    for step, (a, b) in enumerate(zip(_stepwise(cpu, tokens, prefill), _stepwise(gpu, tokens, prefill))):
        assert _close(a, b, rtol), f"step {step}: max |dlogit| {np.max(np.abs(a - b)):.2e}"
    assert gpu.argmax() == int(np.argmax(cpu.logits()))


@pytest.mark.parametrize("wtype", BLOCK_TYPES)
@pytest.mark.parametrize("shared", [False, True])
def test_emulated_block_type_matches_cpu(emulated, wtype, shared) -> None:
    from inference.backends.cpu import CpuBackend
    w = random_weights(_cfg(shared=shared), seed=11, scale=0.05, wtype=wtype)
    gpu = emulated.CudaBackend(w)
    assert gpu.weight_type == wtype
    # the planes hold exactly the file's bytes
    assert gpu.weight_bytes_per_token() == sum(t.nbytes for (n, _), t in w.matrices()
                                               if n != "tok_embeddings" or shared)
    _agree(CpuBackend(w), gpu)


def _mixed(cfg: ModelConfig, plan: dict) -> "ModelWeights":
    """Random weights whose (name, layer) matrices take the storage `plan` names."""
    from inference.weights import ModelWeights
    pools = {t: random_weights(cfg, seed=hash(t) % 1000, scale=0.05, wtype=t) for t in set(plan.values())}
    base = random_weights(cfg, seed=3, scale=0.05)
    w = ModelWeights(cfg, dict(base.tensors))
    for key, t in plan.items():
        w.tensors[key] = pools[t].tensors[key]
    return w


def test_emulated_mixed_types_per_layer_match_cpu(emulated) -> None:
    """A Q4_K_M-like mix: types per (tensor, layer); q/k/v of three storages in one launch,
    a float part beside block parts, w1 and w3 apart (the gated epilogue), int8 groups."""
    from inference.backends.cpu import CpuBackend
    from inference.quantize import quantize_q8
    cfg = _cfg(layers=3)
    plan = MIXED_PLAN
    w = _mixed(cfg, plan)
    w.tensors[("wo", 2)] = quantize_q8(np.asarray(w.tensors[("wo", 2)], np.float32), 32)
    gpu = emulated.CudaBackend(w)
    sh = gpu._shards[0]
    assert [p.wtype for p in sh.mats[("qkv", 0)].parts] == ["q4_k", "q6_k"]
    assert sh.mats[("qkv", 0)].groups == [[0, 1]]                 # one launch
    assert sh.mats[("qkv", 1)].groups == [[0, 1], [2]]            # blocks together, fp16 alone
    assert ("w1", 1) in sh.mats and ("w13", 1) not in sh.mats     # w1 / w3 differ: gated epilogue
    assert set(gpu.weight_type.split("+")) == set(plan.values()) | {"int8"}
    _agree(CpuBackend(w), gpu)


def write_mixed_gguf(path: str, cfg: ModelConfig, plan: dict, seed: int = 0) -> None:
    """A GGUF model file whose matrices are stored in the block types `plan` names per
    (tensor, layer) (fp32 elsewhere), written by the project's own writer."""
    from inference.architecture import spec, tensor_keys
    from inference.formats.gguf_writer import TensorOut, write_gguf
    from inference.quant_types import QTYPES, random_blocks
    rng = np.random.default_rng(seed)
    a = cfg.arch
    meta = {"general.architecture": a, f"{a}.context_length": cfg.seq_len, f"{a}.embedding_length": cfg.dim,
            f"{a}.block_count": cfg.n_layers, f"{a}.feed_forward_length": cfg.hidden_dim,
            f"{a}.attention.head_count": cfg.n_heads, f"{a}.attention.head_count_kv": cfg.n_kv_heads,
            f"{a}.rope.dimension_count": cfg.head_dim, f"{a}.attention.layer_norm_rms_epsilon": cfg.norm_eps,
            f"{a}.rope.freq_base": cfg.rope_theta}
    outs = []
    for name, layer in tensor_keys(cfg):
        s = spec(name, cfg)
        shape = tuple(s.shape(cfg))
        t = plan.get((name, layer))
        if t is None:
            arr = (rng.standard_normal(shape) * 0.05 + (0 if s.matrix else 1)).astype(np.float32)
            outs.append(TensorOut(s.key("gguf", layer), 0, shape, lambda arr=arr: arr))
        else:
            blk = random_blocks(t, shape[0], shape[1], rng, 0.05)
            outs.append(TensorOut(s.key("gguf", layer), QTYPES[t].ggml, shape, lambda blk=blk: blk.data))
    with open(path, "wb") as f:
        write_gguf(f, meta, outs)


def test_emulated_gguf_file_with_mixed_blocks_matches_cpu(emulated, tmp_path) -> None:
    """A real file through the real loader: block tensors are views of the memory map,
    made planar on upload (Q4_K_M-like: q/k Q4_K, v and w2 Q6_K, output Q6_K, some Q5_0)."""
    from inference.backends.cpu import CpuBackend
    from inference.formats import open_source
    cfg = _cfg(layers=2)
    plan = {("tok_embeddings", None): "q4_k", ("output", None): "q6_k"}
    for l in range(cfg.n_layers):
        plan.update({("wq", l): "q4_k", ("wk", l): "q4_k", ("wv", l): "q6_k" if l == 0 else "q5_0",
                     ("wo", l): "q4_k", ("w1", l): "q4_k", ("w3", l): "q4_k", ("w2", l): "q6_k"})
    path = str(tmp_path / "mixed.gguf")
    write_mixed_gguf(path, cfg, plan)
    w = open_source(path).weights()
    assert {w.get(*k).qtype for k in plan} == {"q4_k", "q6_k", "q5_0"}
    gpu = emulated.CudaBackend(w)
    assert gpu.weight_bytes_per_token() == sum(w.get(*k).nbytes for k in plan if k[0] != "tok_embeddings")
    _agree(CpuBackend(w), gpu)


@pytest.mark.parametrize("variant", ["neox_bias", "head_dim", "llama3_scaling", "rope_freqs", "linear_scaling"])
def test_emulated_architecture_variants_match_cpu(emulated, variant) -> None:
    """The architecture table's variants on the CUDA path: NEOX pairs (rows permuted on
    upload), q/k/v biases, q_dim != dim, RoPE scaling and per-frequency factors."""
    from inference.backends.cpu import CpuBackend
    from inference.config import RopeScaling
    kw = {"neox_bias": dict(arch="qwen2", rope_style="neox", qkv_bias=True),
          "head_dim": dict(head_dim=48, rope_style="neox"),
          "llama3_scaling": dict(rope_scaling=RopeScaling("llama3", 8.0, 1.0, 4.0, 16)),
          "rope_freqs": dict(rope_freqs=True),
          "linear_scaling": dict(rope_scaling=RopeScaling("linear", 2.0))}[variant]
    cfg = _cfg(rope_theta=500.0, **kw)
    for wtype in ("fp32", "q4_k"):
        w = random_weights(cfg, seed=5, scale=0.08, wtype=wtype)
        _agree(CpuBackend(w), emulated.CudaBackend(w), tokens=SEQ + [12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22])


# ------------------------------------------------------------------ batched decode
def test_emulated_forward_batch_matches_cpu_and_solo_runs(emulated) -> None:
    """Several sequences, each in its own slot at its own position, decoded in one pass:
    the same logits as the CPU's forward_batch and as each sequence run alone."""
    from inference.backends.cpu import CpuBackend
    w = random_weights(_cfg(), seed=21, scale=0.05, wtype="q4_k")
    prompts = [[1, 5, 9, 2], [3, 3, 7], [8, 1, 2, 6, 4, 9], [10]]
    cpu = CpuBackend(w, slots=len(prompts))
    gpu = emulated.CudaBackend(w, slots=len(prompts), max_batch=3)   # a 4-entry batch runs as 3 + 1
    for s, p in enumerate(prompts):
        cpu.forward(p[:-1] or p, 0, slot=s) if len(p) > 1 else None
        if len(p) > 1:
            gpu.forward(p[:-1], 0, slot=s)
    toks, pos, slots = [p[-1] for p in prompts], [len(p) - 1 for p in prompts], list(range(len(prompts)))
    a = cpu.forward_batch(toks, pos, slots)
    b = gpu.forward_batch(toks, pos, slots)
    assert b.shape == (len(prompts), w.config.vocab_size) and b.dtype == np.float32
    for i, p in enumerate(prompts):
        assert _close(a[i], b[i]), i
        solo = emulated.CudaBackend(w)
        solo.forward(p, 0)
        assert _close(solo.logits(), b[i], 1e-5), i
    assert _close(gpu.logits(), b[-1], 0) and gpu.argmax() == int(np.argmax(b[-1]))
    # a second step for every sequence (one batch graph replayed), then two tokens of one
    # sequence in one batch (consecutive positions of one slot)
    nxt = [int(np.argmax(r)) for r in a]
    a2 = cpu.forward_batch(nxt, [q + 1 for q in pos], slots)
    b2 = gpu.forward_batch(nxt, [q + 1 for q in pos], slots)
    assert all(_close(x, y) for x, y in zip(a2, b2))
    a3 = cpu.forward_batch([4, 5], [pos[0] + 2, pos[0] + 3], [0, 0])
    b3 = gpu.forward_batch([4, 5], [pos[0] + 2, pos[0] + 3], [0, 0])
    assert all(_close(x, y) for x, y in zip(a3, b3))


def test_emulated_forward_batch_errors(emulated) -> None:
    gpu = emulated.CudaBackend(_model(), quant="fp32", slots=2)
    for toks, pos, slots in (([1], [0], [2]), ([1], [99], [0]), ([1, 2], [0], [0, 1]), ([100], [0], [0])):
        with pytest.raises(BackendError):
            gpu.forward_batch(toks, pos, slots)
    with pytest.raises(BackendError):
        gpu.forward([1], 0, slot=5)
    assert gpu.forward_batch([], [], []).shape == (0, 100)


@pytest.mark.parametrize("wtype", BLOCK_TYPES)
def test_emulated_random_block_weights_on_device(emulated, wtype) -> None:
    """`bench --random --quant q4_k` on CUDA: blocks drawn on the device, finite logits."""
    cfg = _cfg(dim=512, hidden=768, vocab=500)
    be = emulated.CudaBackend.random(cfg, wtype, seed=3)
    be.forward([1, 2, 3], 0)
    be.forward([4], 3)
    lg = be.logits()
    assert np.all(np.isfinite(lg)) and lg.std() > 0
    assert be.weight_type == wtype
    qt = __import__("inference.quant_types", fromlist=["QTYPES"]).QTYPES[wtype]
    per_layer = (cfg.q_dim + 2 * cfg.kv_dim + cfg.dim + 2 * cfg.hidden_dim) * cfg.dim + cfg.dim * cfg.hidden_dim
    want = (cfg.n_layers * per_layer + cfg.vocab_size * cfg.dim) // qt.block * qt.nbytes
    assert be.weight_bytes_per_token() == want
