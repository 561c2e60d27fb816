"""Hostile and broken Hugging Face checkpoints: safetensors headers (single and sharded),
the shard index and config.json. Every one a one-line ModelFormatError within a budget."""
from __future__ import annotations

import copy
import json
import os
import shutil
import struct

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from .hostile import (FORMATS, LIES, expect_error, flip, ok_or_error, open_all, overwrite, packed_lie,
                      safetensors_parts, write, write_safetensors)

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
EMB, NORM, HEAD = "model.embed_tokens.weight", "model.norm.weight", "lm_head.weight"


@pytest.fixture
def hf(tmp_path):
    d = tmp_path / "hf"
    shutil.copytree(os.path.join(FORMATS, "hf"), d)
    return str(d)


@pytest.fixture
def sharded(tmp_path):
    d = tmp_path / "hf_sharded"
    shutil.copytree(os.path.join(FORMATS, "hf_sharded"), d)
    return str(d)


def _rewrite(directory: str, mod, file: str = "model.safetensors") -> str:
    path = os.path.join(directory, file)
    header, data = safetensors_parts(path)
    header = copy.deepcopy(header)
    mod(header)
    write_safetensors(path, header, data)
    return directory


def _set(name: str, **fields):
    return lambda h: h[name].update(fields)


def _entry(h, name):
    return h[name]


# -- tensor descriptors ------------------------------------------------------------------------
_BAD_ENTRIES = {
    "dtype unknown": _set(NORM, dtype="F8_E4M3"), "dtype int": _set(NORM, dtype=5),
    "dtype list": _set(NORM, dtype=["F32"]), "dtype integer type": _set(EMB, dtype="I32"),
    "shape 2^32 x 2^32": _set(EMB, shape=[1 << 32, 1 << 32]), "shape 2^63 x 2": _set(EMB, shape=[1 << 63, 2]),
    "shape 2^70": _set(EMB, shape=[1 << 70]), "shape negative": _set(EMB, shape=[-32, -32]),
    "shape bool": _set(EMB, shape=[True, 32]), "shape float": _set(EMB, shape=[32.0, 32]),
    "shape string": _set(EMB, shape="32,32"), "shape nine dims": _set(EMB, shape=[1] * 9),
    "shape 0-dim": lambda h: h[EMB].update(shape=[], data_offsets=[h[EMB]["data_offsets"][0]] * 2),
    "shape transposed": _set(HEAD, shape=[32, 32, 1]),
    "offsets reversed": lambda h: h[NORM].update(data_offsets=h[NORM]["data_offsets"][::-1]),
    "offsets past the end": lambda h: h[NORM].update(data_offsets=[1 << 40, (1 << 40) + 128]),
    "offsets negative": lambda h: h[NORM].update(data_offsets=[-128, 0]),
    "offsets three": lambda h: h[NORM].update(data_offsets=h[NORM]["data_offsets"] + [0]),
    "offsets bool": lambda h: h[NORM].update(data_offsets=[False, True]),
    "offsets float": lambda h: h[NORM].update(data_offsets=[float(x) for x in h[NORM]["data_offsets"]]),
    "offsets missing": lambda h: h[NORM].pop("data_offsets"),
    "overlap": lambda h: h[NORM].update(data_offsets=[h[HEAD]["data_offsets"][0], h[HEAD]["data_offsets"][0] + 128]),
    "hole (a shorter tensor)": lambda h: h[NORM].update(shape=[16], data_offsets=[h[NORM]["data_offsets"][0],
                                                                                  h[NORM]["data_offsets"][0] + 64]),
    "entry not an object": lambda h: h.__setitem__(NORM, [1, 2]),
    "entry missing": lambda h: h.pop(NORM),
    "duplicate meaning": lambda h: h.__setitem__("model.layers.0.self_attn.q_proj.bias", copy.deepcopy(h[NORM])),
    "a third layer": lambda h: h.__setitem__("model.layers.2.input_layernorm.weight", copy.deepcopy(h[NORM])),
}


@pytest.mark.parametrize("case", list(_BAD_ENTRIES))
def test_bad_tensor_entries(hf, case):
    expect_error(open_all, _rewrite(hf, _BAD_ENTRIES[case]), seconds=5)


