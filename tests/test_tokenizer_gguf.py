"""GGUF vocabularies (byte-level BPE and sentencepiece-style) and tokenizer.json give
llama.cpp's ids; control tokens stay text unless asked for; decoding never breaks a
character and hides control tokens.

The ids were computed once by llama.cpp (tests/data/tokenizers/make_llamacpp_reference.py,
not a test) for ~13 KB of text on each vocabulary; ../shared/reference's SmolLM2 cases are
a second, independent check.
"""
from __future__ import annotations

import hashlib
import json
import os

import numpy as np
import pytest

from inference.errors import TokenizerError
from inference.tokenizer import (StreamDecoder, Tokenizer, describe_gguf_tokenizer, gguf_metadata,
                                 load_tokenizer, tokenizer_from_gguf)
from inference.tokenizer.bytelevel import PRE_TOKENIZERS

from .conftest import DATA, SHARED
from .tokenizer_fixtures import REFERENCE, SMOLLM2, STORIES_GGUF, sentencepiece_gguf_metadata, with_pre


@pytest.fixture(scope="module")
def ref() -> dict:
    with open(REFERENCE, encoding="utf-8") as f:
        return json.load(f)


@pytest.fixture(scope="module")
def smol_meta() -> dict:
    if not os.path.exists(SMOLLM2):
        pytest.skip(f"{SMOLLM2} is not available")
    return gguf_metadata(SMOLLM2)


@pytest.fixture(scope="module")
def smol(smol_meta) -> Tokenizer:
    return tokenizer_from_gguf(smol_meta, SMOLLM2)


@pytest.fixture(scope="module")
def vocabularies(ref, smol_meta):
    """name in the fixture -> our tokenizer for that vocabulary."""
    out = {"smollm2": tokenizer_from_gguf(smol_meta, SMOLLM2),
           "stories260K": load_tokenizer(STORIES_GGUF),
           "spm32k": tokenizer_from_gguf(sentencepiece_gguf_metadata(os.path.join(DATA, "tokenizer.model")),
                                         "spm32k.gguf")}
    for name in ref["models"]:
        if name.startswith("pre-"):
            out[name] = tokenizer_from_gguf(with_pre(smol_meta, name[4:]), f"{name}.gguf")
    return out


def _mismatches(tok: Tokenizer, texts: list[str], want: list[list[int]], special: bool) -> list[str]:
    return [f"{t!r}: llama.cpp {w[:12]} ours {tok.encode(t, bos=False, special=special)[:12]}"
            for t, w in zip(texts, want) if tok.encode(t, bos=False, special=special) != w]


def test_ids_equal_llama_cpp_on_every_vocabulary(ref, vocabularies):
    texts = ref["texts"]
    assert sum(len(t.encode()) for t in texts) > 10_000
    assert set(vocabularies) == set(ref["models"])
    for name, tok in vocabularies.items():
        bad = _mismatches(tok, texts, ref["models"][name]["plain"], special=False)
        assert not bad, f"{name}: {len(bad)} texts differ, e.g. {bad[:3]}"


def test_special_parsing_equals_llama_cpp(ref, vocabularies):
    for name, tok in vocabularies.items():
        special = ref["models"][name]["special"]
        if not special:
            continue
        keys = sorted(special, key=int)
        texts = [ref["texts"][int(k)] for k in keys]
        bad = _mismatches(tok, texts, [special[k] for k in keys], special=True)
        assert not bad, f"{name}: {bad[:3]}"


def test_special_ids_bos_and_end_of_generation_equal_llama_cpp(ref, vocabularies):
    for name, tok in vocabularies.items():
        r = ref["models"][name]
        assert (tok.vocab_size, tok.bos_id, tok.eos_id, tok.add_bos) == \
            (r["n_tokens"], r["bos"], r["eos"], r["add_bos"]), name
        assert sorted(tok.eog_ids) == r["eog"], name
        assert set(r["eog"]) <= tok.stop_ids, name


