"""What every format reader shares: the opened-model record, tensor references, checks.

A reader parses its headers, validates the config and every tensor descriptor it will
use (dtype, shape, byte range) at the door, and returns a `Source`: the config plus one
`TensorRef` per tensor of the architecture's table. A ref knows its shape and storage
type without touching data, so `info` and the shape check cost nothing; `load()` gives
the tensor, normally a zero-copy view of a memory map.
"""
from __future__ import annotations

import json
import math
import mmap
import os
import re
import stat
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Callable

import numpy as np

from ..architecture import check_shape, spec, tensor_keys, tensor_specs
from ..config import ModelConfig
from ..errors import ModelFormatError
from ..quant_types import FLOAT_TYPES, BlockTensor
from ..weights import Key, ModelWeights, QTensor, Tensor, tensor_type

#: JSON documents (config.json, params.json, safetensors headers) larger or deeper than
#: this are refused before parsing: no real model needs them, and deep nesting makes
#: Python's parser recurse.
MAX_JSON_BYTES = 64 << 20
MAX_JSON_DEPTH = 64


@dataclass
class Raw:
    """A tensor as a format stores it: `data` is a (usually memory-mapped) view; `kind`
    names its dtype. bf16 has no numpy dtype, so its data is uint16."""

    data: np.ndarray
    kind: str   # 'fp32' | 'fp16' | 'bf16' | 'fp64' | 'int8' | ...

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def floats(self, dtype: np.dtype = np.float32) -> np.ndarray:
        """The values as `dtype` (a view when no conversion is needed)."""
        if self.kind == "bf16":
            return (self.data.astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)
        if self.kind not in ("fp32", "fp16", "fp64"):
            raise ModelFormatError(f"a tensor of type {self.kind} cannot hold weights")
        return self.data.astype(dtype, copy=False)


def as_tensor(part: Raw | Tensor, matrix: bool) -> Tensor:
    """A reader's part in runtime storage: matrices keep fp32/fp16/bf16/blocks as stored
    (bf16 as a BlockTensor view); vectors (norms, biases) become small fp32 arrays."""
    if isinstance(part, (QTensor, BlockTensor)):
        if not matrix:
            raise ModelFormatError(f"a {tensor_type(part)} tensor cannot be a norm or bias vector")
        return part
    if isinstance(part, Raw):
        if not matrix or part.kind not in FLOAT_TYPES:
            return np.ascontiguousarray(part.floats(np.float32))
        if part.kind == "bf16":
            d = np.ascontiguousarray(part.data)
            return BlockTensor("bf16", tuple(d.shape), d.view(np.uint8).reshape(d.shape[0], -1))
        return part.data if part.data.flags.c_contiguous else np.ascontiguousarray(part.data)
    a = np.asarray(part)
    if a.dtype not in (np.float32, np.float16) or not matrix:
        a = a.astype(np.float32)
    return np.ascontiguousarray(a)


@dataclass
class TensorRef:
    """One tensor of a file: its shape and storage type, and how to get it."""

    shape: tuple[int, ...]
    qtype: str
    load: Callable[[], Any]


@dataclass
class Source:
    """An opened model before its tensors are read: enough for `info`, the quant plan and
    the loader. `refs` holds every tensor the architecture's table names for the config."""

    config: ModelConfig
    refs: dict[Key, TensorRef]
    format: str                        # 'llama2c' | 'meta-pth' | 'hf-safetensors' | 'gguf'
    description: str
    tokenizer: Callable[[], Any] = lambda: None    # the file's own tokenizer, or None
    tokenizer_path: str | None = None  # a tokenizer file that belongs to the model (HF/Meta dirs)
    tokenizer_note: str = ""
    chat_template: str | None = None
    metadata: dict = field(default_factory=dict)

    def check(self) -> None:
        """Every tensor the config implies exists with the right shape (descriptors only)."""
        for name, layer in tensor_keys(self.config):
            ref = self.refs.get((name, layer))
            if ref is None:
                where = f"layer {layer} " if layer is not None else ""
                raise ModelFormatError(f"{where}tensor {name} is missing from the file")
            try:
                check_shape(self.config, name, layer, ref.shape)
            except ValueError as e:
                raise ModelFormatError(str(e)) from None

    def tensor(self, name: str, layer: int | None) -> Tensor:
        s = spec(name, self.config)
        return as_tensor(self.refs[(name, layer)].load(), s.matrix)

    def matrix_types(self) -> Counter:
        """How many matrices of each storage type the file holds."""
        out: Counter = Counter()
        for s in tensor_specs(self.config):
            if s.matrix:
                for layer in (range(self.config.n_layers) if s.per_layer else (None,)):
                    out[self.refs[(s.name, layer)].qtype] += 1
        return out

    @property
    def dtype(self) -> str:
        """The layer matrices' storage, one name or a mix by count ('q4_k+q6_k')."""
        return "+".join(t for t, _ in self.matrix_types().most_common())

    def all_float(self) -> bool:
        return all(t in FLOAT_TYPES for t in self.matrix_types())

    def weights(self) -> ModelWeights:
        """Every tensor as stored (zero-copy where the format allows), shape-checked."""
        self.check()
        w = ModelWeights(self.config)
        for name, layer in tensor_keys(self.config):
            w.tensors[(name, layer)] = self.tensor(name, layer)
        try:
            w.check_shapes()
        except ValueError as e:
            raise ModelFormatError(str(e)) from None
        return w


