"""A primed prompt's keys and values on disk (`--prompt-cache FILE`, RLLaMA's idea).

A standard priming prompt (a long system prompt, few-shot examples) is computed once,
saved, and loaded by later runs, which then prefill only what follows it (the engine's
and the scheduler's longest-common-prefix rule does the rest).

File layout (little-endian): the magic line, a uint32 header length, a JSON header
(version, model key, token ids, cache shape), then the keys and then the values of those
positions as float32 (layers, kv_heads, tokens, head_dim). The file is data: the header
is parsed as bounded JSON, every size is checked against the file's length and against
the backend before anything is copied, and a file made for another model (the key: the
shape, the storage types and samples of the weights' bytes) is refused.

Works with backends that keep their cache in host arrays `k_cache`/`v_cache` of shape
(slots, layers, kv_heads, context, head_dim): the CPU backend.
"""
from __future__ import annotations

import hashlib
import json
import os
import struct
from dataclasses import asdict, dataclass

import numpy as np

from .architecture import MATRIX_NAMES
from .errors import LlamaChatError

MAGIC = b"llama-chat prompt cache\n"
VERSION = 1
#: Longest JSON header read (a full context of token ids is far below this).
MAX_HEADER = 16 << 20
#: Bytes of each weight matrix that go into the model key.
SAMPLE_BYTES = 4096


class PromptCacheError(LlamaChatError):
    """A prompt cache file is unreadable, damaged, or for another model or context."""


class NotOurs(PromptCacheError):
    """FILE cannot be read, or is no prompt cache at all: it is never overwritten (a
    mistyped --prompt-cache must not destroy a user's file)."""


def _not_a_cache(path: str) -> NotOurs:
    return NotOurs(f"{path} is not a llama-chat prompt cache; choose another --prompt-cache file (it is left as it is)")


def _unreadable(path: str, e: OSError) -> NotOurs:
    return NotOurs(f"cannot read the prompt cache {path}: {e.strerror or e}")


def _nothing_yet(path: str) -> bool:
    """No FILE, or an empty one (`--prompt-cache "$(mktemp)"`): the first prompt fills it."""
    return not os.path.lexists(path) or (os.path.isfile(path) and os.path.getsize(path) == 0)


@dataclass(frozen=True)
class PromptState:
    """Token ids and their keys/values, (layers, kv_heads, len(tokens), head_dim) each."""

    tokens: list[int]
    k: np.ndarray
    v: np.ndarray


def host_cache(backend: object) -> tuple[np.ndarray, np.ndarray]:
    """The backend's (keys, values) cache arrays; PromptCacheError if it keeps none on the host."""
    k, v = getattr(backend, "k_cache", None), getattr(backend, "v_cache", None)
    if not isinstance(k, np.ndarray) or not isinstance(v, np.ndarray) or k.ndim != 5:
        raise PromptCacheError(f"the {getattr(backend, 'name', '?')} backend has no host KV cache: "
                               f"--prompt-cache needs --device cpu")
    return k, v


def _sample(t: object) -> bytes:
    for attr in ("data", "q"):
        a = getattr(t, attr, None)
        if isinstance(a, np.ndarray):
            break
    else:
        a = np.asarray(t)
    flat = a.reshape(-1).view(np.uint8) if a.flags.c_contiguous else np.ascontiguousarray(a).reshape(-1).view(np.uint8)
    return bytes(flat[:SAMPLE_BYTES])


def model_key(loaded: object) -> str:
    """A fingerprint of a loaded model: its config, every matrix's storage type, and the
    first bytes of the first and last layers' matrices, the embedding and the classifier."""
    from .weights import tensor_type

    weights = loaded.weights  # type: ignore[attr-defined]
    config = weights.config
    h = hashlib.sha256()
    h.update(json.dumps(asdict(config), sort_keys=True, default=str).encode())
    for layer in range(config.n_layers):
        for name in MATRIX_NAMES:
            t = weights.get(name, layer)
            h.update(f"{name}{layer}:{tensor_type(t)}:{getattr(t, 'group_size', 0)};".encode())
            if layer in (0, config.n_layers - 1):
                h.update(_sample(t))
    for name in ("tok_embeddings", "output"):
        t = weights.get(name)
        h.update(f"{name}:{tensor_type(t)};".encode())
        h.update(_sample(t))
    return h.hexdigest()


