"""Meta's original Llama checkpoints: consolidated.NN.pth shards + params.json (+ tokenizer.model).

Each shard holds one model-parallel slice of every split tensor (see `_SPLIT_AXIS`); a
one-shard checkpoint is read as zero-copy views, several shards are concatenated tensor
by tensor as they are needed (one tensor's size in RAM at a time).
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..architecture import spec, tensor_keys
from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from .common import REQUIRED, Fields, Raw, Source, TensorRef, check_layer_count, read_json_object, validated_config
from .torch_unpickler import TorchTensor, load_torch_file

_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")
#: How model-parallel shards split each tensor: column-parallel weights along their
#: output rows (axis 0), row-parallel ones and the embedding table along their input
#: columns (axis 1); everything else is replicated.
_SPLIT_AXIS = {"wq": 0, "wk": 0, "wv": 0, "w1": 0, "w3": 0, "output": 0, "wo": 1, "w2": 1, "tok_embeddings": 1}


def meta_hidden_dim(dim: int, multiple_of: int, ffn_dim_multiplier: float | None) -> int:
    """SwiGLU width as Meta's model.py computes it: 2/3 of 4*dim, scaled, rounded up."""
    hidden = int(2 * (4 * dim) / 3)
    if ffn_dim_multiplier is not None:
        hidden = int(ffn_dim_multiplier * hidden)
    return multiple_of * ((hidden + multiple_of - 1) // multiple_of)


def shard_paths(directory: str) -> list[str]:
    """consolidated.00.pth ... in order; a gap in the numbering is an error."""
    found = sorted((int(m.group(1)), f) for f in os.listdir(directory) if (m := _SHARD.match(f)))
    if not found:
        found = [(0, f) for f in sorted(os.listdir(directory)) if f.endswith(".pth")][:1]
    if not found:
        raise ModelFormatError(f"{directory} has a params.json but no consolidated.NN.pth weights")
    if [n for n, _ in found] != list(range(len(found))) and len(found) > 1:
        raise ModelFormatError(f"{directory}: shard numbering has a gap ({[f for _, f in found]})")
    return [os.path.join(directory, f) for _, f in found]


def read_params(directory: str) -> dict:
    return read_json_object(
        os.path.join(directory, "params.json"),
        f"{directory} has PyTorch weights but no params.json (needed for the model's shapes)")


def config_from_params(p: dict, vocab_rows: int, shared: bool, where: str) -> ModelConfig:
    f = Fields(p, f"{where}/params.json")
    dim = f.int("dim", REQUIRED)
    heads = f.int("n_heads", REQUIRED, hi=4096)
    hidden = f.int("hidden_dim", None)
    if hidden is None:
        mult = f.float("ffn_dim_multiplier", None)
        if mult is not None and not 0 < mult < 100:
            raise ModelFormatError(f"{where}: params.json ffn_dim_multiplier {mult!r} is out of range (0, 100)")
        hidden = meta_hidden_dim(dim, f.int("multiple_of", 256, hi=1 << 20), mult)
    vocab = f.int("vocab_size", -1, lo=-1)
    if vocab == 0:
        raise ModelFormatError(f"{where}/params.json: vocab_size 0 (-1 means: as many as the embedding rows)")
    scaling = RopeScaling()
    if f.bool("use_scaled_rope", False):  # Llama 3.1's params.json: its fixed llama3 scaling
        scaling = RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    config = ModelConfig(
        dim=dim, hidden_dim=hidden, n_layers=f.int("n_layers", REQUIRED, hi=4096), n_heads=heads,
        n_kv_heads=f.int("n_kv_heads", heads, hi=4096),
        vocab_size=vocab if vocab > 0 else vocab_rows,
        seq_len=f.int("max_seq_len", 4096), shared_classifier=shared,
        norm_eps=f.float("norm_eps", 1e-5), rope_theta=f.float("rope_theta", 10000.0), rope_scaling=scaling)
    return validated_config(config, where)


def open_meta(path: str) -> Source:
    """Open a Meta checkpoint directory (or a .pth inside one) without copying weights."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    params = read_params(directory)
    paths = shard_paths(directory)
    shards = [load_torch_file(p) for p in paths]
    first = shards[0]
    emb = first.get("tok_embeddings.weight")
    if emb is None or len(emb.shape) != 2:
        raise ModelFormatError(f"{os.path.basename(paths[0])} lacks the tok_embeddings.weight matrix")
    has_output = "output.weight" in first
    shared = not has_output or (len(shards) == 1 and first["output.weight"].same_data(emb))
    config = config_from_params(params, emb.shape[0], shared, directory)
    check_layer_count(first, config.n_layers, directory)

    def parts(key: str) -> list[TorchTensor] | None:
        got = [s.get(key) for s in shards]
        if all(t is None for t in got):
            return None
        if any(t is None for t in got):
            missing = paths[[t is None for t in got].index(True)]
            raise ModelFormatError(f"{os.path.basename(missing)} lacks tensor {key}")
        kinds = {t.kind for t in got}
        if len(kinds) > 1:
            raise ModelFormatError(f"{directory}: shards store tensor {key} with different dtypes")
        return got  # type: ignore[return-value]

    def merged_shape(name: str, ts: list[TorchTensor]) -> tuple[int, ...]:
        shape = list(ts[0].shape)
        axis = _SPLIT_AXIS.get(name)
        if len(ts) > 1 and axis is not None and len(shape) == 2:
            shape[axis] = sum(t.shape[axis] for t in ts)
        return tuple(shape)

    def load(name: str, ts: list[TorchTensor]) -> Raw:
        axis = _SPLIT_AXIS.get(name)
        if len(ts) == 1 or axis is None:
            return ts[0].raw()
        raws = [t.raw() for t in ts]
        if any(r.data.ndim != 2 for r in raws):
            raise ModelFormatError(f"{directory}: tensor {name} is not a matrix in every shard")
        return Raw(np.concatenate([r.data for r in raws], axis=axis), raws[0].kind)

    refs = {}
    for name, layer in tensor_keys(config):
        ts = parts(spec(name, config).key("meta", layer))
        if ts is not None:
            refs[(name, layer)] = TensorRef(merged_shape(name, ts), ts[0].kind, lambda n=name, ts=ts: load(n, ts))
    tok = os.path.join(directory, "tokenizer.model")
    tok_path = tok if os.path.isfile(tok) else None
    n = len(paths)
    src = Source(
        config=config, refs=refs, format="meta-pth",
        description=f"Meta PyTorch checkpoint, {n} shard{'s' if n > 1 else ''}"
                    f"{' (legacy serialization)' if _is_legacy(paths[0]) else ''}",
        tokenizer_path=tok_path, tokenizer_note=tok_path or "none in the directory (pass --tokenizer)")
    src.check()
    for (name, layer), ref in refs.items():
        if ref.qtype not in ("fp32", "fp16", "bf16", "fp64"):
            raise ModelFormatError(f"{directory}: tensor {name} is {ref.qtype}; weights must be floating point")
    return src


def _is_legacy(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) != b"PK\x03\x04"
