"""GGUF files (llama.cpp) with architecture `llama`: F32, F16, BF16 and Q8_0 tensors.

Layout (little-endian, versions 2 and 3): magic "GGUF", u32 version, u64 tensor count,
u64 metadata count; metadata as (string key, u32 type, value); tensor infos as (string
name, u32 n_dims, u64 dims innermost-first, u32 ggml type, u64 offset); then the data
block, aligned to `general.alignment` (32 by default).

Q8_0 stores blocks of 32 weights as one fp16 scale and 32 int8 values along each row,
which is exactly our int8 group layout with group_size 32: the values are taken as they
are (scales widened to fp32), never re-quantized.

llama.cpp's converter writes llama q/k weights in Meta's interleaved rotary order (it
undoes HF's permutation), which is our order too, so no rows are permuted here.

The tokenizer lives in the metadata (tokenizer.ggml.*); we write it out once as a
llama2.c tokenizer.bin in the user cache so the ordinary tokenizer loader can read it.
"""
from __future__ import annotations

import hashlib
import os
import struct
import tempfile
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..config import ModelConfig
from ..errors import ModelFormatError
from ..weights import QTensor
from .common import Raw, Source, map_file

MAGIC = b"GGUF"
GGML_F32, GGML_F16, GGML_Q8_0, GGML_BF16 = 0, 1, 8, 30
_TYPE_NAMES = {0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
               10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 30: "BF16"}
_SCALARS = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 6: "<f", 7: "<?", 10: "<Q", 11: "<q", 12: "<d"}
_STRING, _ARRAY = 8, 9
Q8_BLOCK = np.dtype([("d", "<f2"), ("q", "i1", (32,))])


@dataclass
class TensorInfo:
    name: str
    shape: tuple[int, ...]     # numpy order (outermost first)
    ggml_type: int
    offset: int                # absolute file offset


