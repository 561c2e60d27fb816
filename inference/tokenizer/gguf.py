"""The vocabulary inside a GGUF file (`tokenizer.ggml.*`) as a `Tokenizer`, in memory.

`tokenizer.ggml.model` says which encoder: `llama` (sentencepiece-style, scores and
`<0xXX>` byte pieces) or `gpt2` (byte-level BPE with merges and a pre-tokenizer named by
`tokenizer.ggml.pre`). Token types follow llama.cpp: 1 normal, 2 unknown, 3 control,
4 user-defined, 5 unused, 6 byte. Special ids, `add_bos_token`, `add_space_prefix` and the
end-of-generation set are read the way llama.cpp reads them, so that ids equal llama.cpp's.
"""
from __future__ import annotations

import os
from typing import Any

import numpy as np

from ..errors import TokenizerError
from .base import END_OF_GENERATION_TEXTS, END_OF_TURN_TEXTS, FIM_END_TEXTS, SpecialToken, Tokenizer

NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6
_KEY = "tokenizer.ggml."


def gguf_metadata(path: str) -> dict[str, Any]:
    """The metadata of a GGUF file (the one place that reads it for tokenizers)."""
    from ..formats.gguf import read_gguf_metadata
    return read_gguf_metadata(path)


def tokenizer_from_gguf_file(path: str) -> Tokenizer:
    return tokenizer_from_gguf(gguf_metadata(path), path)


def _where(path: str) -> str:
    """The file named in a message ('GGUF' for metadata with no file)."""
    return os.path.basename(path) or path or "GGUF"


def _typed(meta: dict, key: str, path: str, ok: Any, what: str) -> Any:
    """meta[tokenizer.ggml.key] if it has the type `ok(v)` accepts, None when absent;
    anything else is a one-line TokenizerError naming the key (never used blindly)."""
    v = meta.get(_KEY + key if not key.startswith("tokenizer.") else key)
    if v is None or ok(v):
        return v
    shown = f"an array of {len(v)}" if isinstance(v, (list, np.ndarray)) else repr(v)[:40]
    full = key if key.startswith("tokenizer.") else _KEY + key
    raise TokenizerError(f"{_where(path)}: {full} must be {what}, got {shown}")


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind in "iu"


def _float_array(v: Any) -> bool:
    return isinstance(v, np.ndarray) and v.ndim == 1 and v.dtype.kind == "f"


def _str_list(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(t, str) for t in v)


def _int(meta: dict, key: str, default: int | None, n: int, path: str = "") -> int | None:
    """A token id from the metadata; out of range falls back to the default (llama.cpp)."""
    v = _typed(meta, key, path, _is_int, "an integer token id")
    if v is not None and 0 <= int(v) < n:
        return int(v)
    return default if default is not None and 0 <= default < n else None


