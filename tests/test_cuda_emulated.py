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

from inference.config import SHAPES, ModelConfig
from inference.errors import BackendError
from inference.weights import random_weights

from .test_cuda_backend import _stepwise

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
def _linear(name: str, a) -> None:
    wt = int(name.split("_")[1][1:])
    rows, ind, nt = a.rows, a.in_dim, a.ntok
    dt = {0: np.float32, 1: np.float16, 2: np.int8}[wt]
    W = _view(a.W, dt, rows * ind).reshape(rows, ind).astype(np.float32)
    if wt == 2:
        g = a.gsize
        S = _view(a.S, np.float32, rows * ind // g).reshape(rows, ind // g)
        W = (W.reshape(rows, ind // g, g) * S[:, :, None]).reshape(rows, ind)
    x = _view(a.x, np.float32, nt * ind).reshape(nt, ind).copy()
    if a.ss:
        ss = _view(a.ss, np.float32, nt)
        x *= (1.0 / np.sqrt(ss / ind + a.eps))[:, None]
    if a.nw:
        x *= _view(a.nw, np.float32, ind)
    acc = x @ W.T                                         # (nt, rows)
    if a.mode == 0:
        _view(a.out, np.float32, nt * rows)[:] = acc.reshape(-1)
    elif a.mode == 1:
        out = _view(a.out, np.float32, nt * rows).reshape(nt, rows)
        out += acc
        if a.ss_out:
            _view(a.ss_out, np.float32, nt)[:] += np.sum(out * out, axis=1)
        if a.xw_out:
            _view(a.xw_out, np.float32, nt * rows)[:] = (out * _view(a.nw_next, np.float32, rows)).reshape(-1)
    elif a.mode == 2:
        g, u = acc[:, 0::2], acc[:, 1::2]
        _view(a.out, np.float32, nt * rows // 2)[:] = (g / (1 + np.exp(-g)) * u).reshape(-1)
    else:
        pos0 = int(_view(a.pos, np.int32, 1)[0])
        d, kv, hd = a.dim, a.kv_dim, a.head_dim
        q = _view(a.out, np.float32, nt * d).reshape(nt, d)
        kc = _view(a.kcache, np.float32, (pos0 + nt) * kv).reshape(-1, kv)
        vc = _view(a.vcache, np.float32, (pos0 + nt) * kv).reshape(-1, kv)
        for t in range(nt):
            p = pos0 + t
            v = acc[t].copy()
            for lo, n in ((0, d), (d, kv)):
                i = np.arange(0, n, 2)
                ang = p * (1.0 / a.rope_theta ** ((i % hd) / hd))
                c, s = np.cos(ang), np.sin(ang)
                x0, x1 = v[lo + i].copy(), v[lo + i + 1].copy()
                v[lo + i], v[lo + i + 1] = x0 * c - x1 * s, x0 * s + x1 * c
            q[t], kc[p], vc[p] = v[:d], v[d:d + kv], v[d + kv:]


def _attention(grid, q, kc, vc, out, pos_ptr, dim, kv_dim, hd, kv_mul, scale, part, counters) -> None:
    nh, _, nt = grid
    pos0 = int(_view(pos_ptr, np.int32, 1)[0])
    n = pos0 + nt
    Q = _view(q, np.float32, nt * dim).reshape(nt, nh, hd)
    K = _view(kc, np.float32, n * kv_dim).reshape(n, -1, hd)
    V = _view(vc, np.float32, n * kv_dim).reshape(n, -1, hd)
    O = _view(out, np.float32, nt * dim).reshape(nt, nh, hd)
    assert not _view(counters, np.uint32, nt * nh).any()
    for t in range(nt):
        m = pos0 + t + 1
        for h in range(nh):
            s = K[:m, h // kv_mul] @ Q[t, h] * scale
            p = np.exp(s - s.max())
            O[t, h] = (p / p.sum()) @ V[:m, h // kv_mul]


def _embed(grid, tokens, emb, x, ss, dim, nw, xw) -> None:
    nt = grid[0]
    ids = _view(tokens, np.int32, nt)
    E = _view(emb, np.float32, (int(ids.max()) + 1) * dim).reshape(-1, dim)
    X = E[ids]
    _view(x, np.float32, nt * dim)[:] = X.reshape(-1)
    _view(xw, np.float32, nt * dim)[:] = (X * _view(nw, np.float32, dim)).reshape(-1)
    _view(ss, np.float32, nt)[:] = np.sum(X * X, axis=1)


def _sumsq(grid, x, ss, dim, nw, xw) -> None:
    nt = grid[0]
    X = _view(x, np.float32, nt * dim).reshape(nt, dim)
    _view(xw, np.float32, nt * dim)[:] = (X * _view(nw, np.float32, dim)).reshape(-1)
    _view(ss, np.float32, nt)[:] = np.sum(X * X, axis=1)


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
        v = rng.uniform(-1, 1, n)
        if dtype == np.int8:
            _view(p, np.int8, n)[:] = np.rint(127 * v)
        else:
            scale = scale_offset[0]
            offset = scale_offset[1] if len(scale_offset) > 1 else 0.0
            _view(p, dtype, n)[:] = offset + scale * v
    return fill


_KERNELS = {"attention_split": _attention, "embed": _embed, "sumsq": _sumsq, "argmax": _argmax,
            "topk": _topk, "fill_f32": _fill(np.float32), "fill_f16": _fill(np.float16),
            "fill_i8": _fill(np.int8)}


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
            fn = lambda: _linear(self.name, a)  # noqa: E731
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


@pytest.fixture
def emulated(monkeypatch):
    """The CUDA backend module, running on the emulator."""
    import inference.backends.cuda as backend
    from kernels import cuda_compile
    fake = types.SimpleNamespace(init=lambda: 2, GiB=float(1 << 30), Device=FakeDevice, Buffer=FakeBuffer,
                                 Stream=FakeStream, Event=FakeEvent, Graph=FakeGraph, Module=FakeModule)
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


def test_emulated_speculation(emulated) -> None:
    w = _model(seed=4)
    a = emulated.CudaBackend(w, quant="fp32", speculate=True)
    b = emulated.CudaBackend(w, quant="fp32", speculate=False)
    for be in (a, b):
        be.forward(SEQ[:5], 0)
    t = a.argmax()
    assert a._spec == (5, t)                   # the next step is already running
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
    from inference.backends.cuda import LINEAR_CFG
    for nw, r, ks, u in LINEAR_CFG.values():
        assert r % 2 == 0 and nw % ks == 0 and u >= 1 and math.log2(nw).is_integer()
