"""Meta's original Llama checkpoints: consolidated.NN.pth shards + params.json (+ tokenizer.model).

Each shard holds one model-parallel slice. Column-parallel weights (wq, wk, wv, w1, w3,
output) are split along their output rows, row-parallel ones (wo, w2) and the embedding
table along their input columns; norms are replicated. Merging writes each shard's slice
straight into the stacked array, so no full-size temporary is made.
"""
from __future__ import annotations

import os
import re

import numpy as np

from ..config import ModelConfig
from ..errors import ModelFormatError
from .common import Raw, Source, read_json_object
from .torch_unpickler import TorchTensor, load_torch_file

_SHARD = re.compile(r"^consolidated\.(\d+)\.pth$")
_ROW_SPLIT = {"wq", "wk", "wv", "w1", "w3", "output"}
_COL_SPLIT = {"wo", "w2", "tok_embeddings"}
_KEYS = {
    "tok_embeddings": "tok_embeddings.weight", "final_norm": "norm.weight", "output": "output.weight",
    "attn_norm": "layers.{}.attention_norm.weight", "ffn_norm": "layers.{}.ffn_norm.weight",
    "wq": "layers.{}.attention.wq.weight", "wk": "layers.{}.attention.wk.weight",
    "wv": "layers.{}.attention.wv.weight", "wo": "layers.{}.attention.wo.weight",
    "w1": "layers.{}.feed_forward.w1.weight", "w2": "layers.{}.feed_forward.w2.weight",
    "w3": "layers.{}.feed_forward.w3.weight",
}


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
    try:
        dim, heads = int(p["dim"]), int(p["n_heads"])
        hidden = p.get("hidden_dim")
        if hidden is None:
            hidden = meta_hidden_dim(dim, int(p.get("multiple_of", 256)), p.get("ffn_dim_multiplier"))
        vocab = int(p.get("vocab_size", -1))
        return ModelConfig(
            dim=dim, hidden_dim=int(hidden), n_layers=int(p["n_layers"]), n_heads=heads,
            n_kv_heads=int(p.get("n_kv_heads") or heads),
            vocab_size=vocab if vocab > 0 else vocab_rows,
            seq_len=int(p.get("max_seq_len", 4096)), shared_classifier=shared,
            norm_eps=float(p.get("norm_eps", 1e-5)), rope_theta=float(p.get("rope_theta", 10000.0)))
    except KeyError as e:
        raise ModelFormatError(f"{where}: params.json lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{where}: params.json has a bad value ({e})") from None


def open_meta(path: str) -> Source:
    """Open a Meta checkpoint directory (or a .pth inside one) without copying weights."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    params = read_params(directory)
    paths = shard_paths(directory)
    shards = [load_torch_file(p) for p in paths]

    def parts(name: str, layer: int | None) -> list[TorchTensor]:
        key = _KEYS[name].format(layer)
        got = [s.get(key) for s in shards]
        if any(t is None for t in got):
            missing = paths[[t is None for t in got].index(True)]
            raise ModelFormatError(f"{os.path.basename(missing)} lacks tensor {key}")
        return got  # type: ignore[return-value]

    emb_parts = parts("tok_embeddings", None)
    first = shards[0]
    has_output = "output.weight" in first
    shared = not has_output or (len(shards) == 1 and first["output.weight"].same_data(first["tok_embeddings.weight"]))
    config = config_from_params(params, emb_parts[0].shape[0], shared, directory)

    def get(name: str, layer: int | None):
        if name == "output" and shared:
            return None
        ts = parts(name, layer)
        if len(ts) == 1 or not (name in _ROW_SPLIT or name in _COL_SPLIT):
            return ts[0].raw()
        axis = 0 if name in _ROW_SPLIT else 1
        raws = [t.raw() for t in ts]
        if any(r.data.ndim != 2 for r in raws):
            raise ModelFormatError(f"{directory}: tensor {name} is not a matrix in every shard")
        if any(r.kind != raws[0].kind for r in raws):
            raise ModelFormatError(f"{directory}: shards store tensor {name} with different dtypes")
        return Raw(np.concatenate([r.data for r in raws], axis=axis), raws[0].kind)

    tok = os.path.join(directory, "tokenizer.model")
    tok_path = tok if os.path.isfile(tok) else None
    n = len(paths)
    return Source(
        config=config, get=get, format="meta-pth", dtype=parts("wq", 0)[0].kind,
        description=f"Meta PyTorch checkpoint, {n} shard{'s' if n > 1 else ''}"
                    f"{' (legacy serialization)' if _is_legacy(paths[0]) else ''}",
        tokenizer_note=tok_path or "none in the directory (pass --tokenizer)", tokenizer=lambda: tok_path)


def _is_legacy(path: str) -> bool:
    with open(path, "rb") as f:
        return f.read(4) != b"PK\x03\x04"
