"""What every tokenizer offers, whatever vocabulary it was built from.

A vocabulary has three sorts of tokens that matter here:

* ordinary tokens, which the encoder produces from text;
* control tokens (BOS, `<|im_end|>`, `<|start_header_id|>`, ...), which only a chat template
  or the model itself may produce: `encode(text)` treats their spelling as ordinary text,
  so a user who types `<|im_end|>` gets the ids of those characters;
* user-defined tokens (added words such as `<think>` in some vocabularies), which
  llama.cpp and Hugging Face match in any text, so `encode` matches them too.

`encode(text, special=True)` also turns the spelling of control tokens into their ids
(`llama-chat tokenize --special`, and the template markers of a rendered chat prompt).
Splitting text at special tokens follows llama.cpp: the longest token text is claimed
first, everywhere in the text, then the next longest in what is left, and so on.

Decoding goes through `StreamDecoder`, which keeps back the bytes of an incomplete UTF-8
character, so a character spread over several byte tokens is shown once, whole; control
tokens decode to nothing.
"""
from __future__ import annotations

import codecs
import re
from dataclasses import dataclass
from typing import Iterable, Sequence, Union

#: Token texts llama.cpp treats as ending a turn, whatever the metadata says.
END_OF_GENERATION_TEXTS = frozenset({
    "<|eot_id|>", "<|im_end|>", "<|end|>", "<|return|>", "<|call|>", "<end_of_turn>",
    "<|endoftext|>", "<|eom_id|>", "<EOT>", "_<EOT>", "<|end_of_text|>", "<end_of_utterance>",
})
#: llama.cpp also stops at fill-in-the-middle padding / repository / file separators.
FIM_END_TEXTS = frozenset({"<|fim_pad|>", "<fim-pad>", "<fim_pad>", "<PAD>",
                           "<|fim_repo|>", "<|repo_name|>", "<fim-repo>", "<REPO>", "<reponame>",
                           "<|file_sep|>"})
#: Looked for when the metadata names no end-of-turn token (llama.cpp's list).
END_OF_TURN_TEXTS = ("<|eot_id|>", "<|im_end|>", "<|end|>", "<end_of_turn>", "<|endoftext|>",
                     "<|end_of_text|>", "<EOT>", "_<EOT>", "<end_of_utterance>")

_C_SPACE = " \t\n\v\f\r"   # what C's isspace() accepts: the strip rule of lstrip/rstrip tokens
_WHITESPACE_RUN = re.compile(r"\s+")

Fragment = Union[str, int]   # raw text still to tokenize, or a token id already decided


@dataclass(frozen=True)
class SpecialToken:
    """A token matched by its spelling before the text is tokenized."""

    text: str
    id: int
    control: bool          # True: control/unknown (only with special=True); False: user-defined
    lstrip: bool = False   # swallow whitespace to its left (llama.cpp's LSTRIP attribute)
    rstrip: bool = False   # ... and to its right


def clean_text(text: str) -> str:
    """Lone surrogates (not encodable as UTF-8) become U+FFFD, as llama.cpp does with bad UTF-8."""
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:
        return text.encode("utf-8", "surrogatepass").decode("utf-8", "replace")


def partition(text: str, specials: Sequence[SpecialToken]) -> list[Fragment]:
    """Split `text` at every occurrence of the given tokens (longest first), llama.cpp style."""
    frags: list[Fragment] = [text] if text else []
    for tok in specials:
        t = tok.text
        if not any(isinstance(f, str) and t in f for f in frags):
            continue
        out: list[Fragment] = []
        for f in frags:
            if isinstance(f, int) or t not in f:
                out.append(f)
                continue
            start = 0
            while True:
                at = f.find(t, start)
                if at < 0:
                    break
                left = f[start:at]
                if tok.lstrip:
                    left = left.rstrip(_C_SPACE)
                if left:
                    out.append(left)
                out.append(tok.id)
                start = at + len(t)
                if tok.rstrip:
                    while start < len(f) and f[start] in _C_SPACE:
                        start += 1
            if start < len(f):
                out.append(f[start:])
        frags = out
    return frags


def order_specials(specials: Iterable[SpecialToken]) -> tuple[SpecialToken, ...]:
    """Longest text first (ties by id), the order in which llama.cpp claims them."""
    return tuple(sorted((s for s in specials if s.text), key=lambda s: (-len(s.text.encode()), s.id)))