def test_metadata_entry_is_ignored(hf):
    open_all(_rewrite(hf, lambda h: h.__setitem__("__metadata__", {"format": ["pt"], "x": {"y": 1}})))


@pytest.mark.parametrize("raw", [b"[]", b'"x"', b"{", b"{}", b"[" * 5000 + b"]" * 5000, b'{"a": "\xff"}',
                                 b'{"' + EMB.encode() + b'": {"dtype": "F32", "shape": [1e400], "data_offsets": [0, 4]}}',
                                 b'{"a": NaN}', b"\x00" * 64])
def test_headers_that_are_not_a_header(hf, raw):
    path = os.path.join(hf, "model.safetensors")
    _, data = safetensors_parts(path)
    write_safetensors(path, None, data, raw_header=raw)
    expect_error(open_all, hf, seconds=5)


@pytest.mark.parametrize("n", [0, 1, 7, 1 << 32, 1 << 63, (1 << 64) - 1])
def test_header_length_that_lies(hf, n):
    path = os.path.join(hf, "model.safetensors")
    data = open(path, "rb").read()
    write(path, struct.pack("<Q", n) + data[8:])
    expect_error(open_all, hf, seconds=5)


# -- the shard index -----------------------------------------------------------------------------
def _index(directory: str, obj) -> str:
    with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
        f.write(obj if isinstance(obj, str) else json.dumps(obj))
    return directory


@pytest.mark.parametrize("index", [
    {"weight_map": {"a": 5}}, {"weight_map": {"a": None}}, {"weight_map": {"a": ["x.safetensors"]}},
    {"weight_map": []}, {"weight_map": "x"}, {}, [1], "[" * 100000, '{"weight_map": {"a": "nope.safetensors"}}',
    {"weight_map": {"a": "model-00001-of-00002.safetensors"}},   # names only one shard: tensors missing
    {"weight_map": {"a": "../hf/model.safetensors"}},
])
def test_bad_shard_index(sharded, index):
    expect_error(open_all, _index(sharded, index), seconds=5)


def test_a_tensor_in_two_shards_is_refused(sharded):
    """Sharded files must not both hold a tensor (one would silently win)."""
    first, second = "model-00001-of-00002.safetensors", "model-00002-of-00002.safetensors"
    h1, _ = safetensors_parts(os.path.join(sharded, first))
    name = next(k for k in h1 if k != "__metadata__")

    def add(h):
        h[name] = copy.deepcopy(h1[name])
        h[name]["data_offsets"] = [0, h1[name]["data_offsets"][1] - h1[name]["data_offsets"][0]]

    h2, data2 = safetensors_parts(os.path.join(sharded, second))
    size = h1[name]["data_offsets"][1] - h1[name]["data_offsets"][0]
    for k, v in h2.items():
        if k != "__metadata__":
            v["data_offsets"] = [v["data_offsets"][0] + size, v["data_offsets"][1] + size]
    add(h2)
    write_safetensors(os.path.join(sharded, second), h2, bytes(size) + data2)
    expect_error(open_all, sharded, match="more than one")


# -- config.json ---------------------------------------------------------------------------------------
_BAD = [0, -1, True, "32", float("inf"), float("nan"), 1e308, 1 << 70, [32], {"v": 1}, 31.5, None]
_INT_KEYS = ["hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
             "head_dim", "vocab_size", "max_position_embeddings"]


def _config(directory: str, **changes) -> str:
    path = os.path.join(directory, "config.json")
    cfg = json.load(open(path))
    cfg.update(changes)
    cfg = {k: v for k, v in cfg.items() if v is not _DROP}
    with open(path, "w") as f:
        json.dump(cfg, f)
    return directory


_DROP = object()


@pytest.mark.parametrize("key", _INT_KEYS + ["rms_norm_eps", "rope_theta"])
def test_config_numbers_of_the_wrong_type_or_range(tmp_path, key):
    for i, v in enumerate(_BAD):
        if v is None and key in ("num_key_value_heads", "head_dim", "max_position_embeddings", "rms_norm_eps",
                                 "rope_theta"):
            continue  # null means the default
        if (key, repr(v)) in (("rope_theta", "31.5"),):
            continue
        d = str(tmp_path / f"c{i}")
        shutil.copytree(os.path.join(FORMATS, "hf"), d)
        assert ok_or_error(open_all, _config(d, **{key: v})) is not None, f"config.json {key} = {v!r} was accepted"