def save(path: str, backend: object, slot: int, tokens: list[int], key: str) -> None:
    """Write the first len(tokens) positions of `slot` (which must hold `tokens`) to
    `path`, atomically (a temporary file renamed over it)."""
    kc, vc = host_cache(backend)
    n = len(tokens)
    if not 0 < n <= kc.shape[3]:
        raise PromptCacheError(f"cannot save a prompt of {n} tokens")
    header = json.dumps({"version": VERSION, "key": key, "tokens": [int(t) for t in tokens],
                         "shape": [kc.shape[1], kc.shape[2], n, kc.shape[4]]}).encode()
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(MAGIC + struct.pack("<I", len(header)) + header)
            for cache in (kc, vc):
                f.write(np.ascontiguousarray(cache[slot, :, :, :n, :], dtype="<f4").tobytes())
        os.replace(tmp, path)
    except OSError as e:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise PromptCacheError(f"cannot write the prompt cache {path}: {e.strerror or e}") from None


def load(path: str, backend: object, key: str) -> PromptState:
    """Read `path` for this model (`key`) and backend; PromptCacheError if it does not fit."""
    kc, _ = host_cache(backend)
    layers, kv_heads, context, head_dim = kc.shape[1:]
    vocab = backend.config.vocab_size  # type: ignore[attr-defined]
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            head = f.read(len(MAGIC) + 4)
            if len(head) != len(MAGIC) + 4 or head[:len(MAGIC)] != MAGIC:
                raise _not_a_cache(path)
            (hlen,) = struct.unpack("<I", head[len(MAGIC):])
            if hlen > min(MAX_HEADER, size):
                raise PromptCacheError(f"the prompt cache {path} is damaged (header length {hlen})")
            try:
                meta = json.loads(f.read(hlen))
            except (ValueError, RecursionError):
                raise PromptCacheError(f"the prompt cache {path} is damaged (its header is not JSON)") from None
            if not isinstance(meta, dict) or meta.get("version") != VERSION:
                raise PromptCacheError(f"the prompt cache {path} has an unknown version")
            if meta.get("key") != key:
                raise PromptCacheError(f"the prompt cache {path} was made for another model")
            tokens, shape = meta.get("tokens"), meta.get("shape")
            if not (isinstance(tokens, list) and tokens and all(type(t) is int and 0 <= t < vocab for t in tokens)):
                raise PromptCacheError(f"the prompt cache {path} is damaged (token ids)")
            n = len(tokens)
            if shape != [layers, kv_heads, n, head_dim]:
                raise PromptCacheError(f"the prompt cache {path} is damaged (shape {shape!r})")
            if n >= context:
                raise PromptCacheError(f"the prompt cache {path} holds {n} tokens, more than a "
                                       f"{context}-position context leaves room for")
            count = layers * kv_heads * n * head_dim
            if size != len(MAGIC) + 4 + hlen + 2 * 4 * count:
                raise PromptCacheError(f"the prompt cache {path} is damaged (size {size})")
            k = np.fromfile(f, dtype="<f4", count=count).reshape(layers, kv_heads, n, head_dim)
            v = np.fromfile(f, dtype="<f4", count=count).reshape(layers, kv_heads, n, head_dim)
    except OSError as e:
        raise _unreadable(path, e) from None
    if not (np.isfinite(k).all() and np.isfinite(v).all()):
        raise PromptCacheError(f"the prompt cache {path} is damaged (values not finite)")
    return PromptState(tokens, k.astype(np.float32), v.astype(np.float32))


def refuse_foreign(path: str) -> None:
    """NotOurs if FILE exists, is not empty and does not start as a prompt cache does (or
    cannot be read): checked before a model is loaded, so a wrong --prompt-cache fails
    at once; `load_existing` checks the rest."""
    if _nothing_yet(path):
        return
    try:
        with open(path, "rb") as f:
            head = f.read(len(MAGIC))
    except OSError as e:
        raise _unreadable(path, e) from None
    if head != MAGIC:
        raise _not_a_cache(path)


def load_existing(path: str, backend: object, key: str) -> tuple[PromptState | None, str | None]:
    """(state, None) when FILE holds a prompt this model and backend can use; (None, why)
    when it is a prompt cache that cannot be used here (another model, an older version,
    damaged), which the caller replaces; (None, None) when there is no FILE yet, or it is
    empty. A file that is not a prompt cache, or cannot be read, raises NotOurs."""
    if _nothing_yet(path):
        return None, None
    try:
        return load(path, backend, key), None
    except NotOurs:
        raise
    except PromptCacheError as e:
        return None, f"{e}; it will be replaced"


def install(backend: object, slot: int, state: PromptState) -> None:
    """Copy a loaded prompt into positions 0.. of `slot`."""
    kc, vc = host_cache(backend)
    n = len(state.tokens)
    kc[slot, :, :, :n, :] = state.k
    vc[slot, :, :, :n, :] = state.v
