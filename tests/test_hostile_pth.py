"""Hostile and broken Meta .pth checkpoints (zip and legacy) and params.json: every one a
one-line ModelFormatError within a time budget, no pickle code run, no memory blow-up."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import struct
import zipfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from inference.errors import ModelFormatError
from inference.formats import open_source
from inference.formats.torch_unpickler import (MAX_OPS, SafeUnpickler, Storage, StorageType, TorchTensor,
                                               load_torch_file)

from .hostile import (FORMATS, CONVERTED, TINY_PARAMS, StorageRef, TensorRec, elapsed, expect_error, flip,
                      meta_dir, ok_or_error, open_all, pickle_state, tiny_meta_state, write, write_pth)

FUZZ = settings(max_examples=40, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


def _dir_with_pickle(tmp_path, pkl: bytes, legacy: bool = False, name: str = "m") -> str:
    d = tmp_path / name
    d.mkdir()
    (d / "params.json").write_text(json.dumps(TINY_PARAMS))
    write_pth(str(d / "consolidated.00.pth"), None, legacy=legacy, pkl=pkl, storages=[])
    return str(d)


# -- the memo bomb and other resource attacks ---------------------------------------------------
def _memo_bomb(levels: int = 40) -> bytes:
    """The issue's 866-byte .pth: list i+1 = [list i, list i], forty times, then used as a
    persistent id (whose error message once printed all 2^40 leaves)."""
    def j(i: int) -> bytes:
        return b"j" + struct.pack("<I", i)
    p = b"\x80\x02]r" + struct.pack("<I", 0) + b"0"
    for i in range(levels):
        p += b"(" + j(i) + j(i) + b"lr" + struct.pack("<I", i + 1) + b"0"
    return p + j(levels) + b"Q."


def _tuple_bomb() -> bytes:
    p = b"\x80\x02)r" + struct.pack("<I", 0) + b"0"
    for i in range(64):
        p += b"j" + struct.pack("<I", i) + b"j" + struct.pack("<I", i) + b"\x86r" + struct.pack("<I", i + 1) + b"0"
    return p + b"j" + struct.pack("<I", 64) + b"."


def _grow_after_nesting() -> bytes:
    """A small list nested 20 deep (weight ~2^21, allowed), then the innermost list grown:
    every level's real size would multiply. Refused: containers are frozen once nested."""
    p = b"\x80\x02]q\x00"
    for i in range(20):
        p += b"(h" + bytes([i]) + b"h" + bytes([i]) + b"lq" + bytes([i + 1])
    p += b"h\x00(" + b"K\x01" * 1000 + b"e"
    return p + b"."


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("pkl,words", [
    (_memo_bomb(), "memo bomb"),
    (_tuple_bomb(), "memo bomb"),
    (_grow_after_nesting(), "after putting it inside"),
    (b"\x80\x02X" + struct.pack("<I", 0x7FFFFFFF) + b"abc", "string of"),
    (b"\x80\x02\x8b" + struct.pack("<i", 1 << 30) + b"\x01", "integer of"),
    (b"\x80\x02}(" + b"K\x01K\x02\x86K\x03" + b"u.", "dictionary key"),         # a tuple as a key
    (b"\x80\x02N" + b"0N" * 10 + b"j\x09\x00\x00\x00.", "never stored"),
    (b"\x80\x02(((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((((.", "malformed"),
    (b"\x80\x02", "ends early"),
    (b"\x80\x09.", "protocol"),
    (b"\x80\x02K\x01e.", "no MARK"),
    (b"\x80\x02\x81.", "class instances"),
    (b"\x80\x02}.\x00\x00", None),                                              # an empty dict: no tensors
])
def test_resource_attacks_are_refused_fast(tmp_path, legacy, pkl, words):
    d = _dir_with_pickle(tmp_path, pkl, legacy)
    msg = expect_error(open_all, d, seconds=5)
    if words:
        assert words in msg, msg


def test_memo_bomb_through_info_is_one_line_and_quick(tmp_path):
    from .hostile import assert_cli_error, run_cli
    d = _dir_with_pickle(tmp_path, _memo_bomb())
    r = run_cli("info", d, timeout=60)
    assert_cli_error(r, "memo bomb")