def _vocab(meta: dict, path: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    tokens = _typed(meta, "tokens", path, _str_list, "an array of strings")
    if not tokens:
        raise TokenizerError(f"{path}: no tokenizer in the GGUF metadata (pass --tokenizer)")
    n = len(tokens)
    types = _typed(meta, "token_type", path, _int_array, "an array of integers")
    types = np.full(n, NORMAL, np.int32) if types is None else types
    if len(types) < n:
        raise TokenizerError(f"{path}: {len(types)} token types for {n} tokens")
    types = types[:n]
    if types.size and (types.min() < 0 or types.max() > BYTE):
        bad = int(np.flatnonzero((types < 0) | (types > BYTE))[0])
        raise TokenizerError(f"{_where(path)}: token {bad} has type {int(types[bad])}, which is not a GGUF "
                             f"token type (0-{BYTE})")
    scores = _typed(meta, "scores", path, _float_array, "an array of numbers")
    if scores is not None:
        if len(scores) < n:
            raise TokenizerError(f"{path}: {len(scores)} token scores for {n} tokens")
        scores = scores[:n].astype(np.float32)
        if np.isnan(scores).any():
            raise TokenizerError(f"{_where(path)}: token {int(np.flatnonzero(np.isnan(scores))[0])} has a NaN score")
    return list(tokens), types.astype(np.int32), scores


def _byte_of(token: str, i: int, path: str) -> int:
    """The byte a BYTE-type token stands for (spelled <0xXX>)."""
    if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
        try:
            return int(token[3:5], 16)
        except ValueError:
            pass
    raise TokenizerError(f"{_where(path)}: byte token {i} is spelled {token[:20]!r}, not <0xXX>")


def _end_of_generation(meta: dict, tokens: list[str], types: np.ndarray, eos: int | None,
                       path: str = "") -> set[int]:
    """llama.cpp's end-of-generation set: EOS, EOT, EOM, and tokens that end a turn (or
    pad/separate fill-in-the-middle text) by their spelling. Those become control tokens."""
    n = len(tokens)
    by_text = {t: i for i, t in enumerate(tokens)}
    eog: set[int] = set()
    for key, texts in (("eot_token_id", END_OF_TURN_TEXTS), ("eom_token_id", ("<|eom_id|>",))):
        i = _int(meta, key, None, n, path)
        if i is None:
            i = next((by_text[t] for t in texts if t in by_text), None)
        if i is not None:
            eog.add(i)
    for t in END_OF_GENERATION_TEXTS | FIM_END_TEXTS:
        if t in by_text:
            eog.add(by_text[t])
    if eos is not None:
        eog.add(eos)
    for i in eog:
        if types[i] not in (CONTROL, UNKNOWN):
            types[i] = CONTROL
    return eog


def tokenizer_from_gguf(meta: dict, path: str) -> Tokenizer:
    """Build the tokenizer a GGUF file's metadata describes (one-line TokenizerError if it
    cannot be represented)."""
    model = _typed(meta, "model", path, lambda v: isinstance(v, str), "a string") or "llama"
    where = _where(path)
    if model == "llama":
        return _spm_from_gguf(meta, path)
    if model == "gpt2":
        return _bpe_from_gguf(meta, path)
    raise TokenizerError(f"{where}: the GGUF tokenizer model {model!r} is not supported (llama and gpt2 are)")


def _flag(meta: dict, key: str, default: bool, path: str = "") -> bool:
    v = _typed(meta, key, path, lambda v: isinstance(v, (bool, np.bool_)), "true or false")
    return default if v is None else bool(v)


def gguf_chat_template(meta: dict) -> str | None:
    """The chat template in GGUF metadata (`tokenizer.chat_template`), if it is a string
    (building the tokenizer reports one of another type)."""
    t = meta.get("tokenizer.chat_template")
    return t if isinstance(t, str) and t else None


def _chat_template(meta: dict, path: str = "") -> str | None:
    return _typed(meta, "tokenizer.chat_template", path, lambda v: isinstance(v, str), "a string") or None


def _spm_from_gguf(meta: dict, path: str) -> Tokenizer:
    from .spm import SentencePieceBPE
    tokens, types, scores = _vocab(meta, path)
    n = len(tokens)
    bos = _int(meta, "bos_token_id", 1, n, path)
    eos = _int(meta, "eos_token_id", 2, n, path)
    unk = _int(meta, "unknown_token_id", 0, n, path)
    eog = _end_of_generation(meta, tokens, types, eos, path)
    control = {i: tokens[i] for i in range(n) if types[i] in (CONTROL, UNKNOWN)}
    byte_ids = {int(i): _byte_of(tokens[i], int(i), path) for i in np.flatnonzero(types == BYTE)}
    user = [int(i) for i in np.flatnonzero(types == USER_DEFINED)]
    pieces = [t.encode("utf-8") for t in tokens]
    return SentencePieceBPE(
        pieces, scores if scores is not None else np.zeros(n, np.float32),
        bos_id=bos, eos_id=eos, unk_id=unk, control_texts=control, user_defined=user,
        byte_ids=byte_ids, add_bos=_flag(meta, "add_bos_token", True, path),
        add_space_prefix=_flag(meta, "add_space_prefix", True, path), space="\u2581".encode(),
        eog_ids=sorted(eog), path=path, kind="gguf-spm", chat_template=_chat_template(meta, path))


def _bpe_from_gguf(meta: dict, path: str) -> Tokenizer:
    from .bytelevel import TokenizersBPE, build_bpe, bytes_of_piece, pre_tokenizer
    where = os.path.basename(path) or path
    pre_name = _typed(meta, "pre", path, lambda v: isinstance(v, str), "a string")
    spec = pre_tokenizer(pre_name, where)
    tokens, types, _ = _vocab(meta, path)
    n = len(tokens)
    merges_raw = _typed(meta, "merges", path, _str_list, "an array of strings")
    if not merges_raw:
        raise TokenizerError(f"{where}: the GGUF byte-level vocabulary has no merges")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if vocab.setdefault(t, i) != i:
            raise TokenizerError(f"{where}: token {t!r} appears twice in the vocabulary ({vocab[t]} and {i})")
    merges: list[tuple[str, str]] = []
    for m in merges_raw:
        k = m.find(" ", 1)
        merges.append((m[:k], m[k + 1:]) if k > 0 else (m, ""))
    bos = _int(meta, "bos_token_id", 11, n, path)
    eos = _int(meta, "eos_token_id", 11, n, path)
    unk = _int(meta, "unknown_token_id", None, n, path)
    eog = _end_of_generation(meta, tokens, types, eos, path)
    token_bytes: list[bytes] = []
    specials: list[SpecialToken] = []
    control: set[int] = set()
    for i, t in enumerate(tokens):
        ty = types[i]
        if ty in (CONTROL, UNKNOWN):
            control.add(i)
            specials.append(SpecialToken(t, i, True))
            token_bytes.append(b"")
        elif ty == USER_DEFINED:
            specials.append(SpecialToken(t, i, False))
            token_bytes.append(t.encode("utf-8"))
        elif ty == BYTE:
            token_bytes.append(bytes([_byte_of(t, i, path)]))
        elif ty == NORMAL:
            token_bytes.append(bytes_of_piece(t))
        else:  # unused / undefined types decode to nothing, as in llama.cpp
            token_bytes.append(b"")
    hf = build_bpe(vocab, [m for m in merges if m[1]], spec)
    return TokenizersBPE(
        hf, kind="gguf-bpe", token_texts=tokens, token_bytes=token_bytes, control_ids=control,
        specials=specials, bos_id=bos, eos_id=eos, add_bos=_flag(meta, "add_bos_token", spec.add_bos, path),
        eog_ids=eog, path=path, chat_template=_chat_template(meta, path), pre=pre_name or "default",
        unk_id=unk)


def describe_gguf_tokenizer(meta: dict) -> str:
    """One line for `llama-chat info`: what the embedded vocabulary is, or why it is unusable."""
    tokens = meta.get(_KEY + "tokens")
    if tokens is None or (isinstance(tokens, list) and not tokens):
        return "none in the GGUF metadata (pass --tokenizer)"
    model = meta.get(_KEY + "model", "llama")
    try:
        tok = tokenizer_from_gguf(meta, "")
    except TokenizerError as e:
        return f"from the GGUF metadata: PROBLEM: {str(e).lstrip(': ')}"
    tmpl = "its own chat template" if tok.chat_template else "no chat template"
    return f"from the GGUF metadata ({model}): {tok.describe()}; {tmpl}"
