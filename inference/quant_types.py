"""Weight storage types: names, GGUF ids and block layouts, in one table.

A weight matrix is stored as one of these and every tensor keeps its own type, so a GGUF
file that mixes Q4_K, Q6_K, Q5_0 and Q8_0 tensors is run as it is: blocks are read from
the memory map, never re-quantized, never widened into an fp32 copy. The names double as
the user-facing vocabulary (`--quant`, `info`, `bench`).

Block types store a row of n values as n / `block` consecutive blocks of `nbytes` bytes
(ggml's layouts; `scale_offsets` are the byte offsets of a block's fp16 scale fields,
which is all a random-weight generator needs to know to draw valid blocks).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class QType:
    name: str                      # our name: "fp32", "int8", "q4_k", ...
    ggml: int | None               # GGUF tensor type id (None: not a GGUF type)
    block: int                     # values per block
    nbytes: int                    # bytes per block
    scale_offsets: tuple[int, ...] = ()   # fp16 scale fields within a block
    magnitude: float = 1.0         # typical |integer multiplier| of a value (random draws)

    def row_bytes(self, n: int) -> int:
        return n // self.block * self.nbytes


_TYPES = (
    QType("fp32", 0, 1, 4),
    QType("fp16", 1, 1, 2),
    QType("bf16", 30, 1, 2),
    QType("int8", None, 1, 1),    # our W8A32: int8 values + fp32 scales per group (separate arrays)
    QType("q4_0", 2, 32, 18, (0,), 8),
    QType("q4_1", 3, 32, 20, (0, 2), 8),
    QType("q5_0", 6, 32, 22, (0,), 16),
    QType("q5_1", 7, 32, 24, (0, 2), 16),
    QType("q8_0", 8, 32, 34, (0,), 127),
    QType("q2_k", 10, 256, 84, (80, 82), 24),
    QType("q3_k", 11, 256, 110, (108,), 64),
    QType("q4_k", 12, 256, 144, (0, 2), 300),
    QType("q5_k", 13, 256, 176, (0, 2), 600),
    QType("q6_k", 14, 256, 210, (208,), 1000),
    QType("iq4_nl", 20, 32, 18, (0,), 100),
    QType("iq4_xs", 23, 256, 136, (0,), 1500),
)
QTYPES: dict[str, QType] = {t.name: t for t in _TYPES}
BY_GGML: dict[int, QType] = {t.ggml: t for t in _TYPES if t.ggml is not None}
FLOAT_TYPES = ("fp32", "fp16", "bf16")
BLOCK_TYPES = tuple(t.name for t in _TYPES if t.block > 1)

#: Every GGUF tensor type: id -> (name, values per block, bytes per block). Types we do not
#: run are still bounds-checked with these sizes and named in errors.
GGML_TYPES: dict[int, tuple[str, int, int]] = {
    0: ("F32", 1, 4), 1: ("F16", 1, 2), 2: ("Q4_0", 32, 18), 3: ("Q4_1", 32, 20),
    6: ("Q5_0", 32, 22), 7: ("Q5_1", 32, 24), 8: ("Q8_0", 32, 34), 9: ("Q8_1", 32, 40),
    10: ("Q2_K", 256, 84), 11: ("Q3_K", 256, 110), 12: ("Q4_K", 256, 144), 13: ("Q5_K", 256, 176),
    14: ("Q6_K", 256, 210), 15: ("Q8_K", 256, 292), 16: ("IQ2_XXS", 256, 66), 17: ("IQ2_XS", 256, 74),
    18: ("IQ3_XXS", 256, 98), 19: ("IQ1_S", 256, 50), 20: ("IQ4_NL", 32, 18), 21: ("IQ3_S", 256, 110),
    22: ("IQ2_S", 256, 82), 23: ("IQ4_XS", 256, 136), 24: ("I8", 1, 1), 25: ("I16", 1, 2),
    26: ("I32", 1, 4), 27: ("I64", 1, 8), 28: ("F64", 1, 8), 29: ("IQ1_M", 256, 56),
    30: ("BF16", 1, 2), 34: ("TQ1_0", 256, 54), 35: ("TQ2_0", 256, 66), 39: ("MXFP4", 32, 17),
    40: ("NVFP4", 64, 36), 41: ("Q1_0", 128, 18),
}


def ggml_name(type_id: int) -> str:
    info = GGML_TYPES.get(type_id)
    return info[0] if info else f"unknown type {type_id}"


@dataclass
class BlockTensor:
    """A matrix stored in a block type (or fp16/bf16) as raw bytes, usually a view of a file.

    `data` is uint8 of shape (rows, row_bytes): each row is its own run of blocks, so a
    backend can address row r at `data[r]` without knowing the layout.
    """

    qtype: str
    shape: tuple[int, int]    # (rows, cols) in values
    data: np.ndarray          # uint8 (rows, row_bytes)

    @property
    def nbytes(self) -> int:
        return int(self.data.nbytes)

    @property
    def type(self) -> QType:
        return QTYPES[self.qtype]

    def floats(self) -> np.ndarray:
        """fp16/bf16 values as float32 (block types decode in the kernels, not here)."""
        if self.qtype == "fp16":
            return self.data.view("<f2").reshape(self.shape).astype(np.float32)
        if self.qtype == "bf16":
            u = self.data.view("<u2").reshape(self.shape).astype(np.uint32) << 16
            return u.view(np.float32)
        raise TypeError(f"{self.qtype} blocks are decoded by the kernels (inference.backends.cpu.dequantize)")


def block_view(qtype: str, rows: int, cols: int, buf: np.ndarray) -> BlockTensor:
    """A BlockTensor over `buf` (uint8, at least rows * row_bytes long, C-contiguous)."""
    t = QTYPES[qtype]
    if cols % t.block:
        raise ValueError(f"{qtype} needs rows that are a multiple of {t.block} values, not {cols}")
    rb = t.row_bytes(cols)
    return BlockTensor(qtype, (rows, cols), buf[:rows * rb].reshape(rows, rb))


#: The type llama.cpp's quantizer uses instead when a tensor's rows are not a multiple of
#: a K-quant's 256-value block (SmolLM2's 576-wide rows, for example).
_FALLBACK = {"q2_k": "iq4_nl", "q3_k": "iq4_nl", "iq4_xs": "iq4_nl", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}


def fitting_type(qtype: str, cols: int) -> str:
    """`qtype`, or llama.cpp's substitute when rows of `cols` values do not fit its blocks."""
    if cols % QTYPES[qtype].block and qtype in _FALLBACK:
        return _FALLBACK[qtype]
    return qtype


