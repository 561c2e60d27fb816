"""What the hostile-input tests share: time budgets, the one-line-error contract, writers
of small model files in every format (so a test can plant any lie in them), byte mutators
and the CLI runner.

The contract every test checks: bad input raises a `LlamaChatError` whose message is one
line, within a time budget (a hang is a failure, not a slow test), and never any other
exception; through the CLI it is exit status 2 and exactly one stderr line starting
`llama-chat: error:`.
"""
from __future__ import annotations

import collections
import contextlib
import io
import json
import os
import pickle
import signal
import struct
import subprocess
import sys
import time
import types
import zipfile
from typing import Any, Callable, Iterator

import numpy as np
import pytest

from inference.errors import LlamaChatError

from .conftest import DATA, ROOT

FORMATS = os.path.join(DATA, "formats")
CONVERTED = os.path.join(DATA, "stories260K-converted")
ASSETS_BIN = os.path.join(ROOT, "assets", "stories260K.bin")
ASSETS_TOK = os.path.join(ROOT, "assets", "tok512.bin")
PYTHON = sys.executable
#: Seconds one hostile input may take to be refused (the real work is milliseconds).
BUDGET_S = 10.0


class Hang(BaseException):
    """Raised by `budget` when the time is up (a BaseException: no `except Exception` in
    the code under test can swallow it)."""


@contextlib.contextmanager
def budget(seconds: float = BUDGET_S) -> Iterator[None]:
    """Fail with `Hang` if the block runs longer than `seconds` (main thread only)."""
    def on_alarm(signum: int, frame: object) -> None:
        raise Hang(f"still running after {seconds} s")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def one_line(msg: str) -> str:
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    assert len(msg) < 1200, f"an error message of {len(msg)} characters"
    return msg


def expect_error(fn: Callable[..., Any], *args: Any, seconds: float = BUDGET_S, match: str | None = None) -> str:
    """`fn(*args)` must raise a LlamaChatError with a one-line message, in time."""
    with budget(seconds):
        try:
            fn(*args)
        except LlamaChatError as e:
            msg = one_line(str(e))
            if match is not None:
                assert match in msg, msg
            return msg
    pytest.fail(f"{getattr(fn, '__name__', fn)} accepted a bad input")


def ok_or_error(fn: Callable[..., Any], *args: Any, seconds: float = BUDGET_S) -> str | None:
    """`fn(*args)` either succeeds or raises a one-line LlamaChatError, in time; returns
    the message (None when it succeeded). Any other exception fails the test."""
    with budget(seconds):
        try:
            fn(*args)
        except LlamaChatError as e:
            return one_line(str(e))
    return None


# -- loading everything a model file offers --------------------------------------------------
def open_all(path: str, tokenizer: bool = True) -> None:
    """What `info` and the loader do with a model, without quantizing or a backend:
    headers, every tensor (shape-checked), and the file's own tokenizer."""
    from inference.formats import open_source
    src = open_source(path)
    src.check()
    src.weights()
    _ = src.chat_template, src.tokenizer_note, src.description, src.dtype
    if tokenizer:
        tok = src.tokenizer()
        if tok is not None:
            tok.decode(tok.encode("Hello, world"))


# -- byte mutators ---------------------------------------------------------------------------
def write(path: str, data: bytes) -> str:
    with open(path, "wb") as f:
        f.write(data)
    return path


def flip(data: bytes, pos: int, bit: int) -> bytes:
    b = bytearray(data)
    b[pos % len(b)] ^= 1 << bit
    return bytes(b)


def overwrite(data: bytes, pos: int, value: bytes) -> bytes:
    pos = min(pos, max(0, len(data) - len(value)))
    return data[:pos] + value + data[pos + len(value):]


#: Integers a lying header field might hold (each written as u32, i32 or u64).
LIES = (0, 1, 2, 3, 7, 31, 33, 255, 1 << 16, (1 << 31) - 1, 1 << 31, (1 << 32) - 1, 1 << 32, 1 << 40,
        (1 << 62), (1 << 63) - 1, 1 << 63, (1 << 64) - 1)


def packed_lie(value: int, fmt: str) -> bytes:
    """`value` packed as `fmt` ('<I', '<i', '<Q', '<q'), wrapped into its range."""
    bits = struct.calcsize(fmt) * 8
    v = value % (1 << bits)
    if fmt[-1].islower() and v >= 1 << (bits - 1):
        v -= 1 << bits
    return struct.pack(fmt, v)


# -- GGUF files written with gguf-py ------------------------------------------------------------
class Typed:
    """A GGUF metadata value with an explicit GGUF type (to write a lie of the wrong type)."""

    def __init__(self, value: Any, vtype: str, sub: str | None = None) -> None:
        self.value, self.vtype, self.sub = value, vtype, sub


