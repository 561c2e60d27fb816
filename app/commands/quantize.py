"""`llama-chat quantize MODEL [-o OUT] [--quant int8|int4] [--group-size N]`.

int8 writes a llama2.c version-2 file (int8 values + fp32 scales per group of input
columns: runq.c's layout, so llama2.c's runq.c reads it as well as llama-chat); int4
writes a GGUF file with Q4_0 blocks (llama.cpp reads it too). Each matrix is quantized
right before it is written, so memory stays bounded (one matrix) even for a 7B source.
"""
from __future__ import annotations

import argparse
import os
import sys

from inference.errors import LlamaChatError

from .common import ProgressBar, exists_error, path_arg, resolve_model_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("model", metavar="MODEL", type=path_arg, help="fp32/fp16/bf16 model file or directory (any supported format)")
    p.add_argument("-o", "--output", metavar="OUT", type=path_arg,
                   help="output file (default: beside MODEL, named '-q8.bin' for int8 or '-q4_0.gguf' for int4)")
    p.add_argument("--quant", choices=("int8", "int4"), default="int8",
                   help="int8 (llama2.c v2 file, default) or int4 (Q4_0 GGUF file)")
    p.add_argument("--group-size", type=int, default=64, metavar="N",
                   help="int8: input columns per fp32 scale (default 64; shrunk to divide the model's dimensions)")
    p.add_argument("--force", "-f", action="store_true", help="overwrite OUT if it exists")


def run(args: argparse.Namespace) -> int:
    from inference.formats import open_source
    from inference.formats.llama2c import v2_problem
    from inference.quantize import plan_group_size

    if args.group_size < 1:
        raise LlamaChatError("--group-size must be at least 1")
    model = resolve_model_arg(args.model)
    src = open_source(model)
    c = src.config
    stored = _stored_types(src, model, args.quant)
    if args.quant == "int8" and v2_problem(c):
        raise LlamaChatError(f"{model}: {v2_problem(c)}; use --quant int4 (a GGUF file), or load the model "
                             "directly: it is quantized and cached on first use")
    gs = plan_group_size(c, args.quant, args.group_size)
    out = args.output or _default_output(model, args.quant)
    if os.path.exists(out) and not args.force:
        raise exists_error(out)
    if os.path.exists(out) and os.path.realpath(out) == os.path.realpath(model):
        raise LlamaChatError("the output would overwrite the source model")
    bar = ProgressBar(f"quantizing {os.path.basename(os.path.normpath(model))}")
    tmp = f"{out}.{os.getpid()}.tmp"
    try:
        with open(tmp, "wb") as f:
            if args.quant == "int8" and gs != args.group_size:  # once the output can be written
                print(f"llama-chat: warning: group size {args.group_size} does not divide the model's dimensions; "
                      f"using {gs}", file=sys.stderr)
            if args.quant == "int8":
                from inference.formats.llama2c import write_v2
                from inference.quantize import floats, quantize_q8
                write_v2(f, src.weights(), gs, quantize_q8, floats, bar)
            else:
                write_int4_gguf(f, src, bar)
        os.replace(tmp, out)
    except OSError as e:
        raise LlamaChatError(f"cannot write {out}: {e.strerror}") from None
    finally:
        bar.close()
        if os.path.exists(tmp):
            os.unlink(tmp)
    size = os.path.getsize(out)
    what = f"llama2.c v2, int8, group size {gs}" if args.quant == "int8" else \
        "GGUF, Q4_0" + (f" (and the source's {'+'.join(stored)} blocks as they were)" if stored else "")
    print(f"wrote {out}: {what}, {size / 1e6:.1f} MB in {bar.elapsed():.1f} s", file=sys.stderr)
    return 0