def test_every_token_decodes_to_llama_cpps_piece(ref, vocabularies):
    for name in ("smollm2", "stories260K", "spm32k"):
        tok = vocabularies[name]
        h = hashlib.sha256()
        for i in range(tok.vocab_size):
            p = tok.piece_bytes(i)
            h.update(len(p).to_bytes(4, "little") + p)
        assert h.hexdigest() == ref["models"][name]["pieces_sha256"], name


def test_shared_reference_tokenize_cases(smol):
    path = os.path.join(SHARED, "reference", "smollm2_q4_1_reference.json")
    if not os.path.exists(path):
        pytest.skip("../shared/reference is not beside this checkout")
    with open(path) as f:
        ref = json.load(f)
    for case in ref["tokenize"]:
        assert smol.encode(case["text"]) == case["ids"], case["text"]
    for case in ref["chat_greedy"]:   # the replies decode to the reference text, <|im_end|> hidden
        assert smol.decode(case["greedy_ids"]) == case["greedy_text"]
    assert ref["chat_greedy"][0]["greedy_ids"][-1] in smol.stop_ids


def test_typed_control_tokens_are_text_unless_special(smol):
    assert smol.add_bos is False and smol.bos_id == 1 and smol.eos_id == 2
    typed = smol.encode("<|im_end|>")
    assert smol.token_id("<|im_end|>") == 2 and 2 not in typed and len(typed) > 3
    assert smol.decode(typed) == "<|im_end|>"
    assert smol.encode("<|im_start|>user\nhi<|im_end|>", special=True) == [1, 4093, 198, 6004, 2]
    assert smol.encode("x", bos=True) == [1, *smol.encode("x")]
    assert {0, 2} <= smol.stop_ids and 1 not in smol.stop_ids   # BOS <|im_start|> is no stop


def test_decoding_hides_control_tokens_and_streams_whole_characters(smol):
    text = "emoji 😀 and 日本語 👩‍👩‍👧 ok"
    ids = smol.encode("<|im_start|>assistant\n" + text + "<|im_end|>", special=True)
    dec = StreamDecoder(smol)
    pieces = [dec.feed(i) for i in ids] + [dec.flush()]
    assert "".join(pieces) == "assistant\n" + text
    assert all("\ufffd" not in p for p in pieces)
    assert any(p == "" for p in pieces), "a character split over tokens waits for its last byte"
    assert smol.decode(smol.encode(text)) == text


def test_unknown_pre_tokenizer_is_refused_by_name(smol_meta):
    with pytest.raises(TokenizerError, match=r"pre-tokenizer 'mystery-9' is not supported") as e:
        tokenizer_from_gguf(with_pre(smol_meta, "mystery-9"), "/m/x.gguf")
    assert "\n" not in str(e.value) and "x.gguf" in str(e.value)
    for name in ("smollm", "llama-bpe", "qwen2", "gpt-2", "default"):
        assert name in PRE_TOKENIZERS


def test_bad_gguf_vocabularies_are_one_line_errors(smol_meta):
    with pytest.raises(TokenizerError, match="no tokenizer"):
        tokenizer_from_gguf({"general.architecture": "llama"}, "x.gguf")
    with pytest.raises(TokenizerError, match="'bert' is not supported"):
        tokenizer_from_gguf({**smol_meta, "tokenizer.ggml.model": "bert"}, "x.gguf")
    dup = list(smol_meta["tokenizer.ggml.tokens"])
    dup[5] = dup[6]
    with pytest.raises(TokenizerError, match="appears twice"):
        tokenizer_from_gguf({**smol_meta, "tokenizer.ggml.tokens": dup}, "x.gguf")
    with pytest.raises(TokenizerError, match="token types"):
        tokenizer_from_gguf({**smol_meta, "tokenizer.ggml.token_type": np.ones(3, np.int32)}, "x.gguf")
    line = describe_gguf_tokenizer({**smol_meta, "tokenizer.ggml.pre": "mystery-9"})
    assert "PROBLEM" in line and "mystery-9" in line and "\n" not in line