def test_operation_count_is_bounded(tmp_path):
    """Five million cheap opcodes (10 MB): refused after MAX_OPS, in seconds."""
    pkl = b"\x80\x02" + b"N0" * (MAX_OPS // 2 + 10) + b"}."
    d = _dir_with_pickle(tmp_path, pkl)
    t = elapsed(lambda: expect_error(open_all, d, seconds=30, match="operations"))
    print(f"{MAX_OPS} ops refused in {t:.1f} s")


def test_compressed_pickle_bomb_and_compressed_storage(tmp_path):
    d = tmp_path / "bomb"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(TINY_PARAMS))
    with zipfile.ZipFile(d / "consolidated.00.pth", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", b"\x80\x02" + b"N0" * (40 << 20) + b"}.")   # 80 MB, deflates to ~80 KB
    assert os.path.getsize(d / "consolidated.00.pth") < 1 << 20
    expect_error(open_all, str(d), match="too large")

    pkl, storages = pickle_state(tiny_meta_state(), legacy=False)
    d2 = tmp_path / "deflated"
    d2.mkdir()
    (d2 / "params.json").write_text(json.dumps(TINY_PARAMS))
    with zipfile.ZipFile(d2 / "consolidated.00.pth", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("archive/data.pkl", pkl)
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.data)
    expect_error(open_all, str(d2), match="compressed")


# -- tensor descriptors -------------------------------------------------------------------------
def _state_with(entry: str, **changes) -> dict:
    state = tiny_meta_state()
    t = state[entry]
    state[entry] = TensorRec(changes.get("storage", t.storage), changes.get("offset", t.offset),
                             changes.get("shape", t.shape), changes.get("stride", t.stride))
    return state


E = "tok_embeddings.weight"
_BAD_VIEWS = {
    "size-1 dim with a 2^62 stride": dict(shape=(32, 32, 1), stride=(32, 1, 1 << 62)),
    "2^62 rows with zero stride": dict(shape=(1 << 62, 64), stride=(0, 1)),
    "2^40 rows with zero stride": dict(shape=(1 << 40, 32), stride=(0, 1)),
    "zero stride": dict(shape=(32, 32), stride=(0, 1)),
    "overlapping strides": dict(shape=(32, 32), stride=(1, 1)),
    "overlapping rows": dict(shape=(32, 32), stride=(16, 1)),
    "past the end": dict(offset=1),
    "offset 2^62": dict(offset=1 << 62),
    "negative offset": dict(offset=-1),
    "bool offset": dict(offset=True),
    "shape element True": dict(shape=(True, 32), stride=(32, 1)),
    "negative dim": dict(shape=(-32, 32), stride=(32, 1)),
    "float dim": dict(shape=(32.0, 32), stride=(32, 1)),
    "2^70 dim": dict(shape=(1 << 70, 32), stride=(32, 1)),
    "negative stride": dict(shape=(32, 32), stride=(32, -1)),
    "shape/stride lengths": dict(shape=(32, 32), stride=(32,)),
    "shape not a tuple": dict(shape="32x32"),
    "nine dims": dict(shape=(1,) * 9, stride=(1,) * 9),
    "0-dim embedding": dict(shape=(), stride=()),
    "1-dim embedding": dict(shape=(1024,), stride=(1,)),
    "transposed (valid view, wrong use)": dict(shape=(32, 32, 1), stride=(1, 32, 1)),
}


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("case", list(_BAD_VIEWS))
def test_bad_tensor_views_are_refused(tmp_path, legacy, case):
    d = meta_dir(str(tmp_path / "m"), _state_with(E, **_BAD_VIEWS[case]), legacy=legacy)
    expect_error(open_all, d)


def _storage(n: int = 1024) -> Storage:
    st = Storage(StorageType("FloatStorage", "<f4", "fp32"), "0")
    st.attach(np.arange(n, dtype=np.float32).view(np.uint8))
    return st


def test_view_rules():
    """Size-1 dimensions take no part in the bounds check (their stride is never used);
    transposed views are fine; views that use an element twice are not."""
    st = _storage()
    a = TorchTensor(st, 0, (32, 32, 1), (32, 1, 1 << 62)).raw().data
    assert np.array_equal(a[:, :, 0], np.arange(1024, dtype=np.float32).reshape(32, 32))
    t = TorchTensor(st, 0, (32, 32), (1, 32)).raw().data
    assert np.array_equal(t, np.arange(1024, dtype=np.float32).reshape(32, 32).T)
    assert TorchTensor(st, 1000, (24,), (1,)).raw().data[-1] == 1023
    for shape, stride, offset in [((32, 32), (0, 1), 0), ((25,), (1,), 1000), ((2, 3), (2, 1), 0),
                                  ((4, 4, 4), (16, 4, 3), 0)]:
        with pytest.raises(ModelFormatError):
            TorchTensor(st, offset, shape, stride).check()
    TorchTensor(st, 0, (0, 1 << 40), (1, 1)).check()   # empty: nothing is read


