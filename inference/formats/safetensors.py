"""Hugging Face Llama checkpoints: config.json + safetensors file(s), read without HF code.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to dtype, shape and byte range, then the raw data; we parse the header
ourselves and view every tensor straight out of a memory map.

HF's conversion script permutes the rows of q_proj and k_proj so that rotary embeddings
pair dimension i with i + head_dim/2; our kernels (like Meta's and llama2.c's) pair 2i with
2i+1, so the permutation is undone per head (k_proj with num_key_value_heads heads).
"""
from __future__ import annotations

import json
import os
import struct

import numpy as np

from ..config import ModelConfig
from ..errors import ModelFormatError
from .common import Raw, Source, map_file, read_json_object

_DTYPES = {
    "F32": ("<f4", "fp32"), "F16": ("<f2", "fp16"), "BF16": ("<u2", "bf16"), "F64": ("<f8", "fp64"),
    "I8": ("i1", "int8"), "U8": ("u1", "uint8"), "I16": ("<i2", "int16"), "I32": ("<i4", "int32"),
    "I64": ("<i8", "int64"), "BOOL": ("?", "bool"),
}
MAX_HEADER = 100 << 20


def is_safetensors(head: bytes, size: int) -> bool:
    """Cheap content test on the first bytes of a file."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n <= min(MAX_HEADER, size - 8) and head[8:9] == b"{"


def read_safetensors(path: str) -> dict[str, Raw]:
    """Every tensor of one .safetensors file as a zero-copy view."""
    mm = map_file(path)
    if len(mm) < 8:
        raise ModelFormatError(f"{path} is truncated (no safetensors header)")
    (n,) = struct.unpack_from("<Q", mm, 0)
    if n > MAX_HEADER or 8 + n > len(mm):
        raise ModelFormatError(f"{path} is truncated or not a safetensors file (header of {n} bytes)")
    try:
        header = json.loads(bytes(mm[8:8 + n]))
    except (ValueError, UnicodeDecodeError) as e:
        raise ModelFormatError(f"{path}: unreadable safetensors header ({e})") from None
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: safetensors header is not a JSON object")
    base, data_len = 8 + n, len(mm) - 8 - n
    out: dict[str, Raw] = {}
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        try:
            np_dtype, kind = _DTYPES[meta["dtype"]]
            shape = tuple(int(x) for x in meta["shape"])
            begin, end = (int(x) for x in meta["data_offsets"])
        except (KeyError, TypeError, ValueError):
            raise ModelFormatError(f"{path}: tensor {name} has an unsupported or malformed entry") from None
        count = int(np.prod(shape, dtype=np.int64))
        if min(shape, default=1) < 0 or end - begin != count * np.dtype(np_dtype).itemsize or begin < 0:
            raise ModelFormatError(f"{path}: tensor {name} byte range does not match its shape")
        if end > data_len:
            raise ModelFormatError(f"{path} is truncated (tensor {name} runs past the end)")
        arr = np.frombuffer(mm, np_dtype, count=count, offset=base + begin).reshape(shape)
        out[name] = Raw(arr, kind)
    return out


def _shard_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        try:
            with open(index, encoding="utf-8") as f:
                weight_map = json.load(f)["weight_map"]
            files = sorted(set(weight_map.values()))
        except (OSError, ValueError, KeyError, TypeError, AttributeError):
            raise ModelFormatError(f"{index} is not a valid safetensors index") from None
        paths = [os.path.join(directory, os.path.basename(f)) for f in files]
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise ModelFormatError(f"shard {os.path.basename(missing[0])} named in {index} is missing")
        return paths
    single = os.path.join(directory, "model.safetensors")
    if os.path.isfile(single):
        return [single]
    found = sorted(os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".safetensors"))
    if not found:
        raise ModelFormatError(f"{directory} has a config.json but no .safetensors weights")
    return found


def read_hf_config(directory: str) -> dict:
    return read_json_object(
        os.path.join(directory, "config.json"),
        f"{directory} has safetensors weights but no config.json (needed for the model's shapes)")


def config_from_hf(cfg: dict, where: str) -> ModelConfig:
    """ModelConfig from a LlamaForCausalLM config.json (refusing what we cannot run)."""
    arch = cfg.get("architectures") or []
    if cfg.get("model_type", "llama") != "llama" and "LlamaForCausalLM" not in arch:
        raise ModelFormatError(f"{where}: model_type {cfg.get('model_type')!r} is not llama")
    if cfg.get("rope_scaling"):
        raise ModelFormatError(f"{where}: rope_scaling {cfg['rope_scaling']!r} is not supported")
    if cfg.get("hidden_act", "silu") != "silu":
        raise ModelFormatError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
    try:
        dim, heads = int(cfg["hidden_size"]), int(cfg["num_attention_heads"])
        if cfg.get("head_dim") not in (None, dim // max(heads, 1)):
            raise ModelFormatError(f"{where}: head_dim {cfg['head_dim']} != hidden_size / heads")
        return ModelConfig(
            dim=dim, hidden_dim=int(cfg["intermediate_size"]), n_layers=int(cfg["num_hidden_layers"]),
            n_heads=heads, n_kv_heads=int(cfg.get("num_key_value_heads") or heads),
            vocab_size=int(cfg["vocab_size"]), seq_len=int(cfg.get("max_position_embeddings", 2048)),
            shared_classifier=bool(cfg.get("tie_word_embeddings", False)),
            norm_eps=float(cfg.get("rms_norm_eps", 1e-6)), rope_theta=float(cfg.get("rope_theta", 10000.0)))
    except KeyError as e:
        raise ModelFormatError(f"{where}: config.json lacks {e.args[0]!r}") from None
    except (TypeError, ValueError) as e:
        raise ModelFormatError(f"{where}: config.json has a bad value ({e})") from None


def unpermute_rows(w: np.ndarray, n_heads: int) -> np.ndarray:
    """Undo HF's rotary permutation: rows (head, half, i) back to (head, i, half)."""
    rows, cols = w.shape
    return w.reshape(n_heads, 2, rows // n_heads // 2, cols).transpose(0, 2, 1, 3).reshape(rows, cols)


_NAMES = {
    "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm",
    "wq": "self_attn.q_proj", "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj",
    "w1": "mlp.gate_proj", "w2": "mlp.down_proj", "w3": "mlp.up_proj",
}


def open_hf(path: str) -> Source:
    """Open an HF Llama directory (or a .safetensors file inside one) without copying weights."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    cfg = read_hf_config(directory)
    files = _shard_files(directory)
    tensors: dict[str, Raw] = {}
    for f in files:
        tensors.update(read_safetensors(f))
    config = config_from_hf(cfg, directory)
    biased = sorted(n for n in tensors if n.endswith(".bias"))
    if biased or cfg.get("attention_bias") or cfg.get("mlp_bias"):
        raise ModelFormatError(f"{directory}: linear layers with biases ({biased[0] if biased else 'config'}) "
                               f"are not supported (Llama has none)")
    if "lm_head.weight" not in tensors and not config.shared_classifier:
        config = ModelConfig(**{**config.__dict__, "shared_classifier": True})

    def tensor(name: str) -> Raw:
        if name in tensors:
            return tensors[name]
        raise ModelFormatError(f"{directory}: safetensors weights lack tensor {name}")

    def get(name: str, layer: int | None):
        if name == "tok_embeddings":
            return tensor("model.embed_tokens.weight")
        if name == "final_norm":
            return tensor("model.norm.weight")
        if name == "output":
            return None if config.shared_classifier else tensor("lm_head.weight")
        raw = tensor(f"model.layers.{layer}.{_NAMES[name]}.weight")
        if name in ("wq", "wk"):
            heads = config.n_heads if name == "wq" else config.n_kv_heads
            if raw.data.ndim != 2 or raw.shape[0] % (2 * heads):
                raise ModelFormatError(f"{directory}: {name} of layer {layer} has shape {raw.shape}")
            return Raw(unpermute_rows(raw.data, heads), raw.kind)
        return raw

    tok = os.path.join(directory, "tokenizer.model")
    tok_path = tok if os.path.isfile(tok) else None
    return Source(
        config=config, get=get, format="hf-safetensors", dtype=get("wq", 0).kind,
        description=f"Hugging Face LlamaForCausalLM, {len(files)} safetensors file{'s' if len(files) > 1 else ''}",
        tokenizer_note=tok_path or "none in the directory (pass --tokenizer)", tokenizer=lambda: tok_path)