def gguf_meta_and_tensors(path: str) -> tuple[dict[str, Any], list[tuple[str, np.ndarray, int]]]:
    """The metadata and the raw tensors (name, bytes, ggml type, shape) of a GGUF file."""
    from inference.formats.gguf import read_gguf
    meta, tensors, mm = read_gguf(path)
    out = []
    for t in sorted(tensors.values(), key=lambda t: t.offset):
        out.append((t.name, np.frombuffer(mm, np.uint8, t.nbytes, t.offset).copy(), t.ggml_type, t.shape))
    return dict(meta), out


def write_gguf_file(path: str, meta: dict[str, Any], tensors: list) -> str:
    """A GGUF file written by gguf-py (an independent writer) from metadata and tensors
    as `gguf_meta_and_tensors` returns them; `Typed` values keep their stated type."""
    import gguf
    vt = gguf.GGUFValueType
    arch = meta.get("general.architecture")
    w = gguf.GGUFWriter(path, arch if isinstance(arch, str) else "llama")
    w.kv_data[0].pop("general.architecture", None)  # written below, as given (or absent)
    for key, v in meta.items():
        if isinstance(v, Typed):
            w.add_key_value(key, v.value, vt[v.vtype], sub_type=vt[v.sub] if v.sub else None)
        elif isinstance(v, str):
            w.add_key_value(key, v, vt.STRING)
        elif isinstance(v, (bool, np.bool_)):
            w.add_key_value(key, bool(v), vt.BOOL)
        elif isinstance(v, (int, np.integer)):
            w.add_key_value(key, int(v), vt.UINT32 if 0 <= v < 1 << 32 else vt.INT64)
        elif isinstance(v, (float, np.floating)):
            w.add_key_value(key, float(v), vt.FLOAT32)
        elif isinstance(v, np.ndarray):
            sub = {"f": vt.FLOAT32, "i": vt.INT32, "u": vt.UINT32, "b": vt.BOOL}[v.dtype.kind]
            w.add_key_value(key, v.tolist(), vt.ARRAY, sub_type=sub)
        elif isinstance(v, list):
            w.add_array(key, v)
        else:
            raise TypeError(f"no GGUF type for {type(v).__name__}")
    for name, raw, ggml_type, shape in tensors:
        if ggml_type in (0, 1):  # F32, F16: the values themselves
            w.add_tensor(name, raw.view("<f4" if ggml_type == 0 else "<f2").reshape(shape))
        else:                    # blocks: bytes shaped (rows, row bytes)
            w.add_tensor(name, raw.reshape(*shape[:-1], -1), raw_dtype=gguf.GGMLQuantizationType(ggml_type))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


# -- PyTorch .pth files written without torch --------------------------------------------------
class StorageRef:
    """A storage to pickle as a persistent id (`numel` may lie)."""

    def __init__(self, key: str, type_name: str, data: bytes, numel: int | None = None) -> None:
        self.key, self.type_name, self.data = key, type_name, data
        itemsize = {"FloatStorage": 4, "HalfStorage": 2, "BFloat16Storage": 2}.get(type_name, 1)
        self.numel = len(data) // itemsize if numel is None else numel


class TensorRec:
    """Pickles as torch._utils._rebuild_tensor_v2(storage, offset, shape, stride, False, {})."""

    def __init__(self, storage: StorageRef, offset: Any, shape: Any, stride: Any) -> None:
        self.storage, self.offset, self.shape, self.stride = storage, offset, shape, stride

    def __reduce__(self) -> tuple:
        rebuild = sys.modules["torch._utils"]._rebuild_tensor_v2
        return rebuild, (self.storage, self.offset, self.shape, self.stride, False, collections.OrderedDict())


