"""The on-disk cache of quantized weights: a first load quantizes, later loads map it.

A cache file holds only the matrices the plan converted (int8: the values as a GGUF I8
tensor plus a `.scale` F32 tensor; int4: Q4_0 blocks), as a GGUF file read by the same
validating reader as any model, followed by a trailer: the key of the source and the
settings, the body size, a 64-bit checksum of every byte of the body and the trailer's
own CRC. Norms, biases and matrices that were already in a block type still come from
the source file, which is memory-mapped anyway.

The key covers the source's path, size and mtime and its content (head, tail and blocks
sampled across every file), so a file rewritten in place with the same size and mtime
still gets a new cache. Anything wrong with a cache (other key, short, damaged, one
flipped bit) means it is rebuilt, never used. Temporary files of a build that was killed
are removed by the next build.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import struct
import sys
import time
import zlib
from typing import Callable

import numpy as np

from .architecture import spec, tensor_keys
from .errors import LlamaChatError, ModelFormatError
from .formats.common import Source
from .formats.gguf import read_gguf, tensor_part
from .formats.gguf_writer import TensorOut, write_gguf
from .quant_types import FLOAT_TYPES, QTYPES
from .quantize import plan_group_size, quantize_matrix
from .weights import ModelWeights, QTensor

Progress = Callable[[int, int], None]

CACHE_VERSION = 3
_TRAILER = struct.Struct("<8sII32sQQI")   # magic, version, group size, key, body size, body digest, own crc
_TRAILER_MAGIC = b"LCQCACHE"
_DIGEST_CHUNK = 1 << 20                   # bytes per checksum chunk
_DIGEST_PARALLEL = 256 << 20              # bodies larger than this are summed by two threads
_SAMPLES = 64                             # content blocks hashed per source file
_SAMPLE_BYTES = 4096
_STALE_TMP_S = 3600                       # a temp file untouched this long belongs to a dead build
_GGML_I8, _GGML_F32 = 24, 0


def cache_dir() -> str:
    """$XDG_CACHE_HOME/llama-chat/quant, or ~/.cache/llama-chat/quant."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-chat", "quant")


def _source_files(path: str) -> list[str]:
    if os.path.isdir(path):
        return sorted(os.path.join(path, n) for n in os.listdir(path)
                      if os.path.isfile(os.path.join(path, n)))
    return [path]