def _stored_types(src, model: str, quant: str) -> list[str]:
    """The block types of the source's matrices that the output keeps as they are (int4:
    GGUF holds them; they are never quantized again). A source with no float matrix has
    nothing to quantize, and a llama2.c v2 file (int8) holds no blocks: both are refused
    here, before anything is written."""
    from inference.quant_types import FLOAT_TYPES
    types = src.matrix_types()
    stored = [t for t, _ in types.most_common() if t not in FLOAT_TYPES]
    if stored and len(stored) == len(types):
        raise LlamaChatError(f"{model} is already quantized ({'+'.join(stored)}): there is nothing to quantize; "
                             "run it as it is (its blocks are used as stored)")
    if stored and quant == "int8":
        raise LlamaChatError(f"{model} holds {'+'.join(stored)} matrices, which a llama2.c v2 file cannot: "
                             "use --quant int4 (a GGUF file keeps them as they are)")
    if "int8" in stored:
        raise LlamaChatError(f"{model} holds int8 matrices, which are not quantized again to int4")
    return stored


def write_int4_gguf(f, src, progress=None) -> None:
    """The whole model as a GGUF file: float matrices as Q4_0, blocks kept, vectors F32."""
    import numpy as np

    from inference.architecture import spec, tensor_keys
    from inference.formats.gguf_writer import TensorOut, write_gguf
    from inference.quant_types import FLOAT_TYPES, QTYPES
    from inference.quantize import quantize_matrix
    from inference.rope import frequencies
    from inference.weights import QTensor

    c = src.config
    a = c.arch
    meta = {"general.architecture": a, "general.file_type": 2, "general.quantized_by": "llama-chat",
            f"{a}.context_length": c.seq_len, f"{a}.embedding_length": c.dim, f"{a}.block_count": c.n_layers,
            f"{a}.feed_forward_length": c.hidden_dim, f"{a}.attention.head_count": c.n_heads,
            f"{a}.attention.head_count_kv": c.n_kv_heads, f"{a}.attention.key_length": c.head_dim,
            f"{a}.attention.value_length": c.head_dim, f"{a}.rope.dimension_count": c.head_dim,
            f"{a}.attention.layer_norm_rms_epsilon": c.norm_eps, f"{a}.rope.freq_base": c.rope_theta}
    if c.rope_scaling.kind == "linear":
        meta[f"{a}.rope.scaling.type"] = "linear"
        meta[f"{a}.rope.scaling.factor"] = c.rope_scaling.factor
    meta.update({k: v for k, v in src.metadata.items() if k.startswith("tokenizer.")})
    if c.rope_style != ("neox" if a == "qwen2" else "interleaved"):
        raise LlamaChatError(f"a GGUF {a} file implies {'NEOX' if a == 'qwen2' else 'interleaved'} RoPE pairs; "
                             f"this model's q/k rows are in the other order")
    outs: list[TensorOut] = []
    for name, layer in tensor_keys(c):
        s = spec(name, c)

        def data(name=name, layer=layer, matrix=s.matrix):
            t = src.tensor(name, layer)
            if not matrix:
                return np.ascontiguousarray(t, dtype=np.float32)
            t = quantize_matrix(t, "int4", 32)
            if isinstance(t, QTensor):
                raise LlamaChatError("an int8 matrix cannot be written as int4 (it is already quantized)")
            return t.data

        ref = src.refs[(name, layer)]
        ggml = QTYPES[ref.qtype].ggml if s.matrix and ref.qtype not in FLOAT_TYPES else \
            (QTYPES["q4_0"].ggml if s.matrix else 0)
        if ggml is None:
            raise LlamaChatError(f"tensor {name} is {ref.qtype}: it cannot be written to GGUF")
        outs.append(TensorOut(s.key("gguf", layer), ggml, tuple(s.shape(c)), data))
    if c.rope_scaling.kind == "llama3" and not c.rope_freqs:
        base = frequencies(c.with_(rope_scaling=type(c.rope_scaling)()))
        factors = (base / frequencies(c)).astype(np.float32)
        outs.append(TensorOut("rope_freqs.weight", 0, (c.head_dim // 2,), lambda: factors))
    write_gguf(f, meta, outs, progress)


def _default_output(model: str, quant: str) -> str:
    path = os.path.normpath(model)
    suffix = "-q8.bin" if quant == "int8" else "-q4_0.gguf"
    if os.path.isdir(path):
        return os.path.join(path, "model" + suffix)
    return os.path.splitext(path)[0] + suffix
