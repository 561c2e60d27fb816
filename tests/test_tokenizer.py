"""llama2.c tokenizer.bin encoding equals sentencepiece's, and decoding streams safely."""
from __future__ import annotations

import os
import random

import pytest

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
             for p in (("inference", "tokenizer.py"), ("inference", "engine.py"), ("DEVELOPERS.md",))]
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
