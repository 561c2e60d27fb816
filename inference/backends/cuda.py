"""The CUDA backend: NVRTC-compiled kernels launched through cuda-python's driver API.

Weights are uploaded once (fp32, fp16, or int8 + fp32 group scales), the KV cache lives on
the device, and a step costs one host sync: the decode step (every layer, the classifier
and the argmax) is captured once as a CUDA graph and replayed per token, reading the token
id and position from device memory. Per layer only five kernels run: RMSNorm is folded
into the next matrix's prologue (the residual kernels accumulate the sum of squares),
RoPE and the KV-cache write into the fused QKV epilogue, SwiGLU into the interleaved
w1/w3 epilogue, the residual add into the wo / w2 epilogues.

Layers can be split across several GPUs (`gpu_mem`, in proportion to the memory given);
the activation crosses once per device boundary. `devices` maps the split onto device
ordinals, so one GPU can host two "shards" for testing the same code path.
"""
from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kernels import cuda_compile, cuda_driver as cu

from ..config import ModelConfig
from ..errors import BackendError
from ..quant_types import q8_0_groups
from ..weights import BlockTensor, ModelWeights, QTensor, Tensor, tensor_type
from .base import Backend, MemoryInfo

WT_CODE = {"fp32": 0, "fp16": 1, "int8": 2}
WT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
WIDE_VEC = {"fp32": 4, "fp16": 8, "int8": 16}   # elements per 16-byte load
MODE_STORE, MODE_RESID, MODE_SWIGLU, MODE_QKV = 0, 1, 2, 3
#: linear.cu tile per weight type: (warps per block, rows per warp, warps sharing rows,
#: vectors in flight); chosen with tests/bench_cuda_kernels.py on an H100.
LINEAR_CFG = {"fp32": (4, 2, 4, 4), "fp16": (4, 2, 4, 4), "int8": (4, 4, 2, 2)}
TOKEN_TILE = 8        # linear.cu: tokens per block in the batched (prefill) variant
TOPK_MAX = 256        # larger k falls back to a full logits copy
DEFAULT_MAX_CONTEXT = 8192   # positions the KV cache holds unless `context` says otherwise
ATTN_THREADS = 128


class LinearArgs(ctypes.Structure):
    """Mirror of `struct LinearArgs` in kernels/cuda/linear.cu (passed by value)."""

    _fields_ = [
        ("W", ctypes.c_uint64), ("S", ctypes.c_uint64),
        ("rows", ctypes.c_int32), ("in_dim", ctypes.c_int32), ("gsize", ctypes.c_int32),
        ("x", ctypes.c_uint64), ("ntok", ctypes.c_int32),
        ("ss", ctypes.c_uint64), ("nw", ctypes.c_uint64), ("eps", ctypes.c_float),
        ("mode", ctypes.c_int32), ("out", ctypes.c_uint64), ("ss_out", ctypes.c_uint64),
        ("dim", ctypes.c_int32), ("kv_dim", ctypes.c_int32), ("head_dim", ctypes.c_int32),
        ("kcache", ctypes.c_uint64), ("vcache", ctypes.c_uint64), ("pos", ctypes.c_uint64),
        ("rope_theta", ctypes.c_float), ("nw_next", ctypes.c_uint64), ("xw_out", ctypes.c_uint64),
    ]


#: Storage types the CUDA kernels read (bf16 is widened, Q8_0 repacked into int8 groups).
RUNS = ("fp32", "fp16", "bf16", "int8", "q8_0")


def check_runnable(weights: ModelWeights) -> None:
    """Refuse, in one line, what the CUDA kernels do not implement yet."""
    c = weights.config
    if c.qkv_bias or c.rope_style != "interleaved" or c.rope_freqs or c.rope_scaling.kind != "none" \
            or c.q_dim != c.dim:
        raise BackendError(f"the CUDA backend runs plain Llama-2-style models (interleaved RoPE without "
                           f"scaling, no biases, n_heads x head_dim == dim); this {c.arch} model needs "
                           f"--device cpu")
    other = sorted({tensor_type(t) for _, t in weights.matrices()} - set(RUNS))
    if other:
        raise BackendError(f"the CUDA backend has no kernels for {', '.join(other)} weights yet; use --device cpu")


def _host(t: Tensor) -> Tensor:
    """A matrix in a layout the upload understands: int8 groups or a float ndarray."""
    if isinstance(t, BlockTensor):
        if t.qtype == "q8_0":
            q, s = q8_0_groups(t)
            return QTensor(q, s, 32)
        return t.floats()
    return t


