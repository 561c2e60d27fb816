"""llama2.c tokenizer.bin encoding equals sentencepiece's, the heap merge loop equals the
original quadratic one, and decoding streams safely."""
from __future__ import annotations

import os
import random
import re
import time

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inference.errors import TokenizerError
from inference.tokenizer import StreamDecoder, load_tokenizer

from .conftest import ASSETS, DATA

CORPUS = """\
Once upon a time, in a land far, far away, there lived a dragon named Ärgernis.
Prices: $3.50, €12,99, ¥1000 — and 42% of 1,234,567 is 518,518.14.
def fibonacci(n: int) -> int:
\tif n < 2:
\t\treturn n
\treturn fibonacci(n - 1) + fibonacci(n - 2)  # naive

    four spaces    then     five, tabs\t\tand\ttext, trailing   
日本語のテキストも正しく分割されるべきです。中文也一样：你好，世界！
한국어 문장도 있습니다. Русский текст: съешь же ещё этих мягких французских булок.
Emoji: 😀🙈🚀👩‍👩‍👧‍👦 🇺🇸 — flags and ZWJ sequences; math: ∑ᵢ xᵢ² ≤ ∞, ≠, ≈, √2.
Ελληνικά: Ξεσκεπάζω την ψυχοφθόρα βδελυγμία. עברית: שלום עולם. العربية: مرحبا بالعالم.
<html><body class="x">&amp; &lt;tag&gt;</body></html> {"json": [1, 2.5e-3, null, true]}
Mixed    runs      of spaces\n\n\nand newlines\r\nwindows line endings.
URLs like https://example.com/path?q=1&x=2#frag and emails a.b@c.org.
Numbers 0 00 007 3.14159265358979 -1e10 0x1F 1_000_000.
"""


@pytest.fixture(scope="module")
def pair():
    return (load_tokenizer(os.path.join(DATA, "tokenizer.bin"), 32000),
            load_tokenizer(os.path.join(DATA, "tokenizer.model"), 32000))


def test_bin_equals_sentencepiece_on_corpus(pair):
    tbin, tsp = pair
    assert len(CORPUS.encode()) > 1000
    for line in CORPUS.splitlines(keepends=True):
        assert tbin.encode(line) == tsp.encode(line), repr(line)
    assert tbin.encode(CORPUS * 3) == tsp.encode(CORPUS * 3)


def test_bin_equals_sentencepiece_on_source_files(pair):
    """Several KB of real code and prose: indentation runs, punctuation, docstrings."""
    tbin, tsp = pair
    root = os.path.dirname(DATA.rstrip(os.sep))
    root = os.path.dirname(root)
    texts = [open(os.path.join(root, *p), encoding="utf-8").read()
             for p in (("inference", "tokenizer", "spm.py"), ("inference", "tokenizer", "base.py"),
                       ("inference", "engine.py"), ("DEVELOPERS.md",))]
    assert sum(len(t) for t in texts) > 8000
    for t in texts:
        assert tbin.encode(t) == tsp.encode(t)


def test_bin_equals_sentencepiece_on_random_unicode(pair):
    tbin, tsp = pair
    rng = random.Random(1234)
    alphabet = (list("abcdefghijklmnopqrstuvwxyzABCXYZ0123456789 .,;:!?'\"()[]{}<>-_=+*/\\|@#$%^&~`")
                + [" ", " ", "  ", "\t", "\n"] + list("éüßøÅçñ日本語中文한국ДЖЯ😀🚀∑√") + ["\u200d", "\u00a0"])
    total = 0
    for _ in range(300):
        s = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 40)))
        total += len(s.encode())
        assert tbin.encode(s) == tsp.encode(s), repr(s)
    for _ in range(100):  # arbitrary code points, surrogates excluded
        s = "".join(chr(rng.choice([rng.randint(32, 0xD7FF), rng.randint(0xE000, 0x10FFFF)]))
                    for _ in range(rng.randint(1, 12)))
        total += len(s.encode())
        assert tbin.encode(s) == tsp.encode(s), repr(s)
    assert total > 4000


def test_no_bos_and_empty(pair):
    tbin, tsp = pair
    assert tbin.encode("") == [1]
    assert tbin.encode("hi", bos=False) == tsp.encode("hi", bos=False)


def test_stream_decoder_never_emits_broken_characters(pair):
    tbin, _ = pair
    text = "emoji 😀 and 日本語, byte-fallback 🙈\U0001F9EC done"
    ids = tbin.encode(text)
    dec = StreamDecoder(tbin)
    dec.prime(ids[:1])
    pieces = [dec.feed(i) for i in ids[1:]] + [dec.flush()]
    assert "".join(pieces) == text
    assert all("\ufffd" not in p for p in pieces)
    # byte-fallback tokens arrive one at a time: only the token completing a char emits it
    assert any(p == "" for p in pieces)