def validated_config(config: ModelConfig, where: str) -> ModelConfig:
    """`config` after `validate()`, its problems as a one-line ModelFormatError."""
    try:
        config.validate()
    except ValueError as e:
        raise ModelFormatError(f"{where}: {e}") from None
    return config


_LAYER_INDEX = re.compile(r"(?:^|\.)(?:blk|layers)\.(\d+)\.")


def check_layer_count(names: Any, n_layers: int, where: str) -> None:
    """A file holding layers the config does not count would silently lose them: refuse."""
    top = -1
    for n in names:
        m = _LAYER_INDEX.search(n)
        if m:
            top = max(top, int(m.group(1)))
    if top >= n_layers:
        raise ModelFormatError(f"{where} holds layer {top} but its hyper-parameters say {n_layers} layers")


def map_file(path: str) -> mmap.mmap:
    """Read-only memory map of a whole regular file (an empty file, a FIFO or a device
    becomes a one-line error, never a blocking open)."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode):
            raise ModelFormatError(f"{path} is not a regular file")
        if st.st_size == 0:
            raise ModelFormatError(f"{path} is empty")
        with open(path, "rb") as f:
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror or e}") from None
    except ValueError as e:  # mmap of an odd file
        raise ModelFormatError(f"cannot map {path}: {e}") from None


def parse_json(text: bytes | str, where: str) -> Any:
    """json.loads with the size and nesting bounded (one-line errors, never a RecursionError)."""
    if len(text) > MAX_JSON_BYTES:
        raise ModelFormatError(f"{where} is {len(text)} bytes: too large for a model description")
    raw = text.encode("utf-8", "replace") if isinstance(text, str) else bytes(text)
    if _json_depth(raw) > MAX_JSON_DEPTH:
        raise ModelFormatError(f"{where} is nested more than {MAX_JSON_DEPTH} levels deep")
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise ModelFormatError(f"{where} is not valid JSON ({str(e).splitlines()[0][:120]})") from None


_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')


def _json_depth(raw: bytes) -> int:
    """Deepest bracket nesting outside strings (vectorized: headers can be megabytes)."""
    code = np.frombuffer(_JSON_STRING.sub(b'""', raw), dtype=np.uint8)
    step = (code == 0x5B).astype(np.int32) + (code == 0x7B) - (code == 0x5D) - (code == 0x7D)
    return int(np.cumsum(step).max(initial=0))


def read_json_object(path: str, missing: str) -> dict:
    """The JSON object in `path` (a params.json / config.json); a one-line
    ModelFormatError saying `missing` when the file is absent, or what is wrong with it."""
    if not os.path.isfile(path):
        raise ModelFormatError(missing)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_JSON_BYTES + 1)
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror}") from None
    obj = parse_json(data, path)
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path} is not a JSON object")
    return obj


class Fields:
    """Typed access to a dict of hyper-parameters (config.json, params.json, GGUF
    metadata): each value is checked for its type and range once, with a one-line error
    naming the key, so a string, NaN, array or boolean never reaches arithmetic."""

    def __init__(self, values: dict, where: str, prefix: str = "") -> None:
        self.values, self.where, self.prefix = values, where, prefix

    def _get(self, key: str, default: Any) -> tuple[bool, Any]:
        """(present, value): absent keys give the default, or an error when required."""
        k = self.prefix + key
        if k in self.values and self.values[k] is not None:
            return True, self.values[k]
        if default is _REQUIRED:
            raise ModelFormatError(f"{self.where} lacks {k}")
        return False, default

    def int(self, key: str, default: Any = None, lo: int = 1, hi: int = 1 << 24) -> Any:
        present, v = self._get(key, default)
        if not present:
            return v
        if isinstance(v, np.integer):
            v = int(v)
        if isinstance(v, float) and v.is_integer():
            v = int(v)
        if isinstance(v, bool) or not isinstance(v, int):
            raise ModelFormatError(f"{self.where}: {self.prefix + key} must be an integer, got {_show(v)}")
        if not lo <= v <= hi:
            raise ModelFormatError(f"{self.where}: {self.prefix + key} = {v} is out of range [{lo}, {hi}]")
        return v

    def float(self, key: str, default: Any = None) -> Any:
        present, v = self._get(key, default)
        if not present:
            return v
        if isinstance(v, (np.floating, np.integer)):
            v = v.item()
        try:
            f = float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else math.nan
        except OverflowError:  # an integer beyond any float
            f = math.nan
        if not math.isfinite(f):
            raise ModelFormatError(f"{self.where}: {self.prefix + key} must be a finite number, got {_show(v)}")
        return f

    def str(self, key: str, default: Any = None) -> Any:
        present, v = self._get(key, default)
        if not present:
            return v
        if not isinstance(v, str):
            raise ModelFormatError(f"{self.where}: {self.prefix + key} must be a string, got {_show(v)}")
        return v

    def bool(self, key: str, default: Any = None) -> Any:
        present, v = self._get(key, default)
        if not present:
            return v
        if not isinstance(v, (bool, np.bool_)):
            raise ModelFormatError(f"{self.where}: {self.prefix + key} must be true or false, got {_show(v)}")
        return bool(v)


_REQUIRED = object()
REQUIRED = _REQUIRED


def _show(v: Any) -> str:
    """A value for an error message, bounded in length whatever it is."""
    try:
        s = repr(v) if not isinstance(v, (list, np.ndarray)) else f"an array of {len(v)}"
    except Exception:  # noqa: BLE001  (a hostile object's repr)
        s = type(v).__name__
    return s if len(s) <= 60 else s[:57] + "..."