@given(shape=st.lists(st.integers(0, 40), min_size=1, max_size=4),
       stride=st.lists(st.integers(0, 1100), min_size=4, max_size=4), offset=st.integers(0, 1100))
@FUZZ
def test_view_check_is_exact(shape, stride, offset):
    """Whatever shape/stride/offset: either refused, or every element it addresses is
    inside the storage and addressed once."""
    stride = tuple(stride[:len(shape)])
    t = TorchTensor(_storage(), offset, tuple(shape), stride)
    try:
        v = t.raw().data
    except ModelFormatError:
        return
    if v.size:
        idx = offset + sum(np.indices(shape)[k] * (stride[k] if shape[k] > 1 else 0) for k in range(len(shape)))
        assert idx.max() < 1024 and len(np.unique(idx)) == idx.size
        assert np.array_equal(v, idx.astype(np.float32))


# -- storages -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("numel", [-1, 1 << 62, (1 << 63) - 1, 1025, 1 << 40])
def test_legacy_storage_sizes_that_lie(tmp_path, numel):
    state = tiny_meta_state()
    st = state[E].storage
    state[E] = TensorRec(StorageRef(st.key, st.type_name, st.data, numel), 0, (32, 32), (32, 1))
    d = meta_dir(str(tmp_path / "m"), state, legacy=True)
    expect_error(open_all, d)


def test_storage_used_with_two_types_and_missing_storage(tmp_path):
    state = tiny_meta_state()
    other = state["norm.weight"]
    state["norm.weight"] = TensorRec(StorageRef(state[E].storage.key, "HalfStorage", state[E].storage.data), 0,
                                     other.shape, other.stride)
    for legacy in (False, True):
        expect_error(open_all, meta_dir(str(tmp_path / f"two{legacy}"), state, legacy=legacy), match="two element")
    pkl, storages = pickle_state(tiny_meta_state(), legacy=False)
    d = tmp_path / "missing"
    (d).mkdir()
    (d / "params.json").write_text(json.dumps(TINY_PARAMS))
    write_pth(str(d / "consolidated.00.pth"), None, pkl=pkl, storages=storages[1:])
    expect_error(open_all, str(d), match="lacks storage")


@pytest.mark.parametrize("view", [(("v", -4, 8)), ("v", 0, 1 << 62), ("v", 1020, 8), ("v", True, 1), ("v", 0),
                                  ("v", "0", 8), [["v"], 0, 8]])
def test_legacy_storage_views_that_lie(tmp_path, view):
    """A legacy persistent id may name a view (key, offset, size) into a root storage."""
    state = tiny_meta_state()
    pkl, storages = pickle_state(state, legacy=True)
    key = state[E].storage.key
    # rewrite the embedding's persistent id: ('storage', FloatStorage, key, 'cpu', numel, VIEW)
    marker = b"X\x01\x00\x00\x00" + key.encode()
    assert marker in pkl
    fake_view = pickle.dumps(view, protocol=2)[2:-1]   # the view's opcodes, without PROTO/STOP
    at = pkl.index(marker)
    none_at = pkl.index(b"N", at)  # the None that stands for "no view"
    pkl = pkl[:none_at] + fake_view + pkl[none_at + 1:]
    d = tmp_path / "m"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(TINY_PARAMS))
    write_pth(str(d / "consolidated.00.pth"), None, legacy=True, pkl=pkl, storages=storages)
    expect_error(open_all, str(d))