@contextlib.contextmanager
def _fake_torch() -> Iterator[dict[str, type]]:
    """Modules named torch / torch._utils for pickle to name globals from, while pickling."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args: Any) -> None:  # never called: only its name is pickled
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    classes = {}
    for name in ("FloatStorage", "HalfStorage", "BFloat16Storage", "ByteStorage"):
        cls = type(name, (), {"__module__": "torch"})
        setattr(torch, name, cls)
        classes[name] = cls
    torch._utils = utils
    saved = {k: sys.modules.get(k) for k in ("torch", "torch._utils")}
    sys.modules.update({"torch": torch, "torch._utils": utils})
    try:
        yield classes
    finally:
        for k, v in saved.items():
            if v is None:
                sys.modules.pop(k, None)
            else:
                sys.modules[k] = v


def pickle_state(obj: Any, legacy: bool) -> tuple[bytes, list[StorageRef]]:
    """`obj` pickled as torch.save does (protocol 2, storages as persistent ids)."""
    seen: list[StorageRef] = []
    with _fake_torch() as classes:
        class P(pickle.Pickler):
            def persistent_id(self, o: Any) -> Any:
                if isinstance(o, StorageRef):
                    if o not in seen:
                        seen.append(o)
                    pid = ("storage", classes[o.type_name], o.key, "cpu", o.numel)
                    return pid + (None,) if legacy else pid
                return None

        buf = io.BytesIO()
        P(buf, protocol=2).dump(obj)
    return buf.getvalue(), seen


def write_pth(path: str, obj: Any, legacy: bool = False, pkl: bytes | None = None,
              storages: list[StorageRef] | None = None) -> str:
    """A torch.save file of `obj` (or of the pickle bytes `pkl` with `storages`)."""
    if pkl is None:
        pkl, storages = pickle_state(obj, legacy)
    storages = list({s.key: s for s in reversed(storages or [])}.values())[::-1]  # first of each key
    if legacy:
        head = io.BytesIO()
        from inference.formats.torch_unpickler import LEGACY_MAGIC, LEGACY_PROTOCOL
        for o in (LEGACY_MAGIC, LEGACY_PROTOCOL, {"protocol_version": LEGACY_PROTOCOL, "little_endian": True}):
            pickle.dump(o, head, protocol=2)
        body = [head.getvalue(), pkl, pickle.dumps([s.key for s in storages], protocol=2)]
        for s in storages:
            body.append(struct.pack("<q", s.numel) + s.data)
        return write(path, b"".join(body))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as z:
        z.writestr("archive/data.pkl", pkl)
        z.writestr("archive/byteorder", "little")
        for s in storages:
            z.writestr(f"archive/data/{s.key}", s.data)
        z.writestr("archive/version", "3\n")
    return path


def tiny_meta_state(dtype: str = "FloatStorage") -> dict[str, TensorRec]:
    """The tiny fixture model (tests/data/formats/tiny.bin) as a Meta state dict, one
    storage per tensor, contiguous."""
    from inference.architecture import spec, tensor_keys
    from inference.formats import open_source
    src = open_source(os.path.join(FORMATS, "tiny.bin"))
    w = src.weights()
    state = {}
    np_dtype = {"FloatStorage": np.float32, "HalfStorage": np.float16}[dtype]
    for i, (name, layer) in enumerate(tensor_keys(src.config)):
        key = spec(name, src.config).key("meta", layer)
        a = np.ascontiguousarray(np.asarray(w.get(name, layer), dtype=np_dtype))
        st = StorageRef(str(i), dtype, a.tobytes())
        state[key] = TensorRec(st, 0, tuple(a.shape), tuple(s // a.itemsize for s in a.strides))
    return state


TINY_PARAMS = {"dim": 32, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 32, "multiple_of": 32,
               "norm_eps": 1e-05, "max_seq_len": 64, "hidden_dim": 64}


def meta_dir(directory: str, state: Any = None, params: dict | None = None, legacy: bool = False, **kw: Any) -> str:
    """A Meta checkpoint directory: params.json + consolidated.00.pth."""
    os.makedirs(directory, exist_ok=True)
    with open(os.path.join(directory, "params.json"), "w") as f:
        json.dump(TINY_PARAMS if params is None else params, f)
    write_pth(os.path.join(directory, "consolidated.00.pth"), tiny_meta_state() if state is None else state,
              legacy=legacy, **kw)
    return directory


# -- safetensors -------------------------------------------------------------------------------
def safetensors_parts(path: str) -> tuple[dict, bytes]:
    """(header dict, data block) of a .safetensors file."""
    with open(path, "rb") as f:
        data = f.read()
    (n,) = struct.unpack_from("<Q", data, 0)
    return json.loads(data[8:8 + n]), data[8 + n:]


def write_safetensors(path: str, header: Any, data: bytes, raw_header: bytes | None = None) -> str:
    hb = raw_header if raw_header is not None else json.dumps(header).encode()
    hb += b" " * (-len(hb) % 8)
    return write(path, struct.pack("<Q", len(hb)) + hb + data)


# -- the CLI -------------------------------------------------------------------------------------
def run_cli(*args: str, timeout: float = 120, cwd: str | None = None, env: dict | None = None,
            **kw: Any) -> subprocess.CompletedProcess:
    """`python -m app.cli ARGS` in a subprocess with a private cache directory."""
    e = dict(os.environ, PYTHONPATH=ROOT)
    e.pop("LLAMA_CHAT_TRACEBACK", None)
    e.update(env or {})
    return subprocess.run([PYTHON, "-m", "app.cli", *args], capture_output=True, timeout=timeout,
                          cwd=cwd or ROOT, env=e, **kw)


def assert_cli_error(r: subprocess.CompletedProcess, *words: str) -> str:
    """Exit status 2 and exactly one stderr line, `llama-chat: error: ...`, naming `words`."""
    err = r.stderr.decode("utf-8", "replace") if isinstance(r.stderr, bytes) else r.stderr
    assert "Traceback" not in err and "internal error" not in err, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert r.returncode == 2, (r.returncode, err)
    assert len(lines) == 1 and lines[0].startswith("llama-chat: error: "), err
    for w in words:
        assert w in lines[0], (w, lines[0])
    return lines[0]


def elapsed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0