class _Cursor:
    """Bounds-checked reader over the memory map (a short file is a one-line error)."""

    def __init__(self, buf: Any, path: str) -> None:
        self.buf, self.pos, self.path = buf, 0, path

    def take(self, fmt: str) -> Any:
        size = struct.calcsize(fmt)
        if self.pos + size > len(self.buf):
            raise ModelFormatError(f"{self.path} is truncated (GGUF header ends early)")
        (v,) = struct.unpack_from(fmt, self.buf, self.pos)
        self.pos += size
        return v

    def string(self) -> str:
        n = self.take("<Q")
        if self.pos + n > len(self.buf):
            raise ModelFormatError(f"{self.path} is truncated (GGUF string runs past the end)")
        s = bytes(self.buf[self.pos:self.pos + n])
        self.pos += n
        return s.decode("utf-8", errors="replace")

    def value(self, vtype: int) -> Any:
        if vtype in _SCALARS:
            return self.take(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            etype, n = self.take("<I"), self.take("<Q")
            if n > len(self.buf):
                raise ModelFormatError(f"{self.path}: GGUF array length {n} is impossible")
            if etype in _SCALARS and etype != 7:  # numeric arrays in one numpy read
                dt = np.dtype(_SCALARS[etype])
                end = self.pos + n * dt.itemsize
                if end > len(self.buf):
                    raise ModelFormatError(f"{self.path} is truncated (GGUF array runs past the end)")
                arr = np.frombuffer(self.buf, dt, count=n, offset=self.pos)
                self.pos = end
                return arr
            return [self.value(etype) for _ in range(n)]
        raise ModelFormatError(f"{self.path}: unknown GGUF metadata type {vtype}")


def read_gguf(path: str) -> tuple[dict[str, Any], dict[str, TensorInfo], Any]:
    """Metadata, tensor table and the memory map of a GGUF file."""
    mm = map_file(path)
    cur = _Cursor(mm, path)
    if bytes(mm[:4]) != MAGIC:
        raise ModelFormatError(f"{path} is not a GGUF file")
    cur.pos = 4
    version = cur.take("<I")
    if version not in (2, 3):
        raise ModelFormatError(f"{path}: GGUF version {version} is not supported (2 and 3 are)")
    n_tensors, n_kv = cur.take("<Q"), cur.take("<Q")
    if n_tensors > 1 << 20 or n_kv > 1 << 20:
        raise ModelFormatError(f"{path}: implausible GGUF counts ({n_tensors} tensors, {n_kv} keys)")
    meta: dict[str, Any] = {}
    for _ in range(n_kv):
        key = cur.string()
        meta[key] = cur.value(cur.take("<I"))
    infos: list[tuple[str, tuple[int, ...], int, int]] = []
    for _ in range(n_tensors):
        name = cur.string()
        n_dims = cur.take("<I")
        if n_dims > 8:
            raise ModelFormatError(f"{path}: tensor {name} has {n_dims} dimensions")
        dims = [cur.take("<Q") for _ in range(n_dims)]
        infos.append((name, tuple(reversed(dims)), cur.take("<I"), cur.take("<Q")))
    align = int(meta.get("general.alignment", 32)) or 32
    data_start = (cur.pos + align - 1) // align * align
    tensors = {n: TensorInfo(n, s, t, data_start + o) for n, s, t, o in infos}
    return meta, tensors, mm


def tensor_part(path: str, mm: Any, info: TensorInfo) -> Raw | QTensor:
    """A zero-copy view of one tensor (Q8_0 as a QTensor over strided views)."""
    shape, count = info.shape, int(np.prod(info.shape, dtype=np.int64))
    if info.ggml_type in (GGML_F32, GGML_F16, GGML_BF16):
        dt, kind = {GGML_F32: ("<f4", "fp32"), GGML_F16: ("<f2", "fp16"), GGML_BF16: ("<u2", "bf16")}[info.ggml_type]
        if info.offset + count * np.dtype(dt).itemsize > len(mm):
            raise ModelFormatError(f"{path} is truncated (tensor {info.name} runs past the end)")
        return Raw(np.frombuffer(mm, dt, count=count, offset=info.offset).reshape(shape), kind)
    if info.ggml_type == GGML_Q8_0:
        if shape[-1] % 32:
            raise ModelFormatError(f"{path}: Q8_0 tensor {info.name} has a row length not divisible by 32")
        nblocks = count // 32
        if info.offset + nblocks * Q8_BLOCK.itemsize > len(mm):
            raise ModelFormatError(f"{path} is truncated (tensor {info.name} runs past the end)")
        blocks = np.frombuffer(mm, Q8_BLOCK, count=nblocks, offset=info.offset)
        blocks = blocks.reshape(*shape[:-1], shape[-1] // 32)
        q = blocks["q"].reshape(shape)          # strided view (34-byte blocks), copied on stacking
        s = blocks["d"].astype(np.float32)      # small: one scale per 32 weights
        return QTensor(q, s, 32)
    name = _TYPE_NAMES.get(info.ggml_type, str(info.ggml_type))
    raise ModelFormatError(
        f"{path}: tensor {info.name} is {name}; only F32, F16, BF16 and Q8_0 GGUF files are supported")


def _meta_int(meta: dict, key: str, path: str, default: int | None = None) -> int:
    if key in meta:
        return int(meta[key])
    if default is None:
        raise ModelFormatError(f"{path}: GGUF metadata lacks {key}")
    return default


def config_from_gguf(meta: dict, tensors: dict[str, TensorInfo], path: str) -> ModelConfig:
    arch = meta.get("general.architecture")
    if arch != "llama":
        raise ModelFormatError(f"{path}: GGUF architecture {arch!r} is not supported (llama only)")
    if "token_embd.weight" not in tensors:
        raise ModelFormatError(f"{path}: GGUF file lacks token_embd.weight")
    dim = _meta_int(meta, "llama.embedding_length", path)
    heads = _meta_int(meta, "llama.attention.head_count", path)
    rot = meta.get("llama.rope.dimension_count")
    if rot is not None and int(rot) != dim // max(heads, 1):
        raise ModelFormatError(f"{path}: partial rotary embeddings (rope.dimension_count={rot}) are not supported")
    if meta.get("llama.rope.scaling.type", "none") not in ("none", ""):
        raise ModelFormatError(f"{path}: rope scaling {meta['llama.rope.scaling.type']!r} is not supported")
    return ModelConfig(
        dim=dim, hidden_dim=_meta_int(meta, "llama.feed_forward_length", path),
        n_layers=_meta_int(meta, "llama.block_count", path), n_heads=heads,
        n_kv_heads=_meta_int(meta, "llama.attention.head_count_kv", path, heads),
        vocab_size=tensors["token_embd.weight"].shape[0],
        seq_len=_meta_int(meta, "llama.context_length", path, 2048),
        shared_classifier="output.weight" not in tensors,
        norm_eps=float(meta.get("llama.attention.layer_norm_rms_epsilon", 1e-5)),
        rope_theta=float(meta.get("llama.rope.freq_base", 10000.0)))


_NAMES = {"attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "wq": "attn_q", "wk": "attn_k",
          "wv": "attn_v", "wo": "attn_output", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}


def write_llama2c_tokenizer(meta: dict, path: str, out_path: str) -> None:
    """Write tokenizer.ggml.* as a llama2.c tokenizer.bin (U+2581 becomes a space)."""
    problem = tokenizer_problem(meta)
    if problem:
        raise ModelFormatError(f"{path}: {problem}; pass --tokenizer")
    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        scores = np.zeros(len(tokens), np.float32)
    pieces = [str(t).replace("\u2581", " ").encode("utf-8") for t in tokens]
    max_len = max(1, max(len(p) for p in pieces))
    chunks = [struct.pack("<i", max_len)]
    for p, s in zip(pieces, scores):
        chunks.append(struct.pack("<fi", float(s), len(p)) + p)
    tmp = out_path + f".{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        f.write(b"".join(chunks))
    os.replace(tmp, out_path)


def cache_dir() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-chat")


def tokenizer_file(meta: dict, path: str) -> str | None:
    """Path of the cached tokenizer.bin for this GGUF file, writing it when absent.

    None when no cache directory is writable: the caller then asks for --tokenizer, and a
    user who passed one is not blocked by a tokenizer they do not need.
    """
    st = os.stat(path)
    key = hashlib.sha256(f"{os.path.abspath(path)}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:16]
    for d in (cache_dir(), os.path.join(tempfile.gettempdir(), "llama-chat")):
        out = os.path.join(d, f"gguf-tokenizer-{key}.bin")
        if os.path.isfile(out):
            return out
        try:
            os.makedirs(d, exist_ok=True)
            write_llama2c_tokenizer(meta, path, out)
            return out
        except OSError:
            continue
    return None


def open_gguf(path: str) -> Source:
    """Open a GGUF file; its tokenizer is written to the cache only when asked for."""
    meta, tensors, mm = read_gguf(path)
    config = config_from_gguf(meta, tensors, path)

    def tensor(name: str) -> Raw | QTensor:
        info = tensors.get(name)
        if info is None:
            raise ModelFormatError(f"{path}: GGUF file lacks tensor {name}")
        return tensor_part(path, mm, info)

    def get(name: str, layer: int | None):
        if name == "tok_embeddings":
            return tensor("token_embd.weight")
        if name == "final_norm":
            return tensor("output_norm.weight")
        if name == "output":
            return None if config.shared_classifier else tensor("output.weight")
        return tensor(f"blk.{layer}.{_NAMES[name]}.weight")

    wq = tensors.get("blk.0.attn_q.weight")
    type_name = _TYPE_NAMES.get(wq.ggml_type, "?") if wq else "?"
    dtype = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "Q8_0": "int8"}.get(type_name, type_name)
    tok_problem = tokenizer_problem(meta)
    has_tok = tok_problem is None
    name = meta.get("general.name")
    return Source(
        config=config, get=get, format="gguf", dtype=dtype,
        description=f"GGUF llama{f' ({name})' if name else ''}, {len(tensors)} tensors"
                    f"{', Q8_0 kept as int8 groups of 32' if dtype == 'int8' else ''}",
        tokenizer_note=(f"from the GGUF metadata ({len(meta['tokenizer.ggml.tokens'])} tokens, "
                        f"{meta.get('tokenizer.ggml.model', '?')})") if has_tok else f"{tok_problem} (pass --tokenizer)",
        tokenizer=(lambda: tokenizer_file(meta, path)) if has_tok else (lambda: None))


def tokenizer_problem(meta: dict) -> str | None:
    """Why the embedded vocabulary cannot become a llama2.c tokenizer.bin, or None if it can.

    tokenizer.bin has no field for special ids, and its reader assumes BOS 1 / EOS 2.
    """
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        return "no tokenizer in the GGUF metadata"
    model = meta.get("tokenizer.ggml.model", "llama")
    if model != "llama":
        return f"the GGUF tokenizer is {model!r}, not a llama (sentencepiece) one"
    for key, want in (("tokenizer.ggml.bos_token_id", 1), ("tokenizer.ggml.eos_token_id", 2)):
        if key in meta and int(meta[key]) != want:
            return f"the GGUF tokenizer has {key.split('.')[-1]} {int(meta[key])}, not {want}"
    return None