def _quantize(w: np.ndarray, group_size: int) -> QTensor:
    from ..quantize import quantize_q8
    return quantize_q8(w, group_size)


def _group_size(config: ModelConfig) -> int:
    from ..quantize import choose_group_size
    return choose_group_size(config, 64)


def _as_type(t: Tensor, wtype: str, group_size: int) -> Tensor:
    """One layer matrix in the storage the device will hold."""
    t = _host(t)
    if isinstance(t, QTensor):
        return t  # already int8: uploaded as is
    if wtype == "int8":
        return _quantize(np.asarray(t, dtype=np.float32), group_size)
    return np.ascontiguousarray(t, dtype=np.float16 if wtype == "fp16" else np.float32)


def _interleave_rows(a: Tensor, b: Tensor) -> Tensor:
    """Rows a0, b0, a1, b1, ...: w1/w3 pairs land in the same warp for the SwiGLU epilogue."""
    if isinstance(a, QTensor):
        return QTensor(_interleave_rows(a.q, b.q), _interleave_rows(a.s, b.s), a.group_size)
    return np.stack([a, b], axis=1).reshape(2 * a.shape[0], a.shape[1])


def _concat_rows(parts: Sequence[Tensor]) -> Tensor:
    if isinstance(parts[0], QTensor):
        return QTensor(np.concatenate([p.q for p in parts]), np.concatenate([p.s for p in parts]),
                       parts[0].group_size)
    return np.concatenate(parts)


def _int8_group(weights: ModelWeights) -> int | None:
    """The group size of the model's int8 matrices (Q8_0 counts as groups of 32)."""
    for _, t in weights.matrices():
        if isinstance(t, QTensor):
            return t.group_size
        if isinstance(t, BlockTensor) and t.qtype == "q8_0":
            return 32
    return None


