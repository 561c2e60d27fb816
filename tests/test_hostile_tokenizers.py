"""Hostile and broken tokenizer files (llama2.c tokenizer.bin, sentencepiece .model,
tokenizer.json and its companions) and prompts too long for the context: one-line
TokenizerError / ContextOverflowError, within a time budget."""
from __future__ import annotations

import json
import os
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inference.tokenizer import load_tokenizer

from .hostile import ASSETS_TOK, DATA, LIES, elapsed, expect_error, flip, ok_or_error, overwrite, packed_lie, write

FUZZ = settings(max_examples=50, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
SPM = os.path.join(DATA, "tok512.model")


def use(path: str) -> None:
    """Load a tokenizer and use every part of it."""
    tok = load_tokenizer(path)
    ids = tok.encode("Once upon a time, héllo 😀 <s></s>", special=True)
    tok.decode(ids)
    tok.decode(list(range(tok.vocab_size)))
    tok.describe()


# -- tokenizer.bin ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tbin():
    return open(ASSETS_TOK, "rb").read()


@pytest.mark.parametrize("lie", [0, -1, 4096, 1 << 31])
def test_tokenizer_bin_max_len_lies(tmp_path, tbin, lie):
    expect_error(use, write(str(tmp_path / "t.bin"), overwrite(tbin, 0, packed_lie(lie, "<i"))))


@pytest.mark.parametrize("lie", [-1, 1 << 20, 9999, (1 << 31) - 1])
def test_tokenizer_bin_piece_length_lies(tmp_path, tbin, lie):
    # the first record: float score at 4, int32 length at 8
    expect_error(use, write(str(tmp_path / "t.bin"), overwrite(tbin, 8, packed_lie(lie, "<i"))))


def test_tokenizer_bin_too_many_tokens_and_too_few(tmp_path):
    many = struct.pack("<i", 8) + struct.pack("<fi", 0.0, 0) * ((1 << 22) + 2)   # 32 MB of empty pieces
    expect_error(use, write(str(tmp_path / "many.bin"), many), seconds=20, match="more than")
    expect_error(use, write(str(tmp_path / "few.bin"), struct.pack("<i", 8) + struct.pack("<fi", 0.0, 1) + b"a"))


@given(data=st.data())
@FUZZ
def test_fuzzed_tokenizer_bin(tmp_path, tbin, data):
    kind = data.draw(st.sampled_from(["truncate", "flip", "lie"]))
    if kind == "truncate":
        mutated = tbin[:data.draw(st.integers(0, len(tbin) - 1))]
    elif kind == "flip":
        mutated = flip(tbin, data.draw(st.integers(0, len(tbin) - 1)), data.draw(st.integers(0, 7)))
    else:
        mutated = overwrite(tbin, data.draw(st.integers(0, 400)), packed_lie(data.draw(st.sampled_from(LIES)), "<i"))
    ok_or_error(use, write(str(tmp_path / "t.bin"), mutated), seconds=5)


def test_tokenizer_bin_encoder_is_not_quadratic():
    """The issue's hang: 100 KB without spaces took over a minute; now it is n log n."""
    tok = load_tokenizer(ASSETS_TOK)
    t = elapsed(lambda: expect_nothing(tok.encode, "the" * 33400))
    print(f"100 KB without spaces encoded in {t:.2f} s")


def expect_nothing(fn, *args):
    from .hostile import budget
    with budget(10):
        return fn(*args)


# -- sentencepiece .model ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def spm_bytes():
    return open(SPM, "rb").read()


def test_sentencepiece_piece_with_a_damaged_byte(tmp_path, spm_bytes):
    """One byte inside a piece's text made invalid UTF-8 (the library raised UnicodeDecodeError)."""
    at = spm_bytes.index(b"<s>")
    msg = expect_error(use, write(str(tmp_path / "t.model"), overwrite(spm_bytes, at + 1, b"\xff")))
    assert "UTF-8" in msg
    at = spm_bytes.index(b"\x0a", 200) + 4   # inside a later piece
    ok_or_error(use, write(str(tmp_path / "u.model"), overwrite(spm_bytes, at, b"\xfe")))


@given(pos=st.integers(0, 7521), bit=st.integers(0, 7))
@FUZZ
def test_fuzzed_sentencepiece_model(tmp_path, spm_bytes, pos, bit):
    ok_or_error(use, write(str(tmp_path / "t.model"), flip(spm_bytes, pos, bit)), seconds=5)


def test_tokenizer_paths_that_are_not_files(tmp_path):
    os.mkfifo(tmp_path / "fifo.model")
    for p in (str(tmp_path / "fifo.model"), str(tmp_path), "/dev/zero", str(tmp_path / "missing.bin")):
        expect_error(load_tokenizer, p, seconds=3)
    os.chmod(tmp_path, 0o700)
    unreadable = write(str(tmp_path / "noread.bin"), open(ASSETS_TOK, "rb").read())
    os.chmod(unreadable, 0)
    if os.geteuid() != 0:
        expect_error(load_tokenizer, unreadable, seconds=3)


# -- tokenizer.json and its companions --------------------------------------------------------------
@pytest.fixture(scope="module")
def hf_pristine(tmp_path_factory):
    """A tiny byte-level tokenizer.json (256 byte symbols, 3 merges, one special token)."""
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {c: i for i, c in enumerate(alphabet)}
    for m in ("Ġt", "he", "Ġthe"):
        vocab[m] = len(vocab)
    hf = Tokenizer(models.BPE(vocab, [("Ġ", "t"), ("h", "e"), ("Ġt", "he")]))
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    hf.add_special_tokens([AddedToken("<|endoftext|>", special=True)])
    d = tmp_path_factory.mktemp("hf")
    hf.save(str(d / "tokenizer.json"))
    (d / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|endoftext|>", "eos_token": "<|endoftext|>",
                                                         "chat_template": "{{ messages }}"}))
    tok = load_tokenizer(str(d / "tokenizer.json"))
    assert tok.encode(" the", bos=False) == [258] and tok.eos_id == 259
    return d


