"""W8A32 weight quantization: int8 values with one fp32 scale per group of input columns.

Symmetric per-group quantization (scale = max|w| / 127, q = round(w / scale)) is the
llama2.c v2 / runq.c layout, so a quantized model can be written as a v2 file that runq.c
also reads, and our kernels widen int8 to fp32 on the fly (activations stay fp32).
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import sys
import zlib
from dataclasses import replace
from typing import Callable

import numpy as np

from .checkpoint import HEADER_V1, MAGIC, _read_v2, _Reader, expected_size, read_header
from .config import ModelConfig
from .errors import LlamaChatError, ModelFormatError
from .weights import MATRIX_NAMES, ModelWeights, QTensor, Tensor

#: Rows quantized per chunk: bounds the fp32 temporaries to a few tens of MB for any shape.
_CHUNK_ELEMS = 1 << 22


def quantize_q8(w: np.ndarray, group_size: int) -> QTensor:
    """Quantize a (rows, cols) or stacked (..., rows, cols) float matrix to int8 per group.

    Groups are `group_size` consecutive input columns (the last axis). A group that is all
    zeros gets scale 0 and q 0, so dequantization is exact for it. Works chunk by chunk so
    a memory-mapped 7B tensor never needs a full-size fp32 temporary.
    """
    w = np.asarray(w)
    if w.ndim < 2:
        raise ValueError(f"quantize_q8 needs a matrix, got shape {w.shape}")
    cols = w.shape[-1]
    if group_size <= 0 or cols % group_size:
        raise ValueError(f"group size {group_size} does not divide the {cols} input columns")
    lead = w.shape[:-1]
    flat = w.reshape(-1, cols)
    n_rows = flat.shape[0]
    ngroups = cols // group_size
    q = np.empty((n_rows, cols), dtype=np.int8)
    s = np.empty((n_rows, ngroups), dtype=np.float32)
    step = max(1, _CHUNK_ELEMS // cols)
    for r0 in range(0, n_rows, step):
        r1 = min(n_rows, r0 + step)
        _quantize_rows(flat[r0:r1], group_size, q[r0:r1], s[r0:r1])
    return QTensor(q.reshape(*lead, cols), s.reshape(*lead, ngroups), group_size)


def _quantize_rows(rows: np.ndarray, group_size: int, q_out: np.ndarray, s_out: np.ndarray) -> None:
    """Quantize a block of rows into the given output views (fp32 math, like runq.c)."""
    n, cols = rows.shape
    g = np.asarray(rows, dtype=np.float32).reshape(n, cols // group_size, group_size)
    amax = np.max(np.abs(g), axis=2)
    scale = (amax / np.float32(127.0)).astype(np.float32)
    s_out[...] = scale
    safe = np.where(scale > 0, scale, np.float32(1.0)).astype(np.float32)
    v = g / safe[:, :, None]
    np.rint(v, out=v)
    np.clip(v, -127, 127, out=v)
    q_out[...] = v.reshape(n, cols).astype(np.int8)


def choose_group_size(config: ModelConfig, want: int = 64) -> int:
    """The largest group size <= `want` dividing both dim and hidden_dim (every input width)."""
    if want <= 0:
        raise ValueError(f"group size must be positive, got {want}")
    g = want
    while g > 1 and (config.dim % g or config.hidden_dim % g):
        g -= 1
    return g


# ---------------------------------------------------------------------------------------
# Whole models
# ---------------------------------------------------------------------------------------

#: fp sources with more parameters than this are quantized by default (decode speed is
#: memory bound, so int8 is ~4x less traffic); tiny models stay fp32 and exact.
DEFAULT_INT8_MIN_PARAMS = 50_000_000


def quantize_weights(weights: ModelWeights, group_size: int = 64,
                     progress: Callable[[int, int], None] | None = None) -> ModelWeights:
    """Every matrix (embeddings and classifier included) as a QTensor; norms stay fp32.

    `group_size` is shrunk to divide the model's dimensions. `progress(done, total)` is
    called after each tensor. Already-quantized tensors are kept as they are.
    """
    gs = choose_group_size(weights.config, group_size)
    names = ["tok_embeddings", *MATRIX_NAMES] + ([] if weights.config.shared_classifier else ["output"])
    out: dict[str, Tensor] = {}
    for i, name in enumerate(names):
        t = getattr(weights, name)
        out[name] = t if isinstance(t, QTensor) else quantize_q8(t, gs)
        if progress:
            progress(i + 1, len(names))
    if weights.config.shared_classifier or weights.output is weights.tok_embeddings:
        out.setdefault("output", out["tok_embeddings"])
    return replace(weights, **out)


def resolve_quant(weights: ModelWeights, quant: str | None) -> str:
    """'int8' or 'none' for a request of 'int8', 'none' or None (the size-based default)."""
    return resolve_quant_for(weights.config, weights.weight_type, quant)


def resolve_quant_for(config: ModelConfig, source_dtype: str, quant: str | None) -> str:
    """`resolve_quant` from a model's config and stored dtype alone (before loading it)."""
    if quant not in (None, "int8", "none"):
        raise LlamaChatError(f"unknown quantization {quant!r}: use int8 or none")
    if source_dtype == "int8":
        return "int8"  # an int8 file stays int8: dequantizing would only cost memory
    if quant is None:
        return "int8" if config.n_params() > DEFAULT_INT8_MIN_PARAMS else "none"
    return quant


