"""llama2.c checkpoint files: legacy v0, version 1 (fp32) and version 2 (int8 groups).

Every format is memory-mapped and sliced into zero-copy views; the header and the file
size are checked against each other before any tensor is touched, so a truncated or
foreign file fails with a one-line `ModelFormatError` instead of garbage or a crash.

Layouts (little-endian):
  v0: 7 x int32 header (dim, hidden, layers, heads, kv_heads, vocab, seq_len; vocab < 0
      means a separate classifier follows), then fp32 tensors in run.c order, including
      two unused RoPE tables.
  v1: uint32 magic "ak42", int32 version 1, the 7 ints, uint8 shared-classifier flag,
      zero padding to 256 bytes; fp32 norms first, then embeddings and layer matrices.
  v2: as v1 plus int32 group size in the header; fp32 norms, then each matrix as int8
      values followed by its fp32 group scales (one matrix per layer, runq.c's layout).
"""
from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

import numpy as np

from .config import ModelConfig
from .errors import ModelFormatError
from .weights import MATRIX_NAMES, ModelWeights, QTensor

MAGIC = 0x616B3432  # "ak42" read as a little-endian uint32
HEADER_V1 = 256


@dataclass(frozen=True)
class Llama2cHeader:
    version: int                  # 0, 1 or 2
    config: ModelConfig
    group_size: int = 0           # v2 only
    data_offset: int = 28


