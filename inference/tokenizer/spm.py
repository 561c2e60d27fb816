"""Sentencepiece-style BPE: llama2.c's tokenizer.bin, sentencepiece .model files, and the
`llama` vocabularies of GGUF files.

The encoder reproduces sentencepiece's BPE: the text gets the dummy-prefix space, spaces
are the word-boundary piece, the text is split into words the way sentencepiece does (a
word starts at a space that follows a non-space), each character is looked up whole (UTF-8
code point) or falls back to `<0xXX>` byte pieces, and within each word the adjacent pair
whose merge has the best score is merged first (leftmost on ties) until no merge exists.

The merge loop keeps the word as a linked list and the candidate pairs in a heap keyed by
(-score, position); a popped pair whose symbols changed since it was pushed is skipped, so
a word of n characters costs O(n log n) rather than the O(n^2) of rescanning every pair
after each merge (a 100 000-character word without spaces took over a minute that way).
"""
from __future__ import annotations

import heapq
import re
from typing import Sequence

from ..errors import TokenizerError
from .base import SpecialToken, Tokenizer

_BYTE_PIECE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")
#: Scores at or below this never merge (the first encoder's "no candidate yet" value).
_NO_SCORE = -1e30
_WORD_CACHE_MAX = 1 << 16    # words remembered with their ids (cleared when full)
_WORD_CACHE_LEN = 64         # longer words are not remembered


