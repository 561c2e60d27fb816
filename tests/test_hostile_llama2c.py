"""Hostile and broken llama2.c checkpoints (legacy v0, v1 fp32, v2 int8): the header and
the file size must agree exactly, so a header that lies about any width or count is a
one-line error, never a model that runs and prints garbage."""
from __future__ import annotations

import os
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inference.formats.llama2c import HEADER_V1, MAGIC, open_llama2c, write_v2
from inference.quantize import floats, quantize_q8

from .hostile import ASSETS_BIN, FORMATS, LIES, expect_error, flip, ok_or_error, open_all, overwrite, packed_lie, write

FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])
V0 = os.path.join(FORMATS, "tiny.bin")
FIELDS = ("dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len")


def write_v1(path: str) -> str:
    """The tiny model as a llama2.c version-1 file (export.py's legacy_export layout)."""
    src = open_llama2c(V0)
    w, c = src.weights(), src.config
    head = struct.pack("<Ii7iB", MAGIC, 1, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                       c.vocab_size, c.seq_len, int(c.shared_classifier))
    parts = [head + bytes(HEADER_V1 - len(head))]
    for name in ("attn_norm", "ffn_norm"):
        parts += [np.asarray(w.get(name, layer), np.float32).tobytes() for layer in range(c.n_layers)]
    parts.append(np.asarray(w.get("final_norm"), np.float32).tobytes())
    parts.append(np.asarray(w.get("tok_embeddings"), np.float32).tobytes())
    for name in ("wq", "wk", "wv", "wo", "w1", "w2", "w3"):
        parts += [np.asarray(w.get(name, layer), np.float32).tobytes() for layer in range(c.n_layers)]
    return write(path, b"".join(parts))


def write_v2_file(path: str, group_size: int = 32) -> str:
    with open(path, "wb") as f:
        write_v2(f, open_llama2c(V0).weights(), group_size, quantize_q8, floats)
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    d = tmp_path_factory.mktemp("l2c")
    out = {"v0": open(V0, "rb").read(), "v1": open(write_v1(str(d / "v1.bin")), "rb").read(),
           "v2": open(write_v2_file(str(d / "v2.bin")), "rb").read()}
    return out


def _offset(version: str) -> int:
    return 0 if version == "v0" else 8


def test_the_written_files_load_and_agree(files, tmp_path):
    ref = open_llama2c(V0).weights()
    for v, data in files.items():
        w = open_llama2c(write(str(tmp_path / f"{v}.bin"), data)).weights()
        if v != "v2":
            assert all(np.array_equal(np.asarray(w.get(n, layer)), np.asarray(ref.get(n, layer)))
                       for n, layer in ref.tensors)


@pytest.mark.parametrize("version", ["v0", "v1", "v2"])
@pytest.mark.parametrize("field", FIELDS)
def test_every_header_field_that_lies(files, tmp_path, version, field):
    """Shrunk or grown by one, zeroed, negative or huge: always refused (seq_len of v1/v2
    is the only field the file size cannot vouch for, so it may change)."""
    data = files[version]
    pos = _offset(version) + 4 * FIELDS.index(field)
    original = struct.unpack_from("<i", data, pos)[0]
    path = str(tmp_path / "m.bin")
    for lie in {original - 1, original + 1, original * 2, -original, 0, *LIES}:
        b = packed_lie(lie, "<i")
        if struct.unpack("<i", b)[0] == original:
            continue
        msg = ok_or_error(open_all, write(path, overwrite(data, pos, b)), seconds=5)
        if field == "seq_len" and version != "v0":
            continue
        assert msg is not None, f"{version} header {field} {original} -> {struct.unpack('<i', b)[0]} was accepted"


@pytest.mark.parametrize("version", ["v0", "v1", "v2"])
def test_size_must_be_exact(files, tmp_path, version):
    data = files[version]
    path = str(tmp_path / "m.bin")
    for extra in (b"\0", b"\0" * 4, b"\0" * 256, data[-128:]):
        assert "more than its header" in expect_error(open_all, write(path, data + extra))
    for cut in (1, 4, 128, len(data) // 2, len(data) - 300):
        expect_error(open_all, write(path, data[:-cut]))


def test_shared_flag_magic_version_and_group_size(files, tmp_path):
    path = str(tmp_path / "m.bin")
    v1, v2 = files["v1"], files["v2"]
    expect_error(open_all, write(path, overwrite(v1, 36, b"\x00")))         # v1 shared -> separate classifier
    expect_error(open_all, write(path, overwrite(files["v0"], 20, struct.pack("<i", -32))))  # v0 vocab < 0
    for version in (0, 3, -1, 1 << 30):
        expect_error(open_all, write(path, overwrite(v1, 4, struct.pack("<i", version))))
    for gs in (0, -32, 16, 64, 33, 1 << 30):
        expect_error(open_all, write(path, overwrite(v2, 37, struct.pack("<i", gs))))
    expect_error(open_all, write(path, v1[:200]), match="256-byte header")
    expect_error(open_all, write(path, struct.pack("<Ii", MAGIC, 1)))


def test_bundled_model_loads():
    open_all(ASSETS_BIN)


@given(version=st.sampled_from(["v0", "v1", "v2"]), data=st.data())
@FUZZ
def test_fuzzed_files(files, tmp_path, version, data):
    raw = files[version]
    kind = data.draw(st.sampled_from(["truncate", "flip", "lie", "append"]))
    header = _offset(version) + 28 + (9 if version != "v0" else 0)
    if kind == "truncate":
        mutated = raw[:data.draw(st.integers(0, len(raw) - 1))]
    elif kind == "flip":
        pos = data.draw(st.one_of(st.integers(0, header), st.integers(0, len(raw) - 1)))
        mutated = flip(raw, pos, data.draw(st.integers(0, 7)))
    elif kind == "lie":
        pos = data.draw(st.integers(0, header))
        mutated = overwrite(raw, pos, packed_lie(data.draw(st.sampled_from(LIES)), data.draw(
            st.sampled_from(["<i", "<I", "<q"]))))
    else:
        mutated = raw + bytes(data.draw(st.integers(1, 5000)))
    msg = ok_or_error(open_all, write(str(tmp_path / "f.bin"), mutated), seconds=5)
    if kind in ("truncate", "append"):
        assert msg is not None
