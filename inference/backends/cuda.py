"""The CUDA backend: NVRTC-compiled kernels launched through cuda-python's driver API.

Weights are uploaded once, each matrix of each layer in its own storage (fp32, fp16, int8
+ fp32 group scales, or a GGUF block type in the planar layout of `cuda_layout`), the KV
cache lives on the device, and a step costs one host sync: the decode step (every layer,
the classifier and the argmax) is captured once as a CUDA graph and replayed per token,
reading token ids, positions and cache slots from device memory. Per layer only five
kernels run: RMSNorm is folded into the next matrix's prologue (the residual kernels
accumulate the sum of squares), RoPE, the q/k/v biases and the KV-cache write into the
fused QKV epilogue, SwiGLU into the interleaved w1/w3 epilogue, the residual add into the
wo / w2 epilogues. (A layer whose w1 and w3 differ in storage runs w1, then w3 with the
SwiGLU gate applied in its epilogue: six kernels.)

The architecture table's variants are handled at upload: NEOX rotary pairs become
adjacent rows (q and k rows permuted per head, see `cuda_layout.neox_order`), RoPE
frequencies (scaling, per-frequency factors) come from `inference.rope.frequencies` as a
table, q_dim may differ from dim.

The cache has `slots` independent sequences: `forward` runs a prompt chunk or one token
of one slot, `forward_batch` one token each of several (token, position, slot) entries
through the same kernels' token-tile path, every weight read once for the whole batch.

Layers can be split across several GPUs (`gpu_mem`, in proportion to the memory given);
the activation crosses once per device boundary. `devices` maps the split onto device
ordinals, so one GPU can host two "shards" for testing the same code path.
"""
from __future__ import annotations

import ctypes
import functools
import math
import os
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from kernels import cuda_compile, cuda_driver as cu

from ..config import ModelConfig
from ..errors import BackendError
from ..quant_types import QTYPES, fitting_type
from ..rope import frequencies
from ..weights import ModelWeights, QTensor, Tensor, tensor_type
from .base import Backend, MemoryInfo, cache_positions, check_entries, check_finite
from .cuda_layout import (BLOCK_CODES, DEVICE_TYPES, FLOAT_CODES, RUNS, HostPart, device_type, host_part,
                          interleave, join, launch_groups, neox_order, permute_rows, plane_bytes, scale_fields)

WT_CODE = FLOAT_CODES
WIDE_VEC = {"fp32": 4, "fp16": 8, "int8": 16}   # elements per 16-byte load
MODE_STORE, MODE_RESID, MODE_SWIGLU, MODE_QKV, MODE_GATED = 0, 1, 2, 3, 4
#: linear.cu tile per weight type: (warps per block, rows per warp, warps sharing rows,
#: vectors in flight); chosen with tests/bench_cuda_kernels.py on an H100.
LINEAR_CFG = {"fp32": (4, 2, 4, 4), "fp16": (4, 2, 4, 4), "int8": (4, 4, 2, 2)}
TOKEN_TILE = 8        # tokens per block in the batched (prefill / batch decode) kernels
#: linear_blocks.cu tiles (same meaning), for one token and for a token tile; not yet
#: tuned on a GPU (tests/bench_cuda_kernels.py --blocks times the alternatives).
BLOCK_CFG = {1: (4, 4, 2, 2), TOKEN_TILE: (4, 2, 2, 1)}
MAX_PARTS = 3         # linear.cuh: row ranges of different storage in one launch
TOPK_MAX = 256        # larger k falls back to a full logits copy
ATTN_THREADS = 128
#: What `CudaBackend.random` can draw on the device.
RANDOM_TYPES = DEVICE_TYPES
#: The -D options each kernel source is compiled with (tile shapes; part of the cubin cache key).
KERNEL_DEFINES: dict[str, tuple[str, ...]] = {
    "linear": tuple(f"-DCFG{FLOAT_CODES[wt]}={','.join(map(str, cfg))}" for wt, cfg in LINEAR_CFG.items()),
    "linear_blocks": (f"-DCFGB={','.join(map(str, BLOCK_CFG[1]))}",
                      f"-DCFGB8={','.join(map(str, BLOCK_CFG[TOKEN_TILE]))}"),
}


class PartArgs(ctypes.Structure):
    """Mirror of `struct Part` in kernels/cuda/linear.cuh."""

    _fields_ = [("W", ctypes.c_uint64), ("S", ctypes.c_uint64), ("S2", ctypes.c_uint64),
                ("type", ctypes.c_int32), ("rows", ctypes.c_int32), ("row0", ctypes.c_int32),
                ("block0", ctypes.c_int32)]


class LinearArgs(ctypes.Structure):
    """Mirror of `struct LinearArgs` in kernels/cuda/linear.cuh (passed by value)."""

    _fields_ = [
        ("part", PartArgs * MAX_PARTS), ("nparts", ctypes.c_int32), ("rows", ctypes.c_int32),
        ("in_dim", ctypes.c_int32), ("gsize", ctypes.c_int32),
        ("x", ctypes.c_uint64), ("ntok", ctypes.c_int32),
        ("ss", ctypes.c_uint64), ("nw", ctypes.c_uint64), ("eps", ctypes.c_float),
        ("mode", ctypes.c_int32), ("out", ctypes.c_uint64), ("ss_out", ctypes.c_uint64),
        ("q_dim", ctypes.c_int32), ("kv_dim", ctypes.c_int32), ("head_dim", ctypes.c_int32),
        ("ctx", ctypes.c_int32),
        ("kcache", ctypes.c_uint64), ("vcache", ctypes.c_uint64), ("seq", ctypes.c_uint64),
        ("freq", ctypes.c_uint64), ("bias", ctypes.c_uint64),
        ("nw_next", ctypes.c_uint64), ("xw_out", ctypes.c_uint64), ("gate", ctypes.c_uint64),
    ]