class SentencePieceBPE(Tokenizer):
    """Score-ordered BPE over a vocabulary of pieces (bytes, with `space` for U+2581).

    `control_ids` decode to nothing and are never produced from text by merging; their
    spellings (`control_texts`) are matched only with `encode(..., special=True)`.
    """

    strip_space_after_bos = True
    stops_at_bos = True

    def __init__(self, pieces: Sequence[bytes], scores: Sequence[float], *,
                 bos_id: int | None = 1, eos_id: int | None = 2, unk_id: int | None = 0,
                 control_texts: dict[int, str] | None = None,
                 user_defined: Sequence[int] = (), byte_ids: dict[int, int] | None = None,
                 add_bos: bool = True, add_space_prefix: bool = True, space: bytes = b" ",
                 eog_ids: Sequence[int] | None = None, path: str = "", kind: str = "llama2c",
                 chat_template: str | None = None) -> None:
        n = len(pieces)
        if len(scores) != n:
            raise TokenizerError(f"{path or 'tokenizer'}: {n} pieces but {len(scores)} scores")
        self.kind = kind
        self.pieces = [bytes(p) for p in pieces]
        self.scores = [float(s) for s in scores]
        self.space = space
        self.add_space_prefix = add_space_prefix
        if control_texts is None:  # llama2.c files: <unk>, <s>, </s> by their ids
            control_texts = {i: self.pieces[i].decode("utf-8", "replace").strip()
                             for i in (unk_id, bos_id, eos_id) if i is not None and 0 <= i < n}
        control = {i for i in control_texts if 0 <= i < n}
        self.byte_ids: list[int] = [-1] * 256
        token_bytes: list[bytes] = []
        self._lookup: dict[bytes, int] = {}
        byte_of: dict[int, int] = {}
        for i, p in enumerate(self.pieces):
            b = byte_ids.get(i) if byte_ids is not None else None
            if b is None and byte_ids is None:
                m = _BYTE_PIECE.match(p)
                b = int(m.group(1), 16) if m else None
            if b is not None:
                byte_of[i] = b
                if self.byte_ids[b] < 0:
                    self.byte_ids[b] = i
                token_bytes.append(bytes([b]))
            elif i in control:
                token_bytes.append(b"")
            else:
                token_bytes.append(p.replace(space, b" ") if space != b" " else p)
                self._lookup.setdefault(p, i)  # first id wins, like a sorted-vocab lookup
        # what merging concatenates: the piece (a byte piece: its byte; a control token:
        # nothing, which is what an <unk> standing in for a missing byte piece merges as)
        self._merge_bytes = [bytes([byte_of[i]]) if i in byte_of else b"" if i in control else p
                             for i, p in enumerate(self.pieces)]
        self._word_cache: dict[str, list[int]] = {}
        texts = [control_texts.get(i) or p.decode("utf-8", "replace") for i, p in enumerate(self.pieces)]
        specials = [SpecialToken(control_texts[i], i, True) for i in control if control_texts[i]]
        specials += [SpecialToken(texts[i], i, False) for i in user_defined if 0 <= i < n]
        eog = [eos_id] if eog_ids is None else list(eog_ids)
        super().__init__(token_texts=texts, token_bytes=token_bytes, control_ids=control,
                         specials=specials, bos_id=bos_id, eos_id=eos_id, add_bos=add_bos,
                         eog_ids=eog, path=path, chat_template=chat_template, unk_id=unk_id)

    # -- encoding -------------------------------------------------------------------
    def _encode_fragment(self, text: str) -> list[int]:
        if self.add_space_prefix:
            text = " " + text  # sentencepiece's add_dummy_prefix (each fragment, as llama.cpp)
        sp = self.space.decode("utf-8")
        if sp != " ":
            text = text.replace(" ", sp)
        out: list[int] = []
        cache = self._word_cache
        for word in _split_words(text, sp):
            ids = cache.get(word)
            if ids is None:
                ids = self._merge_word(word)
                if len(word) <= _WORD_CACHE_LEN:
                    if len(cache) >= _WORD_CACHE_MAX:
                        cache.clear()
                    cache[word] = ids
            out.extend(ids)
        return out

    def _initial_ids(self, word: str) -> list[int]:
        ids: list[int] = []
        lookup, byte_ids = self._lookup, self.byte_ids
        unk = self.unk_id if self.unk_id is not None else 0
        for ch in word:
            b = ch.encode("utf-8")
            i = lookup.get(b)
            if i is not None:
                ids.append(i)
            else:
                for x in b:
                    bid = byte_ids[x]
                    ids.append(bid if bid >= 0 else unk)
        return ids

    def _merge_word(self, word: str) -> list[int]:
        """Best-score-first merging over a linked list, candidates in a lazy heap."""
        cur = self._initial_ids(word)   # id of the symbol starting at each position (-1: merged away)
        n = len(cur)
        if n < 2:
            return cur
        lookup, scores, mb = self._lookup, self.scores, self._merge_bytes
        nxt = list(range(1, n + 1))
        nxt[-1] = -1
        prv = list(range(-1, n - 1))
        heap: list[tuple[float, int, int, int, int]] = []

        def push(left: int, right: int) -> None:
            a, b = cur[left], cur[right]
            j = lookup.get(mb[a] + mb[b])
            if j is not None:
                s = scores[j]
                if s > _NO_SCORE:
                    heap.append((-s, left, j, a, b))

        for k in range(n - 1):
            push(k, k + 1)
        heapq.heapify(heap)
        pop, heappush = heapq.heappop, heapq.heappush
        while heap:
            _, left, j, a, b = pop(heap)
            right = nxt[left]
            # stale: a symbol grew (ids only ever get longer) or the right one was absorbed
            if right < 0 or cur[left] != a or cur[right] != b:
                continue
            cur[left] = j
            cur[right] = -1
            after = nxt[right]
            nxt[left] = after
            if after >= 0:
                prv[after] = left
            before = prv[left]
            for l, r in ((before, left), (left, after)):
                if l >= 0 and r >= 0:
                    x, y = cur[l], cur[r]
                    k = lookup.get(mb[x] + mb[y])
                    if k is not None and scores[k] > _NO_SCORE:
                        heappush(heap, (-scores[k], l, k, x, y))
        out: list[int] = []
        k = 0
        while k >= 0:
            out.append(cur[k])
            k = nxt[k]
        return out


def _split_words(text: str, space: str = " ") -> list[str]:
    """Sentencepiece's word split: a new word starts at a space after a non-space."""
    words: list[str] = []
    start = 0
    k = text.find(space, 1)
    while k > 0:
        if text[k - 1] != space:
            words.append(text[start:k])
            start = k
        k = text.find(space, k + 1)
    words.append(text[start:])
    return words
