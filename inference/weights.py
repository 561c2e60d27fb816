"""The weight set of one model, independent of file format and device.

`ModelWeights` maps each (canonical name, layer) of the architecture's tensor table to one
tensor in its own storage type: a float32/float16 ndarray, a `QTensor` (int8 values + fp32
scales per group of `group_size` input columns: the llama2.c v2 / W8A32 layout), or a
`BlockTensor` (GGUF blocks as raw bytes). Tensors are usually zero-copy views of a
memory-mapped file; nothing here assumes that layers are stacked.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator, Union

import numpy as np

from .architecture import MATRIX_NAMES, check_shape, spec, tensor_keys, tensor_specs
from .config import ModelConfig
from .quant_types import QTYPES, BlockTensor, fitting_type, random_blocks


@dataclass
class QTensor:
    """Group-quantized matrix: value = q * s[..., col // group_size]."""

    q: np.ndarray        # int8, (rows, cols)
    s: np.ndarray        # float32, (rows, cols // group_size)
    group_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.s.nbytes

    def __getitem__(self, i: int) -> "QTensor":
        """The matrix `i` of a stacked (L, rows, cols) QTensor."""
        return QTensor(self.q[i], self.s[i], self.group_size)

    def dequantize(self) -> np.ndarray:
        shp = self.q.shape
        g = self.q.reshape(*shp[:-1], shp[-1] // self.group_size, self.group_size).astype(np.float32)
        return (g * self.s[..., None]).reshape(shp)


Tensor = Union[np.ndarray, QTensor, BlockTensor]
Key = tuple[str, Union[int, None]]
__all__ = ["MATRIX_NAMES", "ModelWeights", "QTensor", "BlockTensor", "Tensor", "tensor_type",
           "random_weights", "random_weights_q8"]


def tensor_type(t: Tensor) -> str:
    """Storage type name of a tensor ('fp32', 'fp16', 'bf16', 'int8', 'q4_k', ...)."""
    if isinstance(t, QTensor):
        return "int8"
    if isinstance(t, BlockTensor):
        return t.qtype
    dt = np.asarray(t).dtype
    if dt == np.float16:
        return "fp16"
    if dt == np.float32:
        return "fp32"
    raise TypeError(f"unsupported weight dtype {dt}")


@dataclass
class ModelWeights:
    """All tensors of a model, keyed (name, layer) as in `inference.architecture`.

    `w.get("wq", 3)` is layer 3's query matrix; `w.wq[3]` reads the same (per-layer names
    give a tuple over layers, global names the tensor). `output` falls back to the
    embedding table when the classifier is shared.
    """

    config: ModelConfig
    tensors: dict[Key, Tensor] = field(default_factory=dict)

    def get(self, name: str, layer: int | None = None) -> Tensor:
        if name == "output" and self.config.shared_classifier:
            name = "tok_embeddings"
        return self.tensors[(name, layer)]

    def __getattr__(self, name: str):
        if name.startswith("_") or name in ("config", "tensors"):
            raise AttributeError(name)
        try:
            s = spec(name, self.config)
        except KeyError:
            raise AttributeError(name) from None
        if s.per_layer:
            return tuple(self.tensors[(name, layer)] for layer in range(self.config.n_layers))
        return self.get(name)

    def items(self) -> Iterator[tuple[Key, Tensor]]:
        return iter(self.tensors.items())

    def matrices(self) -> Iterator[tuple[Key, Tensor]]:
        """The weight matrices (embeddings and classifier included), in table order."""
        for s in tensor_specs(self.config):
            if s.matrix:
                layers = range(self.config.n_layers) if s.per_layer else (None,)
                for layer in layers:
                    yield (s.name, layer), self.tensors[(s.name, layer)]

    def type_bytes(self) -> Counter:
        """Bytes of matrix data per storage type."""
        out: Counter = Counter()
        for _, t in self.matrices():
            out[tensor_type(t)] += t.nbytes
        return out

    @property
    def weight_type(self) -> str:
        """The matrices' storage: one type name, or the types of a mix by size ('q4_k+q6_k')."""
        types = self.type_bytes()
        return "+".join(name for name, _ in types.most_common()) or "fp32"

    @property
    def group_size(self) -> int | None:
        """The int8 group size when the layer matrices are int8 groups, else None."""
        t = self.tensors.get(("wq", 0))
        return t.group_size if isinstance(t, QTensor) else None

    def nbytes(self) -> int:
        """Bytes of weight data (a shared classifier counted once)."""
        return sum(int(t.nbytes) for t in self.tensors.values())

    def check_shapes(self) -> None:
        """Raise ValueError naming the first tensor missing or shaped unlike the config."""
        for name, layer in tensor_keys(self.config):
            t = self.tensors.get((name, layer))
            if t is None:
                where = f"layer {layer} " if layer is not None else ""
                raise ValueError(f"{where}tensor {name} is missing")
            check_shape(self.config, name, layer, tuple(t.shape))


def _normal(rng: np.random.Generator, shape: tuple[int, ...], scale: float) -> np.ndarray:
    out = np.empty(shape, dtype=np.float32)
    flat = out.reshape(-1)
    step = 1 << 24  # chunks, so a 7B shape never needs a float64 temporary of full size
    for i in range(0, flat.size, step):
        n = min(step, flat.size - i)
        flat[i:i + n] = rng.standard_normal(n, dtype=np.float32) * scale
    return out


def _random_int8(rng: np.random.Generator, rows: int, cols: int, group_size: int, scale: float) -> QTensor:
    if cols % group_size:
        raise ValueError(f"group size {group_size} does not divide {cols} input columns")
    q = np.empty((rows, cols), dtype=np.int8)
    flat = q.reshape(-1)
    step = 1 << 26
    for i in range(0, flat.size, step):
        n = min(step, flat.size - i)
        flat[i:i + n] = rng.integers(-127, 128, n, dtype=np.int8)
    s_val = np.float32(scale * np.sqrt(3.0) / 127.0)  # uniform [-127, 127] * s has std ~= scale
    return QTensor(q, np.full((rows, cols // group_size), s_val, dtype=np.float32), group_size)


def random_weights(config: ModelConfig, seed: int = 0, scale: float = 0.02, wtype: str = "fp32",
                   group_size: int = 64) -> ModelWeights:
    """Weights of the given shape and storage type, drawn directly in that type.

    For benchmarks and tests: speed does not depend on the values, and random models of
    odd shapes exercise paths (GQA, separate classifier, biases) the shipped model does
    not. Float weights are N(0, scale); block types are random quants with scales giving
    values of that size (a 7B shape in int8 or q4 never exists as 27 GB of fp32). Norms
    are near one; biases small.
    """
    config.validate()
    if wtype not in QTYPES:
        raise ValueError(f"unknown weight type {wtype!r}")
    rng = np.random.default_rng(seed)
    w = ModelWeights(config)
    for s in tensor_specs(config):
        shape = s.shape(config)
        for layer in (range(config.n_layers) if s.per_layer else (None,)):
            if not s.matrix:
                if s.name == "rope_freqs":
                    t = np.ascontiguousarray(1.0 + rng.uniform(0, 3, shape).astype(np.float32))
                elif s.name.startswith("b"):
                    t = _normal(rng, shape, scale)
                else:
                    t = np.ones(shape, np.float32) + _normal(rng, shape, scale)
            elif wtype == "fp32":
                t = _normal(rng, shape, scale)
            elif wtype == "fp16":
                t = _normal(rng, shape, scale).astype(np.float16)
            elif wtype == "bf16":
                f = _normal(rng, shape, scale)
                raw = (f.view(np.uint32) >> 16).astype(np.uint16)
                t = BlockTensor("bf16", shape, raw.view(np.uint8).reshape(shape[0], -1))
            elif wtype == "int8":
                t = _random_int8(rng, shape[0], shape[1], group_size, scale)
            else:  # a K-quant that does not fit the row width falls back as llama.cpp does
                t = random_blocks(fitting_type(wtype, shape[1]), shape[0], shape[1], rng, scale)
            w.tensors[(s.name, layer)] = t
    return w


def random_nbytes(config: ModelConfig, wtype: str = "fp32", group_size: int = 64) -> int:
    """Bytes `random_weights(config, wtype=wtype, group_size=...)` fills: asked before
    drawing, so a shape that cannot fit in memory is refused instead of swapped to death."""
    total = 0
    for s in tensor_specs(config):
        shape = s.shape(config)
        count = config.n_layers if s.per_layer else 1
        if not s.matrix:
            total += count * 4 * int(np.prod(shape))
            continue
        rows, cols = shape
        if wtype == "int8":
            size = rows * cols + 4 * rows * (cols // group_size)
        else:
            size = rows * QTYPES[fitting_type(wtype, cols)].row_bytes(cols)   # floats fit any width
        total += count * size
    return total


def random_weights_q8(config: ModelConfig, group_size: int = 64, seed: int = 0,
                      scale: float = 0.02) -> ModelWeights:
    """int8 weights drawn directly (what `bench --random SHAPE --quant int8` runs)."""
    return random_weights(config, seed=seed, scale=scale, wtype="int8", group_size=group_size)