@pytest.fixture
def hf_dir(tmp_path, hf_pristine):
    d = tmp_path / "hf"
    shutil.copytree(hf_pristine, d)
    return d


@pytest.mark.parametrize("name,content", [
    ("tokenizer.json", "[" * 100000 + "]" * 100000), ("tokenizer.json", b'{"model": "\xff"}'), ("tokenizer.json", "{"),
    ("tokenizer.json", '{"model": {"type": "nonsense"}}'), ("tokenizer.json", ""),
    ("tokenizer_config.json", "[" * 100000 + "]" * 100000), ("tokenizer_config.json", b'{"a": "\xff"}'),
    ("tokenizer_config.json", "{"), ("tokenizer_config.json", '{"add_bos_token": "yes"}'),
    ("chat_template.jinja", b"{{ \xff }}"),
    ("generation_config.json", "[" * 100000 + "]" * 100000),
])
def test_broken_tokenizer_json_companions(hf_dir, name, content):
    p = hf_dir / name
    if isinstance(content, str):
        p.write_text(content)
    else:
        p.write_bytes(content)
    expect_error(use, str(hf_dir / "tokenizer.json"), seconds=5)


def test_odd_but_valid_tokenizer_config_values(hf_dir):
    """Values of other types where a token is named are ignored, as transformers does."""
    (hf_dir / "tokenizer_config.json").write_text(json.dumps({"bos_token": 5, "eos_token": ["x"], "chat_template": 7,
                                                              "unk_token": {"content": None}}))
    (hf_dir / "generation_config.json").write_text(json.dumps({"eos_token_id": ["a", 10 ** 30, -5, 258]}))
    use(str(hf_dir / "tokenizer.json"))
    tok = load_tokenizer(str(hf_dir / "tokenizer.json"))
    assert tok.chat_template is None and 258 in tok.eog_ids


def test_companions_that_are_fifos(hf_dir):
    for name in ("chat_template.jinja", "tokenizer_config.json"):
        if os.path.lexists(hf_dir / name):
            os.remove(hf_dir / name)
        os.mkfifo(hf_dir / name)
        expect_error(use, str(hf_dir / "tokenizer.json"), seconds=3)
        os.remove(hf_dir / name)


@given(data=st.data())
@settings(max_examples=30, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_fuzzed_tokenizer_json(hf_dir, hf_pristine, data):
    path = hf_dir / "tokenizer.json"
    raw = (hf_pristine / "tokenizer.json").read_bytes()
    if data.draw(st.booleans()):
        mutated = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:
        mutated = flip(raw, data.draw(st.integers(0, len(raw) - 1)), data.draw(st.integers(0, 7)))
    path.write_bytes(mutated)
    ok_or_error(use, str(path), seconds=5)


# -- prompts longer than the context ------------------------------------------------------------------
@pytest.fixture(scope="module")
def tokenizers_all(tmp_path_factory):
    from inference.tokenizer import tokenizer_from_gguf
    from inference.formats.gguf import read_gguf_metadata
    toks = [load_tokenizer(ASSETS_TOK), load_tokenizer(SPM), load_tokenizer(os.path.join(DATA, "tokenizer.model"))]
    gguf = os.path.join(DATA, "stories260K-converted", "stories260K.gguf")
    toks.append(tokenizer_from_gguf(read_gguf_metadata(gguf), gguf))
    return toks


_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=400) | st.sampled_from(
    [" " * 2000, "\n\t " * 500, "a" * 3000, "é" * 900, "\u1100\u1161\u11a8" * 300, "<s>" * 400, "😀" * 300])


@given(text=_TEXT, n=st.integers(1, 64))
@settings(max_examples=150, deadline=None, derandomize=True)
def test_the_length_bound_never_refuses_a_prompt_that_fits(tokenizers_all, text, n):
    """`cannot_fit` (decided without tokenizing) is sound: a refused text really needs
    more than n tokens, for every kind of tokenizer."""
    for tok in tokenizers_all:
        if tok.cannot_fit(text, n):
            assert len(tok.encode(text, special=True)) > n, (tok.kind, text[:40], n)


def test_a_huge_prompt_is_refused_before_tokenizing(tmp_path):
    """16 MB of text for a 512-token context: refused in well under a second, not after
    tokenizing all of it (which takes half a minute)."""
    from inference.engine import Engine
    from inference.errors import ContextOverflowError
    from inference.loader import load_model

    loaded = load_model(quant="none")

    class NoBackend:
        config = loaded.config

    engine = Engine(NoBackend(), loaded.tokenizer)  # type: ignore[arg-type]
    text = "the" * ((16 << 20) // 3)
    t = elapsed(lambda: expect_error(engine.encode, text, seconds=5))
    assert t < 3, t
    with pytest.raises(ContextOverflowError):
        list(engine.generate(text))
    ids = engine.encode("Once upon a time")   # a prompt that fits is unaffected
    assert ids[0] == loaded.tokenizer.bos_id and len(ids) > 3

