"""Tokenizers: llama2.c's tokenizer.bin and sentencepiece .model files, one interface.

The tokenizer.bin encoder reproduces sentencepiece's BPE exactly: the text gets the
dummy-prefix space, spaces become the word-boundary piece, the text is split into words
the way sentencepiece does (a word starts at a space that follows a non-space), each
character is looked up whole (UTF-8 code point) or falls back to `<0xXX>` byte pieces,
and within each word the adjacent pair whose merge has the best score is merged first
(leftmost on ties) until no merge exists.

Decoding goes through `StreamDecoder`, which holds back the bytes of an incomplete UTF-8
character so a character spread over several byte tokens is emitted once, whole.
"""
from __future__ import annotations

import codecs
import os
import re
import struct
from dataclasses import dataclass
from typing import Iterable, Sequence

from .errors import TokenizerError

_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


@dataclass
class Tokenizer:
    """A vocabulary with its merge scores, and an encoder for it."""

    pieces: list[bytes]          # piece text as bytes, with ' ' for sentencepiece's U+2581
    scores: list[float]
    bos_id: int = 1
    eos_id: int = 2
    unk_id: int = 0
    path: str = ""
    kind: str = "llama2c"        # "llama2c" or "sentencepiece"
    _sp: object | None = None    # sentencepiece processor when kind == "sentencepiece"

    def __post_init__(self) -> None:
        n = len(self.pieces)
        self.byte_ids: list[int] = [-1] * 256
        self.token_bytes: list[bytes] = []   # what each id decodes to
        special = {self.bos_id, self.eos_id, self.unk_id}
        self._lookup: dict[bytes, int] = {}
        for i, p in enumerate(self.pieces):
            m = _BYTE_PIECE.match(p)
            if m:
                b = int(m.group(1), 16)
                if self.byte_ids[b] < 0:
                    self.byte_ids[b] = i
                self.token_bytes.append(bytes([b]))
            elif i in special:
                self.token_bytes.append(b"")
            else:
                self.token_bytes.append(p)
                self._lookup.setdefault(p, i)  # first id wins, like a sorted-vocab lookup
        self.vocab_size = n

    # -- encoding ------------------------------------------------------------------
    def encode(self, text: str, bos: bool = True, eos: bool = False) -> list[int]:
        """Token ids of `text` (BOS first unless bos=False)."""
        if self._sp is not None:
            ids = list(self._sp.encode(text))  # type: ignore[attr-defined]
        else:
            ids = self._encode_bpe(text)
        return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

    def _encode_bpe(self, text: str) -> list[int]:
        if not text:
            return []
        text = " " + text  # sentencepiece's add_dummy_prefix
        out: list[int] = []
        for word in _split_words(text):
            out.extend(self._merge_word(word))
        return out

    def _merge_word(self, word: str) -> list[int]:
        ids: list[int] = []
        for ch in word:
            i = self._lookup.get(ch.encode("utf-8"))
            if i is not None:
                ids.append(i)
            else:
                for b in ch.encode("utf-8"):
                    bid = self.byte_ids[b]
                    ids.append(bid if bid >= 0 else self.unk_id)
        lookup, scores, tb = self._lookup, self.scores, self.token_bytes
        while len(ids) > 1:
            best_score, best_at, best_id = -1e30, -1, -1
            for k in range(len(ids) - 1):
                j = lookup.get(tb[ids[k]] + tb[ids[k + 1]])
                if j is not None and scores[j] > best_score:
                    best_score, best_at, best_id = scores[j], k, j
            if best_at < 0:
                break
            ids[best_at:best_at + 2] = [best_id]
        return ids

    # -- decoding ------------------------------------------------------------------
    def piece_bytes(self, token_id: int, prev_id: int | None = None) -> bytes:
        """Bytes of one token; the space after BOS is dropped (as llama2.c does)."""
        b = self.token_bytes[token_id]
        if prev_id == self.bos_id and b.startswith(b" "):
            b = b[1:]
        return b

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a whole sequence (ids may start with BOS)."""
        d = StreamDecoder(self)
        return "".join(d.feed(i) for i in ids) + d.flush()


def _split_words(text: str) -> Iterable[str]:
    """Sentencepiece's word split: a new word starts at a space after a non-space."""
    start = 0
    for k in range(1, len(text)):
        if text[k] == " " and text[k - 1] != " ":
            yield text[start:k]
            start = k
    yield text[start:]


class StreamDecoder:
    """Turns token ids into text as they stream, never splitting a character."""

    def __init__(self, tok: Tokenizer) -> None:
        self.tok = tok
        self.prev: int | None = None
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def prime(self, ids: Sequence[int]) -> None:
        """Note the tokens before the first one fed (only the last matters)."""
        if ids:
            self.prev = ids[-1]

    def feed(self, token_id: int) -> str:
        b = self.tok.piece_bytes(token_id, self.prev)
        self.prev = token_id
        return self._utf8.decode(b)

    def flush(self) -> str:
        """Whatever is held back at the end (an incomplete character becomes U+FFFD)."""
        return self._utf8.decode(b"", final=True)