# ---------------------------------------------------------------------------------------
# Streaming llama2.c v2 writer (bounded memory: one layer matrix at a time)
# ---------------------------------------------------------------------------------------

def v2_header(config: ModelConfig, group_size: int) -> bytes:
    """The 256-byte llama2.c version-2 header (what runq.c reads)."""
    c = config
    head = struct.pack("<Ii7iBi", MAGIC, 2, c.dim, c.hidden_dim, c.n_layers, c.n_heads,
                       c.n_kv_heads, c.vocab_size, c.seq_len, int(c.shared_classifier), group_size)
    return head + b"\0" * (HEADER_V1 - len(head))


def _v2_pieces(weights: ModelWeights) -> list[tuple[str, int | None]]:
    """(tensor name, layer or None) in v2 file order."""
    L = weights.config.n_layers
    pieces: list[tuple[str, int | None]] = [("tok_embeddings", None)]
    pieces += [(name, layer) for name in MATRIX_NAMES for layer in range(L)]
    if not weights.config.shared_classifier:
        pieces.append(("output", None))
    return pieces


def write_quantized_v2(f, weights: ModelWeights, group_size: int,
                       progress: Callable[[int, int], None] | None = None) -> None:
    """Quantize and write `weights` as a llama2.c v2 body into the open binary file `f`.

    Same bytes as `checkpoint.write_llama2c_v2(path, quantize_weights(w))`, but each
    matrix is quantized just before it is written, so a 7B fp32 source (26 GB) never has
    more than one layer matrix quantized in memory.
    """
    gs = choose_group_size(weights.config, group_size)
    f.write(v2_header(weights.config, gs))
    for norm in (weights.attn_norm, weights.ffn_norm, weights.final_norm):
        f.write(np.ascontiguousarray(norm, dtype=np.float32).tobytes())
    pieces = _v2_pieces(weights)
    for i, (name, layer) in enumerate(pieces):
        t = getattr(weights, name)
        if layer is not None:
            t = t[layer]
        if not isinstance(t, QTensor):
            t = quantize_q8(t, gs)
        elif t.group_size != gs:
            raise LlamaChatError(f"{name} is already quantized with group size {t.group_size}, not {gs}")
        f.write(np.ascontiguousarray(t.q, dtype=np.int8).data)
        f.write(np.ascontiguousarray(t.s, dtype=np.float32).data)
        if progress:
            progress(i + 1, len(pieces))


