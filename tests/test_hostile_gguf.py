"""Hostile and broken GGUF files (written with gguf-py, then lied into): every one a
one-line error within a time budget; a header that lies is never read as shifted weights."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inference.errors import TokenizerError
from inference.formats.gguf import read_gguf

from .hostile import (FORMATS, LIES, Typed, expect_error, flip, gguf_meta_and_tensors, ok_or_error, open_all,
                      overwrite, packed_lie, write, write_gguf_file)

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
F16 = os.path.join(FORMATS, "tiny-f16.gguf")
Q8 = os.path.join(FORMATS, "tiny-q8_0.gguf")


@pytest.fixture(scope="module")
def base():
    """(metadata, tensors) of the tiny F16 model with its llama vocabulary."""
    return gguf_meta_and_tensors(F16)


def _with(tmp_path, base, name: str = "m.gguf", drop: tuple[str, ...] = (), **changes) -> str:
    meta, tensors = base
    meta = {k: v for k, v in meta.items() if k not in drop}
    meta.update({k.replace("__", "."): v for k, v in changes.items()})
    return write_gguf_file(str(tmp_path / name), meta, tensors)


def test_the_rewritten_fixture_loads(tmp_path, base):
    open_all(_with(tmp_path, base))


# -- hyper-parameters of the wrong type or range ----------------------------------------------
_WRONG = {
    "string": Typed("32", "STRING"), "nan": Typed(float("nan"), "FLOAT32"), "inf": Typed(float("inf"), "FLOAT64"),
    "array": Typed([32, 32], "ARRAY", "UINT32"), "bool": Typed(True, "BOOL"), "negative": Typed(-32, "INT32"),
    "zero": Typed(0, "UINT32"), "2^63": Typed(1 << 63, "UINT64"), "nested": Typed([[32]], "ARRAY"),
}
_STRUCTURAL = ["llama.embedding_length", "llama.block_count", "llama.feed_forward_length",
               "llama.attention.head_count", "llama.attention.head_count_kv", "llama.context_length",
               "llama.rope.dimension_count", "llama.attention.layer_norm_rms_epsilon", "llama.rope.freq_base",
               "general.alignment", "llama.attention.key_length", "llama.vocab_size", "general.architecture"]


@pytest.mark.parametrize("key", _STRUCTURAL)
def test_hyperparameters_of_the_wrong_type(tmp_path, base, key):
    for i, (kind, v) in enumerate(_WRONG.items()):
        if (key, kind) == ("general.alignment", "nested"):
            continue
        path = _with(tmp_path, base, name=f"{i}.gguf", **{key.replace(".", "__"): v})
        msg = ok_or_error(open_all, path)
        assert msg is not None, f"{key} = {kind} was accepted"


@pytest.mark.parametrize("changes,words", [
    ({"llama.attention.head_count": 3}, ""),
    ({"llama.attention.head_count_kv": 3}, ""),
    ({"llama.block_count": 1}, "holds layer 1"),
    ({"llama.block_count": 3}, "missing"),
    ({"llama.embedding_length": 64}, ""),
    ({"llama.attention.layer_norm_rms_epsilon": -1e-5}, "norm_eps"),
    ({"llama.rope.freq_base": 0.0}, "rope_theta"),
    ({"llama.rope.freq_base": -10000.0}, "rope_theta"),
    ({"llama.rope.scaling.type": "yarn"}, "not supported"),
    ({"llama.rope.scaling.type": "linear", "llama.rope.scaling.factor": Typed(float("nan"), "FLOAT32")}, "finite"),
    ({"general.architecture": "mamba"}, "not supported"),
    ({"general.alignment": Typed(1, "UINT32")}, "after its last tensor"),
    ({"general.alignment": Typed(3, "UINT32")}, "power of two"),
    ({"general.alignment": Typed(-32, "INT32")}, "power of two"),
    ({"general.alignment": Typed(64, "UINT32")}, ""),
    ({"general.alignment": Typed(1 << 20, "UINT32")}, "power of two"),
])
def test_hyperparameters_that_lie(tmp_path, base, changes, words):
    meta, tensors = base
    path = write_gguf_file(str(tmp_path / "m.gguf"), {**meta, **changes}, tensors)
    assert words in expect_error(open_all, path)


def test_required_keys_missing(tmp_path, base):
    for i, key in enumerate(["general.architecture", "llama.embedding_length", "llama.block_count",
                             "llama.feed_forward_length", "llama.attention.head_count"]):
        expect_error(open_all, _with(tmp_path, base, name=f"{i}.gguf", drop=(key,)))
    meta, tensors = base
    for i, name in enumerate(["token_embd.weight", "blk.1.attn_q.weight", "output_norm.weight"]):
        expect_error(open_all, write_gguf_file(str(tmp_path / f"t{i}.gguf"), meta,
                                               [t for t in tensors if t[0] != name]))


def test_general_name_of_another_type_is_not_shown(tmp_path, base):
    """A description field of the wrong type is left out of the description (harmless)."""
    from inference.formats import open_source
    src = open_source(_with(tmp_path, base, general__name=Typed(["a", "b"], "ARRAY")))
    assert "tiny-test" not in src.description and "[" not in src.description


# -- the vocabulary ----------------------------------------------------------------------------------
_TOK_WRONG = {
    "tokenizer.ggml.tokens": [Typed("abc", "STRING"), Typed(list(range(32)), "ARRAY", "INT32"),
                              Typed([["a"]] * 32, "ARRAY")],
    "tokenizer.ggml.scores": [Typed(["0"] * 32, "ARRAY", "STRING"), Typed(1.0, "FLOAT32"),
                              Typed([0.0] * 31, "ARRAY", "FLOAT32"), Typed([float("nan")] * 32, "ARRAY", "FLOAT32")],
    "tokenizer.ggml.token_type": [Typed([1.0] * 32, "ARRAY", "FLOAT32"), Typed(["1"] * 32, "ARRAY", "STRING"),
                                  Typed([7] * 32, "ARRAY", "INT32"), Typed([-1] * 32, "ARRAY", "INT32"),
                                  Typed([1] * 31, "ARRAY", "INT32"), Typed(3, "INT32")],
    "tokenizer.ggml.bos_token_id": [Typed("1", "STRING"), Typed(1.5, "FLOAT32"), Typed([1], "ARRAY", "UINT32"),
                                    Typed(True, "BOOL")],
    "tokenizer.ggml.eos_token_id": [Typed(float("nan"), "FLOAT32")],
    "tokenizer.ggml.model": [Typed(["llama"], "ARRAY"), Typed(1, "UINT32"), Typed("bert", "STRING")],
    "tokenizer.ggml.add_bos_token": [Typed("no", "STRING"), Typed(1, "UINT8")],
    "tokenizer.chat_template": [Typed(5, "UINT32"), Typed(["{{ x }}"], "ARRAY")],
}


@pytest.mark.parametrize("key", list(_TOK_WRONG))
def test_vocabulary_keys_of_the_wrong_type(tmp_path, base, key):
    """The weights load; building the tokenizer is a one-line TokenizerError."""
    from inference.formats import open_source
    for i, v in enumerate(_TOK_WRONG[key]):
        path = _with(tmp_path, base, name=f"{i}.gguf", **{key.replace(".", "__"): v})
        src = open_source(path)
        src.weights()
        with pytest.raises(TokenizerError) as e:
            src.tokenizer()
        assert "\n" not in str(e.value), str(e.value)
        assert "PROBLEM" in src.tokenizer_note or "none" in src.tokenizer_note


def test_byte_tokens_spelled_wrong(tmp_path, base):
    meta, tensors = base
    toks = list(meta["tokenizer.ggml.tokens"])
    types = np.array(meta["tokenizer.ggml.token_type"])
    types[10] = 6
    toks[10] = "<0xZZ>"
    path = write_gguf_file(str(tmp_path / "m.gguf"), {**meta, "tokenizer.ggml.tokens": toks,
                                                      "tokenizer.ggml.token_type": types}, tensors)
    from inference.formats import open_source
    with pytest.raises(TokenizerError, match="<0xXX>"):
        open_source(path).tokenizer()


def _byte_level_meta(base, **changes):
    """The tiny model with a byte-level (gpt2) vocabulary of 32 tokens and 3 merges."""
    meta, tensors = base
    toks = ["<|endoftext|>", "Ġ", "t", "h", "e", "a", "Ġt", "he", "Ġthe"]
    toks += [c for c in "bcdfgijklmnopqrsuvwxyz.,!?'" if c not in toks][:32 - len(toks)]
    assert len(toks) == 32
    m = {k: v for k, v in meta.items() if not k.startswith("tokenizer.")}
    m.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.tokens": toks,
              "tokenizer.ggml.token_type": np.array([3] + [1] * 31, np.int32),
              "tokenizer.ggml.merges": ["Ġ t", "h e", "Ġt he"], "tokenizer.ggml.bos_token_id": 0,
              "tokenizer.ggml.eos_token_id": 0})
    m.update(changes)
    return m, tensors


def test_byte_level_vocabulary_loads_and_its_keys_are_checked(tmp_path, base):
    from inference.formats import open_source
    meta, tensors = _byte_level_meta(base)
    tok = open_source(write_gguf_file(str(tmp_path / "ok.gguf"), meta, tensors)).tokenizer()
    assert tok.kind == "gguf-bpe" and tok.encode(" the", bos=False) == [8]
    for i, changes in enumerate([{"tokenizer.ggml.merges": Typed([1, 2], "ARRAY", "INT32")},
                                 {"tokenizer.ggml.merges": Typed([["Ġ t"]], "ARRAY")},
                                 {"tokenizer.ggml.merges": Typed(["x y"], "ARRAY", "STRING")},
                                 {"tokenizer.ggml.pre": Typed(["gpt-2"], "ARRAY")},
                                 {"tokenizer.ggml.pre": "mystery-9"}]):
        m, t = _byte_level_meta(base, **changes)
        src = open_source(write_gguf_file(str(tmp_path / f"{i}.gguf"), m, t))
        with pytest.raises(TokenizerError) as e:
            src.tokenizer()
        assert "\n" not in str(e.value)
    m, t = _byte_level_meta(base)
    del m["tokenizer.ggml.merges"]
    with pytest.raises(TokenizerError, match="no merges"):
        open_source(write_gguf_file(str(tmp_path / "nomerges.gguf"), m, t)).tokenizer()


# -- the binary layout --------------------------------------------------------------------------------
def header_fields(data: bytes) -> list[tuple[str, int, str]]:
    """(what, offset, struct format) of every integer field of a GGUF v3 header."""
    out = [("version", 4, "<I"), ("n_tensors", 8, "<Q"), ("n_kv", 16, "<Q")]
    n_tensors, n_kv = struct.unpack_from("<QQ", data, 8)
    pos = 24
    sizes = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}

    def value(vtype: int, what: str) -> None:
        nonlocal pos
        if vtype == 8:
            out.append((what + " length", pos, "<Q"))
            pos += 8 + struct.unpack_from("<Q", data, pos)[0]
        elif vtype == 9:
            etype, n = struct.unpack_from("<IQ", data, pos)
            out.extend([(what + " element type", pos, "<I"), (what + " count", pos + 4, "<Q")])
            pos += 12
            for k in range(n):
                value(etype, what + f"[{k}]" if k < 2 else "")
        else:
            if what and vtype in (4, 5, 10, 11):
                out.append((what, pos, "<I" if sizes[vtype] == 4 else "<Q"))
            pos += sizes[vtype]

    for _ in range(n_kv):
        klen = struct.unpack_from("<Q", data, pos)[0]
        key = data[pos + 8:pos + 8 + klen].decode()
        out.append((key + " key length", pos, "<Q"))
        pos += 8 + klen
        out.append((key + " type", pos, "<I"))
        vtype = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        value(vtype, key)
    for _ in range(n_tensors):
        nlen = struct.unpack_from("<Q", data, pos)[0]
        name = data[pos + 8:pos + 8 + nlen].decode()
        out.append((name + " name length", pos, "<Q"))
        pos += 8 + nlen
        n_dims = struct.unpack_from("<I", data, pos)[0]
        out.append((name + " n_dims", pos, "<I"))
        pos += 4
        for d in range(n_dims):
            out.append((name + f" dim {d}", pos, "<Q"))
            pos += 8
        out.extend([(name + " type", pos, "<I"), (name + " offset", pos + 4, "<Q")])
        pos += 12
    return out


@pytest.fixture(scope="module", params=[F16, Q8], ids=["f16", "q8_0"])
def layout(request):
    data = open(request.param, "rb").read()
    return data, header_fields(data)


def test_every_header_field_that_lies(tmp_path, layout):
    """Each integer field of the header, set to each lie: a one-line error (or, where the
    lie is harmless, a model that loads); a tensor's dims, offset or rank, or a count,
    that lies is always an error (it would shift or reshape the weights)."""
    data, fields = layout
    path = str(tmp_path / "m.gguf")
    accepted = []
    for what, pos, fmt in fields:
        original = struct.unpack_from(fmt, data, pos)[0]
        for lie in LIES:
            b = packed_lie(lie, fmt)
            if struct.unpack(fmt, b)[0] == original:
                continue
            msg = ok_or_error(open_all, write(path, overwrite(data, pos, b)), seconds=5)
            if msg is None:
                accepted.append((what, lie))
    must_refuse = [(w, v) for w, v in accepted
                   if w.endswith((" offset", " n_dims", "n_tensors", "n_kv")) or " dim " in w
                   or (w == "version" and v not in (2, 3))]
    assert not must_refuse, must_refuse[:10]


@given(data=st.data())
@FUZZ
def test_fuzzed_headers(tmp_path, layout, data):
    """Truncations, bit flips (mostly in the header) and lying u32/u64 words anywhere."""
    raw, fields = layout
    header_end = fields[-1][1] + 8
    kind = data.draw(st.sampled_from(["truncate", "flip", "lie"]))
    if kind == "truncate":
        mutated = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        pos = data.draw(st.one_of(st.integers(0, header_end), st.integers(0, len(raw) - 1)))
        mutated = flip(raw, pos, data.draw(st.integers(0, 7)))
    else:
        pos = data.draw(st.integers(0, header_end))
        mutated = overwrite(raw, pos, packed_lie(data.draw(st.sampled_from(LIES)), data.draw(
            st.sampled_from(["<I", "<Q", "<i"]))))
    ok_or_error(open_all, write(str(tmp_path / "f.gguf"), mutated), seconds=5)


def _raw_gguf(kvs: bytes, n_kv: int, tensors: bytes = b"", n_tensors: int = 0, tail: bytes = b"") -> bytes:
    return b"GGUF" + struct.pack("<IQQ", 3, n_tensors, n_kv) + kvs + tensors + tail


def _key(name: str) -> bytes:
    return struct.pack("<Q", len(name)) + name.encode()


@pytest.mark.parametrize("blob,words", [
    (_raw_gguf(_key("a") + struct.pack("<I", 9) + struct.pack("<IQ", 9, 1) * 2000 + b"\0" * 64, 1), "nested"),
    (_raw_gguf(_key("a") + struct.pack("<I", 9) + struct.pack("<IQ", 0, 1 << 62), 1), "truncated"),
    (_raw_gguf(_key("a") + struct.pack("<I", 9) + struct.pack("<IQ", 8, 1 << 40), 1), "impossible"),
    (_raw_gguf(_key("a") + struct.pack("<I", 8) + struct.pack("<Q", 1 << 63), 1), "truncated"),
    (_raw_gguf(struct.pack("<Q", (1 << 64) - 1), 1), "truncated"),
    (_raw_gguf(_key("a") + struct.pack("<I", 13), 1), "unknown GGUF metadata type"),
    (_raw_gguf(_key("a") + struct.pack("<I", 9) + struct.pack("<IQ", 77, 1), 1), "unknown GGUF metadata type"),
    (_raw_gguf(b"", 1 << 60), "implausible"),
    (_raw_gguf(b"", 0, b"", 1 << 60), "implausible"),
    (_raw_gguf(b"", 33, b"", 272, b"\0" * 4000), "truncated: its header declares 272 tensors and 33 keys"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 32, 1 << 32)
               + struct.pack("<IQ", 0, 0), 1, b"\0" * 64), "runs past the end"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 2) + struct.pack("<QQ", 1 << 63, 2)
               + struct.pack("<IQ", 0, 0), 1, b"\0" * 64), "impossible shape"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 0)
               + struct.pack("<IQ", 0, 0), 1, b"\0" * 64), "impossible shape"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 0) + struct.pack("<IQ", 0, 0), 1, b"\0" * 64), "dimensions"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 5) + struct.pack("<5Q", *[2] * 5)
               + struct.pack("<IQ", 0, 0), 1, b"\0" * 64), "dimensions"),
    (_raw_gguf(b"", 0, (_key("t") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 0, 0)) * 2,
               2, b"\0" * 64), "twice"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 0, 0)
               + _key("u") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 0, 0), 2,
               b"\0" * 64), "overlaps"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 0, 32), 1,
               b"\0" * 64), "bytes after the data before it ends"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 0, 0), 1,
               b"\0" * 64), "bytes after its last tensor"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 0, 3), 1,
               b"\0" * 64), "not a multiple"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 8) + struct.pack("<IQ", 99, 0), 1,
               b"\0" * 64), "unknown GGUF type"),
    (_raw_gguf(b"", 0, _key("t") + struct.pack("<I", 1) + struct.pack("<Q", 33) + struct.pack("<IQ", 8, 0), 1,
               b"\0" * 64), "block"),
    (b"GGUF" + struct.pack("<I", 1), "version"),
    (b"GGUF" + struct.pack("<I", 3) + b"\0" * 5, "truncated"),
])
def test_crafted_headers(tmp_path, blob, words):
    assert words in expect_error(read_gguf, write(str(tmp_path / "c.gguf"), blob), seconds=3)
    expect_error(open_all, str(tmp_path / "c.gguf"), seconds=3)


def test_fifo_and_directory_named_gguf(tmp_path):
    os.mkfifo(tmp_path / "pipe.gguf")
    expect_error(open_all, str(tmp_path / "pipe.gguf"), seconds=3)
    (tmp_path / "dir.gguf").mkdir()
    expect_error(open_all, str(tmp_path / "dir.gguf"), seconds=3)


# -- any value of any type at any key -------------------------------------------------------------
_KEYS = _STRUCTURAL + list(_TOK_WRONG) + ["tokenizer.ggml.unknown_token_id", "tokenizer.ggml.add_space_prefix",
                                          "tokenizer.ggml.eot_token_id", "llama.rope.scaling.type",
                                          "llama.rope.scaling.factor", "llama.attention.value_length"]
_INTS = st.integers(-(1 << 63), (1 << 64) - 1) | st.sampled_from([0, 1, 2, 4, 8, 32, 64, 31, 33, 4096, 1 << 31])
_VALUES = st.one_of(
    st.builds(lambda v: Typed(v, "UINT32"), st.integers(0, (1 << 32) - 1)),
    st.builds(lambda v: Typed(v, "INT32"), st.integers(-(1 << 31), (1 << 31) - 1)),
    st.builds(lambda v: Typed(v, "UINT64"), st.integers(0, (1 << 64) - 1)),
    st.builds(lambda v: Typed(v, "INT64"), st.integers(-(1 << 63), (1 << 63) - 1)),
    st.builds(lambda v: Typed(v, "FLOAT32"), st.floats(width=32, allow_nan=True, allow_infinity=True)),
    st.builds(lambda v: Typed(v, "FLOAT64"), st.floats(allow_nan=True, allow_infinity=True)),
    st.builds(lambda v: Typed(v, "BOOL"), st.booleans()),
    st.builds(lambda v: Typed(v, "STRING"), st.text(max_size=40)),
    st.builds(lambda v: Typed(v, "ARRAY", "INT32"), st.lists(st.integers(-(1 << 31), (1 << 31) - 1), min_size=1,
                                                               max_size=40)),
    st.builds(lambda v: Typed(v, "ARRAY", "FLOAT32"), st.lists(st.floats(width=32), min_size=1, max_size=40)),
    st.builds(lambda v: Typed(v, "ARRAY", "STRING"), st.lists(st.text(max_size=8), min_size=1, max_size=40)),
)


@given(changes=st.dictionaries(st.sampled_from(_KEYS), _VALUES, min_size=1, max_size=3))
@settings(max_examples=80, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
def test_any_value_at_any_key(tmp_path, base, changes):
    """Whatever type and value the metadata holds at the keys the loader reads: the model
    and its vocabulary load, or one line says why."""
    meta, tensors = base
    path = write_gguf_file(str(tmp_path / "any.gguf"), {**meta, **changes}, tensors)
    ok_or_error(open_all, path, seconds=5)


def _nan_scaled(tmp_path) -> str:
    """The tiny Q8_0 model with every block scale of one matrix NaN (an honest header)."""
    meta, tensors = gguf_meta_and_tensors(Q8)
    out = []
    for name, data, ggml_type, shape in tensors:
        if name == "blk.0.ffn_down.weight":
            assert ggml_type == 8   # Q8_0: an fp16 scale, then 32 int8 values
            data = data.copy()
            data.reshape(-1, 34)[:, :2] = (0x00, 0x7E)
        out.append((name, data, ggml_type, shape))
    return write_gguf_file(str(tmp_path / "nan.gguf"), meta, out)


def test_nan_scales_stop_generation_in_one_line(tmp_path, capsys):
    """Blocks whose fp16 scales are NaN load (the header is honest) but every logit comes
    out NaN: generation stops with one line and exit 2, greedy or sampled, instead of
    printing whatever token NaN logits would pick."""
    from app.cli import main
    path = _nan_scaled(tmp_path)
    capsys.readouterr()
    for extra in ([], ["--temperature", "0.8"], ["--temperature", "0.8", "--top-k", "0"]):
        assert main(["generate", "-m", path, "-p", "Once", "-n", "4", "--temperature", "0", *extra]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "non-finite logit" in err[0], err


def test_serve_refuses_a_model_whose_warm_up_logits_are_nan(tmp_path):
    """A model broken throughout is refused before the port opens (one line, exit 2)."""
    import subprocess
    import sys

    from .conftest import ROOT
    path = _nan_scaled(tmp_path)
    r = subprocess.run([sys.executable, "-m", "app.cli", "serve", "-m", path, "--port", "0"], cwd=ROOT,
                       env={**os.environ, "PYTHONPATH": ROOT}, capture_output=True, text=True, timeout=120)
    errors = [line for line in r.stderr.splitlines() if "error" in line]
    assert r.returncode == 2 and len(errors) == 1 and "non-finite logit" in errors[0], r.stderr
