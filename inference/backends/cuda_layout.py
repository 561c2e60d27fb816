"""How the CUDA backend lays weight matrices out in device memory (host side, numpy only).

Each matrix of each layer keeps its own storage type, as on the CPU: fp32, fp16, int8
groups (`QTensor`), or a GGUF block type. Block types are uploaded *planar*: the bytes of
every block split into a quant plane (16-byte units, so the kernels read them with
aligned vector loads whatever the block size: ggml's blocks are 18, 20, 22, 34 or 210
bytes) and one or two side planes (scales, mins, high bits). Every plane is a byte range
of the file's own blocks, so the values are exactly the file's and the device holds as
many bytes as the file (see kernels/cuda/linear_blocks.cu for how they are read).

A fused matrix (q/k/v of a layer, w1/w3) is a list of `HostPart`s: runs of rows of one
storage each. Parts of block types can share a kernel launch; an fp32/fp16/int8 part gets
its own (`launch_groups`). Fusing copies nothing on the host: a part's planes are lists of
`Piece`s, source rows with the device rows they go to (q, k and v one after another; w1
and w3 rows alternating, which the upload does as a pitched 2D copy).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np

from ..quant_types import QTYPES, BlockTensor
from ..weights import QTensor, Tensor, tensor_type

#: Types linear.cu reads (kernel code WT) and bytes per value.
FLOAT_CODES = {"fp32": 0, "fp16": 1, "int8": 2}
FLOAT_BYTES = {"fp32": 4, "fp16": 2, "int8": 1}
#: Block types linear_blocks.cu reads, with their kernel type code (enum BT_* there).
BLOCK_CODES = {"q4_0": 0, "q4_1": 1, "q5_0": 2, "q5_1": 3, "q8_0": 4, "q4_k": 5, "q5_k": 6, "q6_k": 7,
               "iq4_nl": 8}
#: Per block type: byte ranges (start, end) of one native block that form the quant plane,
#: the side plane and the second side plane (None: no such plane).
PLANES: dict[str, tuple[tuple[int, int], tuple[int, int], tuple[int, int] | None]] = {
    "q4_0": ((2, 18), (0, 2), None),           # d | qs
    "q4_1": ((4, 20), (0, 4), None),           # d m | qs
    "q5_0": ((6, 22), (2, 6), (0, 2)),         # d | qh | qs
    "q5_1": ((8, 24), (0, 8), None),           # d m qh | qs
    "q8_0": ((2, 34), (0, 2), None),           # d | qs
    "q4_k": ((16, 144), (0, 16), None),        # d dmin scales[12] | qs[128]
    "q5_k": ((48, 176), (0, 48), None),        # d dmin scales[12] qh[32] | qs[128]
    "q6_k": ((0, 128), (128, 208), (208, 210)),  # ql[128] | qh[64] scales[16] | d
    "iq4_nl": ((2, 18), (0, 2), None),         # d | qs
}
#: Everything the CUDA kernels run directly; bf16 is widened to fp32 (exact).
DEVICE_TYPES = (*FLOAT_CODES, *BLOCK_CODES)
RUNS = (*DEVICE_TYPES, "bf16")


@dataclass
class Piece:
    """Source rows of one plane and where they land: source row j is device row
    row0 + j * step (step 2: every other row, for interleaving)."""

    data: np.ndarray      # (n, bytes a row) of one plane, C-contiguous
    row0: int = 0
    step: int = 1

    @property
    def rows(self) -> int:
        return int(self.data.shape[0])


@dataclass
class HostPart:
    """Rows of one matrix in one device storage, ready to upload: `planes` (values or
    quants, then scales / side planes), each a list of pieces covering its rows."""

    wtype: str
    rows: int
    cols: int
    planes: list[list[Piece]]
    group_size: int = 0          # int8 only

    @classmethod
    def whole(cls, wtype: str, rows: int, cols: int, arrays: Sequence[np.ndarray], group_size: int = 0) -> "HostPart":
        return cls(wtype, rows, cols, [[Piece(np.ascontiguousarray(a).reshape(rows, -1))] for a in arrays], group_size)

    @property
    def nbytes(self) -> int:
        return sum(int(pc.data.nbytes) for plane in self.planes for pc in plane)

    @property
    def plane_nbytes(self) -> list[int]:
        return [sum(int(pc.data.nbytes) for pc in plane) for plane in self.planes]

    def key(self) -> tuple[str, int]:
        """Parts with equal keys can be joined row-wise into one."""
        return self.wtype, self.group_size

    def plane(self, i: int) -> np.ndarray:
        """Plane i as one (rows, bytes) array, in device row order (a host copy)."""
        width = self.planes[i][0].data.reshape(self.planes[i][0].rows, -1).view(np.uint8).shape[1]
        out = np.empty((self.rows, width), dtype=np.uint8)
        for pc in self.planes[i]:
            out[pc.row0:pc.row0 + pc.step * pc.rows:pc.step] = pc.data.reshape(pc.rows, -1).view(np.uint8)
        return out


def planar(t: BlockTensor) -> list[np.ndarray]:
    """A block matrix's planes (see the module docstring), each (rows, bytes)."""
    rows, cols = t.shape
    qt = QTYPES[t.qtype]
    blocks = t.data.reshape(rows, cols // qt.block, qt.nbytes)
    out = []
    for rng in PLANES[t.qtype]:
        if rng is not None:
            out.append(np.ascontiguousarray(blocks[:, :, rng[0]:rng[1]]).reshape(rows, -1))
    return out


def device_type(t: Tensor, quant: str | None) -> str:
    """The storage a matrix gets on the device: block types and int8 as stored; float
    matrices in `quant` (fp32/fp16/int8) when given, else fp16 stays fp16 and fp32/bf16
    become fp32."""
    kind = tensor_type(t)
    if kind in BLOCK_CODES or kind == "int8":
        return kind
    if kind not in ("fp32", "fp16", "bf16"):
        raise ValueError(f"no CUDA kernels for {kind}")
    if quant is not None:
        return quant
    return "fp16" if kind == "fp16" else "fp32"


def _floats(t: Tensor) -> np.ndarray:
    if isinstance(t, BlockTensor):
        return t.floats()
    return np.asarray(t, dtype=np.float32)


def host_part(t: Tensor, quant: str | None, group_size: int) -> HostPart:
    """One matrix in the storage and layout it will have on the device."""
    rows, cols = t.shape
    wt = device_type(t, quant)
    if wt in BLOCK_CODES:
        return HostPart.whole(wt, rows, cols, planar(t))
    if isinstance(t, QTensor):
        return HostPart.whole("int8", rows, cols, [np.ascontiguousarray(t.q).view(np.uint8),
                                                   np.ascontiguousarray(t.s, dtype=np.float32)], t.group_size)
    if wt == "int8":
        from ..quantize import quantize_q8
        q = quantize_q8(_floats(t), group_size)
        return HostPart.whole("int8", rows, cols, [q.q.view(np.uint8), q.s], group_size)
    if wt == "fp16" and isinstance(t, np.ndarray) and t.dtype == np.float16:
        return HostPart.whole("fp16", rows, cols, [t])
    if wt == "fp16" and isinstance(t, BlockTensor) and t.qtype == "fp16":
        return HostPart.whole("fp16", rows, cols, [t.data])
    dt = np.float16 if wt == "fp16" else np.float32
    return HostPart.whole(wt, rows, cols, [np.ascontiguousarray(_floats(t), dtype=dt)])


def permute_rows(p: HostPart, order: np.ndarray) -> HostPart:
    """The same matrix with its rows in `order` (every plane alike: rows are independent)."""
    return HostPart.whole(p.wtype, p.rows, p.cols, [p.plane(i)[order] for i in range(len(p.planes))],
                          p.group_size)


def neox_order(n_heads: int, head_dim: int) -> np.ndarray:
    """Row order that turns NEOX rotary pairs (i, i + head_dim/2) of each head into
    adjacent rows (2i, 2i+1): the kernels rotate adjacent pairs. Attention only ever
    dots q with k within a head, so q and k may live in this order throughout."""
    half = head_dim // 2
    within = np.stack([np.arange(half), np.arange(half) + half], axis=1).reshape(-1)
    return (np.arange(n_heads)[:, None] * head_dim + within[None, :]).reshape(-1)


def join(parts: Sequence[HostPart]) -> list[HostPart]:
    """Consecutive parts of one storage joined row-wise (q, k, v of one type: one part)."""
    out: list[HostPart] = []
    for p in parts:
        if out and out[-1].key() == p.key() and out[-1].cols == p.cols:
            last = out[-1]
            planes = [a + [Piece(pc.data, last.rows + pc.row0, pc.step) for pc in b]
                      for a, b in zip(last.planes, p.planes)]
            out[-1] = HostPart(p.wtype, last.rows + p.rows, p.cols, planes, p.group_size)
        else:
            out.append(p)
    return out


def interleave(a: HostPart, b: HostPart) -> HostPart:
    """Rows a0, b0, a1, b1, ... (w1/w3 pairs side by side for the SwiGLU epilogue);
    both must have one storage."""
    assert a.key() == b.key() and a.rows == b.rows
    planes = [[Piece(pc.data, 2 * pc.row0 + k, 2 * pc.step) for k, src in ((0, pa), (1, pb)) for pc in src]
              for pa, pb in zip(a.planes, b.planes)]
    return HostPart(a.wtype, 2 * a.rows, a.cols, planes, a.group_size)


def launch_groups(wtypes: Sequence[str]) -> list[list[int]]:
    """Indices of the parts each kernel launch covers: all block-type parts in one
    launch (linear_blocks.cu switches per part), every other part alone."""
    blocks = [i for i, w in enumerate(wtypes) if w in BLOCK_CODES]
    groups = [[i] for i, w in enumerate(wtypes) if w not in BLOCK_CODES]
    if blocks:
        groups.append(blocks)
    return sorted(groups)


def plane_bytes(wtype: str, rows: int, cols: int, group_size: int = 0) -> list[int]:
    """Bytes of each device plane of a rows x cols matrix stored as `wtype`."""
    if wtype in BLOCK_CODES:
        qt = QTYPES[wtype]
        nb = cols // qt.block
        return [rows * nb * (end - start) for start, end in filter(None, PLANES[wtype])]
    if wtype == "int8":
        return [rows * cols, rows * (cols // group_size) * 4]
    return [rows * cols * FLOAT_BYTES[wtype]]


def scale_fields(wtype: str) -> list[tuple[int, int, int]]:
    """(plane, byte offset within a block's share of the plane, that share's size) of each
    fp16 scale field of a block type, in the order of `QType.scale_offsets`: where random
    weights drawn on the device need finite scales."""
    out = []
    for off in QTYPES[wtype].scale_offsets:
        plane = 0
        for rng in PLANES[wtype]:
            if rng is None:
                continue
            if rng[0] <= off < rng[1]:
                out.append((plane, off - rng[0], rng[1] - rng[0]))
                break
            plane += 1
    return out