@pytest.mark.parametrize("changes", [
    {"num_hidden_layers": 1}, {"num_hidden_layers": 3}, {"vocab_size": 31}, {"num_attention_heads": 5},
    {"tie_word_embeddings": "yes"}, {"tie_word_embeddings": 1}, {"hidden_act": "gelu"}, {"hidden_act": 5},
    {"mlp_bias": True}, {"mlp_bias": "false"}, {"attention_bias": "no"}, {"attention_bias": [1]},
    {"model_type": "mamba", "architectures": ["MambaForCausalLM"]}, {"model_type": ["llama"], "architectures": 5},
    {"rope_scaling": "linear"}, {"rope_scaling": {"type": "yarn", "factor": 4.0}},
    {"rope_scaling": {"type": "linear"}}, {"rope_scaling": {"type": "linear", "factor": -2.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0, "high_freq_factor": 1.0}},
    {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 0}},
    {"rope_scaling": {"type": 5, "factor": 2.0}},
])
def test_config_values_that_lie(hf, changes):
    expect_error(open_all, _config(hf, **changes))


@pytest.mark.parametrize("text", ['{"hidden_size": Infinity}', "[" * 100000 + "]" * 100000, "[]", "", "nul",
                                  '{"hidden_size": 32' + ', "x": 1' * 10 + "}"])
def test_config_json_that_is_not_a_config(hf, text):
    with open(os.path.join(hf, "config.json"), "w") as f:
        f.write(text)
    expect_error(open_all, hf, seconds=5)


def test_config_json_fifo_and_huge(hf):
    os.remove(os.path.join(hf, "config.json"))
    os.mkfifo(os.path.join(hf, "config.json"))
    expect_error(open_all, hf, seconds=5)
    os.remove(os.path.join(hf, "config.json"))
    with open(os.path.join(hf, "config.json"), "w") as f:
        f.write('{"pad": "' + "x" * (65 << 20) + '"}')
    expect_error(open_all, hf, seconds=10, match="too large")


# -- fuzzing the bytes ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def copies(tmp_path_factory):
    out = {}
    for name, member in [("hf", "model.safetensors"), ("hf_sharded", "model-00002-of-00002.safetensors")]:
        d = tmp_path_factory.mktemp(name) / name
        shutil.copytree(os.path.join(FORMATS, name), d)
        data = open(os.path.join(d, member), "rb").read()
        out[name] = (str(d), member, data, 8 + struct.unpack_from("<Q", data, 0)[0])
    return out


@given(which=st.sampled_from(["hf", "hf_sharded"]), data=st.data())
@FUZZ
def test_fuzzed_files(copies, which, data):
    d, member, raw, header_end = copies[which]
    kind = data.draw(st.sampled_from(["truncate", "flip", "lie", "digit"]))
    if kind == "truncate":
        mutated = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        pos = data.draw(st.one_of(st.integers(0, header_end - 1), st.integers(0, len(raw) - 1)))
        mutated = flip(raw, pos, data.draw(st.integers(0, 7)))
    elif kind == "lie":
        mutated = overwrite(raw, 0, packed_lie(data.draw(st.sampled_from(LIES)), "<Q"))
    else:  # change one digit of the JSON header (shapes and offsets are digits)
        digits = [i for i in range(8, header_end) if 0x30 <= raw[i] <= 0x39]
        pos = data.draw(st.sampled_from(digits))
        mutated = raw[:pos] + str(data.draw(st.integers(0, 9))).encode() + raw[pos + 1:]
    write(os.path.join(d, member), mutated)
    try:
        msg = ok_or_error(open_all, d, seconds=5)
        if kind == "digit" and mutated != raw:
            assert msg is not None, "a header with a changed shape or offset was accepted"
    finally:
        write(os.path.join(d, member), raw)