# ---------------------------------------------------------------------------------------
# On-disk cache of quantized weights
# ---------------------------------------------------------------------------------------

CACHE_VERSION = 2
_TRAILER = struct.Struct("<8sII32sQQI")   # magic, version, group size, key, body size, body digest, own crc
_TRAILER_MAGIC = b"LCQ8CACH"
_DIGEST_CHUNK = 1 << 20                   # bytes per checksum chunk
_DIGEST_PARALLEL = 256 << 20              # bodies larger than this are summed by two threads


def cache_dir() -> str:
    """$XDG_CACHE_HOME/llama-chat/quant, or ~/.cache/llama-chat/quant."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-chat", "quant")


def _source_files(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path)
                      if os.path.isfile(os.path.join(path, n)))
    return [path]


def cache_key(source_path: str, group_size: int) -> bytes:
    """sha256 of the source's identity (realpath, size, mtime, first 64 KiB) + quant settings."""
    h = hashlib.sha256(f"llama-chat-q8 v{CACHE_VERSION} gs={group_size}\0".encode())
    for p in _source_files(os.path.realpath(source_path)):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(65536))
    return h.digest()


def cache_path(source_path: str, group_size: int) -> str:
    """Where the cache of this source + settings lives (the name changes with the key)."""
    real = os.path.realpath(source_path)
    stem = os.path.splitext(os.path.basename(os.path.normpath(real)))[0] or "model"
    src = hashlib.sha256(real.encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"{stem}.{src}.{cache_key(source_path, group_size).hex()[:16]}.q8.bin")