def random_blocks(qtype: str, rows: int, cols: int, rng: np.random.Generator, scale: float = 0.02) -> BlockTensor:
    """Valid blocks of `qtype` with random quants and scales giving values of about `scale`.

    Any bit pattern with finite fp16 scales is a valid block, so random bytes with the
    scale fields overwritten are honest weights for speed and for exactness tests.
    """
    t = QTYPES[qtype]
    rb = t.row_bytes(cols)
    if cols % t.block:
        raise ValueError(f"{qtype} needs rows that are a multiple of {t.block} values, not {cols}")
    flat = np.empty(rows * rb, dtype=np.uint8)
    step = 1 << 26
    for i in range(0, flat.size, step):
        n = min(step, flat.size - i)
        flat[i:i + n] = rng.integers(0, 256, n, dtype=np.uint8)
    if t.scale_offsets:
        blocks = flat.reshape(-1, t.nbytes)
        for k, off in enumerate(t.scale_offsets):
            base = scale / t.magnitude
            d = (rng.uniform(0.5, 1.0, blocks.shape[0]) * base).astype(np.float16)
            if k == 1 and qtype in ("q4_1", "q5_1"):
                d = (-d.astype(np.float32) * t.magnitude / 2).astype(np.float16)  # a min of about -max/2
            blocks[:, off:off + 2] = d.view(np.uint8).reshape(-1, 2)
    return BlockTensor(qtype, (rows, cols), flat.reshape(rows, rb))


def q8_0_groups(t: BlockTensor) -> tuple[np.ndarray, np.ndarray]:
    """A Q8_0 matrix as (int8 values (rows, cols), fp32 scales (rows, cols // 32)): the same
    numbers in the int8-groups layout (for backends that run only that layout)."""
    rows, cols = t.shape
    blocks = t.data.reshape(rows, cols // 32, 34)
    q = np.ascontiguousarray(blocks[:, :, 2:]).view(np.int8).reshape(rows, cols)
    d = np.ascontiguousarray(blocks[:, :, :2]).view("<f2").reshape(rows, cols // 32).astype(np.float32)
    return q, d