def test_load_tokenizer_takes_a_gguf_model(smol):
    tok = load_tokenizer(SMOLLM2, 49152)
    assert tok.kind == "gguf-bpe" and tok.encode("Hello world") == [19556, 905]
    assert tok.chat_template and "<|im_start|>" in tok.chat_template
    with pytest.raises(TokenizerError, match="49152 tokens but the model's vocabulary has 32000"):
        load_tokenizer(SMOLLM2, 32000)
    line = describe_gguf_tokenizer(gguf_metadata(SMOLLM2))
    assert "gguf-bpe" in line and "smollm" in line and "49152" in line and "own chat template" in line


def test_llama_gguf_vocabulary_is_built_in_memory(tmp_path, monkeypatch):
    """stories260K.gguf's vocabulary encodes like its tokenizer.bin, with no cache file."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    tok = load_tokenizer(STORIES_GGUF)
    assert tok.kind == "gguf-spm" and (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, True)
    bin_tok = load_tokenizer(os.path.join(os.path.dirname(DATA), "..", "assets", "tok512.bin"))
    for text in ("Once upon a time, there was a cat.", "  two  spaces\nnewline é 😀", ""):
        assert tok.encode(text) == bin_tok.encode(text), text
    assert tok.encode("<s>hi</s>", special=True)[:2] == [1, 1]
    assert not (tmp_path / "cache").exists()


# -- tokenizer.json ----------------------------------------------------------------
@pytest.fixture(scope="module")
def smol_tokenizer_json(tmp_path_factory, smol_meta):
    """SmolLM2's vocabulary written as Hugging Face does (Digits + ByteLevel pre-tokenizer,
    special added tokens), with a tokenizer_config.json."""
    from tokenizers import AddedToken, Tokenizer as HF, decoders, models, pre_tokenizers as pt
    tokens = smol_meta["tokenizer.ggml.tokens"]
    merges = [tuple(m.split(" ", 1)) for m in smol_meta["tokenizer.ggml.merges"]]
    hf = HF(models.BPE({t: i for i, t in enumerate(tokens)}, merges))
    hf.pre_tokenizer = pt.Sequence([pt.Digits(individual_digits=True),
                                    pt.ByteLevel(add_prefix_space=False, use_regex=True)])
    hf.decoder = decoders.ByteLevel()
    types = smol_meta["tokenizer.ggml.token_type"]
    hf.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == 3])
    folder = tmp_path_factory.mktemp("smol-hf")
    hf.save(str(folder / "tokenizer.json"))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "bos_token": "<|im_start|>", "eos_token": "<|im_end|>", "unk_token": "<|endoftext|>",
        "chat_template": smol_meta["tokenizer.chat_template"]}))
    return str(folder / "tokenizer.json")


def test_tokenizer_json_gives_the_gguf_ids(smol_tokenizer_json, smol, ref):
    tok = load_tokenizer(smol_tokenizer_json, 49152)
    assert tok.kind == "hf" and (tok.bos_id, tok.eos_id, tok.add_bos) == (1, 2, False)
    assert tok.chat_template == smol.chat_template
    corpus = [t for t in ref["texts"] if not any(ord(c) < 32 and c not in "\t\n\r" for c in t)]
    assert len(corpus) > 300
    for t in corpus:
        assert tok.encode(t) == smol.encode(t), repr(t)
        assert tok.encode(t, special=True) == smol.encode(t, special=True), repr(t)
    assert tok.decode(tok.encode("héllo 😀<|im_end|>", special=True)) == "héllo 😀"
    assert 2 in tok.eog_ids


def test_broken_tokenizer_json_is_one_line(tmp_path):
    p = tmp_path / "tokenizer.json"
    p.write_text('{"model": {"type": "nonsense"}}')
    with pytest.raises(TokenizerError, match="is not a tokenizer.json") as e:
        load_tokenizer(str(p))
    assert "\n" not in str(e.value)