# -- loading ----------------------------------------------------------------------
def load_llama2c_tokenizer(path: str) -> Tokenizer:
    """Read llama2.c's tokenizer.bin: int32 max_len, then (f32 score, i32 len, bytes)*."""
    try:
        data = open(path, "rb").read()
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer {path}: {e.strerror}") from None
    if len(data) < 4:
        raise TokenizerError(f"{path} is too short to be a llama2.c tokenizer")
    (max_len,) = struct.unpack_from("<i", data, 0)
    if not 0 < max_len < 4096:
        raise TokenizerError(f"{path} is not a llama2.c tokenizer (max token length {max_len})")
    pieces: list[bytes] = []
    scores: list[float] = []
    off = 4
    while off < len(data):
        if off + 8 > len(data):
            raise TokenizerError(f"{path} is truncated after {len(pieces)} tokens")
        score, n = struct.unpack_from("<fi", data, off)
        off += 8
        if not 0 <= n <= max_len or off + n > len(data):
            raise TokenizerError(f"{path} is truncated or corrupt at token {len(pieces)}")
        pieces.append(data[off:off + n])
        scores.append(score)
        off += n
    if len(pieces) < 3:
        raise TokenizerError(f"{path} holds only {len(pieces)} tokens")
    return Tokenizer(pieces, scores, path=path, kind="llama2c")


def load_sentencepiece_tokenizer(path: str) -> Tokenizer:
    """Read a sentencepiece .model; encoding is delegated to the sentencepiece library."""
    try:
        import sentencepiece as spm
    except ImportError:  # pragma: no cover - it is a declared dependency
        raise TokenizerError("the sentencepiece package is needed for .model tokenizers") from None
    sp = spm.SentencePieceProcessor()
    try:
        sp.load(path)
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{path} is not a sentencepiece model: {str(e).splitlines()[0]}") from None
    n = sp.get_piece_size()
    pieces: list[bytes] = []
    for i in range(n):
        if sp.is_control(i) or sp.is_unknown(i):
            pieces.append(sp.id_to_piece(i).encode("utf-8") if sp.is_byte(i) else b"")
        else:
            pieces.append(sp.id_to_piece(i).replace("\u2581", " ").encode("utf-8"))
    scores = [sp.get_score(i) for i in range(n)]
    bos, eos, unk = sp.bos_id(), sp.eos_id(), sp.unk_id()
    return Tokenizer(pieces, scores, bos_id=bos if bos >= 0 else 1, eos_id=eos if eos >= 0 else 2,
                     unk_id=unk if unk >= 0 else 0, path=path, kind="sentencepiece", _sp=sp)


def load_tokenizer(path: str, vocab_size: int | None = None) -> Tokenizer:
    """Load by content (sentencepiece protobuf vs llama2.c table) and check the vocab size."""
    if not os.path.isfile(path):
        raise TokenizerError(f"tokenizer file not found: {path}")
    with open(path, "rb") as f:
        head = f.read(8)
    is_bin = len(head) >= 8 and 0 < struct.unpack_from("<i", head, 0)[0] < 4096 \
        and struct.unpack_from("<i", head, 0)[0] < 0x0A000000
    tok = None
    if head[:1] == b"\x0a":  # a protobuf field 1 (pieces) begins every sentencepiece model
        try:
            tok = load_sentencepiece_tokenizer(path)
        except TokenizerError:
            if not is_bin:
                raise
    if tok is None:
        tok = load_llama2c_tokenizer(path)
    if vocab_size is not None and tok.vocab_size != vocab_size:
        raise TokenizerError(
            f"tokenizer {os.path.basename(path)} has {tok.vocab_size} tokens but the model's "
            f"vocabulary has {vocab_size}: pass the tokenizer that belongs to this model")
    return tok


# -- vocabularies embedded in GGUF files (placeholder until the BPE work lands) ---------
def tokenizer_from_gguf(meta: dict, path: str) -> Tokenizer:
    """The tokenizer in a GGUF file's metadata (sentencepiece-style `llama` vocabularies)."""
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list) or not tokens:
        raise TokenizerError(f"{path}: no tokenizer in the GGUF metadata (pass --tokenizer)")
    model = meta.get("tokenizer.ggml.model", "llama")
    if model != "llama":
        raise TokenizerError(f"{path}: the GGUF tokenizer is {model!r}, which is not supported yet")
    scores = meta.get("tokenizer.ggml.scores")
    if scores is None or len(scores) != len(tokens):
        scores = [0.0] * len(tokens)
    pieces = [str(t).replace("\u2581", " ").encode("utf-8") for t in tokens]
    return Tokenizer(pieces, [float(s) for s in scores], bos_id=int(meta.get("tokenizer.ggml.bos_token_id", 1)),
                     eos_id=int(meta.get("tokenizer.ggml.eos_token_id", 2)), path=path, kind="gguf-llama")


def describe_gguf_tokenizer(meta: dict) -> str:
    tokens = meta.get("tokenizer.ggml.tokens")
    if not isinstance(tokens, list):
        return "none in the GGUF metadata (pass --tokenizer)"
    return f"from the GGUF metadata ({len(tokens)} tokens, {meta.get('tokenizer.ggml.model', '?')})"
