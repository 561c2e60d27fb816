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


def _int(meta: dict, key: str, default: int | None, n: int) -> int | None:
    """A token id from the metadata; out of range falls back to the default (llama.cpp)."""
    v = meta.get(_KEY + key)
    if v is not None and 0 <= int(v) < n:
        return int(v)
    return default if default is not None and 0 <= default < n else None


def _vocab(meta: dict, path: str) -> tuple[list[str], np.ndarray, np.ndarray | None]:
    tokens = meta.get(_KEY + "tokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError(f"{path}: no tokenizer in the GGUF metadata (pass --tokenizer)")
    tokens = [str(t) for t in tokens]
    n = len(tokens)
    types = meta.get(_KEY + "token_type")
    types = np.full(n, NORMAL, np.int32) if types is None else np.asarray(types, np.int32)
    if len(types) < n:
        raise TokenizerError(f"{path}: {len(types)} token types for {n} tokens")
    scores = meta.get(_KEY + "scores")
    if scores is not None and len(scores) < n:
        raise TokenizerError(f"{path}: {len(scores)} token scores for {n} tokens")
    return tokens, types[:n].copy(), None if scores is None else np.asarray(scores, np.float32)[:n].copy()


def _end_of_generation(meta: dict, tokens: list[str], types: np.ndarray, eos: int | None) -> set[int]:
    """llama.cpp's end-of-generation set: EOS, EOT, EOM, and tokens that end a turn (or
    pad/separate fill-in-the-middle text) by their spelling. Those become control tokens."""
    n = len(tokens)
    by_text = {t: i for i, t in enumerate(tokens)}
    eog: set[int] = set()
    for key, texts in (("eot_token_id", END_OF_TURN_TEXTS), ("eom_token_id", ("<|eom_id|>",))):
        i = _int(meta, key, None, n)
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
    model = str(meta.get(_KEY + "model", "llama"))
    where = os.path.basename(path) or path
    if model == "llama":
        return _spm_from_gguf(meta, path)
    if model == "gpt2":
        return _bpe_from_gguf(meta, path)
    raise TokenizerError(f"{where}: the GGUF tokenizer model {model!r} is not supported (llama and gpt2 are)")


def _flag(meta: dict, key: str, default: bool) -> bool:
    v = meta.get(_KEY + key)
    return default if v is None else bool(v)


def gguf_chat_template(meta: dict) -> str | None:
    """The chat template in GGUF metadata (`tokenizer.chat_template`), if any."""
    return _chat_template(meta)


def _chat_template(meta: dict) -> str | None:
    t = meta.get("tokenizer.chat_template")
    return str(t) if t else None


def _spm_from_gguf(meta: dict, path: str) -> Tokenizer:
    from .spm import SentencePieceBPE
    tokens, types, scores = _vocab(meta, path)
    n = len(tokens)
    bos = _int(meta, "bos_token_id", 1, n)
    eos = _int(meta, "eos_token_id", 2, n)
    unk = _int(meta, "unknown_token_id", 0, n)
    eog = _end_of_generation(meta, tokens, types, eos)
    control = {i: tokens[i] for i in range(n) if types[i] in (CONTROL, UNKNOWN)}
    byte_ids: dict[int, int] = {}
    for i in np.flatnonzero(types == BYTE):
        t = tokens[i]
        if len(t) == 6 and t.startswith("<0x") and t.endswith(">"):
            byte_ids[int(i)] = int(t[3:5], 16)
    user = [int(i) for i in np.flatnonzero(types == USER_DEFINED)]
    pieces = [t.encode("utf-8") for t in tokens]
    return SentencePieceBPE(
        pieces, scores if scores is not None else np.zeros(n, np.float32),
        bos_id=bos, eos_id=eos, unk_id=unk, control_texts=control, user_defined=user,
        byte_ids=byte_ids, add_bos=_flag(meta, "add_bos_token", True),
        add_space_prefix=_flag(meta, "add_space_prefix", True), space="\u2581".encode(),
        eog_ids=sorted(eog), path=path, kind="gguf-spm", chat_template=_chat_template(meta))


def _bpe_from_gguf(meta: dict, path: str) -> Tokenizer:
    from .bytelevel import TokenizersBPE, build_bpe, bytes_of_piece, pre_tokenizer
    where = os.path.basename(path) or path
    pre_name = meta.get(_KEY + "pre")
    spec = pre_tokenizer(str(pre_name) if pre_name is not None else None, where)
    tokens, types, _ = _vocab(meta, path)
    n = len(tokens)
    merges_raw = meta.get(_KEY + "merges")
    if not isinstance(merges_raw, list):
        raise TokenizerError(f"{where}: the GGUF byte-level vocabulary has no merges")
    vocab: dict[str, int] = {}
    for i, t in enumerate(tokens):
        if vocab.setdefault(t, i) != i:
            raise TokenizerError(f"{where}: token {t!r} appears twice in the vocabulary ({vocab[t]} and {i})")
    merges: list[tuple[str, str]] = []
    for m in merges_raw:
        m = str(m)
        k = m.find(" ", 1)
        merges.append((m[:k], m[k + 1:]) if k > 0 else (m, ""))
    bos = _int(meta, "bos_token_id", 11, n)
    eos = _int(meta, "eos_token_id", 11, n)
    unk = _int(meta, "unknown_token_id", None, n)
    eog = _end_of_generation(meta, tokens, types, eos)
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
        elif ty == BYTE and len(t) == 6 and t.startswith("<0x"):
            token_bytes.append(bytes([int(t[3:5], 16)]))
        elif ty == NORMAL:
            token_bytes.append(bytes_of_piece(t))
        else:  # unused / undefined types decode to nothing, as in llama.cpp
            token_bytes.append(b"")
    hf = build_bpe(vocab, [m for m in merges if m[1]], spec)
    return TokenizersBPE(
        hf, kind="gguf-bpe", token_texts=tokens, token_bytes=token_bytes, control_ids=control,
        specials=specials, bos_id=bos, eos_id=eos, add_bos=_flag(meta, "add_bos_token", spec.add_bos),
        eog_ids=eog, path=path, chat_template=_chat_template(meta), pre=str(pre_name or "default"),
        unk_id=unk)


def describe_gguf_tokenizer(meta: dict) -> str:
    """One line for `llama-chat info`: what the embedded vocabulary is, or why it is unusable."""
    tokens = meta.get(_KEY + "tokens")
    if not isinstance(tokens, list) or not tokens:
        return "none in the GGUF metadata (pass --tokenizer)"
    model = meta.get(_KEY + "model", "llama")
    try:
        tok = tokenizer_from_gguf(meta, "")
    except TokenizerError as e:
        return f"from the GGUF metadata: PROBLEM: {str(e).lstrip(': ')}"
    tmpl = "its own chat template" if tok.chat_template else "no chat template"
    return f"from the GGUF metadata ({model}): {tok.describe()}; {tmpl}"