def test_decode_round_trip(pair):
    tbin, tsp = pair
    for t in (tbin, tsp):
        for line in CORPUS.splitlines():
            assert t.decode(t.encode(line)) == line


def test_vocab_mismatch_is_a_clear_error():
    with pytest.raises(TokenizerError, match="512 tokens but the model's vocabulary has 32000"):
        load_tokenizer(os.path.join(ASSETS, "tok512.bin"), 32000)


def test_garbage_tokenizer_rejected(tmp_path):
    p = tmp_path / "tok.bin"
    p.write_bytes(b"\xff\xff\xff\x7f" + b"junk" * 10)
    with pytest.raises(TokenizerError):
        load_tokenizer(str(p))
    with pytest.raises(TokenizerError, match="not found"):
        load_tokenizer(str(tmp_path / "missing.bin"))


# -- the heap merge loop against the original rescanning one ---------------------------
_BYTE = re.compile(rb"^<0x([0-9A-Fa-f]{2})>$")


def quadratic_encode(tok, text: str) -> list[int]:
    """The tokenizer.bin encoder as first written (every pair rescanned after each merge),
    rebuilt here from the vocabulary alone: the yardstick for the O(n log n) loop."""
    lookup: dict[bytes, int] = {}
    byte_ids = [-1] * 256
    tb: list[bytes] = []
    for i, p in enumerate(tok.pieces):
        m = _BYTE.match(p)
        if m:
            b = int(m.group(1), 16)
            byte_ids[b] = i if byte_ids[b] < 0 else byte_ids[b]
            tb.append(bytes([b]))
        elif i in (tok.bos_id, tok.eos_id, tok.unk_id):
            tb.append(b"")
        else:
            tb.append(p)
            lookup.setdefault(p, i)
    if not text:
        return []
    text = " " + text
    words, start = [], 0
    for k in range(1, len(text)):
        if text[k] == " " and text[k - 1] != " ":
            words.append(text[start:k])
            start = k
    words.append(text[start:])
    out: list[int] = []
    for word in words:
        ids: list[int] = []
        for ch in word:
            i = lookup.get(ch.encode("utf-8"))
            if i is not None:
                ids.append(i)
            else:
                ids.extend(byte_ids[b] if byte_ids[b] >= 0 else tok.unk_id for b in ch.encode("utf-8"))
        while len(ids) > 1:
            best_score, best_at, best_id = -1e30, -1, -1
            for k in range(len(ids) - 1):
                j = lookup.get(tb[ids[k]] + tb[ids[k + 1]])
                if j is not None and tok.scores[j] > best_score:
                    best_score, best_at, best_id = tok.scores[j], k, j
            if best_at < 0:
                break
            ids[best_at:best_at + 2] = [best_id]
        out.extend(ids)
    return out


def _vocab_chars(tok) -> list[str]:
    chars = {ch for p in tok.pieces if not _BYTE.match(p) for ch in p.decode("utf-8", "ignore")}
    return sorted(chars) + [" ", "  ", "é", "😀", "\n"]


@pytest.fixture(scope="module")
def bins():
    return [load_tokenizer(os.path.join(DATA, "tokenizer.bin")), load_tokenizer(os.path.join(ASSETS, "tok512.bin"))]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_heap_merge_equals_the_quadratic_encoder(bins, data):
    for tok in bins:
        alphabet = st.sampled_from(_vocab_chars(tok))
        text = data.draw(st.lists(alphabet, max_size=80).map("".join), label=tok.path)
        assert tok.encode(text, bos=False) == quadratic_encode(tok, text), repr(text)


def test_reference_prompts_still_encode_to_the_reference_ids(default_model, reference, bins):
    for case in reference["cases"]:
        assert default_model.tokenizer.encode(case["prompt"]) == case["prompt_ids"]
        assert quadratic_encode(default_model.tokenizer, case["prompt"]) == case["prompt_ids"][1:]


def test_long_words_without_spaces(bins):
    """One 100 200-character word (the rescanning loop needed over a minute): the old loop
    on a shorter copy gives head, repeating middle and tail; the long one has the same."""
    tok = bins[0]
    short = quadratic_encode(tok, "the" * 600)
    assert tok.encode("the" * 600, bos=False) == short
    head, middle, tail = short[:2], short[2:-1], short[-1:]
    assert len(set(middle)) == 1
    t0 = time.perf_counter()
    ids = tok.encode("the" * 33400, bos=False)
    dt = time.perf_counter() - t0
    assert ids == head + middle[:1] * (len(ids) - 3) + tail
    assert tok.decode(ids) == " " + "the" * 33400
    print(f"\n'the' * 33400 (100 200 chars, no spaces): {len(ids)} ids in {dt:.2f} s")