def read_header(path: str) -> tuple[Llama2cHeader, int]:
    """Parse and sanity-check the header; returns it with the file size."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as f:
            head = f.read(HEADER_V1)
    except FileNotFoundError:
        raise ModelFormatError(f"model file not found: {path}") from None
    except IsADirectoryError:
        raise ModelFormatError(f"{path} is a directory, not a llama2.c checkpoint") from None
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror}") from None
    if len(head) < 28:
        raise ModelFormatError(f"{path} is too short ({size} bytes) to be a model file")
    magic, version = struct.unpack_from("<Ii", head, 0)
    if magic == MAGIC:
        if version not in (1, 2):
            raise ModelFormatError(f"{path}: llama2.c format version {version} is not supported (1 or 2 are)")
        if len(head) < HEADER_V1:
            raise ModelFormatError(f"{path} is truncated inside its 256-byte header")
        dim, hidden, layers, heads, kv, vocab, seq = struct.unpack_from("<7i", head, 8)
        shared = bool(head[36])
        gs = struct.unpack_from("<i", head, 37)[0] if version == 2 else 0
        cfg = _config(path, dim, hidden, layers, heads, kv, vocab, seq, shared)
        if version == 2 and (gs <= 0 or cfg.dim % gs or cfg.hidden_dim % gs):
            raise ModelFormatError(f"{path}: group size {gs} does not divide the model's dimensions")
        return Llama2cHeader(version, cfg, gs, HEADER_V1), size
    dim, hidden, layers, heads, kv, vocab, seq = struct.unpack_from("<7i", head, 0)
    shared = vocab > 0
    cfg = _config(path, dim, hidden, layers, heads, kv, abs(vocab), seq, shared)
    return Llama2cHeader(0, cfg, 0, 28), size


def _config(path: str, dim: int, hidden: int, layers: int, heads: int, kv: int,
            vocab: int, seq: int, shared: bool) -> ModelConfig:
    cfg = ModelConfig(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads,
                      n_kv_heads=kv, vocab_size=vocab, seq_len=seq, shared_classifier=shared)
    try:
        if min(dim, hidden, layers, heads, kv, vocab, seq) <= 0:
            raise ValueError("a size is zero or negative")
        cfg.validate()
    except ValueError as e:
        raise ModelFormatError(f"{path} is not a llama2.c checkpoint (header: {e})") from None
    return cfg


def expected_size(h: Llama2cHeader) -> int:
    """Exact file size the header implies."""
    c = h.config
    L, d, kv, hd, v = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
    mats = [v * d] + [L * d * d, L * kv * d, L * kv * d, L * d * d, L * hd * d, L * d * hd, L * hd * d]
    if not c.shared_classifier:
        mats.append(v * d)
    norms = 2 * L * d + d
    if h.version == 0:
        rope = c.seq_len * c.head_dim  # freq_cis_real + freq_cis_imag, seq_len * head_dim/2 each
        return h.data_offset + 4 * (sum(mats) + norms + rope)
    if h.version == 1:
        return h.data_offset + 4 * (sum(mats) + norms)
    gs = h.group_size
    return h.data_offset + 4 * norms + sum(n + 4 * (n // gs) for n in mats)


def load_llama2c(path: str) -> ModelWeights:
    """Memory-map a llama2.c checkpoint and return views of its tensors."""
    h, size = read_header(path)
    want = expected_size(h)
    if size < want:
        raise ModelFormatError(
            f"{path} is truncated: the header describes {want} bytes but the file has {size}")
    if h.version != 0 and size > want:
        raise ModelFormatError(
            f"{path} has {size - want} bytes more than its header describes: not a llama2.c v{h.version} file")
    with open(path, "rb") as f:
        mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    buf = np.frombuffer(mm, dtype=np.uint8)
    reader = _Reader(buf, h.data_offset)
    return _read_v2(reader, h) if h.version == 2 else _read_float(reader, h)


class _Reader:
    """Sequential zero-copy slicing of the mapped file."""

    def __init__(self, buf: np.ndarray, offset: int) -> None:
        self.buf, self.off = buf, offset

    def take(self, dtype: type, *shape: int) -> np.ndarray:
        n = int(np.prod(shape)) * np.dtype(dtype).itemsize
        arr = self.buf[self.off:self.off + n].view(dtype).reshape(shape)
        self.off += n
        return arr

    def skip(self, nbytes: int) -> None:
        self.off += nbytes


def _read_float(r: _Reader, h: Llama2cHeader) -> ModelWeights:
    c = h.config
    L, d, kv, hd, v = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
    f = np.float32
    t: dict[str, np.ndarray] = {}
    if h.version == 0:
        t["tok_embeddings"] = r.take(f, v, d)
        t["attn_norm"] = r.take(f, L, d)
        t["wq"], t["wk"], t["wv"], t["wo"] = r.take(f, L, d, d), r.take(f, L, kv, d), r.take(f, L, kv, d), r.take(f, L, d, d)
        t["ffn_norm"] = r.take(f, L, d)
        t["w1"], t["w2"], t["w3"] = r.take(f, L, hd, d), r.take(f, L, d, hd), r.take(f, L, hd, d)
        t["final_norm"] = r.take(f, d)
        r.skip(4 * c.seq_len * c.head_dim)  # RoPE tables: we compute our own
    else:
        t["attn_norm"], t["ffn_norm"], t["final_norm"] = r.take(f, L, d), r.take(f, L, d), r.take(f, d)
        t["tok_embeddings"] = r.take(f, v, d)
        t["wq"], t["wk"], t["wv"], t["wo"] = r.take(f, L, d, d), r.take(f, L, kv, d), r.take(f, L, kv, d), r.take(f, L, d, d)
        t["w1"], t["w2"], t["w3"] = r.take(f, L, hd, d), r.take(f, L, d, hd), r.take(f, L, hd, d)
    t["output"] = t["tok_embeddings"] if c.shared_classifier else r.take(f, v, d)
    return ModelWeights(config=c, **t)


def _read_v2(r: _Reader, h: Llama2cHeader) -> ModelWeights:
    c, gs = h.config, h.group_size
    L, d, kv, hd, v = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
    attn_norm, ffn_norm, final_norm = r.take(np.float32, L, d), r.take(np.float32, L, d), r.take(np.float32, d)

    def qmat(rows: int, cols: int) -> QTensor:
        q = r.take(np.int8, rows, cols)
        s = r.take(np.float32, rows, cols // gs)
        return QTensor(q, s, gs)

    def qstack(rows: int, cols: int) -> QTensor:
        """L matrices stored one after another, each values-then-scales: strided views."""
        first = r.off
        per = rows * cols + 4 * rows * (cols // gs)
        base = r.buf[first:first + L * per]
        q = np.lib.stride_tricks.as_strided(base, (L, rows, cols), (per, cols, 1))
        ng = cols // gs
        if (base.ctypes.data + rows * cols) % 4 == 0 and per % 4 == 0:
            # aligned (every real model): the scales are strided float32 views too, no copy
            f32 = base[rows * cols:rows * cols + ((L - 1) * per + 4 * rows * ng)].view(np.float32)
            s = np.lib.stride_tricks.as_strided(f32, (L, rows, ng), (per, 4 * ng, 4))
        else:
            sbytes = np.lib.stride_tricks.as_strided(base[rows * cols:], (L, rows * ng * 4), (per, 1))
            s = np.ascontiguousarray(sbytes).view(np.float32).reshape(L, rows, ng)
        r.skip(L * per)
        return QTensor(q.view(np.int8), s, gs)

    emb = qmat(v, d)
    shapes = {"wq": (d, d), "wk": (kv, d), "wv": (kv, d), "wo": (d, d), "w1": (hd, d), "w2": (d, hd), "w3": (hd, d)}
    mats = {name: qstack(*shapes[name]) for name in MATRIX_NAMES}
    output = emb if c.shared_classifier else qmat(v, d)
    return ModelWeights(config=c, tok_embeddings=emb, attn_norm=attn_norm, ffn_norm=ffn_norm,
                        final_norm=final_norm, output=output, **mats)  # type: ignore[arg-type]


def write_llama2c_v2(path: str, w: ModelWeights, progress=None) -> None:
    """Write int8 weights in llama2.c's version-2 layout (readable by runq.c).

    `w` must hold QTensor matrices (see inference.quantize). `progress(done, total)` is
    called after each tensor. The file is written to a temporary name and renamed, so
    a crash never leaves a truncated file under the final name.
    """
    c = w.config
    if not isinstance(w.wq, QTensor) or not isinstance(w.tok_embeddings, QTensor):
        raise ValueError("write_llama2c_v2 needs quantized (QTensor) weights")
    gs = w.wq.group_size
    header = struct.pack("<Ii7iBi", MAGIC, 2, c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                         c.n_kv_heads, c.vocab_size, c.seq_len, int(c.shared_classifier), gs)
    header += b"\0" * (HEADER_V1 - len(header))
    tensors: list[QTensor] = [w.tok_embeddings]  # type: ignore[list-item]
    for name in MATRIX_NAMES:
        stack: QTensor = getattr(w, name)
        tensors.extend(stack[layer] for layer in range(c.n_layers))
    if not c.shared_classifier:
        tensors.append(w.output)  # type: ignore[arg-type]
    tmp = path + ".tmp"
    with open(tmp, "wb") as f:
        f.write(header)
        for norm in (w.attn_norm, w.ffn_norm, w.final_norm):
            f.write(np.ascontiguousarray(norm, dtype=np.float32).tobytes())
        for i, t in enumerate(tensors):
            f.write(np.ascontiguousarray(t.q, dtype=np.int8).tobytes())
            f.write(np.ascontiguousarray(t.s, dtype=np.float32).tobytes())
            if progress:
                progress(i + 1, len(tensors))
    os.replace(tmp, path)
