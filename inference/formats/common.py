"""What every format reader shares: the result record, bf16 decoding, layer stacking.

Readers hand back per-layer arrays that are views into a memory-mapped file; `assemble`
copies them once into the stacked `(L, out, in)` layout of `ModelWeights`, one layer at a
time, so loading needs the loaded weights' size in RAM once, plus one layer: fp32 by
default (twice an fp16 file), or about the int8 size when quantizing while reading.
"""
from __future__ import annotations

import json
import mmap
import os
from dataclasses import dataclass
from typing import Callable, Union

import numpy as np

from ..config import ModelConfig
from ..errors import ModelFormatError
from ..weights import MATRIX_NAMES, ModelWeights, QTensor


@dataclass
class FormatResult:
    """A model read from any supported format, ready for a backend."""

    config: ModelConfig
    weights: ModelWeights
    tokenizer_path: str | None   # tokenizer to use when the user names none
    format: str                  # 'llama2c' | 'meta-pth' | 'hf-safetensors' | 'gguf'
    dtype: str                   # storage of the big matrices in the file: fp32, fp16, bf16, int8
    description: str             # one line for `info` and the TUI


@dataclass
class Raw:
    """A tensor as stored: `data` is a (usually memory-mapped) view; `kind` names its dtype.

    bf16 has no numpy dtype, so its data is kept as uint16 and `kind` says how to read it.
    """

    data: np.ndarray
    kind: str   # 'fp32' | 'fp16' | 'bf16' | 'fp64' | 'int8' | ...

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.data.shape)

    def floats(self, dtype: np.dtype = np.float32) -> np.ndarray:
        """The values as `dtype` (a view when no conversion is needed)."""
        if self.kind == "bf16":
            return (self.data.astype(np.uint32) << 16).view(np.float32).astype(dtype, copy=False)
        if self.data.dtype.kind not in "fiu":
            raise ModelFormatError(f"tensor of type {self.kind} cannot hold weights")
        return self.data.astype(dtype, copy=False)


#: What a reader returns for one (name, layer): a float array, a Raw, or (for GGUF Q8_0) a QTensor.
Part = Union[np.ndarray, Raw, QTensor]
Getter = Callable[[str, "int | None"], Part]


@dataclass
class Source:
    """An opened model before its tensors are copied: enough for `info`, and for `load`.

    `get(name, layer)` returns zero-copy views (canonical names, see `assemble`);
    `tokenizer()` gives the default tokenizer path, writing it first if it must
    (GGUF keeps its vocabulary in metadata); `tokenizer_note` describes it without writing.
    """

    config: ModelConfig
    get: Getter
    format: str
    dtype: str
    description: str
    tokenizer_note: str
    tokenizer: Callable[[], "str | None"]
    ready: ModelWeights | None = None   # set when the file is already in our layout (llama2.c)

    def check_layer0(self) -> None:
        """Shape-check the global tensors and layer 0 only (cheap, for `info`)."""
        c = self.config
        want = {("tok_embeddings", None): (c.vocab_size, c.dim), ("final_norm", None): (c.dim,),
                ("attn_norm", 0): (c.dim,), ("ffn_norm", 0): (c.dim,), ("wq", 0): (c.dim, c.dim),
                ("wk", 0): (c.kv_dim, c.dim), ("wv", 0): (c.kv_dim, c.dim), ("wo", 0): (c.dim, c.dim),
                ("w1", 0): (c.hidden_dim, c.dim), ("w2", 0): (c.dim, c.hidden_dim),
                ("w3", 0): (c.hidden_dim, c.dim)}
        if not c.shared_classifier:
            want[("output", None)] = (c.vocab_size, c.dim)
        for (name, layer), shape in want.items():
            got = tuple(self.get(name, layer).shape)
            if got != shape:
                where = f"layer {layer} " if layer is not None else ""
                raise ModelFormatError(f"{where}tensor {name} has shape {got}, the hyper-parameters say {shape}")

    def load(self, float_dtype: np.dtype = np.float32, quantize: Quantizer | None = None) -> FormatResult:
        weights = self.ready if self.ready is not None else assemble(self.config, self.get, float_dtype, quantize)
        return FormatResult(config=self.config, weights=weights, tokenizer_path=self.tokenizer(),
                            format=self.format, dtype=self.dtype, description=self.description)


def map_file(path: str) -> mmap.mmap:
    """Read-only memory map of a whole file (an empty file becomes a one-line error)."""
    try:
        with open(path, "rb") as f:
            if os.fstat(f.fileno()).st_size == 0:
                raise ModelFormatError(f"{path} is empty")
            return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
    except OSError as e:
        raise ModelFormatError(f"cannot read {path}: {e.strerror or e}") from None


