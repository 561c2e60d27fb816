"""Hugging Face checkpoints (Llama, Qwen2): config.json + safetensors file(s), without HF code.

A safetensors file is an 8-byte little-endian header length, a JSON header mapping each
tensor name to dtype, shape and byte range, then the raw data; we parse and validate the
header ourselves (dtype, shape, range inside the data block, no two tensors overlapping)
and view every tensor straight out of a memory map.

HF's Llama conversion permutes q_proj/k_proj rows so that rotary embeddings pair
dimension i with i + head_dim/2 (NEOX order); Qwen2 is trained that way. Both therefore
run with `rope_style="neox"` on the rows as stored: nothing is permuted or copied.
"""
from __future__ import annotations

import os
import struct

import numpy as np

from ..architecture import spec, tensor_keys
from ..config import ModelConfig, RopeScaling
from ..errors import ModelFormatError
from .common import (REQUIRED, Fields, Raw, Source, TensorRef, check_layer_count, map_file, parse_json,
                     read_json_object, validated_config)

_DTYPES = {
    "F32": ("<f4", "fp32"), "F16": ("<f2", "fp16"), "BF16": ("<u2", "bf16"), "F64": ("<f8", "fp64"),
    "I8": ("i1", "int8"), "U8": ("u1", "uint8"), "I16": ("<i2", "int16"), "I32": ("<i4", "int32"),
    "I64": ("<i8", "int64"), "BOOL": ("?", "bool"),
}
MAX_HEADER = 100 << 20
_ARCHS = {"llama": "llama", "LlamaForCausalLM": "llama", "qwen2": "qwen2", "Qwen2ForCausalLM": "qwen2",
          "mistral": "llama", "MistralForCausalLM": "llama"}


def is_safetensors(head: bytes, size: int) -> bool:
    """Cheap content test on the first bytes of a file."""
    if len(head) < 9:
        return False
    (n,) = struct.unpack_from("<Q", head, 0)
    return 2 <= n <= min(MAX_HEADER, size - 8) and head[8:9] == b"{"


def read_safetensors(path: str) -> dict[str, Raw]:
    """Every tensor of one .safetensors file as a zero-copy view, descriptors validated."""
    mm = map_file(path)
    if len(mm) < 8:
        raise ModelFormatError(f"{path} is truncated (no safetensors header)")
    (n,) = struct.unpack_from("<Q", mm, 0)
    if n > MAX_HEADER or 8 + n > len(mm):
        raise ModelFormatError(f"{path} is truncated or not a safetensors file (header of {n} bytes)")
    header = parse_json(bytes(mm[8:8 + n]), f"{path} (safetensors header)")
    if not isinstance(header, dict):
        raise ModelFormatError(f"{path}: safetensors header is not a JSON object")
    base, data_len = 8 + n, len(mm) - 8 - n
    out: dict[str, Raw] = {}
    ranges: list[tuple[int, int, str]] = []
    for name, meta in header.items():
        if name == "__metadata__":
            continue
        shown = name[:80]
        if not isinstance(meta, dict):
            raise ModelFormatError(f"{path}: tensor {shown} has a malformed entry")
        dtype, shape, offsets = meta.get("dtype"), meta.get("shape"), meta.get("data_offsets")
        if not isinstance(dtype, str) or dtype not in _DTYPES:
            raise ModelFormatError(f"{path}: tensor {shown} has unsupported dtype {str(dtype)[:20]!r}")
        if (not isinstance(shape, list) or len(shape) > 8
                or not all(isinstance(x, int) and not isinstance(x, bool) and 0 <= x < 1 << 40 for x in shape)):
            raise ModelFormatError(f"{path}: tensor {shown} has a malformed shape")
        if (not isinstance(offsets, list) or len(offsets) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in offsets)):
            raise ModelFormatError(f"{path}: tensor {shown} has malformed data_offsets")
        np_dtype, kind = _DTYPES[dtype]
        count = 1
        for x in shape:
            count *= x  # Python ints: no overflow, compared against the file below
        begin, end = offsets
        if end - begin != count * np.dtype(np_dtype).itemsize:
            raise ModelFormatError(f"{path}: tensor {shown} byte range does not match its shape")
        if end > data_len:
            raise ModelFormatError(f"{path} is truncated (tensor {shown} runs past the end)")
        ranges.append((begin, end, shown))
        arr = np.frombuffer(mm, np_dtype, count=count, offset=base + begin).reshape(shape)
        out[name] = Raw(arr, kind)
    ranges.sort()
    for (b0, e0, n0), (b1, e1, n1) in zip(ranges, ranges[1:]):
        if b1 < e0 and e1 > b1:
            raise ModelFormatError(f"{path}: tensors {n0} and {n1} overlap in the file")
    # the format has no holes: a range that lies about a shape (and its size) leaves one
    covered = 0
    for b, e, name in ranges:
        if b > covered:
            raise ModelFormatError(f"{path}: {b - covered} bytes before tensor {name} belong to no tensor "
                                   f"(a wrong shape or data_offsets?)")
        covered = max(covered, e)
    if covered != data_len:
        raise ModelFormatError(f"{path}: its last {data_len - covered} bytes belong to no tensor (a wrong shape "
                               f"or data_offsets?)")
    return out


def _shard_files(directory: str) -> list[str]:
    index = os.path.join(directory, "model.safetensors.index.json")
    if os.path.isfile(index):
        obj = read_json_object(index, f"{index} is missing")
        weight_map = obj.get("weight_map")
        if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
            raise ModelFormatError(f"{index} is not a valid safetensors index (weight_map must map names to files)")
        files = sorted(set(weight_map.values()))
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


