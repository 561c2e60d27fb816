"""The weight set of one model, independent of file format and device.

Layer weights are stacked along a leading layer axis, `(n_layers, out, in)`, which is how
llama2.c files lay them out: loading one is a handful of zero-copy memory-map views.
A matrix is either a float ndarray (fp32, or fp16 for GPU upload) or a `QTensor`
(int8 values + fp32 scales per group of `group_size` consecutive input columns, the
llama2.c v2 / runq.c layout and the W8A32 layout of our kernels).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Union

import numpy as np

from .config import ModelConfig


@dataclass
class QTensor:
    """Group-quantized matrix (or stack of matrices): value = q * s[..., col // group_size]."""

    q: np.ndarray        # int8, (..., rows, cols)
    s: np.ndarray        # float32, (..., rows, cols // group_size)
    group_size: int

    @property
    def shape(self) -> tuple[int, ...]:
        return self.q.shape

    @property
    def nbytes(self) -> int:
        return self.q.nbytes + self.s.nbytes

    def __getitem__(self, layer: int) -> "QTensor":
        """The matrix of one layer of a stacked tensor."""
        return QTensor(self.q[layer], self.s[layer], self.group_size)

    def dequantize(self) -> np.ndarray:
        shp = self.q.shape
        g = self.q.reshape(*shp[:-1], shp[-1] // self.group_size, self.group_size).astype(np.float32)
        return (g * self.s[..., None]).reshape(shp)


Tensor = Union[np.ndarray, QTensor]

#: Names of the per-layer matrices, in llama2.c file order.
MATRIX_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")


@dataclass
class ModelWeights:
    """All tensors of a model. Shapes are in the comments (L = n_layers)."""

    config: ModelConfig
    tok_embeddings: np.ndarray   # (vocab, dim) float32 (fp16 allowed for GPU sources)
    attn_norm: np.ndarray        # (L, dim) float32
    ffn_norm: np.ndarray         # (L, dim) float32
    final_norm: np.ndarray       # (dim,) float32
    wq: Tensor                   # (L, dim, dim)
    wk: Tensor                   # (L, kv_dim, dim)
    wv: Tensor                   # (L, kv_dim, dim)
    wo: Tensor                   # (L, dim, dim)
    w1: Tensor                   # (L, hidden, dim)
    w2: Tensor                   # (L, dim, hidden)
    w3: Tensor                   # (L, hidden, dim)
    output: Tensor               # (vocab, dim); `tok_embeddings` itself when shared

    @property
    def weight_type(self) -> str:
        """'int8', 'fp16' or 'fp32' — the storage of the big matrices."""
        if isinstance(self.wq, QTensor):
            return "int8"
        return "fp16" if self.wq.dtype == np.float16 else "fp32"

    @property
    def group_size(self) -> int | None:
        return self.wq.group_size if isinstance(self.wq, QTensor) else None

    def nbytes(self) -> int:
        """Bytes of weight data (a shared classifier counted once)."""
        seen: set[int] = set()
        total = 0
        for f in fields(self):
            t = getattr(self, f.name)
            if isinstance(t, (np.ndarray, QTensor)) and id(t) not in seen:
                seen.add(id(t))
                total += t.nbytes
        return total

    def check_shapes(self) -> None:
        """Raise ValueError naming the first tensor whose shape disagrees with the config."""
        c = self.config
        L, d, kv, h, v = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
        want = {
            "tok_embeddings": (v, d), "attn_norm": (L, d), "ffn_norm": (L, d), "final_norm": (d,),
            "wq": (L, d, d), "wk": (L, kv, d), "wv": (L, kv, d), "wo": (L, d, d),
            "w1": (L, h, d), "w2": (L, d, h), "w3": (L, h, d), "output": (v, d),
        }
        for name, shape in want.items():
            got = tuple(getattr(self, name).shape)
            if got != shape:
                raise ValueError(f"tensor {name} has shape {got}, config says {shape}")


def random_weights(config: ModelConfig, seed: int = 0, scale: float = 0.02) -> ModelWeights:
    """fp32 weights of the given shape drawn from N(0, scale); norms are ones.

    For benchmarks and tests: speed does not depend on the values, and random models of
    odd shapes exercise code paths (GQA, separate classifier) the shipped model does not.
    """
    rng = np.random.default_rng(seed)
    c = config

    def mat(*shape: int) -> np.ndarray:
        out = np.empty(shape, dtype=np.float32)
        flat = out.reshape(-1)
        step = 1 << 24  # fill in chunks so a 7B shape never needs a float64 temporary of full size
        for i in range(0, flat.size, step):
            n = min(step, flat.size - i)
            flat[i:i + n] = rng.standard_normal(n, dtype=np.float32) * scale
        return out

    L, d, kv, h, v = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
    emb = mat(v, d)
    return ModelWeights(
        config=c,
        tok_embeddings=emb,
        attn_norm=np.ones((L, d), np.float32) + mat(L, d),
        ffn_norm=np.ones((L, d), np.float32) + mat(L, d),
        final_norm=np.ones(d, np.float32) + mat(d),
        wq=mat(L, d, d), wk=mat(L, kv, d), wv=mat(L, kv, d), wo=mat(L, d, d),
        w1=mat(L, h, d), w2=mat(L, d, h), w3=mat(L, h, d),
        output=emb if c.shared_classifier else mat(v, d),
    )


def random_weights_q8(config: ModelConfig, group_size: int = 64, seed: int = 0,
                      scale: float = 0.02) -> ModelWeights:
    """int8 weights of the given shape drawn directly, never as fp32 (norms are ones).

    What `bench --random SHAPE --quant int8` runs on the CPU: a Llama-2-7B shape is 7 GB
    of int8 here instead of a 27 GB fp32 draw to quantize, so it fits a 24 GB machine.
    Values are uniform int8 with scales that give the weights roughly N(0, scale)'s size;
    speed does not depend on them. `group_size` must divide dim and hidden_dim.
    """
    c = config
    if c.dim % group_size or c.hidden_dim % group_size:
        raise ValueError(f"group size {group_size} does not divide dim {c.dim} and hidden {c.hidden_dim}")
    rng = np.random.default_rng(seed)
    s_val = np.float32(scale * np.sqrt(3.0) / 127.0)  # uniform [-127, 127] * s has std ~= scale

    def qmat(*shape: int) -> QTensor:
        q = np.empty(shape, dtype=np.int8)
        flat = q.reshape(-1)
        step = 1 << 26
        for i in range(0, flat.size, step):
            n = min(step, flat.size - i)
            flat[i:i + n] = rng.integers(-127, 128, n, dtype=np.int8)
        s = np.full((*shape[:-1], shape[-1] // group_size), s_val, dtype=np.float32)
        return QTensor(q, s, group_size)

    L, d, kv, h, v = c.n_layers, c.dim, c.kv_dim, c.hidden_dim, c.vocab_size
    emb = qmat(v, d)
    return ModelWeights(
        config=c, tok_embeddings=emb,  # type: ignore[arg-type]
        attn_norm=np.ones((L, d), np.float32), ffn_norm=np.ones((L, d), np.float32),
        final_norm=np.ones(d, np.float32),
        wq=qmat(L, d, d), wk=qmat(L, kv, d), wv=qmat(L, kv, d), wo=qmat(L, d, d),
        w1=qmat(L, h, d), w2=qmat(L, d, h), w3=qmat(L, h, d),
        output=emb if c.shared_classifier else qmat(v, d),
    )
