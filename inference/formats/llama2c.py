"""llama2.c checkpoint files: legacy v0, version 1 (fp32) and version 2 (int8 groups).

One reader and one writer for the layout. The header and the file size are checked
against each other before any tensor is touched (the size must be exact: a header that
lies about a width or the layer count would otherwise run and print garbage), then every
tensor is a zero-copy view of the memory map.

Layouts (little-endian):
  v0: 7 x int32 header (dim, hidden, layers, heads, kv_heads, vocab, seq_len; vocab < 0
      means a separate classifier follows), then fp32 tensors in run.c order, including
      two unused RoPE tables.
  v1: uint32 magic "ak42", int32 version 1, the 7 ints, uint8 shared-classifier flag,
      zero padding to 256 bytes; fp32 norms first, then embeddings and layer matrices.
  v2: as v1 plus int32 group size in the header; fp32 norms, then each matrix as int8
      values followed by its fp32 group scales (one matrix per layer, runq.c's layout).
The format knows only Llama-2 shapes: RoPE theta 10000, eps 1e-5, interleaved pairs.
"""
from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import BinaryIO, Callable

import numpy as np

from ..architecture import MATRIX_NAMES
from ..config import ModelConfig
from ..errors import ModelFormatError
from ..weights import ModelWeights, QTensor
from .common import Source, TensorRef, map_file

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
    mm = map_file(path)
    size = len(mm)
    head = bytes(mm[:HEADER_V1])
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
    cfg = _config(path, dim, hidden, layers, heads, kv, abs(vocab), seq, vocab > 0)
    return Llama2cHeader(0, cfg, 0, 28), size


def _config(path: str, dim: int, hidden: int, layers: int, heads: int, kv: int,
            vocab: int, seq: int, shared: bool) -> ModelConfig:
    try:
        if min(dim, hidden, layers, heads, kv, vocab, seq) <= 0:
            raise ValueError("a size is zero or negative")
        if dim % heads:
            raise ValueError(f"dim {dim} is not divisible by n_heads {heads}")
        cfg = ModelConfig(dim=dim, hidden_dim=hidden, n_layers=layers, n_heads=heads,
                          n_kv_heads=kv, vocab_size=vocab, seq_len=seq, shared_classifier=shared)
        cfg.validate()
    except ValueError as e:
        raise ModelFormatError(f"{path} is not a llama2.c checkpoint (header: {e})") from None
    return cfg


def _order(h: Llama2cHeader) -> list[tuple[str, tuple[int, ...], bool]]:
    """(name, per-layer shape, per_layer) in file order for v0/v1 (norms included)."""
    c = h.config
    d, kv, hd, v = c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
    mats = [("wq", (d, d), True), ("wk", (kv, d), True), ("wv", (kv, d), True), ("wo", (d, d), True),
            ("w1", (hd, d), True), ("w2", (d, hd), True), ("w3", (hd, d), True)]
    if h.version == 0:
        order = [("tok_embeddings", (v, d), False), ("attn_norm", (d,), True), *mats[:4],
                 ("ffn_norm", (d,), True), *mats[4:], ("final_norm", (d,), False)]
    else:
        order = [("attn_norm", (d,), True), ("ffn_norm", (d,), True), ("final_norm", (d,), False),
                 ("tok_embeddings", (v, d), False), *mats]
    return order


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