@dataclass
class DeviceMatrix:
    """A stack of `n` weight matrices (rows x in_dim) of one type on one device."""

    wtype: str
    rows: int
    in_dim: int
    n: int
    group_size: int
    data: cu.Buffer
    scales: cu.Buffer | None

    @property
    def stride(self) -> int:
        return self.rows * self.in_dim * WT_BYTES[self.wtype]

    @property
    def scale_stride(self) -> int:
        return self.rows * (self.in_dim // self.group_size) * 4 if self.scales else 0

    @property
    def nbytes(self) -> int:
        return self.data.nbytes + (self.scales.nbytes if self.scales else 0)

    @property
    def vec(self) -> int:
        wide = WIDE_VEC[self.wtype]
        ok = self.in_dim % wide == 0 and (self.wtype != "int8" or self.group_size % wide == 0)
        return wide if ok else 1

    def upload(self, i: int, t: Tensor) -> None:
        if isinstance(t, QTensor):
            self.data.upload(np.ascontiguousarray(t.q), i * self.stride)
            self.scales.upload(np.ascontiguousarray(t.s, dtype=np.float32), i * self.scale_stride)
        else:
            self.data.upload(np.ascontiguousarray(t), i * self.stride)

    def free(self) -> None:
        self.data.free()
        if self.scales:
            self.scales.free()


@dataclass
class Shard:
    """Layers [l0, l1) on one device, with their KV cache and activation buffers."""

    device: cu.Device
    l0: int
    l1: int
    first: bool
    last: bool
    stream: cu.Stream = None
    kernels: dict = field(default_factory=dict)
    modules: list = field(default_factory=list)
    bufs: dict = field(default_factory=dict)
    mats: dict = field(default_factory=dict)
    graph: cu.Graph | None = None
    done: cu.Event | None = None

    @property
    def n_layers(self) -> int:
        return self.l1 - self.l0


def split_layers(n_layers: int, shares: Sequence[float]) -> list[tuple[int, int, int]]:
    """(share index, l0, l1): contiguous layer ranges in proportion to `shares`; a share
    given no layer is dropped."""
    if not shares or any(not (s >= 0) for s in shares) or sum(shares) <= 0:
        raise BackendError(f"--gpu-mem needs positive numbers, got {list(shares)}")
    total = float(sum(shares))
    bounds, acc = [0], 0.0
    for s in shares:
        acc += s
        bounds.append(int(round(n_layers * acc / total)))
    bounds[-1] = n_layers
    return [(i, a, b) for i, (a, b) in enumerate(zip(bounds, bounds[1:])) if b > a]


class CudaBackend(Backend):
    """A model on one or more NVIDIA GPUs; see the module docstring for the design."""

    name = "cuda"

    def __init__(self, weights: ModelWeights | None, quant: str | None = None,
                 gpu_mem: Sequence[float] | None = None, devices: Sequence[int] | None = None,
                 max_batch: int = 64, config: ModelConfig | None = None, seed: int | None = None,
                 group_size: int | None = None, speculate: bool = False, context: int | None = None) -> None:
        """`quant`: 'int8', 'fp16', 'fp32', or None to keep the weights' own storage.
        `weights=None` with `config` and `seed` generates random weights on the device.
        `speculate`: after `argmax()`, start the next step with that token at once (see
        `argmax`). Off by default until it has run on a GPU: it was written and tested
        against the CPU emulator (tests/test_cuda_emulated.py) after the last H100 session."""
        c = self.config = weights.config if weights is not None else config
        if c is None:
            raise BackendError("internal: CudaBackend needs weights or a config")
        try:
            c.validate()
        except ValueError as e:
            raise BackendError(f"cannot run this model on CUDA: {e}") from None
        if weights is not None:
            check_runnable(weights)
        n_ctx = min(c.seq_len, DEFAULT_MAX_CONTEXT) if context is None else int(context)
        if not 1 <= n_ctx <= c.seq_len:
            raise BackendError(f"the context must be between 1 and the model's {c.seq_len} positions, got {n_ctx}")
        c = self.config = c.with_(seq_len=n_ctx)
        self.weight_type = self._resolve_quant(weights, quant)
        gs = _int8_group(weights) if weights is not None else None
        self.group_size = gs or group_size or _group_size(c)
        self.max_batch = max(1, int(max_batch))
        self._closed = False
        self._shards: list[Shard] = []
        self._host = np.zeros(1 + self.max_batch, dtype=np.int32)  # [pos, tokens...]
        self._host_ptr = self._host.ctypes.data
        self._speculate = speculate
        self._spec: tuple[int, int] | None = None   # (pos, token) of a step started by argmax()
        self._next_pos: int | None = None           # position after the last forward()
        self._result = np.zeros(1, dtype=np.int32)
        self._result_ptr = self._result.ctypes.data
        self._weight_bytes = 0
        try:
            self._build(weights, gpu_mem, devices, seed)
        except BaseException:
            self.close()
            raise

    # ---------------------------------------------------------------- construction
    @classmethod
    def random(cls, config: ModelConfig, quant: str = "int8", seed: int = 0, **kw) -> "CudaBackend":
        """Random weights generated on the device (a 7B shape takes seconds, not minutes)."""
        return cls(None, quant=quant, config=config, seed=seed, **kw)

    def _resolve_quant(self, weights: ModelWeights | None, quant: str | None) -> str:
        if quant is not None and quant not in WT_CODE:
            raise BackendError(f"unknown CUDA weight type {quant!r}: use int8, fp16 or fp32")
        if weights is None:
            return quant or "int8"
        types = {tensor_type(t) for _, t in weights.matrices()}
        if types & {"int8", "q8_0"}:
            return "int8"  # int8 groups are uploaded as they are
        if quant:
            return quant
        return "fp16" if types == {"fp16"} else "fp32"

    def _build(self, weights: ModelWeights | None, gpu_mem, devices, seed) -> None:
        c = self.config
        count = cu.init()
        shares = list(gpu_mem) if gpu_mem else [1.0]
        ranges = split_layers(c.n_layers, shares)
        if devices is None:
            if len(shares) > count:
                raise BackendError(f"--gpu-mem lists {len(shares)} GPUs but only {count} found")
            devices = list(range(len(shares)))
        elif len(devices) != len(shares):
            raise BackendError(f"{len(shares)} memory shares but {len(devices)} devices given")
        dev_cache: dict[int, cu.Device] = {}
        for i, (share, l0, l1) in enumerate(ranges):
            o = int(devices[share])
            dev = dev_cache.get(o) or cu.Device(o)
            dev_cache[o] = dev
            self._shards.append(Shard(dev, l0, l1, first=i == 0, last=i == len(ranges) - 1))
        self._devices = list(dev_cache.values())
        # key slices per attention head: about two blocks per multiprocessor in decode
        sms = min(d.sm_count for d in self._devices)
        self._nsplit = max(1, min(32, c.seq_len, -(-2 * sms // c.n_heads)))
        self._check_memory()
        for sh in self._shards:
            self._load_kernels(sh)
            sh.stream = cu.Stream(sh.device)
            sh.done = cu.Event(sh.device)
            self._alloc_shard(sh)
            if weights is not None:
                self._upload_shard(sh, weights)
            else:
                self._randomize_shard(sh, seed or 0)
        for sh in self._shards:
            sh.stream.synchronize()

    def shard_bytes(self, l0: int, l1: int, first: bool, last: bool) -> int:
        """Device bytes a shard needs (weights, KV cache, activations)."""
        c = self.config
        n = l1 - l0
        b = WT_BYTES[self.weight_type]
        sc = 4 / self.group_size if self.weight_type == "int8" else 0
        per_layer = (c.dim * (c.dim + 2 * c.kv_dim) + c.dim * c.dim + 3 * c.dim * c.hidden_dim) * (b + sc)
        total = n * (per_layer + 2 * c.dim * 4 + 2 * c.seq_len * c.kv_dim * 4)
        if first:
            total += c.vocab_size * c.dim * 4
        if last:
            total += c.vocab_size * c.dim * (b + sc) + c.vocab_size * 4 * 4
        total += self.max_batch * (5 * c.dim + c.hidden_dim) * 4 + (2 * c.n_layers + 1) * self.max_batch * 4
        total += self.max_batch * c.n_heads * (self._nsplit * (c.head_dim + 2) + 1) * 4
        return int(total)

    def _check_memory(self) -> None:
        need: dict[int, int] = {}
        for sh in self._shards:
            need[sh.device.ordinal] = need.get(sh.device.ordinal, 0) + self.shard_bytes(sh.l0, sh.l1, sh.first, sh.last)
        for dev in self._devices:
            free, total = dev.mem_info()
            want = need[dev.ordinal] + (256 << 20)
            if want > free:
                raise BackendError(
                    f"not enough GPU memory on {dev.name}: the model needs {want / cu.GiB:.2f} GiB, "
                    f"{free / cu.GiB:.2f} GiB free of {total / cu.GiB:.1f} GiB; try --quant int8, "
                    "--gpu-mem to split across GPUs, or --device cpu")

    def _load_kernels(self, sh: Shard) -> None:
        dev = sh.device
        major = dev.cc[0]
        if major < 7:
            raise BackendError(f"{dev.name} (compute capability {dev.cc[0]}.{dev.cc[1]}) is too old; "
                               "use --device cpu")
        defines = {"linear": tuple(f"-DCFG{WT_CODE[wt]}={','.join(map(str, cfg))}"
                                   for wt, cfg in LINEAR_CFG.items())}
        mods = {name: cu.Module(dev, cuda_compile.get_cubin(name, dev.arch, defines=defines.get(name, ())), name)
                for name in ("linear", "attention", "sample")}
        sh.modules = list(mods.values())
        k = sh.kernels
        for wt, code in WT_CODE.items():
            for vec in (WIDE_VEC[wt], 1):
                for nt in (1, TOKEN_TILE):
                    k[(wt, vec, nt)] = mods["linear"].kernel(f"linear_w{code}_v{vec}_t{nt}", "s")
        k["attention"] = mods["attention"].kernel("attention_split", "ppppp" + "iiii" + "f" + "pp")
        smem = self._attn_smem()
        if smem > 48 * 1024:
            if smem > dev.max_smem_optin:
                raise BackendError(f"context {self.config.seq_len} is too long for this GPU's shared memory "
                                   f"(attention needs {smem} bytes); use --device cpu")
            k["attention"].set_max_dynamic_smem(smem)
        k["embed"] = mods["sample"].kernel("embed", "pppp" + "i" + "pp")
        k["sumsq"] = mods["sample"].kernel("sumsq", "ppi" + "pp")
        k["argmax"] = mods["sample"].kernel("argmax", "pipp")
        k["topk"] = mods["sample"].kernel("topk", "piippp")
        k["fill_f32"] = mods["sample"].kernel("fill_f32", "pqqff")
        k["fill_f16"] = mods["sample"].kernel("fill_f16", "pqqf")
        k["fill_i8"] = mods["sample"].kernel("fill_i8", "pqq")

    def _attn_smem(self) -> int:
        """q, per-thread partial outputs, and the scores of one key slice."""
        c = self.config
        return 4 * (c.head_dim + ATTN_THREADS + -(-c.seq_len // self._nsplit))

    def _buf(self, sh: Shard, name: str, nbytes: int) -> cu.Buffer:
        b = cu.Buffer(sh.device, nbytes, name)
        sh.bufs[name] = b
        return b

    def _matrix(self, sh: Shard, name: str, rows: int, in_dim: int, n: int, wtype: str) -> DeviceMatrix:
        gs = self.group_size
        data = self._buf(sh, name, n * rows * in_dim * WT_BYTES[wtype])
        scales = self._buf(sh, name + ".s", n * rows * (in_dim // gs) * 4) if wtype == "int8" else None
        m = DeviceMatrix(wtype, rows, in_dim, n, gs, data, scales)
        sh.mats[name] = m
        self._weight_bytes += m.nbytes
        return m

    def _alloc_shard(self, sh: Shard) -> None:
        c, T, L = self.config, self.max_batch, self.config.n_layers
        wt, n = self.weight_type, sh.n_layers
        self._matrix(sh, "wqkv", c.dim + 2 * c.kv_dim, c.dim, n, wt)
        self._matrix(sh, "wo", c.dim, c.dim, n, wt)
        self._matrix(sh, "w13", 2 * c.hidden_dim, c.dim, n, wt)
        self._matrix(sh, "w2", c.dim, c.hidden_dim, n, wt)
        for name in ("attn_norm", "ffn_norm"):
            self._buf(sh, name, n * c.dim * 4)
            self._weight_bytes += n * c.dim * 4
        kv = n * c.seq_len * c.kv_dim * 4
        self._buf(sh, "kcache", kv)
        self._buf(sh, "vcache", kv)
        for name, width in (("x", c.dim), ("xw", c.dim), ("q", c.dim), ("att", c.dim), ("hb", c.hidden_dim)):
            self._buf(sh, name, T * width * 4)
        self._buf(sh, "ss", (2 * L + 1) * T * 4)
        self._buf(sh, "attn_part", T * c.n_heads * self._nsplit * (c.head_dim + 2) * 4)
        cnt = self._buf(sh, "attn_count", T * c.n_heads * 4)
        sh.stream.memset32(cnt.ptr, 0, T * c.n_heads)  # the kernel leaves it zeroed again
        self._buf(sh, "host_in", (1 + T) * 4)   # [pos, tokens...]
        if sh.first:
            self._buf(sh, "emb", c.vocab_size * c.dim * 4)
            self._weight_bytes += c.vocab_size * c.dim * 4
        if sh.last:
            self._matrix(sh, "cls", c.vocab_size, c.dim, 1, wt)
            self._buf(sh, "final_norm", c.dim * 4)
            self._buf(sh, "logits", c.vocab_size * 4)
            self._buf(sh, "scratch", c.vocab_size * 4)
            self._buf(sh, "logits_prev", c.vocab_size * 4)
            self._buf(sh, "top_i", 4)
            self._buf(sh, "top_v", 4)
            self._buf(sh, "topk_i", TOPK_MAX * 4)
            self._buf(sh, "topk_v", TOPK_MAX * 4)

    def _upload_shard(self, sh: Shard, w: ModelWeights) -> None:
        c, wt, gs = self.config, self.weight_type, self.group_size
        for i, l in enumerate(range(sh.l0, sh.l1)):
            conv = {name: _as_type(w.get(name, l), wt, gs) for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}
            sh.mats["wqkv"].upload(i, _concat_rows([conv["wq"], conv["wk"], conv["wv"]]))
            sh.mats["wo"].upload(i, conv["wo"])
            sh.mats["w13"].upload(i, _interleave_rows(conv["w1"], conv["w3"]))
            sh.mats["w2"].upload(i, conv["w2"])
        for name in ("attn_norm", "ffn_norm"):
            norms = [np.asarray(w.get(name, layer), dtype=np.float32) for layer in range(sh.l0, sh.l1)]
            sh.bufs[name].upload(np.ascontiguousarray(np.stack(norms)))
        if sh.first:
            emb = _host(w.tok_embeddings)
            emb = emb.dequantize() if isinstance(emb, QTensor) else emb
            sh.bufs["emb"].upload(np.ascontiguousarray(emb, dtype=np.float32))
        if sh.last:
            sh.mats["cls"].upload(0, _as_type(w.output, wt, gs))
            sh.bufs["final_norm"].upload(np.ascontiguousarray(w.final_norm, dtype=np.float32))

    def _randomize_shard(self, sh: Shard, seed: int) -> None:
        """Weights ~ U(-a, a) with std 0.02, norms 1, generated by a hash kernel on the device."""
        sd = 0.02
        a = sd * math.sqrt(3.0)
        salt = [seed * 7919 + sh.l0 * 131]

        def fill(buf: cu.Buffer, wtype: str, n: int, scale: float = a, offset: float = 0.0) -> None:
            salt[0] += 1
            blocks = min(4096, max(1, (n + 255) // 256))
            s = int(salt[0]) & ((1 << 63) - 1)
            if wtype == "fp32":
                sh.kernels["fill_f32"].launch(sh.stream, (blocks,), 256, 0, buf.ptr, n, s, scale, offset)
            elif wtype == "fp16":
                sh.kernels["fill_f16"].launch(sh.stream, (blocks,), 256, 0, buf.ptr, n, s, scale)
            else:
                sh.kernels["fill_i8"].launch(sh.stream, (blocks,), 256, 0, buf.ptr, n, s)

        one = int(np.float32(1.0).view(np.uint32))
        for m in sh.mats.values():
            fill(m.data, m.wtype, m.data.nbytes // WT_BYTES[m.wtype])
            if m.scales is not None:  # q uniform in [-127, 127] has std ~73
                sh.stream.memset32(m.scales.ptr, int(np.float32(sd / 73.3).view(np.uint32)), m.scales.nbytes // 4)
        for name in ("attn_norm", "ffn_norm", "final_norm"):
            if name in sh.bufs:
                sh.stream.memset32(sh.bufs[name].ptr, one, sh.bufs[name].nbytes // 4)
        if sh.first:
            fill(sh.bufs["emb"], "fp32", sh.bufs["emb"].nbytes // 4, scale=1.0)

    # ---------------------------------------------------------------- forward pass
    def _linear(self, sh: Shard, m: DeviceMatrix, layer: int, x: int, ntok: int, mode: int, out: int,
                ss: int = 0, nw: int = 0, ss_out: int = 0, kc: int = 0, vc: int = 0,
                nw_next: int = 0, xw_out: int = 0) -> None:
        c = self.config
        a = LinearArgs(
            W=m.data.ptr + layer * m.stride, S=(m.scales.ptr + layer * m.scale_stride) if m.scales else 0,
            rows=m.rows, in_dim=m.in_dim, gsize=m.group_size, x=x, ntok=ntok, ss=ss, nw=nw,
            eps=c.norm_eps, mode=mode, out=out, ss_out=ss_out, dim=c.dim, kv_dim=c.kv_dim,
            head_dim=c.head_dim, kcache=kc, vcache=vc, pos=sh.bufs["host_in"].ptr, rope_theta=c.rope_theta,
            nw_next=nw_next, xw_out=xw_out)
        nt = 1 if ntok == 1 else TOKEN_TILE
        nw, r, ks, _ = LINEAR_CFG[m.wtype]
        rows_per_block = nw // ks * r
        grid = ((m.rows + rows_per_block - 1) // rows_per_block, (ntok + nt - 1) // nt)
        sh.kernels[(m.wtype, m.vec, nt)].launch(sh.stream, grid, nw * 32, 0, a)

    def _enqueue_shard(self, sh: Shard, ntok: int) -> None:
        """All kernels of one shard for `ntok` tokens (positions pos.. read on the device)."""
        c, T, B = self.config, self.max_batch, sh.bufs
        k = sh.kernels
        ss_slot = lambda slot: B["ss"].ptr + slot * T * 4  # noqa: E731
        # RMSNorm, split in three: a residual epilogue (or embed / sumsq) writes x, the sum
        # of squares of x, and xw = x * (next norm weight); the next matrix scales xw by
        # 1/rms(x) in its prologue. So every norm costs no kernel and no extra pass.
        attn_nw = lambda i: B["attn_norm"].ptr + i * c.dim * 4  # noqa: E731
        ffn_nw = lambda i: B["ffn_norm"].ptr + i * c.dim * 4  # noqa: E731
        x, xw = B["x"].ptr, B["xw"].ptr
        sh.stream.memset32(B["ss"].ptr, 0, (2 * c.n_layers + 1) * T)
        if sh.first:
            k["embed"].launch(sh.stream, (ntok,), 256, 0, B["host_in"].ptr + 4, B["emb"].ptr, x,
                              ss_slot(0), c.dim, attn_nw(0), xw)
        else:
            k["sumsq"].launch(sh.stream, (ntok,), 256, 0, x, ss_slot(2 * sh.l0), c.dim, attn_nw(0), xw)
        kv_layer = c.seq_len * c.kv_dim * 4
        for i, l in enumerate(range(sh.l0, sh.l1)):
            kc, vc = B["kcache"].ptr + i * kv_layer, B["vcache"].ptr + i * kv_layer
            self._linear(sh, sh.mats["wqkv"], i, xw, ntok, MODE_QKV, B["q"].ptr, ss=ss_slot(2 * l), kc=kc, vc=vc)
            k["attention"].launch(sh.stream, (c.n_heads, self._nsplit, ntok), ATTN_THREADS, self._attn_smem(),
                                  B["q"].ptr, kc, vc, B["att"].ptr, B["host_in"].ptr,
                                  c.dim, c.kv_dim, c.head_dim, c.kv_mul, 1.0 / math.sqrt(c.head_dim),
                                  B["attn_part"].ptr, B["attn_count"].ptr)
            self._linear(sh, sh.mats["wo"], i, B["att"].ptr, ntok, MODE_RESID, x,
                         ss_out=ss_slot(2 * l + 1), nw_next=ffn_nw(i), xw_out=xw)
            self._linear(sh, sh.mats["w13"], i, xw, ntok, MODE_SWIGLU, B["hb"].ptr, ss=ss_slot(2 * l + 1))
            if l + 1 < sh.l1:
                nxt = attn_nw(i + 1)
            elif sh.last:
                nxt = B["final_norm"].ptr
            else:
                nxt = 0  # the next shard's sumsq kernel makes its own xw
            self._linear(sh, sh.mats["w2"], i, B["hb"].ptr, ntok, MODE_RESID, x,
                         ss_out=ss_slot(2 * l + 2), nw_next=nxt, xw_out=xw if nxt else 0)
        if sh.last:
            last = ntok - 1
            self._linear(sh, sh.mats["cls"], 0, xw + last * c.dim * 4, 1, MODE_STORE, B["logits"].ptr,
                         ss=ss_slot(2 * c.n_layers) + last * 4)
            k["argmax"].launch(sh.stream, (1,), 1024, 0, B["logits"].ptr, c.vocab_size,
                               B["top_i"].ptr, B["top_v"].ptr)

    def _run(self, ntok: int, use_graph: bool) -> None:
        """Enqueue every shard in order; activations cross each device boundary once."""
        for i, sh in enumerate(self._shards):
            sh.device.use()
            if i > 0:
                sh.stream.wait(self._shards[i - 1].done)
            if use_graph:
                if sh.graph is None:
                    sh.graph = cu.Graph(sh.stream, lambda sh=sh: self._enqueue_shard(sh, 1))
                sh.graph.launch()
            else:
                self._enqueue_shard(sh, ntok)
            if not sh.last:
                nxt = self._shards[i + 1]
                sh.stream.wait(nxt.done)  # the next shard has finished reading its x
                sh.stream.copy_peer(nxt.bufs["x"], sh.bufs["x"], ntok * self.config.dim * 4)
            if len(self._shards) > 1:
                sh.done.record(sh.stream)

    def forward(self, tokens: Sequence[int], start_pos: int) -> None:
        c = self.config
        self._check_open()
        n_all = len(tokens)
        if n_all == 1:  # decode: the per-token path, kept lean
            tok = int(tokens[0])
            if not 0 <= tok < c.vocab_size:
                raise BackendError(f"token id {tok} out of range 0..{c.vocab_size - 1}")
            if not 0 <= start_pos < c.seq_len:
                raise BackendError(f"position {start_pos} is outside the context {c.seq_len}")
            spec, self._spec = self._spec, None
            self._next_pos = start_pos + 1
            if spec == (start_pos, tok):
                return  # argmax() already started exactly this step
            self._host[0] = start_pos
            self._host[1] = tok
            self._launch(1)
            return
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.size == 0:
            raise BackendError("forward() needs at least one token")
        if start_pos < 0 or start_pos + ids.size > c.seq_len:
            raise BackendError(f"positions {start_pos}..{start_pos + ids.size - 1} exceed the context {c.seq_len}")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise BackendError(f"token id out of range 0..{c.vocab_size - 1}")
        self._spec = None  # a speculative step's cache entry is simply overwritten
        self._next_pos = start_pos + ids.size
        for off in range(0, ids.size, self.max_batch):
            chunk = ids[off:off + self.max_batch]
            self._host[0] = start_pos + off
            self._host[1:1 + chunk.size] = chunk
            self._launch(chunk.size)

    def _launch(self, n: int) -> None:
        """Send [pos, tokens] to every shard, then run the step (a graph replay when n == 1).
        Pageable uploads are staged at call time, so `_host` may be rewritten at once."""
        nbytes = 4 * (1 + n)
        for sh in self._shards:
            sh.device.use()
            sh.stream.upload_ptr_async(sh.bufs["host_in"].ptr, self._host_ptr, nbytes)
        self._run(n, use_graph=(n == 1))

    # ---------------------------------------------------------------- results
    @property
    def _tail(self) -> Shard:
        return self._shards[-1]

    def synchronize(self) -> None:
        """Wait for all queued work (benchmarks time with this)."""
        self._check_open()
        for sh in self._shards:
            sh.device.use()
            sh.stream.synchronize()

    def _logits_buf(self) -> cu.Buffer:
        """The current step's logits: moved aside while a speculative step runs."""
        return self._tail.bufs["logits_prev" if self._spec else "logits"]

    def logits(self) -> np.ndarray:
        self.synchronize()
        out = np.empty(self.config.vocab_size, dtype=np.float32)
        self._logits_buf().download(out)
        return out

    def argmax(self) -> int:
        """Greedy token, computed on the device: the step's one host sync reads one int.

        Then, with `speculate`, the next step is enqueued at once with this token at the
        next position, so the GPU works while the caller samples, detokenizes and calls
        `forward([token], pos)` — which then only confirms it. Any other forward() simply
        overwrites that step's cache entry; logits()/topk() still see this step's logits.
        """
        self._check_open()
        if self._spec is not None:
            return self._spec[1]
        sh = self._tail
        sh.device.use()
        sh.stream.synchronize()
        sh.bufs["top_i"].read_into(self._result_ptr, 4)
        tok = int(self._result[0])
        pos = self._next_pos
        if self._speculate and pos is not None and pos < self.config.seq_len:
            B = sh.bufs
            sh.stream.copy(B["logits_prev"].ptr, B["logits"].ptr, self.config.vocab_size * 4)
            self._host[0] = pos
            self._host[1] = tok
            self._launch(1)
            self._spec = (pos, tok)
        return tok

    def topk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        k = min(int(k), self.config.vocab_size)
        if k <= 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32)
        if k > TOPK_MAX:
            return super().topk(k)
        self._check_open()
        sh = self._tail
        sh.device.use()
        B = sh.bufs
        sh.kernels["topk"].launch(sh.stream, (1,), 1024, 0, self._logits_buf().ptr, self.config.vocab_size, k,
                                  B["scratch"].ptr, B["topk_i"].ptr, B["topk_v"].ptr)
        self.synchronize()
        idx = np.zeros(k, dtype=np.int32)
        val = np.zeros(k, dtype=np.float32)
        B["topk_i"].download(idx)
        B["topk_v"].download(val)
        return idx.astype(np.int64), val

    def memory(self) -> MemoryInfo:
        self._check_open()
        used = total = 0
        for dev in self._devices:
            free, tot = dev.mem_info()
            used += tot - free
            total += tot
        kv = sum(sh.bufs["kcache"].nbytes * 2 for sh in self._shards)
        return MemoryInfo(weight_bytes=self._weight_bytes, kv_cache_bytes=kv, device_used=used, device_total=total)

    def weight_bytes_per_token(self) -> int:
        """Weight bytes one decode step streams from memory (roofline numerator)."""
        return sum(m.nbytes for sh in self._shards for m in sh.mats.values())

    def describe(self) -> str:
        if not self._devices:
            return "CUDA (closed)"
        names = ", ".join(f"{d.name} ({d.arch})" for d in self._devices)
        if len(self._shards) > 1:
            split = "/".join(str(sh.n_layers) for sh in self._shards)
            return f"{names}, layers split {split}"
        return names

    def _check_open(self) -> None:
        if self._closed:
            raise BackendError("the CUDA backend was closed")

    def close(self) -> None:
        if getattr(self, "_closed", True) and not getattr(self, "_shards", None):
            return
        self._closed = True
        for sh in self._shards:
            try:
                sh.device.use()
                if sh.stream is not None and sh.stream.handle is not None:
                    sh.stream.synchronize()
                if sh.graph is not None:
                    sh.graph.destroy()
                for b in sh.bufs.values():
                    b.free()
                for m in sh.modules:
                    m.unload()
                if sh.stream is not None:
                    sh.stream.destroy()
            except BackendError:
                pass
        self._shards = []
        for dev in getattr(self, "_devices", []):
            dev.release()
        self._devices = []

    def __del__(self) -> None:  # best effort; close() is the contract
        try:
            self.close()
        except Exception:
            pass
