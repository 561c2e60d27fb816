"""GGUF files (llama.cpp), architectures `llama` and `qwen2`, every common block type.

Layout (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count,
u64 metadata count; metadata as (string key, u32 type, value); tensor infos as (string
name, u32 n_dims, u64 dims innermost-first, u32 ggml type, u64 offset); then the data
block at the next multiple of `general.alignment` (32 by default).

Everything is validated here, once, before a tensor is touched: metadata values are
bounded (lengths, nesting), tensor descriptors must have sane shapes, offsets that are
multiples of the alignment, byte ranges inside the file that do not overlap, and the file
must end where its last tensor (padded) ends — a lying alignment or a truncated file is a
one-line error, not shifted weights. Tensors are zero-copy views of the memory map in
their own block type (see `inference.quant_types`); nothing is re-quantized.

llama.cpp's converter stores `llama` q/k weights in Meta's interleaved rotary order, and
`qwen2` in NEOX order; the config's `rope_style` says which, so no rows are permuted.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..architecture import spec, tensor_keys
from ..config import ARCHITECTURES, ModelConfig, RopeScaling
from ..errors import ModelFormatError, one_line
from ..quant_types import BY_GGML, GGML_TYPES, block_view, ggml_name
from .common import REQUIRED, Fields, Raw, Source, TensorRef, check_layer_count, map_file, validated_config

MAGIC = b"GGUF"
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
MAX_DEPTH = 3          # arrays of arrays of arrays; no real file nests deeper
MAX_DIMS = 4
MAX_ALIGNMENT = 1 << 16


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]     # numpy order (outermost first)
    ggml_type: int
    offset: int                # absolute file offset
    nbytes: int


class _Cursor:
    """Bounds-checked reader over the memory map (a short file is a one-line error)."""

    def __init__(self, buf: Any, path: str, end: int) -> None:
        self.buf, self.pos, self.path, self.end = buf, 0, path, end

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > self.end:
            raise ModelFormatError(f"{self.path} is truncated or corrupt (the file ends at byte {self.end}, "
                                   f"inside its GGUF header)")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if n > self.end - self.pos:
            raise ModelFormatError(f"{self.path} is truncated or corrupt (a GGUF string of {n} bytes at byte "
                                   f"{self.pos} runs past the end of the file)")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def value(self, vtype: int, depth: int = 0) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            if depth >= MAX_DEPTH:
                raise ModelFormatError(f"{self.path}: GGUF metadata arrays nested deeper than {MAX_DEPTH}")
            etype, n = self.take("<I"), self.take("<Q")
            if etype in _SCALARS:
                dt = np.dtype(_SCALARS[etype])
                if n > (self.end - self.pos) // dt.itemsize:
                    raise ModelFormatError(f"{self.path} is truncated or corrupt (a GGUF array of {n} values at byte "
                                           f"{self.pos} runs past the end of the file)")
                arr = np.frombuffer(self.buf, dt, count=n, offset=self.pos)
                self.pos += n * dt.itemsize
                return arr.astype(bool) if etype == 7 else arr
            if etype not in (_STRING, _ARRAY):
                raise ModelFormatError(f"{self.path}: unknown GGUF metadata type {etype}")
            if n > (self.end - self.pos) // 8:  # every element takes at least 8 bytes
                raise ModelFormatError(f"{self.path}: GGUF array length {n} is impossible")
            return [self.value(etype, depth + 1) for _ in range(n)]
        raise ModelFormatError(f"{self.path}: unknown GGUF metadata type {vtype}")


def read_gguf(path: str, trailer: int = 0) -> tuple[dict[str, Any], dict[str, TensorInfo], Any]:
    """Metadata, tensor table and the memory map of a GGUF file, all validated.

    `trailer`: bytes at the end of the file that are not GGUF (our quant cache appends
    its checksum record there); everything else must be accounted for.
    """
    mm = map_file(path)
    end = len(mm) - trailer
    cur = _Cursor(mm, path, end)
    if bytes(mm[:4]) != MAGIC:
        raise ModelFormatError(f"{path} is not a GGUF file")
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise ModelFormatError(f"{path}: implausible GGUF counts ({n_tensors} tensors, {n_kv} keys)")
    if n_tensors > end // 24 or n_kv > end // 12:   # the least a descriptor / a key can take
        raise ModelFormatError(f"{path} is truncated: its header declares {n_tensors} tensors and {n_kv} keys, "
                               f"more than its {end} bytes can hold")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.take("<I"))
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if not 1 <= n_dims <= MAX_DIMS:
            raise ModelFormatError(f"{path}: tensor {name[:80]} has {n_dims} dimensions")
        dims = [cur.take("<Q") for _ in range(n_dims)]
        if min(dims) < 1 or max(dims) > 1 << 40:
            raise ModelFormatError(f"{path}: tensor {name[:80]} has an impossible shape {dims}")
        infos.append((name, tuple(reversed(dims)), cur.take("<I"), cur.take("<Q")))
    align = meta.get("general.alignment", 32)
    if (not isinstance(align, int) or isinstance(align, bool) or not 1 <= align <= MAX_ALIGNMENT
            or align & (align - 1)):
        raise ModelFormatError(f"{path}: general.alignment must be a power of two, got {repr(align)[:40]}")
    data_start = (cur.pos + align - 1) // align * align
    tensors: dict[str, TensorInfo] = {}
    for name, shape, ttype, off in infos:
        info = GGML_TYPES.get(ttype)
        if info is None:
            raise ModelFormatError(f"{path}: tensor {name[:80]} has unknown GGUF type {ttype}")
        _, block, size = info
        count = 1
        for d in shape:
            count *= d
        if shape[-1] % block:
            raise ModelFormatError(f"{path}: {info[0]} tensor {name[:80]} has rows of {shape[-1]} values, "
                                   f"not a multiple of its block of {block}")
        nbytes = count // block * size
        if off % align:
            raise ModelFormatError(f"{path}: tensor {name[:80]} starts at offset {off}, not a multiple of "
                                   f"the alignment {align}")
        if name in tensors:
            raise ModelFormatError(f"{path}: tensor {name[:80]} appears twice")
        tensors[name] = TensorInfo(name, shape, ttype, data_start + off, nbytes)
    _check_layout(path, tensors, data_start, end, align)
    return meta, tensors, mm


def _check_layout(path: str, tensors: dict[str, TensorInfo], data_start: int, end: int, align: int) -> None:
    """Tensors packed as every GGUF writer packs them: the first at the data start, each
    next one where the one before ends (padded to the alignment), the file ending where
    the last one ends. A dimension, type or offset that lies leaves a gap or an overlap."""
    last = data_start
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        if t.offset < last:
            raise ModelFormatError(f"{path}: tensor {t.name[:80]} overlaps the tensor before it")
        if t.offset > last:   # offsets and `last` are multiples of the alignment
            raise ModelFormatError(f"{path}: tensor {t.name[:80]} starts {t.offset - last} bytes after the data "
                                   f"before it ends: its header and data do not match (a wrong shape or type?)")
        last = (t.offset + t.nbytes + align - 1) // align * align
        if t.offset + t.nbytes > end:
            raise ModelFormatError(f"{path} is truncated (tensor {t.name[:80]} runs past the end)")
    last = max((t.offset + t.nbytes for t in tensors.values()), default=data_start)
    if tensors and end > (last + align - 1) // align * align:
        raise ModelFormatError(f"{path} has {end - last} bytes after its last tensor: its header and data "
                               f"do not match (a wrong general.alignment?)")


def read_gguf_metadata(path: str) -> dict[str, Any]:
    """The validated metadata of a GGUF file (for tokenizers and `llama-chat models`)."""
    return read_gguf(path)[0]


def _layer_types(tensors: dict[str, TensorInfo]) -> set[int]:
    return {t.ggml_type for n, t in tensors.items() if n.startswith("blk.")}


def config_from_gguf(meta: dict, tensors: dict[str, TensorInfo], path: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if not isinstance(arch, str):
        raise ModelFormatError(f"{path}: GGUF metadata lacks general.architecture (or it is not a string)")
    if arch not in ARCHITECTURES:
        raise ModelFormatError(f"{path}: GGUF architecture {arch[:40]!r} is not supported "
                               f"({', '.join(ARCHITECTURES)} are)")
    emb = tensors.get("token_embd.weight")
    if emb is None or len(emb.shape) != 2:
        raise ModelFormatError(f"{path}: GGUF file lacks a token_embd.weight matrix")
    f = Fields(meta, path, prefix=f"{arch}.")
    dim = f.int("embedding_length", REQUIRED)
    heads = f.int("attention.head_count", REQUIRED, hi=4096)
    kv_heads = f.int("attention.head_count_kv", heads, hi=4096)
    head_dim = f.int("attention.key_length", dim // heads)
    if f.int("attention.value_length", head_dim) != head_dim:
        raise ModelFormatError(f"{path}: attention key and value widths differ; not supported")
    rot = f.int("rope.dimension_count", head_dim)
    if rot != head_dim:
        raise ModelFormatError(f"{path}: partial rotary embeddings (rope.dimension_count {rot} of head "
                               f"width {head_dim}) are not supported")
    vocab = emb.shape[0]
    if f.int("vocab_size", vocab, hi=1 << 24) != vocab:
        raise ModelFormatError(f"{path}: {arch}.vocab_size disagrees with token_embd.weight ({vocab} rows)")
    scaling = RopeScaling()
    kind = f.str("rope.scaling.type", "none")
    if kind not in ("none", ""):
        if kind != "linear":
            raise ModelFormatError(f"{path}: rope scaling {kind[:40]!r} is not supported (linear is)")
        scaling = RopeScaling("linear", f.float("rope.scaling.factor", REQUIRED))
    config = ModelConfig(
        arch=arch, dim=dim, hidden_dim=f.int("feed_forward_length", REQUIRED),
        n_layers=f.int("block_count", REQUIRED, hi=4096), n_heads=heads, n_kv_heads=kv_heads,
        head_dim=head_dim, vocab_size=vocab, seq_len=f.int("context_length", 2048),
        shared_classifier="output.weight" not in tensors,
        norm_eps=f.float("attention.layer_norm_rms_epsilon", 1e-5),
        rope_theta=f.float("rope.freq_base", 10000.0),
        rope_style="neox" if arch == "qwen2" else "interleaved", rope_scaling=scaling,
        qkv_bias=arch == "qwen2" or "blk.0.attn_q.bias" in tensors,
        rope_freqs="rope_freqs.weight" in tensors)
    config = validated_config(config, path)
    check_layer_count(tensors, config.n_layers, path)
    return config


def tensor_part(path: str, mm: Any, info: TensorInfo, matrix: bool) -> Raw | Any:
    """A zero-copy view of one tensor in its own storage type."""
    qt = BY_GGML.get(info.ggml_type)
    if qt is None:
        raise ModelFormatError(f"{path}: tensor {info.name} is {ggml_name(info.ggml_type)}, which llama-chat "
                               f"does not run (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q2_K-Q6_K, "
                               f"IQ4_NL and IQ4_XS are supported)")
    shape = info.shape
    if matrix and len(shape) != 2:
        raise ModelFormatError(f"{path}: tensor {info.name} has shape {shape}, not a matrix")
    if qt.name == "fp32":
        return Raw(np.frombuffer(mm, "<f4", count=info.nbytes // 4, offset=info.offset).reshape(shape), "fp32")
    if qt.name == "fp16":
        return Raw(np.frombuffer(mm, "<f2", count=info.nbytes // 2, offset=info.offset).reshape(shape), "fp16")
    if not matrix:
        if qt.name == "bf16":
            return Raw(np.frombuffer(mm, "<u2", count=info.nbytes // 2, offset=info.offset).reshape(shape), "bf16")
        raise ModelFormatError(f"{path}: vector tensor {info.name} is {ggml_name(info.ggml_type)}; "
                               f"norms and biases must be F32, F16 or BF16")
    if shape[1] % qt.block:
        raise ModelFormatError(f"{path}: {ggml_name(info.ggml_type)} tensor {info.name} has rows of {shape[1]} "
                               f"values, not a multiple of its block of {qt.block}")
    buf = np.frombuffer(mm, np.uint8, count=info.nbytes, offset=info.offset)
    return block_view(qt.name, shape[0], shape[1], buf)


def _type_of(info: TensorInfo) -> str:
    qt = BY_GGML.get(info.ggml_type)
    return qt.name if qt is not None else ggml_name(info.ggml_type)


def source_from_gguf(path: str, meta: dict, tensors: dict[str, TensorInfo], mm: Any,
                     config: ModelConfig, fmt: str = "gguf") -> Source:
    """The Source over a validated GGUF tensor table (also used for our own quant cache)."""
    refs: dict = {}
    for name, layer in tensor_keys(config):
        s = spec(name, config)
        info = tensors.get(s.key("gguf", layer))
        if info is None:
            continue  # Source.check names what is missing
        refs[(name, layer)] = TensorRef(info.shape, _type_of(info),
                                        lambda info=info, m=s.matrix: tensor_part(path, mm, info, m))
    return Source(config=config, refs=refs, format=fmt, description="", metadata=meta)


def open_gguf(path: str) -> Source:
    """Open a GGUF file: validated headers, lazy zero-copy tensors, the embedded tokenizer."""
    meta, tensors, mm = read_gguf(path)
    config = config_from_gguf(meta, tensors, path)
    src = source_from_gguf(path, meta, tensors, mm, config)
    src.check()
    for (name, layer), ref in src.refs.items():  # refuse unrunnable types at the door
        if ref.qtype not in _RUNNABLE:
            info = tensors[spec(name, config).key("gguf", layer)]
            tensor_part(path, mm, info, spec(name, config).matrix)
    from ..tokenizer import describe_gguf_tokenizer, tokenizer_from_gguf
    from ..tokenizer.gguf import gguf_chat_template

    name = meta.get("general.name")
    name = one_line(name[:60]) if isinstance(name, str) else ""
    src.description = (f"GGUF {config.arch}{f' ({name[:60]})' if name else ''}, {len(tensors)} tensors, "
                       + ", ".join(f"{n} {t}" for t, n in src.matrix_types().most_common()))
    src.tokenizer = lambda: tokenizer_from_gguf(meta, path)
    src.tokenizer_note = describe_gguf_tokenizer(meta)
    src.chat_template = gguf_chat_template(meta)
    return src


_RUNNABLE = {t.name for t in BY_GGML.values()}