def _as_float(part: Part, dtype: np.dtype) -> np.ndarray:
    if isinstance(part, Raw):
        return part.floats(dtype)
    if isinstance(part, QTensor):
        return part.dequantize().astype(dtype, copy=False)
    return np.asarray(part).astype(dtype, copy=False)


Quantizer = Callable[[np.ndarray], QTensor]


def _stack(name: str, parts: list[Part], dtype: np.dtype, quantize: Quantizer | None = None) -> np.ndarray | QTensor:
    """Copy per-layer parts into one stacked array (or QTensor when every part is one).

    With `quantize`, float layers are quantized one at a time as they are copied, so an
    fp16/bf16 source never exists in RAM as a full fp32 stack.
    """
    if quantize is not None:
        parts = [p if isinstance(p, QTensor) else quantize(_as_float(p, np.float32)) for p in parts]
    first = parts[0]
    if isinstance(first, QTensor) and all(isinstance(p, QTensor) and p.group_size == first.group_size
                                         for p in parts):
        q = np.empty((len(parts), *first.q.shape), np.int8)
        s = np.empty((len(parts), *first.s.shape), np.float32)
        for i, p in enumerate(parts):
            _check_same(name, i, first.shape, p.shape)
            q[i] = p.q
            s[i] = p.s
        return QTensor(q, s, first.group_size)
    out = np.empty((len(parts), *first.shape), dtype)
    for i, p in enumerate(parts):
        _check_same(name, i, first.shape, p.shape)
        out[i] = _as_float(p, dtype)
    return out


def _check_same(name: str, layer: int, want: tuple, got: tuple) -> None:
    if tuple(want) != tuple(got):
        raise ModelFormatError(f"layer {layer} tensor {name} has shape {tuple(got)}, layer 0 has {tuple(want)}")


def assemble(config: ModelConfig, get: Getter, float_dtype: np.dtype = np.float32,
             quantize: Quantizer | None = None) -> ModelWeights:
    """Build `ModelWeights` from a reader's `get(name, layer)`.

    Canonical names: tok_embeddings, final_norm, output (None layer); attn_norm, ffn_norm
    and the MATRIX_NAMES per layer. `get('output', None)` returns None when the classifier
    is the embedding table. `quantize` (one matrix -> QTensor) is applied to every matrix,
    embeddings and classifier included, layer by layer. Shapes are checked at the end.
    """
    try:
        config.validate()
    except ValueError as e:
        raise ModelFormatError(f"inconsistent model hyper-parameters: {e}") from None
    L = config.n_layers
    norm_dtype = np.float32
    def matrix(part: Part) -> np.ndarray | QTensor:
        if isinstance(part, QTensor):
            return part
        if quantize is not None:
            return quantize(_as_float(part, np.float32))
        return np.ascontiguousarray(_as_float(part, float_dtype))

    emb_part = get("tok_embeddings", None)
    # the embedding table stays float unless quantizing (it is read a row at a time)
    emb = matrix(emb_part) if quantize is not None else np.ascontiguousarray(_as_float(emb_part, float_dtype))
    out_part = get("output", None)
    output = emb if out_part is None else matrix(out_part)
    mats = {n: _stack(n, [get(n, l) for l in range(L)], float_dtype, quantize) for n in MATRIX_NAMES}
    w = ModelWeights(
        config=config,
        tok_embeddings=emb,
        attn_norm=_stack("attn_norm", [get("attn_norm", l) for l in range(L)], norm_dtype),
        ffn_norm=_stack("ffn_norm", [get("ffn_norm", l) for l in range(L)], norm_dtype),
        final_norm=np.ascontiguousarray(_as_float(get("final_norm", None), norm_dtype)),
        output=output,
        **mats,
    )
    try:
        w.check_shapes()
    except ValueError as e:
        raise ModelFormatError(f"weights do not match the model's hyper-parameters: {e}") from None
    return w


def read_json_object(path: str, missing: str) -> dict:
    """The JSON object in `path` (a params.json / config.json); a one-line
    ModelFormatError saying `missing` when the file is absent, or what is wrong with it."""
    if not os.path.isfile(path):
        raise ModelFormatError(missing)
    try:
        with open(path, encoding="utf-8") as f:
            obj = json.load(f)
    except (OSError, ValueError) as e:
        raise ModelFormatError(f"{path} is not valid JSON ({e})") from None
    if not isinstance(obj, dict):
        raise ModelFormatError(f"{path} is not a JSON object")
    return obj