def config_from_hf(cfg: dict, where: str, has_bias: bool) -> ModelConfig:
    """ModelConfig from a LlamaForCausalLM / Qwen2ForCausalLM config.json."""
    arch_names = cfg.get("architectures")
    model_type = cfg.get("model_type", "llama")
    arch = _ARCHS.get(model_type) if isinstance(model_type, str) else None
    if arch is None and isinstance(arch_names, list):
        arch = next((_ARCHS[a] for a in arch_names if isinstance(a, str) and a in _ARCHS), None)
    if arch is None:
        raise ModelFormatError(f"{where}: model_type {str(model_type)[:40]!r} is not supported "
                               f"(llama, mistral and qwen2 are)")
    f = Fields(cfg, f"{where}/config.json")
    if f.str("hidden_act", "silu") != "silu":
        raise ModelFormatError(f"{where}: hidden_act {cfg['hidden_act']!r} is not supported (silu only)")
    if f.bool("mlp_bias", False):
        raise ModelFormatError(f"{where}: MLP biases are not supported")
    dim = f.int("hidden_size", REQUIRED)
    heads = f.int("num_attention_heads", REQUIRED, hi=4096)
    scaling = RopeScaling()
    rs = cfg.get("rope_scaling")
    if rs is not None:
        if not isinstance(rs, dict):
            raise ModelFormatError(f"{where}: rope_scaling must be an object")
        g = Fields(rs, f"{where}/config.json rope_scaling")
        kind = g.str("rope_type", None) or g.str("type", "none")
        if kind == "linear":
            scaling = RopeScaling("linear", g.float("factor", REQUIRED))
        elif kind == "llama3":
            scaling = RopeScaling("llama3", g.float("factor", REQUIRED), g.float("low_freq_factor", 1.0),
                                  g.float("high_freq_factor", 4.0),
                                  g.int("original_max_position_embeddings", 8192))
        elif kind not in ("default", "none"):
            raise ModelFormatError(f"{where}: rope_scaling {kind[:40]!r} is not supported (linear and llama3 are)")
    config = ModelConfig(
        arch=arch, dim=dim, hidden_dim=f.int("intermediate_size", REQUIRED),
        n_layers=f.int("num_hidden_layers", REQUIRED, hi=4096), n_heads=heads,
        n_kv_heads=f.int("num_key_value_heads", heads, hi=4096),
        head_dim=f.int("head_dim", dim // heads),
        vocab_size=f.int("vocab_size", REQUIRED), seq_len=f.int("max_position_embeddings", 2048),
        shared_classifier=f.bool("tie_word_embeddings", False),
        norm_eps=f.float("rms_norm_eps", 1e-6), rope_theta=f.float("rope_theta", 10000.0),
        rope_style="neox", rope_scaling=scaling,
        qkv_bias=arch == "qwen2" or f.bool("attention_bias", False) or has_bias)
    return validated_config(config, where)


def open_hf(path: str) -> Source:
    """Open an HF directory (or a .safetensors file inside one) without copying weights."""
    directory = path if os.path.isdir(path) else os.path.dirname(os.path.abspath(path))
    cfg = read_hf_config(directory)
    files = _shard_files(directory)
    tensors: dict[str, Raw] = {}
    for file in files:
        part = read_safetensors(file)
        twice = next((n for n in part if n in tensors), None)
        if twice is not None:
            raise ModelFormatError(f"{directory}: tensor {twice[:80]} is in more than one safetensors file")
        tensors.update(part)
    config = config_from_hf(cfg, directory, "model.layers.0.self_attn.q_proj.bias" in tensors)
    if "lm_head.weight" not in tensors and not config.shared_classifier:
        config = config.with_(shared_classifier=True)
    check_layer_count(tensors, config.n_layers, directory)
    known = {spec(n, config).key("hf", layer) for n, layer in tensor_keys(config)}
    stray = sorted(n for n in tensors if n.endswith(".bias") and n not in known)
    if stray:
        raise ModelFormatError(f"{directory}: tensor {stray[0][:80]} (a bias llama-chat's architectures "
                               f"do not have) is not supported")
    refs = {}
    for name, layer in tensor_keys(config):
        raw = tensors.get(spec(name, config).key("hf", layer))
        if raw is not None:
            refs[(name, layer)] = TensorRef(raw.shape, raw.kind, lambda raw=raw: raw)
    tok = os.path.join(directory, "tokenizer.json")
    if not os.path.isfile(tok):
        tok = os.path.join(directory, "tokenizer.model")
    tok_path = tok if os.path.isfile(tok) else None
    src = Source(config=config, refs=refs, format="hf-safetensors",
                 description=f"Hugging Face {config.arch}, {len(files)} safetensors file{'s' if len(files) > 1 else ''}",
                 tokenizer_path=tok_path, tokenizer_note=tok_path or "none in the directory (pass --tokenizer)")
    src.check()
    _check_float(src, directory)
    from ..tokenizer.hf import hf_chat_template
    src.chat_template = hf_chat_template(directory)
    return src


def _check_float(src: Source, where: str) -> None:
    for (name, layer), ref in src.refs.items():
        if ref.qtype not in ("fp32", "fp16", "bf16", "fp64"):
            raise ModelFormatError(f"{where}: tensor {name}{'' if layer is None else f' of layer {layer}'} is "
                                   f"{ref.qtype}; weights must be floating point")