class Tokenizer:
    """A vocabulary and its encoder. Subclasses provide `_encode_fragment`.

    Attributes: `kind` (which encoder: "llama2c", "sentencepiece", "gguf-spm", "gguf-bpe",
    "hf-bpe"), `path`, `vocab_size`, `bos_id` / `eos_id` (None when the vocabulary has
    none), `add_bos` (whether a prompt starts with BOS), `eog_ids` (ids that end a reply),
    `chat_template` (the model's own Jinja template, when it ships one), `token_bytes`
    (what each id decodes to; b"" for control tokens).
    """

    kind = "?"
    #: sentencepiece-style vocabularies carry the word-boundary space on the first piece
    #: of a text; decoding drops it right after BOS, as llama2.c does.
    strip_space_after_bos = False
    #: llama2.c's convention (BOS delimits documents): a sampled BOS ends the reply too.
    stops_at_bos = False

    def __init__(self, *, token_texts: Sequence[str], token_bytes: Sequence[bytes],
                 control_ids: Iterable[int], specials: Iterable[SpecialToken],
                 bos_id: int | None, eos_id: int | None, add_bos: bool,
                 eog_ids: Iterable[int], path: str = "", chat_template: str | None = None,
                 unk_id: int | None = None) -> None:
        self.token_texts = list(token_texts)
        self.token_bytes = list(token_bytes)
        self.vocab_size = len(self.token_texts)
        self.control_ids = frozenset(control_ids)
        ordered = order_specials(specials)
        self._specials_all = ordered
        self._specials_user = tuple(s for s in ordered if not s.control)
        self.bos_id, self.eos_id, self.unk_id = bos_id, eos_id, unk_id
        self.add_bos = bool(add_bos) and bos_id is not None
        self.eog_ids = frozenset(i for i in eog_ids if i is not None and 0 <= i < self.vocab_size)
        self.path = path
        self.chat_template = chat_template
        self._by_text: dict[str, int] = {}
        for i, t in enumerate(self.token_texts):
            self._by_text.setdefault(t, i)
        for s in ordered:   # a control token's spelling wins over an ordinary piece's
            self._by_text[s.text] = s.id

    # -- what the engine and the templates need -------------------------------------
    @property
    def stop_ids(self) -> frozenset[int]:
        """Ids that end a reply: the end-of-generation set (BOS too for llama2.c-style
        vocabularies, where BOS delimits documents)."""
        if self.stops_at_bos and self.bos_id is not None:
            return self.eog_ids | {self.bos_id}
        return self.eog_ids

    @property
    def special_tokens(self) -> dict[str, int]:
        """Control tokens by their spelling (what a chat template may emit)."""
        return {s.text: s.id for s in self._specials_all if s.control}

    def token_id(self, text: str) -> int | None:
        """The id of the token spelled exactly `text` (a control token's first), or None."""
        return self._by_text.get(text)

    def token_text(self, token_id: int | None) -> str:
        """The vocabulary's spelling of a token ('' for None)."""
        return "" if token_id is None else self.token_texts[token_id]

    @property
    def bos_text(self) -> str:
        return self.token_text(self.bos_id)

    @property
    def eos_text(self) -> str:
        return self.token_text(self.eos_id)

    # -- encoding -------------------------------------------------------------------
    @property
    def max_token_bytes(self) -> int:
        """The most text bytes one token stands for (a token's bytes or its spelling)."""
        m = getattr(self, "_max_token_bytes", None)
        if m is None:
            m = max([1, *map(len, self.token_bytes), *(len(t.encode("utf-8", "replace")) for t in self.token_texts)])
            self._max_token_bytes = m
        return m

    def cannot_fit(self, text: str, n_tokens: int) -> bool:
        """True when `text` certainly needs more than `n_tokens` tokens, decided from its
        length alone (so a huge prompt is refused without tokenizing it): every token
        covers at most `max_token_bytes` bytes of the normalized text. Normalizers may
        collapse whitespace runs (sentencepiece's remove_extra_whitespaces), so those
        count as one byte, and the factor 4 leaves room for compositions that shorten
        text (NFKC turns three jamo into one syllable)."""
        if len(text) <= n_tokens:
            return False
        limit = 4 * self.max_token_bytes * n_tokens + 64
        if len(text.encode("utf-8", "surrogatepass")) <= limit:
            return False
        return len(_WHITESPACE_RUN.sub(" ", text).encode("utf-8", "surrogatepass")) > limit

    def encode(self, text: str, bos: bool | None = None, eos: bool = False,
               special: bool = False) -> list[int]:
        """Token ids of `text`. `bos`: None follows the model (`add_bos`), True/False force it.
        `special`: also turn the spelling of control tokens into their ids."""
        ids: list[int] = []
        if (self.add_bos if bos is None else bos) and self.bos_id is not None:
            ids.append(self.bos_id)
        ids.extend(self.encode_fragments(self.split_special(text, special)))
        if eos and self.eos_id is not None:
            ids.append(self.eos_id)
        return ids

    def split_special(self, text: str, special: bool) -> list[Fragment]:
        """`text` as raw fragments and the ids of the special tokens found in it."""
        return partition(clean_text(text), self._specials_all if special else self._specials_user)

    def encode_fragments(self, fragments: Iterable[Fragment]) -> list[int]:
        """Ids of fragments from `split_special` (text is tokenized, ids are kept)."""
        ids: list[int] = []
        for f in fragments:
            if isinstance(f, int):
                ids.append(f)
            elif f:
                ids.extend(self._encode_fragment(f))
        return ids

    def _encode_fragment(self, text: str) -> list[int]:
        """Ids of a piece of text that holds no special token (first or after one)."""
        raise NotImplementedError

    # -- decoding -------------------------------------------------------------------
    def piece_bytes(self, token_id: int, prev_id: int | None = None) -> bytes:
        """Bytes of one token (control tokens: none)."""
        b = self.token_bytes[token_id]
        if self.strip_space_after_bos and prev_id is not None and prev_id == self.bos_id \
                and b.startswith(b" "):
            b = b[1:]
        return b

    def decode(self, ids: Sequence[int]) -> str:
        """Text of a whole sequence (control tokens left out)."""
        d = StreamDecoder(self)
        return "".join(d.feed(i) for i in ids) + d.flush()

    def describe(self) -> str:
        """One line for `llama-chat info` and the TUI."""
        bos = "no BOS" if self.bos_id is None else \
            f"BOS {self.bos_id} {self.token_text(self.bos_id)!r}{'' if self.add_bos else ' not added'}"
        eog = ", ".join(f"{i} {self.token_text(i)!r}" for i in sorted(self.eog_ids)[:4])
        return f"{self.kind}, {self.vocab_size} tokens, {bos}, ends at {eog or 'nothing'}"


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