def cache_key(source_path: str, plan: str, group_size: int) -> bytes:
    """sha256 of the source's identity and sampled content, and the quant settings."""
    h = hashlib.sha256(f"llama-chat-quant v{CACHE_VERSION} {plan} gs={group_size}\0".encode())
    for p in _source_files(os.path.realpath(source_path)):
        st = os.stat(p)
        h.update(f"{p}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
        with open(p, "rb") as f:
            h.update(f.read(65536))
            if st.st_size > 65536:
                for i in range(_SAMPLES + 1):
                    f.seek(max(0, (st.st_size - _SAMPLE_BYTES) * i // _SAMPLES))
                    h.update(f.read(_SAMPLE_BYTES))
    return h.digest()


def cache_path(source_path: str, plan: str, group_size: int, key: bytes) -> str:
    real = os.path.realpath(source_path)
    stem = os.path.splitext(os.path.basename(os.path.normpath(real)))[0] or "model"
    src = hashlib.sha256(real.encode()).hexdigest()[:12]
    return os.path.join(cache_dir(), f"{stem}.{src}.{key.hex()[:16]}.{plan}.gguf")


def _chunk_sums(words: np.ndarray) -> np.ndarray:
    """Wrapping uint64 sum of each `_DIGEST_CHUNK` of `words` (numpy drops the GIL here)."""
    return np.add.reduceat(words, np.arange(0, words.size, _DIGEST_CHUNK // 8), dtype=np.uint64)


def body_digest(buf: np.ndarray | memoryview | mmap.mmap, body: int) -> int:
    """64-bit checksum of every byte of the cache body.

    The sum of the 64-bit words of each 1 MiB chunk, weighted by an odd number unique to
    the chunk: any flipped bit, zeroed page or overwritten run changes it, and chunks
    cannot trade places. It runs at memory speed (two threads for big bodies) and faults
    every page of the map in, which the first forward would pay anyway.
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


def _converted(source: Source, plan: str) -> list[tuple[str, int | None]]:
    """The tensors a plan converts: the float matrices (their type is known from headers)."""
    out = []
    for name, layer in tensor_keys(source.config):
        if spec(name, source.config).matrix and source.refs[(name, layer)].qtype in FLOAT_TYPES:
            out.append((name, layer))
    return out


def load_cache(path: str, source: Source, plan: str, key: bytes, group_size: int) -> ModelWeights | None:
    """The source's weights with the cached matrices mapped in, if the cache is whole and
    belongs to this source and these settings; else None."""
    try:
        size = os.path.getsize(path)
        if size < _TRAILER.size + 32:
            return None
        with open(path, "rb") as f:
            mm = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except (OSError, ValueError):
        return None
    raw = mm[size - _TRAILER.size:]
    magic, version, gs, got_key, body, digest, own = _TRAILER.unpack(raw)
    if (magic != _TRAILER_MAGIC or version != CACHE_VERSION or gs != group_size or got_key != key
            or body != size - _TRAILER.size or own != zlib.crc32(raw[:-4])):
        return None
    if digest != body_digest(mm, body):
        return None
    try:
        _, tensors, cmm = read_gguf(path, trailer=_TRAILER.size)
    except ModelFormatError:
        return None
    c = source.config
    w = ModelWeights(c)
    wanted = set(_converted(source, plan))
    for name, layer in tensor_keys(c):
        s = spec(name, c)
        gname = s.key("gguf", layer)
        if (name, layer) not in wanted:
            w.tensors[(name, layer)] = source.tensor(name, layer)
            continue
        info = tensors.get(gname)
        rows, cols = s.shape(c)
        if plan == "int8":
            sc = tensors.get(gname + ".scale")
            if (info is None or sc is None or info.ggml_type != _GGML_I8 or sc.ggml_type != _GGML_F32
                    or info.shape != (rows, cols) or sc.shape != (rows, cols // group_size)):
                return None
            q = np.frombuffer(cmm, np.int8, count=rows * cols, offset=info.offset).reshape(rows, cols)
            scales = np.frombuffer(cmm, np.float32, count=sc.nbytes // 4, offset=sc.offset).reshape(sc.shape)
            w.tensors[(name, layer)] = QTensor(q, scales, group_size)
        else:
            if info is None or info.ggml_type != QTYPES["q4_0"].ggml or info.shape != (rows, cols):
                return None
            w.tensors[(name, layer)] = tensor_part(path, cmm, info, True)
    return w


def _outputs(source: Source, plan: str, group_size: int) -> list[TensorOut]:
    """The cache's tensors, each quantized from the source when it is written."""
    c = source.config
    outs: list[TensorOut] = []
    pending: dict = {}

    def quantized(key):
        if key not in pending:
            pending.clear()  # one matrix in memory at a time
            pending[key] = quantize_matrix(source.tensor(*key), plan, group_size)
        return pending[key]

    for key in _converted(source, plan):
        s = spec(key[0], c)
        rows, cols = s.shape(c)
        gname = s.key("gguf", key[1])
        if plan == "int8":
            outs.append(TensorOut(gname, _GGML_I8, (rows, cols), lambda k=key: quantized(k).q))
            outs.append(TensorOut(gname + ".scale", _GGML_F32, (rows, cols // group_size),
                                  lambda k=key: quantized(k).s))
        else:
            outs.append(TensorOut(gname, QTYPES["q4_0"].ggml, (rows, cols), lambda k=key: quantized(k).data))
    return outs


def build_cache(path: str, source: Source, plan: str, key: bytes, group_size: int,
                progress: Progress | None = None) -> None:
    """Quantize into `path` atomically: write a private temp file, then rename it in place."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    _remove_dead_temps(os.path.dirname(path))
    tmp = f"{path}.{os.getpid()}.tmp"
    outs = _outputs(source, plan, group_size)
    step = 2 if plan == "int8" else 1
    report = (lambda done, total: progress(done // step, total // step)) if progress else None
    try:
        if os.path.lexists(tmp):  # ours from a reused pid, or something planted: never opened
            os.unlink(tmp)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o644)
        with os.fdopen(fd, "w+b") as f:
            meta = {"general.architecture": "llama-chat-cache", "llama-chat.cache.plan": plan,
                    "llama-chat.cache.group_size": group_size}
            write_gguf(f, meta, outs, report)
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
    _remove_other_keys(path)


def _remove_other_keys(path: str) -> None:
    """Delete older caches of the same source and plan (same name prefix, other key)."""
    folder, name = os.path.split(path)
    stem, src, _, plan, ext = name.rsplit(".", 4)
    for other in os.listdir(folder):
        parts = other.rsplit(".", 4)
        if other != name and len(parts) == 5 and parts[:2] == [stem, src] and parts[3:] == [plan, ext]:
            try:
                os.unlink(os.path.join(folder, other))
            except OSError:
                pass


def _remove_dead_temps(folder: str) -> None:
    """Temp files of builds that died (killed mid-quantization) are never finished: remove
    those whose process is gone or that nothing has written to for an hour."""
    now = time.time()
    for name in os.listdir(folder):
        if not name.endswith(".tmp"):
            continue
        full = os.path.join(folder, name)
        try:
            pid = int(name.rsplit(".", 2)[-2])
        except (ValueError, IndexError):
            pid = -1
        alive = pid > 0 and _pid_alive(pid)
        try:
            if not alive or now - os.path.getmtime(full) > _STALE_TMP_S:
                os.unlink(full)
        except OSError:
            pass


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def quantized_weights(source: Source, source_path: str, plan: str, group_size: int = 64,
                      progress: Progress | None = None) -> ModelWeights:
    """The model's weights with its float matrices under `plan`, via the cache.

    A valid cache is memory-mapped: no quantization and no copy, so a warm start costs
    page faults and one checksum pass. If the cache cannot be written (read-only home,
    full disk) the matrices are quantized in memory instead, with a note on stderr.
    """
    if plan == "none" or not _converted(source, plan):
        return source.weights()
    gs = plan_group_size(source.config, plan, group_size)
    try:
        key = cache_key(source_path, plan, gs)
    except OSError as e:
        raise ModelFormatError(f"cannot read {source_path}: {e.strerror}") from None
    path = cache_path(source_path, plan, gs, key)
    cached = load_cache(path, source, plan, key, gs)
    if cached is not None:
        return cached
    try:
        build_cache(path, source, plan, key, gs, progress)
    except OSError as e:
        print(f"llama-chat: warning: cannot write the quantized cache ({e.strerror}); quantizing in memory",
              file=sys.stderr)
        return in_memory(source, plan, gs, progress)
    cached = load_cache(path, source, plan, key, gs)
    if cached is None:
        raise LlamaChatError(f"the quantized cache {path} was written but does not read back; is the disk full?")
    return cached


def in_memory(source: Source, plan: str, group_size: int, progress: Progress | None = None) -> ModelWeights:
    """The weights with float matrices quantized in RAM (no cache)."""
    w = source.weights()
    keys = _converted(source, plan)
    for i, key in enumerate(keys):
        w.tensors[key] = quantize_matrix(w.tensors[key], plan, group_size)
        if progress:
            progress(i + 1, len(keys))
    return w