def open_llama2c(path: str) -> Source:
    """Memory-map a llama2.c checkpoint: every tensor a view, the size checked exactly."""
    h, size = read_header(path)
    want = expected_size(h)
    if size < want:
        raise ModelFormatError(f"{path} is truncated: the header describes {want} bytes but the file has {size}")
    if size > want:
        raise ModelFormatError(f"{path} has {size - want} bytes more than its header describes "
                               f"(a wrong width or layer count?): not a llama2.c v{h.version} file")
    buf = np.frombuffer(map_file(path), dtype=np.uint8)
    c = h.config
    tensors: dict = {}
    off = h.data_offset

    def take(dtype, n: int) -> np.ndarray:
        nonlocal off
        nbytes = n * np.dtype(dtype).itemsize
        a = buf[off:off + nbytes].view(dtype)
        off += nbytes
        return a

    if h.version == 2:
        d = c.dim
        for name in ("attn_norm", "ffn_norm"):
            a = take(np.float32, c.n_layers * d).reshape(c.n_layers, d)
            for layer in range(c.n_layers):
                tensors[(name, layer)] = a[layer]
        tensors[("final_norm", None)] = take(np.float32, d)
        shapes = {"wq": (d, d), "wk": (c.kv_dim, d), "wv": (c.kv_dim, d), "wo": (d, d),
                  "w1": (c.hidden_dim, d), "w2": (d, c.hidden_dim), "w3": (c.hidden_dim, d)}
        gs = h.group_size

        def qmat(rows: int, cols: int) -> QTensor:
            q = take(np.int8, rows * cols).reshape(rows, cols)
            return QTensor(q, take(np.float32, rows * (cols // gs)).reshape(rows, cols // gs), gs)

        tensors[("tok_embeddings", None)] = qmat(c.vocab_size, d)
        for name in MATRIX_NAMES:
            for layer in range(c.n_layers):
                tensors[(name, layer)] = qmat(*shapes[name])
        if not c.shared_classifier:
            tensors[("output", None)] = qmat(c.vocab_size, d)
    else:
        for name, shape, per_layer in _order(h):
            n = int(np.prod(shape))
            if per_layer:
                a = take(np.float32, c.n_layers * n).reshape(c.n_layers, *shape)
                for layer in range(c.n_layers):
                    tensors[(name, layer)] = a[layer]
            else:
                tensors[(name, None)] = take(np.float32, n).reshape(shape)
        if h.version == 0:
            off += 4 * c.seq_len * c.head_dim  # RoPE tables: we compute our own
        if not c.shared_classifier:
            tensors[("output", None)] = take(np.float32, c.vocab_size * c.dim).reshape(c.vocab_size, c.dim)
    refs = {k: TensorRef(tuple(t.shape), "int8" if isinstance(t, QTensor) else "fp32", lambda t=t: t)
            for k, t in tensors.items()}
    desc = f"llama2.c checkpoint v{h.version}" + (f", int8 groups of {h.group_size}" if h.version == 2 else "")
    src = Source(config=c, refs=refs, format="llama2c", description=desc,
                 tokenizer_note="none in the file (a tokenizer beside it is used)")
    src.check()
    return src


def load_llama2c(path: str) -> ModelWeights:
    """The weights of a llama2.c checkpoint (views of the memory map)."""
    return open_llama2c(path).weights()


# ---------------------------------------------------------------------------------------
# The v2 writer (what `llama-chat quantize` produces; llama2.c's runq.c reads it)
# ---------------------------------------------------------------------------------------

def v2_header(config: ModelConfig, group_size: int) -> bytes:
    """The 256-byte llama2.c version-2 header."""
    c = config
    head = struct.pack("<Ii7iBi", MAGIC, 2, c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                       c.n_kv_heads, c.vocab_size, c.seq_len, int(c.shared_classifier), group_size)
    return head + b"\0" * (HEADER_V1 - len(head))


def v2_problem(config: ModelConfig) -> str | None:
    """Why a model cannot be described by a llama2.c file, or None."""
    c = config
    if c.arch != "llama" or c.qkv_bias or c.rope_freqs or c.rope_scaling.kind != "none":
        return "a llama2.c file describes plain Llama-2 models only (no biases or RoPE scaling)"
    if c.q_dim != c.dim:
        return f"a llama2.c file needs head_dim x heads == dim ({c.q_dim} != {c.dim})"
    if c.rope_theta != 10000.0 or abs(c.norm_eps - 1e-5) > 1e-12:
        return (f"the model uses rope_theta={c.rope_theta:g}, norm_eps={c.norm_eps:g}; a llama2.c file can only "
                "describe 10000 and 1e-5")
    return None


def write_v2(f: BinaryIO, weights: ModelWeights, group_size: int,
             quantize: Callable[[np.ndarray, int], QTensor],
             floats: Callable[[object], np.ndarray],
             progress: Callable[[int, int], None] | None = None) -> None:
    """Write `weights` as a llama2.c v2 body into the open binary file `f`.

    Each matrix is quantized (`quantize(fp32 matrix, group_size)`) right before it is
    written, so a 7B source never has more than one layer matrix quantized in memory;
    int8 matrices of the same group size are written as they are. NEOX-ordered q/k rows
    are permuted to the interleaved order the format implies.
    """
    c = weights.config
    f.write(v2_header(c, group_size))
    for name in ("attn_norm", "ffn_norm"):
        for layer in range(c.n_layers):
            f.write(np.ascontiguousarray(weights.get(name, layer), dtype=np.float32).tobytes())
    f.write(np.ascontiguousarray(weights.get("final_norm"), dtype=np.float32).tobytes())
    pieces: list[tuple[str, int | None]] = [("tok_embeddings", None)]
    pieces += [(name, layer) for name in MATRIX_NAMES for layer in range(c.n_layers)]
    if not c.shared_classifier:
        pieces.append(("output", None))
    for i, (name, layer) in enumerate(pieces):
        t = weights.get(name, layer)
        if isinstance(t, QTensor) and t.group_size == group_size and c.rope_style == "interleaved":
            q = t
        else:
            m = floats(t)
            if name in ("wq", "wk") and c.rope_style == "neox":
                m = neox_to_interleaved(m, c.n_heads if name == "wq" else c.n_kv_heads)
            q = quantize(m, group_size)
        f.write(np.ascontiguousarray(q.q, dtype=np.int8).data)
        f.write(np.ascontiguousarray(q.s, dtype=np.float32).data)
        if progress:
            progress(i + 1, len(pieces))


def neox_to_interleaved(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Rows of a q/k projection reordered from NEOX pairs (i, i + half) to interleaved
    pairs (2i, 2i+1) within each head (what HF's conversion script undoes for Llama)."""
    rows, cols = w.shape
    return np.ascontiguousarray(
        w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols))