# -- pickles that try to run code --------------------------------------------------------------------
@pytest.mark.parametrize("pkl,names", [
    (b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x041+1\x85R.", "builtins.eval"),
    (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\nq\x00ctorch\nFloatStorage\n\x85R.", "rebuild"),
    (b"\x80\x02ctorch\nFloatStorage\n)R.", "not a tensor rebuild function"),
    (b"\x80\x02ccollections\nOrderedDict\nK\x01\x85R.", "arguments"),
    (b"\x80\x02(iposix\nsystem\nX\x04\x00\x00\x00true.", "posix.system"),
    (b"\x80\x02ccollections\nOrderedDict\n)\x81.", "class instances"),
    (b"\x80\x02ctorch._utils\n_rebuild_tensor_v2\n)\x81.", "class instances"),
    (b"\x80\x02c\xff\xfe\nx\n.", "ASCII"),
    (b"\x80\x02cos\n" + b"a" * 300 + b"\n.", "malformed global"),
])
def test_code_is_never_run(tmp_path, pkl, names):
    d = _dir_with_pickle(tmp_path, pkl)
    assert names in expect_error(open_all, d)


def test_build_on_a_tensor_is_refused(tmp_path):
    """BUILD would set attributes on whatever is on the stack; only a dict's state is
    accepted (and ignored: torch puts `_metadata` there)."""
    pkl, storages = pickle_state(tiny_meta_state(), legacy=False)
    # the first REDUCE makes backward_hooks (an OrderedDict), the second the tensor: BUILD on it
    at = pkl.index(b"R", pkl.index(b"R") + 1)
    evil = pkl[:at + 1] + b"}b" + pkl[at + 1:]
    d = tmp_path / "m"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(TINY_PARAMS))
    write_pth(str(d / "consolidated.00.pth"), None, pkl=evil, storages=storages)
    assert "set state" in expect_error(open_all, str(d))


def test_a_state_dict_with_metadata_attributes_loads(tmp_path):
    """torch.save of an OrderedDict state dict writes REDUCE, SETITEMS and a BUILD with
    its `_metadata`: that is a normal checkpoint."""
    import collections

    state = tiny_meta_state()
    od = collections.OrderedDict(state)
    od._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    pkl, storages = pickle_state(od, legacy=False)
    assert b"b" in pkl and b"OrderedDict" in pkl
    d = tmp_path / "m"
    d.mkdir()
    (d / "params.json").write_text(json.dumps(TINY_PARAMS))
    write_pth(str(d / "consolidated.00.pth"), None, pkl=pkl, storages=storages)
    open_all(str(d))


# -- params.json --------------------------------------------------------------------------------------
_DERIVED = {k: v for k, v in TINY_PARAMS.items() if k != "hidden_dim"} | {"multiple_of": 16,
                                                                           "ffn_dim_multiplier": 0.75}
_BAD_VALUES = [0, -1, True, "32", float("inf"), float("nan"), 1e308, 1 << 70, [32], {"v": 32}, 31.5]


@pytest.mark.parametrize("key", ["dim", "n_layers", "n_heads", "n_kv_heads", "hidden_dim", "max_seq_len",
                                 "norm_eps", "rope_theta", "vocab_size", "multiple_of", "ffn_dim_multiplier"])
def test_params_json_values_of_the_wrong_type_or_range(tmp_path, key):
    base = _DERIVED if key in ("multiple_of", "ffn_dim_multiplier") else TINY_PARAMS
    open_all(meta_dir(str(tmp_path / "ok"), params=base))
    state = tiny_meta_state()
    for i, v in enumerate(_BAD_VALUES):
        if (key, repr(v)) in (("vocab_size", "-1"), ("rope_theta", "31.5")):
            continue  # valid: -1 means "from the embedding table"; a theta of 31.5 is a number
        d = meta_dir(str(tmp_path / f"p{i}"), state, params={**base, key: v})
        msg = ok_or_error(open_all, d)
        assert msg is not None, f"params.json {key} = {v!r} was accepted"


def test_params_json_layer_count_and_literals(tmp_path):
    state = tiny_meta_state()
    assert "holds layer 1" in expect_error(open_all, meta_dir(str(tmp_path / "a"), state, params={**TINY_PARAMS,
                                                                                                   "n_layers": 1}))
    expect_error(open_all, meta_dir(str(tmp_path / "b"), state, params={**TINY_PARAMS, "n_layers": 3}))
    for i, text in enumerate(['{"dim": Infinity, "n_layers": 2, "n_heads": 4}', '{"dim": NaN}', '[1, 2]', '"x"',
                              '{"dim": 32' + ', "dim": 32' * 10, "[" * 100000 + "]" * 100000,
                              '{"a": "' + "x" * 100 + '\udcff"}', "\ufeff{}", ""]):
        d = meta_dir(str(tmp_path / f"t{i}"), state)
        with open(os.path.join(d, "params.json"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(text)
        expect_error(open_all, d)
    d = meta_dir(str(tmp_path / "bin"), state)
    write(os.path.join(d, "params.json"), b'{"dim": "\xff\xfe"}')
    expect_error(open_all, d)
    d = meta_dir(str(tmp_path / "fifo"), state)
    os.remove(os.path.join(d, "params.json"))
    os.mkfifo(os.path.join(d, "params.json"))
    expect_error(open_all, d, seconds=5)


# -- whole files: truncation and bit flips ---------------------------------------------------------
_REAL = [("meta1", "consolidated.00.pth"), ("meta2", "consolidated.01.pth"), ("meta_legacy", "consolidated.00.pth")]


@pytest.fixture(scope="module")
def pth_copies(tmp_path_factory):
    out = {}
    for name, member in _REAL:
        d = tmp_path_factory.mktemp(name)
        shutil.copytree(os.path.join(FORMATS, name), d / "m")
        out[name] = (str(d / "m"), member, open(os.path.join(FORMATS, name, member), "rb").read())
    return out


@given(which=st.sampled_from([n for n, _ in _REAL]), cut=st.floats(0, 1, exclude_max=True))
@FUZZ
def test_truncated_checkpoints(pth_copies, which, cut):
    d, member, data = pth_copies[which]
    write(os.path.join(d, member), data[:int(len(data) * cut)])
    try:
        ok_or_error(open_all, d)
    finally:
        write(os.path.join(d, member), data)


@given(which=st.sampled_from([n for n, _ in _REAL]), pos=st.integers(0, 1 << 20), bit=st.integers(0, 7),
       in_pickle=st.booleans())
@FUZZ
def test_bit_flips_in_checkpoints(pth_copies, which, pos, bit, in_pickle):
    """Any flipped bit: a loadable checkpoint (a flip inside weight bytes) or one line."""
    d, member, data = pth_copies[which]
    if in_pickle:  # aim at the pickle: the zip's data.pkl or the legacy file's first 4 KB
        start = data.find(b"\x80\x02", data.find(b"data.pkl")) if data[:2] == b"PK" else 0
        pos = start + pos % 2500
    write(os.path.join(d, member), flip(data, pos, bit))
    try:
        ok_or_error(open_all, d)
    finally:
        write(os.path.join(d, member), data)


_OPCODES = [b"(", b")", b"]", b"}", b"N", b"\x88", b"\x89", b"0", b"1", b"2", b"t", b"l", b"d", b"a", b"e",
            b"s", b"u", b"\x85", b"\x86", b"\x87", b"R", b"b", b"Q", b"\x94", b".", b"K\x05", b"M\x00\x01",
            b"J\xff\xff\xff\xff", b"\x8a\x02\x00\x01", b"G" + struct.pack(">d", 1.5), b"X\x03\x00\x00\x00abc",
            b"\x8c\x07storage", b"q\x00", b"q\x01", b"h\x00", b"h\x01", b"j\x00\x00\x00\x00",
            b"ctorch._utils\n_rebuild_tensor_v2\n", b"ctorch\nFloatStorage\n", b"ccollections\nOrderedDict\n",
            b"X\x01\x00\x00\x000", b"X\x03\x00\x00\x00cpu", b"\x8c\x08builtins\x8c\x04eval\x93"]


@given(ops=st.lists(st.sampled_from(_OPCODES), max_size=60))
@settings(max_examples=300, deadline=None, derandomize=True)
def test_random_opcode_streams(ops):
    """The pickle machine on random streams of the opcodes it knows (and the persistent
    ids / rebuild calls of a state dict): a value or one line, never another exception."""
    pkl = b"\x80\x02" + b"".join(ops) + b"."

    def resolve(stype, key, view):
        st_ = Storage(stype, key)
        st_.attach(np.zeros(64, np.uint8))
        return st_

    try:
        SafeUnpickler(pkl, resolve).load()
    except ModelFormatError as e:
        assert "\n" not in str(e)


def test_real_checkpoints_still_load():
    for name in ("meta1", "meta2", "meta_legacy"):
        open_all(os.path.join(FORMATS, name))
    for name in ("meta1", "meta2"):
        src = open_source(os.path.join(CONVERTED, name))
        assert src.config.n_layers == 5 and src.weights().get("wq", 4).shape == (64, 64)
    load_torch_file(os.path.join(FORMATS, "meta_legacy", "consolidated.00.pth"))


@given(which=st.sampled_from([n for n, _ in _REAL]), pos=st.integers(0, 1 << 20), n=st.integers(1, 8),
       insert=st.booleans())
@FUZZ
def test_bytes_inserted_or_deleted(pth_copies, which, pos, n, insert):
    """Shifted zip structures (offsets that point before the start made zipfile raise OSError)."""
    d, member, data = pth_copies[which]
    pos %= len(data)
    mutated = data[:pos] + b"\x50" * n + data[pos:] if insert else data[:pos] + data[pos + n:]
    write(os.path.join(d, member), mutated)
    try:
        ok_or_error(open_all, d)
    finally:
        write(os.path.join(d, member), data)