def _chunk_sums(words: np.ndarray) -> np.ndarray:
    """Wrapping uint64 sum of each `_DIGEST_CHUNK` of `words` (numpy drops the GIL here)."""
    return np.add.reduceat(words, np.arange(0, words.size, _DIGEST_CHUNK // 8), dtype=np.uint64)


def body_digest(buf: np.ndarray | memoryview, body: int) -> int:
    """64-bit checksum of every byte of the cache body.

    The sum of the 64-bit words of each 1 MiB chunk, weighted by an odd number unique to
    the chunk: any flipped bit, zeroed page or overwritten run changes it, and chunks
    cannot trade places. It runs at memory speed (~30 GB/s per core; two threads for big
    bodies), and it faults every page of the map in, which the first forward would pay
    anyway: checking the whole cache at each load costs a 110M model a few milliseconds.
    """
    raw = np.frombuffer(buf, dtype=np.uint8, count=body)
    n = body // 8
    words = raw[:n * 8].view(np.uint64)
    if body > _DIGEST_PARALLEL and n > 0:
        from concurrent.futures import ThreadPoolExecutor
        half = (n // 2) // (_DIGEST_CHUNK // 8) * (_DIGEST_CHUNK // 8)
        with ThreadPoolExecutor(2) as pool:
            parts = list(pool.map(_chunk_sums, (words[:half], words[half:])))
        sums = np.concatenate(parts)
    else:
        sums = _chunk_sums(words) if n else np.zeros(0, np.uint64)
    weights = np.arange(1, 2 * sums.size + 1, 2, dtype=np.uint64)
    total = int(np.sum(sums * weights, dtype=np.uint64))
    tail = int.from_bytes(raw[n * 8:].tobytes(), "little")
    return (total + tail * 0x9E3779B97F4A7C15 + body) & 0xFFFFFFFFFFFFFFFF


def _trailer(key: bytes, group_size: int, body: int, digest: int) -> bytes:
    head = _TRAILER.pack(_TRAILER_MAGIC, CACHE_VERSION, group_size, key, body, digest, 0)[:-4]
    return head + struct.pack("<I", zlib.crc32(head))


def _config_matches(a: ModelConfig, b: ModelConfig) -> bool:
    fields_ = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "shared_classifier")
    return all(getattr(a, n) == getattr(b, n) for n in fields_)


def load_cache(path: str, config: ModelConfig, key: bytes, group_size: int) -> ModelWeights | None:
    """Memory-map a cache file if it is complete and belongs to this model, else None.

    Everything, norms included, comes from the cache; `config` supplies what the v2 header
    cannot hold (rope_theta, norm_eps), so a hit never reads the source's tensors.
    """
    try:
        h, size = read_header(path)
    except (ModelFormatError, OSError):
        return None
    if h.version != 2 or h.group_size != group_size or not _config_matches(h.config, config):
        return None
    body = expected_size(h)
    if size != body + _TRAILER.size:
        return None
    try:
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    raw = mm[body:]
    magic, version, gs, got_key, got_body, digest, own = _TRAILER.unpack(raw)
    if (magic != _TRAILER_MAGIC or version != CACHE_VERSION or gs != group_size or got_key != key
            or got_body != body or own != zlib.crc32(raw[:-4])):
        return None
    buf = np.frombuffer(mm, dtype=np.uint8)
    if digest != body_digest(buf, body):
        return None
    return replace(_read_v2(_Reader(buf, h.data_offset), h), config=config)


def build_cache(path: str, weights: ModelWeights, key: bytes, group_size: int,
                progress: Callable[[int, int], None] | None = None) -> None:
    """Quantize into `path` atomically: write a private temp file, then rename it in place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = f"{path}.{os.getpid()}.tmp"
    try:
        with open(tmp, "w+b") as f:
            write_quantized_v2(f, weights, group_size, progress)
            f.flush()
            body = f.tell()
            with mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) as mm:
                digest = body_digest(mm, body)
            f.write(_trailer(key, group_size, body, digest))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _remove_stale(path)


def _remove_stale(path: str) -> None:
    """Delete older caches of the same source (same name prefix, other key)."""
    folder, name = os.path.split(path)
    prefix = name.rsplit(".", 4)[0] + "."   # "<stem>.<source hash>."
    for other in os.listdir(folder):
        if other != name and other.startswith(prefix) and other.endswith(".q8.bin"):
            try:
                os.unlink(os.path.join(folder, other))
            except OSError:
                pass


def cached_int8(source_path: str, config: ModelConfig, group_size: int = 64) -> ModelWeights | None:
    """The cached int8 weights of a source if a valid cache exists, without reading the
    source's tensors (a warm start of a big Meta/HF/GGUF model), else None."""
    gs = choose_group_size(config, group_size)
    try:
        return load_cache(cache_path(source_path, gs), config, cache_key(source_path, gs), gs)
    except OSError:
        return None


def quantize_cached(weights: ModelWeights, source_path: str, group_size: int = 64,
                    progress: Callable[[int, int], None] | None = None) -> ModelWeights:
    """int8 weights for an fp source, from the on-disk cache (built on first use).

    A valid cache is memory-mapped: no quantization and no copy, so a warm start costs
    page faults and one checksum pass. Anything wrong with it (other source, settings,
    size, header, trailer, checksum of the whole body) means it is rebuilt, never used. If the cache cannot be
    written (read-only home, full disk), the weights are quantized in memory instead.
    """
    gs = choose_group_size(weights.config, group_size)
    try:
        key = cache_key(source_path, gs)
        path = cache_path(source_path, gs)
    except OSError as e:
        raise ModelFormatError(f"cannot read {source_path}: {e.strerror}") from None
    cached = load_cache(path, weights.config, key, gs)
    if cached is not None:
        return cached
    try:
        build_cache(path, weights, key, gs, progress)
    except OSError as e:
        print(f"llama-chat: warning: cannot write the int8 cache ({e.strerror}); quantizing in memory",
              file=sys.stderr)
        return quantize_weights(weights, gs, progress)
    cached = load_cache(path, weights.config, key, gs)
    if cached is None:
        raise LlamaChatError(f"the int8 cache {path} was written but does not read back; is the disk full?")
    return cached