def check_runnable(weights: ModelWeights) -> None:
    """Refuse, in one line, what the CUDA kernels do not implement yet."""
    c = weights.config
    types = {tensor_type(t) for (name, _), t in weights.matrices()
             if name != "tok_embeddings" or c.shared_classifier}   # a lone embedding is decoded on the host
    other = sorted(types - set(RUNS))
    if other:
        raise BackendError(f"the CUDA backend has no kernels for {', '.join(other)} weights yet; use --device cpu")


def _embedding_floats(t: Tensor) -> np.ndarray:
    """A float or block-type token embedding table as fp32 (what `embed` reads; an int8
    table stays int8 for `embed_i8`)."""
    kind = tensor_type(t)
    if kind in ("fp32", "fp16"):
        return np.asarray(t, dtype=np.float32)
    if kind == "bf16":
        return t.floats()
    from .cpu import dequantize   # the project's block decoders
    return dequantize(t)


#: Whether pitched uploads work here (cleared, once, if the driver refuses one: the
#: interleaved planes are then assembled on the host instead).
_PITCHED = [True]


def _upload_plane(buf, part: HostPart, i: int, stager=None) -> None:
    """Plane i of a part to its buffer: each piece to its rows, contiguous or (w1/w3
    interleaved) every other row by a pitched copy; through `stager` (a
    cu.StagedUploader) when given, else by plain synchronous copies."""
    pieces = part.planes[i]
    pitched = any(pc.step != 1 for pc in pieces)
    if stager is not None:
        for pc in pieces:
            data = np.ascontiguousarray(pc.data)
            width = data.nbytes // max(pc.rows, 1)
            stager.put(buf, data, pc.row0 * width, pc.step * width)
        return
    if pitched and _PITCHED[0]:
        try:
            for pc in pieces:
                data = np.ascontiguousarray(pc.data)
                width = data.nbytes // max(pc.rows, 1)
                buf.upload_rows(data, pc.row0 * width, pc.step * width)
            return
        except cu.CudaError:
            _PITCHED[0] = False
    if pitched:
        buf.upload(part.plane(i))
        return
    for pc in pieces:
        data = np.ascontiguousarray(pc.data)
        buf.upload(data, pc.row0 * (data.nbytes // max(pc.rows, 1)))


def _group_size(config: ModelConfig) -> int:
    from ..quantize import choose_group_size
    return choose_group_size(config, 64)


def _int8_group(weights: ModelWeights) -> int | None:
    """The group size of the model's int8 matrices, if it has any."""
    for _, t in weights.matrices():
        if isinstance(t, QTensor):
            return t.group_size
    return None


def _describe_types(nbytes: dict[str, int]) -> str:
    """'q4_k', or a mix by size: 'q4_k+q6_k' (as ModelWeights.weight_type)."""
    return "+".join(k for k, _ in sorted(nbytes.items(), key=lambda kv: -kv[1])) or "fp32"


@dataclass
class DevicePart:
    """Rows of one matrix in one storage on one device: its planes (values or quants,
    then scales / side planes)."""

    wtype: str
    rows: int
    cols: int
    group_size: int
    planes: list

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.planes)

    @property
    def vec(self) -> int:
        """Elements per load of linear.cu's wide kernels, or 1 where the row does not allow it."""
        wide = WIDE_VEC[self.wtype]
        ok = self.cols % wide == 0 and (self.wtype != "int8" or self.group_size % wide == 0)
        return wide if ok else 1

    def plane(self, i: int) -> int:
        return self.planes[i].ptr if i < len(self.planes) else 0

    def free(self) -> None:
        for p in self.planes:
            p.free()


@dataclass
class DeviceLinear:
    """One matrix of one layer (or a fused one: q/k/v, interleaved w1/w3) as parts of
    consecutive rows, and which parts each kernel launch covers."""

    rows: int
    cols: int
    parts: list[DevicePart]
    groups: list[list[int]] = field(default_factory=list)
    row0: list[int] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.groups = launch_groups([p.wtype for p in self.parts])
        self.row0 = [int(v) for v in np.cumsum([0] + [p.rows for p in self.parts[:-1]])]

    @property
    def nbytes(self) -> int:
        return sum(p.nbytes for p in self.parts)

    def free(self) -> None:
        for p in self.parts:
            p.free()


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
    mats: dict = field(default_factory=dict)      # (name, local layer) -> DeviceLinear
    graphs: dict = field(default_factory=dict)    # (ntok, all_logits) -> cu.Graph
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
                 group_size: int | None = None, speculate: bool = False, context: int | None = None,
                 slots: int = 1) -> None:
        """`quant`: the storage of float matrices, 'int8', 'fp16' or 'fp32' (None: as
        stored, bf16 widened to fp32); int8 and block-type matrices always run as stored.
        `weights=None` with `config` and `seed` generates random weights on the device,
        every matrix in `quant` (any of RANDOM_TYPES; a K-quant that does not fit a row
        falls back as llama.cpp's quantizer does).
        `speculate`: after `argmax()`, start the next step with that token at once (see
        `argmax`). Off by default until it has run on a GPU: it was written and tested
        against the CPU emulator (tests/test_cuda_emulated.py) after the last H100 session.
        `context`: positions per KV-cache slot; `slots`: independent sequences."""
        c = self.config = weights.config if weights is not None else config
        if c is None:
            raise BackendError("internal: CudaBackend needs weights or a config")
        try:
            c.validate()
        except ValueError as e:
            raise BackendError(f"cannot run this model on CUDA: {e}") from None
        if weights is not None:
            check_runnable(weights)
        n_ctx = cache_positions(c, context, slots)
        c = self.config = c.with_(seq_len=n_ctx)
        self.slots = int(slots)
        self._quant = self._check_quant(weights, quant)
        gs = _int8_group(weights) if weights is not None else None
        self.group_size = gs or group_size or _group_size(c)
        self.max_batch = max(1, int(max_batch))
        self._closed = False
        self._shards: list[Shard] = []
        self._devices: list[cu.Device] = []
        self._host = np.zeros((self.max_batch, 3), dtype=np.int32)  # (token, position, slot) rows
        self._host_ptr = self._host.ctypes.data
        self._speculate = speculate
        self._spec: tuple[int, int, int] | None = None   # (pos, token, slot) of a step started by argmax()
        self._next: tuple[int, int] | None = None        # (position, slot) after the last forward()
        self._row = 0                                    # logits row of the last token
        self._result = np.zeros(2, dtype=np.int32)   # argmax's id and (as bits) its logit
        self._result_ptr = self._result.ctypes.data
        self._weight_bytes = 0
        self._type_bytes: dict[str, int] = {}
        self._emb_group = 0      # group size of an int8 embedding table (embed_i8)
        self._pending: list = []  # (buffer, HostPart, plane) queued for upload
        self._weights_bytes: dict[int, int] = {}   # matrix bytes per shard (id)
        self._stager = None
        self.upload_mode = "random" if weights is None else "plain"   # how the weights were uploaded
        try:
            self._build(weights, gpu_mem, devices, seed)
        except BaseException:
            self.close()
            raise
        self.weight_type = _describe_types(self._type_bytes)

    @property
    def n_ctx(self) -> int:
        return self.config.seq_len

    # ---------------------------------------------------------------- construction
    @classmethod
    def random(cls, config: ModelConfig, quant: str = "int8", seed: int = 0, **kw) -> "CudaBackend":
        """Random weights generated on the device (a 7B shape takes seconds, not minutes)."""
        return cls(None, quant=quant, config=config, seed=seed, **kw)

    @staticmethod
    def _check_quant(weights: ModelWeights | None, quant: str | None) -> str | None:
        allowed = RANDOM_TYPES if weights is None else tuple(FLOAT_CODES)
        if quant is not None and quant not in allowed:
            raise BackendError(f"unknown CUDA weight type {quant!r}: use {', '.join(allowed)}")
        return quant or ("int8" if weights is None else None)

    def _matrix_types(self, weights: ModelWeights | None, l0: int, l1: int, first: bool, last: bool
                      ) -> list[tuple[str, int, int, int]]:
        """(device type, rows, cols, group size) of every matrix a shard holds."""
        c, gs = self.config, self.group_size
        names = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
        out = []
        if weights is None:
            shapes = [(c.q_dim, c.dim), (c.kv_dim, c.dim), (c.kv_dim, c.dim), (c.dim, c.q_dim),
                      (c.hidden_dim, c.dim), (c.dim, c.hidden_dim), (c.hidden_dim, c.dim)]
            for _ in range(l0, l1):
                out += [(self._random_type(cols), rows, cols, gs) for rows, cols in shapes]
            if last:
                out.append((self._random_type(c.dim), c.vocab_size, c.dim, gs))
            return out
        for l in range(l0, l1):
            for n in names:
                t = weights.get(n, l)
                out.append((device_type(t, self._quant), *t.shape, getattr(t, "group_size", gs)))
        if last:
            t = weights.get("output")
            out.append((device_type(t, self._quant), *t.shape, getattr(t, "group_size", gs)))
        return out

    def _random_type(self, cols: int) -> str:
        q = self._quant
        if q not in BLOCK_CODES:
            return q
        t = fitting_type(q, cols)
        if cols % QTYPES[t].block:
            raise BackendError(f"random {q} weights need rows of a multiple of {QTYPES[t].block} values "
                               f"({t} blocks); this shape has rows of {cols}")
        return t

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
        plans = {id(sh): self._matrix_types(weights, sh.l0, sh.l1, sh.first, sh.last) for sh in self._shards}
        self._weights_bytes = {k: sum(sum(plane_bytes(*m)) for m in plan) for k, plan in plans.items()}
        self._check_memory(plans)
        factors = None
        if weights is not None and c.rope_freqs:
            factors = np.asarray(weights.get("rope_freqs"), dtype=np.float32)
        freq = np.ascontiguousarray(frequencies(c, factors), dtype=np.float32)
        for sh in self._shards:
            blocks = any(t in BLOCK_CODES for t, *_ in plans[id(sh)])
            self._load_kernels(sh, blocks)
            sh.stream = cu.Stream(sh.device)
            sh.done = cu.Event(sh.device)
            self._alloc_shard(sh)
            self._buf(sh, "freq", freq.nbytes).upload(freq)
            if weights is not None:
                self._upload_shard(sh, weights)
            else:
                self._randomize_shard(sh, seed or 0)
        for sh in self._shards:
            sh.stream.synchronize()

    def _shard_bytes(self, sh: Shard, plan: list[tuple[str, int, int, int]]) -> int:
        """Device bytes a shard needs (weights, KV cache, activations)."""
        c, T = self.config, self.max_batch
        n = sh.n_layers
        total = sum(sum(plane_bytes(t, rows, cols, gs)) for t, rows, cols, gs in plan)
        total += n * (2 * c.dim * 4 + (c.q_dim + 2 * c.kv_dim) * 4 + 2 * self.slots * c.seq_len * c.kv_dim * 4)
        if sh.first:
            total += c.vocab_size * c.dim * 4
        if sh.last:
            total += T * c.vocab_size * 4 + 3 * c.vocab_size * 4
        total += T * (3 * c.dim + 2 * c.q_dim + 2 * c.hidden_dim) * 4 + (2 * c.n_layers + 1) * T * 4
        total += T * c.n_heads * (self._nsplit * (c.head_dim + 2) + 1) * 4
        return int(total)

    def _check_memory(self, plans: dict) -> None:
        need: dict[int, int] = {}
        for sh in self._shards:
            need[sh.device.ordinal] = need.get(sh.device.ordinal, 0) + self._shard_bytes(sh, plans[id(sh)])
        for dev in self._devices:
            free, total = dev.mem_info()
            want = need[dev.ordinal] + (256 << 20)
            if want > free:
                raise BackendError(
                    f"not enough GPU memory on {dev.name}: the model needs {want / cu.GiB:.2f} GiB, "
                    f"{free / cu.GiB:.2f} GiB free of {total / cu.GiB:.1f} GiB; try --quant int8, "
                    "--gpu-mem to split across GPUs, or --device cpu")

    def _load_kernels(self, sh: Shard, blocks: bool) -> None:
        dev = sh.device
        major = dev.cc[0]
        if major < 7:
            raise BackendError(f"{dev.name} (compute capability {dev.cc[0]}.{dev.cc[1]}) is too old; "
                               "use --device cpu")
        names = ("linear", "attention", "sample") + (("linear_blocks",) if blocks else ())
        mods = {name: cu.Module(dev, cuda_compile.get_cubin(name, dev.arch, defines=KERNEL_DEFINES.get(name, ())),
                                name) for name in names}
        sh.modules = list(mods.values())
        k = sh.kernels
        for wt, code in WT_CODE.items():
            for vec in (WIDE_VEC[wt], 1):
                for nt in (1, TOKEN_TILE):
                    k[(wt, vec, nt)] = mods["linear"].kernel(f"linear_w{code}_v{vec}_t{nt}", "s")
        if blocks:
            for nt in (1, TOKEN_TILE):
                k[("blocks", nt)] = mods["linear_blocks"].kernel(f"linear_blocks_t{nt}", "s")
        k["attention"] = mods["attention"].kernel("attention_split", "ppppp" + "iiii" + "f" + "i" + "pp")
        smem = self._attn_smem()
        if smem > 48 * 1024:
            if smem > dev.max_smem_optin:
                raise BackendError(f"context {self.config.seq_len} is too long for this GPU's shared memory "
                                   f"(attention needs {smem} bytes); use --device cpu")
            k["attention"].set_max_dynamic_smem(smem)
        k["embed"] = mods["sample"].kernel("embed", "pppp" + "i" + "pp")
        k["embed_i8"] = mods["sample"].kernel("embed_i8", "pppi" + "pp" + "i" + "pp")
        k["sumsq"] = mods["sample"].kernel("sumsq", "ppi" + "pp")
        k["argmax"] = mods["sample"].kernel("argmax", "pipp")
        k["topk"] = mods["sample"].kernel("topk", "piippp")
        k["fill_f32"] = mods["sample"].kernel("fill_f32", "pqqff")
        k["fill_f16"] = mods["sample"].kernel("fill_f16", "pqqf")
        k["fill_i8"] = mods["sample"].kernel("fill_i8", "pqq")
        k["fill_u32"] = mods["sample"].kernel("fill_u32", "pqq")
        k["set_u16"] = mods["sample"].kernel("set_u16", "pqqi")

    def _attn_smem(self) -> int:
        """q, per-thread partial outputs, and the scores of one key slice."""
        c = self.config
        return 4 * (c.head_dim + ATTN_THREADS + -(-c.seq_len // self._nsplit))

    def _buf(self, sh: Shard, name: str, nbytes: int) -> cu.Buffer:
        b = cu.Buffer(sh.device, nbytes, name)
        sh.bufs[name] = b
        return b

    def _alloc_shard(self, sh: Shard) -> None:
        """Everything but the weight matrices (allocated as they are uploaded or drawn)."""
        c, T, L = self.config, self.max_batch, self.config.n_layers
        n = sh.n_layers
        for name in ("attn_norm", "ffn_norm"):
            self._buf(sh, name, n * c.dim * 4)
            self._weight_bytes += n * c.dim * 4
        kv = n * self.slots * c.seq_len * c.kv_dim * 4
        self._buf(sh, "kcache", kv)
        self._buf(sh, "vcache", kv)
        for name, width in (("x", c.dim), ("xw", c.dim), ("q", c.q_dim), ("att", c.q_dim), ("hb", c.hidden_dim),
                            ("hb2", c.hidden_dim)):
            self._buf(sh, name, T * width * 4)
        self._buf(sh, "ss", (2 * L + 1) * T * 4)
        self._buf(sh, "attn_part", T * c.n_heads * self._nsplit * (c.head_dim + 2) * 4)
        cnt = self._buf(sh, "attn_count", T * c.n_heads * 4)
        sh.stream.memset32(cnt.ptr, 0, T * c.n_heads)  # the kernel leaves it zeroed again
        self._buf(sh, "seq", T * 3 * 4)   # (token, position, slot) per token
        if sh.last:
            self._buf(sh, "final_norm", c.dim * 4)
            self._buf(sh, "logits", T * c.vocab_size * 4)
            self._buf(sh, "scratch", c.vocab_size * 4)
            self._buf(sh, "logits_prev", c.vocab_size * 4)
            self._buf(sh, "top", 8)   # argmax: the id, then its logit (one 8-byte read a step)
            self._buf(sh, "topk_i", TOPK_MAX * 4)
            self._buf(sh, "topk_v", TOPK_MAX * 4)

    def _device_linear(self, sh: Shard, key: tuple[str, int], parts: Sequence[HostPart] | Sequence[tuple]) -> DeviceLinear:
        """Allocate (and, for HostParts, upload) one matrix of a shard."""
        out = []
        for p in parts:
            if isinstance(p, HostPart):
                sizes = p.plane_nbytes
                wtype, rows, cols, gs = p.wtype, p.rows, p.cols, p.group_size
            else:
                wtype, rows, cols, gs = p
                sizes = plane_bytes(wtype, rows, cols, gs)
            planes = [cu.Buffer(sh.device, n, f"{key[0]} weights") for n in sizes]
            dp = DevicePart(wtype, rows, cols, gs, planes)
            if isinstance(p, HostPart):
                self._pending.extend((buf, p, i) for i, buf in enumerate(planes))
            out.append(dp)
            self._weight_bytes += dp.nbytes
            self._type_bytes[wtype] = self._type_bytes.get(wtype, 0) + dp.nbytes
        m = DeviceLinear(sum(p.rows for p in out), out[0].cols, out)
        sh.mats[key] = m
        return m

    def _flush_uploads(self, sh: Shard) -> None:
        """Upload the planes queued by `_device_linear`: staged (several threads through
        pinned buffers) while that works, else plain copies; a staged batch that fails is
        redone plainly and staging is off for the rest of this backend's uploads."""
        jobs, self._pending = self._pending, []
        if self._stager is not None:
            try:
                for buf, part, i in jobs:
                    _upload_plane(buf, part, i, self._stager)
                self._stager.wait()
                return
            except Exception as e:  # any failure of the fast path: redo plainly, say why in upload_mode
                self.upload_mode = f"plain (staged upload failed: {e})"
                self._stager.close()
                self._stager = None
        for buf, part, i in jobs:
            _upload_plane(buf, part, i)

    def _start_stager(self, sh: Shard) -> None:
        """A StagedUploader for this shard's device, unless LLAMA_CHAT_CUDA_STAGED=0 or the
        driver module has none (the CPU emulator) or it cannot be set up."""
        self._stager = None
        if os.environ.get("LLAMA_CHAT_CUDA_STAGED", "1") == "0" or not hasattr(cu, "StagedUploader"):
            self.upload_mode = "plain"
            return
        try:   # staging buffers sized to the model: 8 x 32 MiB for a 7B one, 1 MiB each for a toy
            per_layer = self._weights_bytes.get(id(sh), 0) // max(1, sh.n_layers)
            chunk = int(min(32 << 20, max(1 << 20, per_layer // 8)))
            self._stager = cu.StagedUploader(sh.device, chunk=chunk)
            self.upload_mode = "staged"
        except Exception as e:  # no pinned memory or an unexpected binding: plain copies
            self.upload_mode = f"plain (no staging buffers: {e})"

    def _layer_parts(self, w: ModelWeights, l: int) -> dict[str, list[HostPart]]:
        """A layer's matrices in device layout: fused q/k/v (NEOX rows permuted), wo,
        interleaved w1/w3 (or w1 and w3 apart when their storage differs), w2."""
        c, q, gs = self.config, self._quant, self.group_size
        hp = {n: host_part(w.get(n, l), q, gs) for n in ("wq", "wk", "wv", "wo", "w1", "w2", "w3")}
        if c.rope_style == "neox":
            hp["wq"] = permute_rows(hp["wq"], neox_order(c.n_heads, c.head_dim))
            hp["wk"] = permute_rows(hp["wk"], neox_order(c.n_kv_heads, c.head_dim))
        out = {"qkv": join([hp["wq"], hp["wk"], hp["wv"]]), "wo": [hp["wo"]], "w2": [hp["w2"]]}
        if hp["w1"].key() == hp["w3"].key():
            out["w13"] = [interleave(hp["w1"], hp["w3"])]
        else:
            out["w1"], out["w3"] = [hp["w1"]], [hp["w3"]]
        return out

    def _layer_bias(self, w: ModelWeights, l: int) -> np.ndarray:
        c = self.config
        bq = np.asarray(w.get("bq", l), dtype=np.float32)
        bk = np.asarray(w.get("bk", l), dtype=np.float32)
        if c.rope_style == "neox":
            bq, bk = bq[neox_order(c.n_heads, c.head_dim)], bk[neox_order(c.n_kv_heads, c.head_dim)]
        return np.concatenate([bq, bk, np.asarray(w.get("bv", l), dtype=np.float32)])

    def _upload_shard(self, sh: Shard, w: ModelWeights) -> None:
        self._start_stager(sh)
        try:
            self._upload_weights(sh, w)
        finally:
            if self._stager is not None:
                self._stager.close()
                self._stager = None

    def _upload_weights(self, sh: Shard, w: ModelWeights) -> None:
        c = self.config
        if c.qkv_bias:
            bias = np.stack([self._layer_bias(w, l) for l in range(sh.l0, sh.l1)])
            self._buf(sh, "bias", bias.nbytes).upload(np.ascontiguousarray(bias))
            self._weight_bytes += bias.nbytes
        for i, l in enumerate(range(sh.l0, sh.l1)):
            for name, parts in self._layer_parts(w, l).items():
                self._device_linear(sh, (name, i), parts)
            self._flush_uploads(sh)   # one layer's host planes alive at a time
        for name in ("attn_norm", "ffn_norm"):
            norms = [np.asarray(w.get(name, layer), dtype=np.float32) for layer in range(sh.l0, sh.l1)]
            sh.bufs[name].upload(np.ascontiguousarray(np.stack(norms)))
        if sh.first:   # the embedding table, through the same (staged) uploads
            emb = w.get("tok_embeddings")
            if isinstance(emb, QTensor):
                table = HostPart.whole("int8", *emb.shape, [emb.q.view(np.uint8), emb.s.astype(np.float32, copy=False)],
                                       emb.group_size)
                bufs = [self._buf(sh, "emb", emb.q.nbytes), self._buf(sh, "emb.s", emb.s.size * 4)]
                self._emb_group = emb.group_size
            else:
                table = HostPart.whole("fp32", *emb.shape, [np.ascontiguousarray(_embedding_floats(emb), np.float32)])
                bufs = [self._buf(sh, "emb", emb.shape[0] * emb.shape[1] * 4)]
            self._pending.extend((b, table, i) for i, b in enumerate(bufs))
            self._weight_bytes += table.nbytes
            self._flush_uploads(sh)
        if sh.last:
            self._device_linear(sh, ("cls", 0), [host_part(w.get("output"), self._quant, self.group_size)])
            self._flush_uploads(sh)
            sh.bufs["final_norm"].upload(np.ascontiguousarray(w.get("final_norm"), dtype=np.float32))

    def _randomize_shard(self, sh: Shard, seed: int) -> None:
        """Weights ~ U(-a, a) with std 0.02, norms 1, generated by hash kernels on the device.
        Block types: random quant bytes with every fp16 scale field set to a value giving
        weights of about that size."""
        c, gs = self.config, self.group_size
        sd = 0.02
        a = sd * math.sqrt(3.0)
        salt = [seed * 7919 + sh.l0 * 131]

        def launch(kernel: str, n: int, *args) -> None:
            salt[0] += 1
            blocks = min(4096, max(1, (n + 255) // 256))
            sh.kernels[kernel].launch(sh.stream, (blocks,), 256, 0, *args)

        def seed_() -> int:
            return int(salt[0]) & ((1 << 63) - 1)

        def fill(p: DevicePart) -> None:
            n = p.rows * p.cols
            if p.wtype == "fp32":
                launch("fill_f32", n, p.plane(0), n, seed_(), a, 0.0)
            elif p.wtype == "fp16":
                launch("fill_f16", n, p.plane(0), n, seed_(), a)
            elif p.wtype == "int8":  # q uniform in [-127, 127] has std ~73
                launch("fill_i8", n, p.plane(0), n, seed_())
                sh.stream.memset32(p.plane(1), int(np.float32(sd / 73.3).view(np.uint32)), p.planes[1].nbytes // 4)
            else:
                for buf in p.planes:
                    launch("fill_u32", buf.nbytes // 4, buf.ptr, buf.nbytes // 4, seed_())
                qt = QTYPES[p.wtype]
                nblocks = p.rows * (p.cols // qt.block)
                d = 0.75 * sd / qt.magnitude
                for k, (plane, off, share) in enumerate(scale_fields(p.wtype)):
                    v = -d * qt.magnitude / 2 if k == 1 and p.wtype in ("q4_1", "q5_1") else d
                    bits = int(np.float16(v).view(np.uint16))
                    launch("set_u16", nblocks, p.plane(plane) + off, nblocks, share // 2, bits)

        shapes = {"qkv": (c.q_dim + 2 * c.kv_dim, c.dim), "wo": (c.dim, c.q_dim),
                  "w13": (2 * c.hidden_dim, c.dim), "w2": (c.dim, c.hidden_dim)}
        for i in range(sh.n_layers):
            for name, (rows, cols) in shapes.items():
                m = self._device_linear(sh, (name, i), [(self._random_type(cols), rows, cols, gs)])
                fill(m.parts[0])
        if sh.last:
            fill(self._device_linear(sh, ("cls", 0), [(self._random_type(c.dim), c.vocab_size, c.dim, gs)]).parts[0])
        one = int(np.float32(1.0).view(np.uint32))
        for name in ("attn_norm", "ffn_norm", "final_norm"):
            if name in sh.bufs:
                sh.stream.memset32(sh.bufs[name].ptr, one, sh.bufs[name].nbytes // 4)
        if sh.first:
            n = c.vocab_size * c.dim
            self._weight_bytes += 4 * n
            launch("fill_f32", n, self._buf(sh, "emb", 4 * n).ptr, n, seed_(), 1.0, 0.0)

    # ---------------------------------------------------------------- forward pass
    def _linear(self, sh: Shard, m: DeviceLinear, x: int, ntok: int, mode: int, out: int,
                ss: int = 0, ss_out: int = 0, kc: int = 0, vc: int = 0, nw_next: int = 0, xw_out: int = 0,
                bias: int = 0, gate: int = 0) -> None:
        """Enqueue y = W x for one matrix: one launch per group of its parts."""
        c = self.config
        nt = 1 if ntok == 1 else TOKEN_TILE
        for group in m.groups:
            parts = [m.parts[i] for i in group]
            block = parts[0].wtype in BLOCK_CODES
            nw, r, ks, _ = BLOCK_CFG[nt] if block else LINEAR_CFG[parts[0].wtype]
            per_block = nw // ks * r
            a = LinearArgs(
                nparts=len(parts), rows=m.rows, in_dim=m.cols, gsize=parts[0].group_size or 1, x=x, ntok=ntok,
                ss=ss, nw=0, eps=c.norm_eps, mode=mode, out=out, ss_out=ss_out, q_dim=c.q_dim, kv_dim=c.kv_dim,
                head_dim=c.head_dim, ctx=c.seq_len, kcache=kc, vcache=vc, seq=sh.bufs["seq"].ptr,
                freq=sh.bufs["freq"].ptr, bias=bias, nw_next=nw_next, xw_out=xw_out, gate=gate)
            grid_x = 0
            for j, (i, p) in enumerate(zip(group, parts)):
                a.part[j] = PartArgs(W=p.plane(0), S=p.plane(1), S2=p.plane(2), type=BLOCK_CODES.get(p.wtype, 0),
                                     rows=p.rows, row0=m.row0[i], block0=grid_x)
                grid_x += -(-p.rows // per_block)
            kernel = sh.kernels[("blocks", nt)] if block else sh.kernels[(parts[0].wtype, parts[0].vec, nt)]
            kernel.launch(sh.stream, (grid_x, -(-ntok // nt)), nw * 32, 0, a)

    def _enqueue_shard(self, sh: Shard, ntok: int, all_logits: bool) -> None:
        """All kernels of one shard for `ntok` tokens ((token, position, slot) read on the device)."""
        c, T, B = self.config, self.max_batch, sh.bufs
        k = sh.kernels
        ss_slot = lambda slot: B["ss"].ptr + slot * T * 4  # noqa: E731
        # RMSNorm, split in three: a residual epilogue (or embed / sumsq) writes x, the sum
        # of squares of x, and xw = x * (next norm weight); the next matrix scales xw by
        # 1/rms(x) in its prologue. So every norm costs no kernel and no extra pass.
        attn_nw = lambda i: B["attn_norm"].ptr + i * c.dim * 4  # noqa: E731
        ffn_nw = lambda i: B["ffn_norm"].ptr + i * c.dim * 4  # noqa: E731
        x, xw, seq = B["x"].ptr, B["xw"].ptr, B["seq"].ptr
        sh.stream.memset32(B["ss"].ptr, 0, (2 * c.n_layers + 1) * T)
        if sh.first and "emb.s" in B:
            k["embed_i8"].launch(sh.stream, (ntok,), 256, 0, seq, B["emb"].ptr, B["emb.s"].ptr, self._emb_group, x,
                                 ss_slot(0), c.dim, attn_nw(0), xw)
        elif sh.first:
            k["embed"].launch(sh.stream, (ntok,), 256, 0, seq, B["emb"].ptr, x, ss_slot(0), c.dim, attn_nw(0), xw)
        else:
            k["sumsq"].launch(sh.stream, (ntok,), 256, 0, x, ss_slot(2 * sh.l0), c.dim, attn_nw(0), xw)
        kv_layer = self.slots * c.seq_len * c.kv_dim * 4
        bias_row = (c.q_dim + 2 * c.kv_dim) * 4
        for i, l in enumerate(range(sh.l0, sh.l1)):
            kc, vc = B["kcache"].ptr + i * kv_layer, B["vcache"].ptr + i * kv_layer
            bias = B["bias"].ptr + i * bias_row if "bias" in B else 0
            self._linear(sh, sh.mats[("qkv", i)], xw, ntok, MODE_QKV, B["q"].ptr, ss=ss_slot(2 * l), kc=kc, vc=vc,
                         bias=bias)
            k["attention"].launch(sh.stream, (c.n_heads, self._nsplit, ntok), ATTN_THREADS, self._attn_smem(),
                                  B["q"].ptr, kc, vc, B["att"].ptr, seq,
                                  c.q_dim, c.kv_dim, c.head_dim, c.kv_mul, 1.0 / math.sqrt(c.head_dim), c.seq_len,
                                  B["attn_part"].ptr, B["attn_count"].ptr)
            self._linear(sh, sh.mats[("wo", i)], B["att"].ptr, ntok, MODE_RESID, x,
                         ss_out=ss_slot(2 * l + 1), nw_next=ffn_nw(i), xw_out=xw)
            if ("w13", i) in sh.mats:
                self._linear(sh, sh.mats[("w13", i)], xw, ntok, MODE_SWIGLU, B["hb"].ptr, ss=ss_slot(2 * l + 1))
            else:
                self._linear(sh, sh.mats[("w1", i)], xw, ntok, MODE_STORE, B["hb2"].ptr, ss=ss_slot(2 * l + 1))
                self._linear(sh, sh.mats[("w3", i)], xw, ntok, MODE_GATED, B["hb"].ptr, ss=ss_slot(2 * l + 1),
                             gate=B["hb2"].ptr)
            if l + 1 < sh.l1:
                nxt = attn_nw(i + 1)
            elif sh.last:
                nxt = B["final_norm"].ptr
            else:
                nxt = 0  # the next shard's sumsq kernel makes its own xw
            self._linear(sh, sh.mats[("w2", i)], B["hb"].ptr, ntok, MODE_RESID, x,
                         ss_out=ss_slot(2 * l + 2), nw_next=nxt, xw_out=xw if nxt else 0)
        if sh.last:
            cls = sh.mats[("cls", 0)]
            if all_logits:    # every token's logits (a batch of sequences)
                self._linear(sh, cls, xw, ntok, MODE_STORE, B["logits"].ptr, ss=ss_slot(2 * c.n_layers))
                row = ntok - 1
            else:             # the last token's only (a prompt chunk, a decode step)
                last = ntok - 1
                self._linear(sh, cls, xw + last * c.dim * 4, 1, MODE_STORE, B["logits"].ptr,
                             ss=ss_slot(2 * c.n_layers) + last * 4)
                row = 0
            k["argmax"].launch(sh.stream, (1,), 1024, 0, B["logits"].ptr + row * c.vocab_size * 4, c.vocab_size,
                               B["top"].ptr, B["top"].ptr + 4)

    def _run(self, ntok: int, all_logits: bool, use_graph: bool) -> None:
        """Enqueue every shard in order; activations cross each device boundary once."""
        for i, sh in enumerate(self._shards):
            sh.device.use()
            if i > 0:
                sh.stream.wait(self._shards[i - 1].done)
            if use_graph:
                key = (ntok, all_logits)
                if key not in sh.graphs:
                    sh.graphs[key] = cu.Graph(sh.stream, lambda sh=sh: self._enqueue_shard(sh, ntok, all_logits))
                sh.graphs[key].launch()
            else:
                self._enqueue_shard(sh, ntok, all_logits)
            if not sh.last:
                nxt = self._shards[i + 1]
                sh.stream.wait(nxt.done)  # the next shard has finished reading its x
                sh.stream.copy_peer(nxt.bufs["x"], sh.bufs["x"], ntok * self.config.dim * 4)
            if len(self._shards) > 1:
                sh.done.record(sh.stream)
        self._row = ntok - 1 if all_logits else 0

    def _check_slot(self, slot: int) -> None:
        if not 0 <= slot < self.slots:
            raise BackendError(f"cache slot {slot} out of range 0..{self.slots - 1}")

    def forward(self, tokens: Sequence[int], start_pos: int, slot: int = 0) -> None:
        """Run `tokens` of one sequence (cache slot `slot`) at positions start_pos..; keep
        the last token's logits on the device."""
        c = self.config
        self._check_open()
        self._check_slot(slot)
        n_all = len(tokens)
        if n_all == 1:  # decode: the per-token path, kept lean
            tok = int(tokens[0])
            if not 0 <= tok < c.vocab_size:
                raise BackendError(f"token id {tok} out of range 0..{c.vocab_size - 1}")
            if not 0 <= start_pos < c.seq_len:
                raise BackendError(f"position {start_pos} is outside the context {c.seq_len}")
            spec, self._spec = self._spec, None
            self._next = (start_pos + 1, slot)
            if spec == (start_pos, tok, slot):
                return  # argmax() already started exactly this step
            self._host[0] = (tok, start_pos, slot)
            self._launch(1, all_logits=False, use_graph=True)
            return
        ids = np.asarray(list(tokens), dtype=np.int64)
        if ids.size == 0:
            raise BackendError("forward() needs at least one token")
        if start_pos < 0 or start_pos + ids.size > c.seq_len:
            raise BackendError(f"positions {start_pos}..{start_pos + ids.size - 1} exceed the context {c.seq_len}")
        if ids.min() < 0 or ids.max() >= c.vocab_size:
            raise BackendError(f"token id out of range 0..{c.vocab_size - 1}")
        self._spec = None  # a speculative step's cache entry is simply overwritten
        self._next = (start_pos + ids.size, slot)
        for off in range(0, ids.size, self.max_batch):
            chunk = ids[off:off + self.max_batch]
            n = chunk.size
            self._host[:n, 0] = chunk
            self._host[:n, 1] = np.arange(start_pos + off, start_pos + off + n)
            self._host[:n, 2] = slot
            self._launch(n, all_logits=False, use_graph=False)

    def forward_batch(self, tokens: Sequence[int], positions: Sequence[int], slots: Sequence[int]) -> np.ndarray:
        """Run one token per entry (token, position, slot) in one pass (chunks of
        `max_batch`), every weight row read once for all of them; returns their logits
        (n, vocab), float32. logits()/argmax()/topk() then see the last entry's."""
        c = self.config
        self._check_open()
        ids = np.asarray(tokens, dtype=np.int64)
        pos = np.asarray(positions, dtype=np.int64)
        sl = np.asarray(slots, dtype=np.int64)
        if not ids.shape == pos.shape == sl.shape or ids.ndim != 1:
            raise BackendError("tokens, positions and slots must be 1-D and of one length")
        n = ids.size
        out = np.empty((n, c.vocab_size), dtype=np.float32)
        if n == 0:
            return out
        check_entries(c, self.slots, ids, pos, sl)
        self._spec = None
        self._next = None      # no speculation after a batch
        tail = self._tail
        for off in range(0, n, self.max_batch):
            k = min(self.max_batch, n - off)
            self._host[:k, 0] = ids[off:off + k]
            self._host[:k, 1] = pos[off:off + k]
            self._host[:k, 2] = sl[off:off + k]
            self._launch(k, all_logits=True, use_graph=True)
            tail.device.use()
            tail.stream.synchronize()
            tail.bufs["logits"].download(out[off:off + k])
        return out

    def _launch(self, n: int, all_logits: bool, use_graph: bool) -> None:
        """Send the (token, position, slot) rows to every shard, then run the step.
        Pageable uploads are staged at call time, so `_host` may be rewritten at once."""
        nbytes = 12 * n
        for sh in self._shards:
            sh.device.use()
            sh.stream.upload_ptr_async(sh.bufs["seq"].ptr, self._host_ptr, nbytes)
        self._run(n, all_logits, use_graph)

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

    def _logits_ptr(self) -> int:
        """The current step's logits: moved aside while a speculative step runs."""
        B = self._tail.bufs
        if self._spec:
            return B["logits_prev"].ptr
        return B["logits"].ptr + self._row * self.config.vocab_size * 4

    def logits(self) -> np.ndarray:
        self.synchronize()
        out = np.empty(self.config.vocab_size, dtype=np.float32)
        B = self._tail.bufs
        if self._spec:
            B["logits_prev"].download(out)
        else:
            B["logits"].download(out, self._row * out.nbytes)
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
        sh.bufs["top"].read_into(self._result_ptr, 8)
        check_finite(self._result[1:].view(np.float32)[0])
        tok = int(self._result[0])
        nxt = self._next
        if self._speculate and nxt is not None and nxt[0] < self.config.seq_len:
            pos, slot = nxt
            B = sh.bufs
            sh.stream.copy(B["logits_prev"].ptr, B["logits"].ptr, self.config.vocab_size * 4)
            self._host[0] = (tok, pos, slot)
            self._launch(1, all_logits=False, use_graph=True)
            self._spec = (pos, tok, slot)
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
        sh.kernels["topk"].launch(sh.stream, (1,), 1024, 0, self._logits_ptr(), self.config.vocab_size, k,
                                  B["scratch"].ptr, B["topk_i"].ptr, B["topk_v"].ptr)
        self.synchronize()
        idx = np.zeros(k, dtype=np.int32)
        val = np.zeros(k, dtype=np.float32)
        B["topk_i"].download(idx)
        B["topk_v"].download(val)
        check_finite(val[0])
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
                for g in sh.graphs.values():
                    g.destroy()
                for m in sh.mats.values():
                    m.free()
                for b in sh.bufs.values():
                    b.free()
                for m in sh.modules:
                    m.unload()
                if sh.stream is not None:
                    sh.stream.destroy()
            except (BackendError, cu.CudaError):
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


def _as_backend_error(e: cu.CudaError) -> BackendError:
    """A CUDA failure in the user's words: what went wrong, then what they can do."""
    advice = {cu.USE_CPU: "use --device cpu", cu.INSTALL: "pip install 'llama-chat[cuda]', or use --device cpu",
              cu.LESS_MEMORY: "try --quant int8, a smaller model, or --device cpu"}.get(e.advice)
    return BackendError(f"{e}; {advice}" if advice else str(e))


def _user_errors(fn):
    """Run a backend method with CUDA failures turned into one-line BackendErrors."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except cu.CudaError as e:
            raise _as_backend_error(e) from None
    return wrapper


for _name in ("__init__", "forward", "forward_batch", "synchronize", "logits", "argmax", "topk", "memory",
              "close"):
    setattr(CudaBackend, _name, _user_errors(getattr(CudaBackend, _name)))

