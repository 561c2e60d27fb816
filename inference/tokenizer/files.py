"""Tokenizer files: llama2.c tokenizer.bin, sentencepiece .model, GGUF, tokenizer.json.

`load_tokenizer(path)` recognises the file by its content (a GGUF magic, a JSON object, a
sentencepiece protobuf or a llama2.c table), not its name.
"""
from __future__ import annotations

import os
import stat
import struct

from ..errors import TokenizerError
from .base import Tokenizer
from .spm import SentencePieceBPE

#: No tokenizer file is larger (a 256k-token tokenizer.json is ~30 MB); a bigger one, or
#: one with more tokens, cannot belong to a model llama-chat can load.
MAX_TOKENIZER_BYTES = 256 << 20
MAX_TOKENS = 1 << 22


class SentencePieceModel(SentencePieceBPE):
    """A sentencepiece .model: the vocabulary as pieces, encoding by the sentencepiece library."""

    def __init__(self, sp: object, path: str) -> None:
        n = sp.get_piece_size()  # type: ignore[attr-defined]
        pieces: list[bytes] = []
        control: dict[int, str] = {}
        for i in range(n):
            try:
                piece = sp.id_to_piece(i)  # type: ignore[attr-defined]
            except UnicodeDecodeError:  # the library decodes each piece as UTF-8
                raise TokenizerError(f"{path}: piece {i} of the sentencepiece model is not valid UTF-8 "
                                     f"(a damaged file?)") from None
            if sp.is_control(i) or sp.is_unknown(i):  # type: ignore[attr-defined]
                control[i] = piece
                pieces.append(piece.encode("utf-8"))
            else:
                pieces.append(piece.replace("\u2581", " ").encode("utf-8"))
        scores = [sp.get_score(i) for i in range(n)]  # type: ignore[attr-defined]
        bos, eos, unk = sp.bos_id(), sp.eos_id(), sp.unk_id()  # type: ignore[attr-defined]
        self._sp = sp
        super().__init__(pieces, scores, bos_id=bos if bos >= 0 else None,
                         eos_id=eos if eos >= 0 else None, unk_id=unk if unk >= 0 else None,
                         control_texts=control, path=path, kind="sentencepiece")

    def _encode_fragment(self, text: str) -> list[int]:
        return list(self._sp.encode(text))  # type: ignore[attr-defined]


def load_llama2c_tokenizer(path: str) -> SentencePieceBPE:
    """Read llama2.c's tokenizer.bin: int32 max_len, then (f32 score, i32 len, bytes)*."""
    data = read_tokenizer_file(path)
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
        if len(pieces) > MAX_TOKENS:
            raise TokenizerError(f"{path} holds more than {MAX_TOKENS} tokens: not a model's tokenizer")
    if len(pieces) < 3:
        raise TokenizerError(f"{path} holds only {len(pieces)} tokens")
    return SentencePieceBPE(pieces, scores, path=path, kind="llama2c")


def read_tokenizer_file(path: str) -> bytes:
    """The bytes of a tokenizer file (a regular file of bounded size; one-line errors)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise TokenizerError(f"tokenizer {path} is not a regular file")
        if st.st_size > MAX_TOKENIZER_BYTES:
            raise TokenizerError(f"tokenizer {path} is {st.st_size} bytes: too large to be a tokenizer")
        with open(path, "rb") as f:
            return f.read(MAX_TOKENIZER_BYTES + 1)
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer {path}: {e.strerror or e}") from None


def load_sentencepiece_tokenizer(path: str) -> SentencePieceModel:
    """Read a sentencepiece .model; encoding is delegated to the sentencepiece library."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    try:
        sp.load_from_serialized_proto(read_tokenizer_file(path))
    except UnicodeDecodeError:
        raise TokenizerError(f"{path}: the sentencepiece model holds text that is not valid UTF-8 "
                             f"(a damaged file?)") from None
    except (OSError, RuntimeError) as e:
        raise TokenizerError(f"{path} is not a sentencepiece model ({str(e).splitlines()[0][:160]})") from None
    return SentencePieceModel(sp, path)


def load_tokenizer(path: str, vocab_size: int | None = None) -> Tokenizer:
    """Load by content and check the vocabulary size against the model's.

    Accepts llama2.c tokenizer.bin, sentencepiece .model, a GGUF model file (its embedded
    vocabulary) and a Hugging Face tokenizer.json (with tokenizer_config.json beside it).
    """
    if not os.path.isfile(path):
        raise TokenizerError(f"tokenizer file not found: {path}")
    try:
        with open(path, "rb") as f:
            head = f.read(8)
    except OSError as e:
        raise TokenizerError(f"cannot read tokenizer {path}: {e.strerror or e}") from None
    tok: Tokenizer | None = None
    if head[:4] == b"GGUF":
        from .gguf import tokenizer_from_gguf_file
        tok = tokenizer_from_gguf_file(path)
    elif head.lstrip()[:1] == b"{":
        from .hf import load_hf_tokenizer
        tok = load_hf_tokenizer(path)
    else:
        first = struct.unpack_from("<i", head, 0)[0] if len(head) >= 4 else 0
        is_bin = len(head) >= 8 and 0 < first < 4096
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
