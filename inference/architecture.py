"""The tensors of a model, as data: one table per architecture.

Loaders, the shape check, the quantized caches, `info`, `--random` and both backends
iterate this table instead of naming tensors themselves, so supporting a new variant
(biases, a separate classifier, a per-frequency RoPE tensor) is a row here, not an edit
in ten files. Each row gives the canonical name, the shape as a function of the config
(numpy order: rows, then input columns), whether it repeats per layer, whether it is a
matrix a quantizer may touch, when it is present, and its name in each file format.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from .config import ModelConfig

Shape = Callable[[ModelConfig], tuple[int, ...]]


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the architecture (see the module docstring)."""

    name: str                 # canonical name used everywhere in the code
    shape: Shape
    per_layer: bool
    matrix: bool              # a weight matrix: stored in any block type, may be quantized
    present: Callable[[ModelConfig], bool]
    gguf: str                 # GGUF name; "{l}" is the layer
    hf: str                   # Hugging Face safetensors name
    meta: str                 # Meta consolidated.NN.pth name ("" = not in that format)

    def key(self, fmt: str, layer: int | None) -> str:
        """This tensor's name in a file of format `fmt` ('gguf', 'hf', 'meta')."""
        return getattr(self, fmt).format(l=layer)


def _always(c: ModelConfig) -> bool:
    return True


def _row(name: str, shape: Shape, per_layer: bool, matrix: bool, gguf: str, hf: str, meta: str,
         present: Callable[[ModelConfig], bool] = _always) -> TensorSpec:
    return TensorSpec(name, shape, per_layer, matrix, present, gguf, hf, meta)


_LLAMA: tuple[TensorSpec, ...] = (
    _row("tok_embeddings", lambda c: (c.vocab_size, c.dim), False, True,
         "token_embd.weight", "model.embed_tokens.weight", "tok_embeddings.weight"),
    _row("attn_norm", lambda c: (c.dim,), True, False,
         "blk.{l}.attn_norm.weight", "model.layers.{l}.input_layernorm.weight", "layers.{l}.attention_norm.weight"),
    _row("wq", lambda c: (c.q_dim, c.dim), True, True,
         "blk.{l}.attn_q.weight", "model.layers.{l}.self_attn.q_proj.weight", "layers.{l}.attention.wq.weight"),
    _row("wk", lambda c: (c.kv_dim, c.dim), True, True,
         "blk.{l}.attn_k.weight", "model.layers.{l}.self_attn.k_proj.weight", "layers.{l}.attention.wk.weight"),
    _row("wv", lambda c: (c.kv_dim, c.dim), True, True,
         "blk.{l}.attn_v.weight", "model.layers.{l}.self_attn.v_proj.weight", "layers.{l}.attention.wv.weight"),
    _row("bq", lambda c: (c.q_dim,), True, False,
         "blk.{l}.attn_q.bias", "model.layers.{l}.self_attn.q_proj.bias", "", lambda c: c.qkv_bias),
    _row("bk", lambda c: (c.kv_dim,), True, False,
         "blk.{l}.attn_k.bias", "model.layers.{l}.self_attn.k_proj.bias", "", lambda c: c.qkv_bias),
    _row("bv", lambda c: (c.kv_dim,), True, False,
         "blk.{l}.attn_v.bias", "model.layers.{l}.self_attn.v_proj.bias", "", lambda c: c.qkv_bias),
    _row("wo", lambda c: (c.dim, c.q_dim), True, True,
         "blk.{l}.attn_output.weight", "model.layers.{l}.self_attn.o_proj.weight", "layers.{l}.attention.wo.weight"),
    _row("ffn_norm", lambda c: (c.dim,), True, False,
         "blk.{l}.ffn_norm.weight", "model.layers.{l}.post_attention_layernorm.weight", "layers.{l}.ffn_norm.weight"),
    _row("w1", lambda c: (c.hidden_dim, c.dim), True, True,
         "blk.{l}.ffn_gate.weight", "model.layers.{l}.mlp.gate_proj.weight", "layers.{l}.feed_forward.w1.weight"),
    _row("w2", lambda c: (c.dim, c.hidden_dim), True, True,
         "blk.{l}.ffn_down.weight", "model.layers.{l}.mlp.down_proj.weight", "layers.{l}.feed_forward.w2.weight"),
    _row("w3", lambda c: (c.hidden_dim, c.dim), True, True,
         "blk.{l}.ffn_up.weight", "model.layers.{l}.mlp.up_proj.weight", "layers.{l}.feed_forward.w3.weight"),
    _row("final_norm", lambda c: (c.dim,), False, False,
         "output_norm.weight", "model.norm.weight", "norm.weight"),
    _row("output", lambda c: (c.vocab_size, c.dim), False, True,
         "output.weight", "lm_head.weight", "output.weight", lambda c: not c.shared_classifier),
    _row("rope_freqs", lambda c: (c.head_dim // 2,), False, False,
         "rope_freqs.weight", "", "", lambda c: c.rope_freqs),
)

#: Tensor tables by architecture. Qwen2 is Llama's graph plus q/k/v biases (the config's
#: `qkv_bias`) and NEOX-style rotary pairs (the config's `rope_style`).
TABLES: dict[str, tuple[TensorSpec, ...]] = {"llama": _LLAMA, "qwen2": _LLAMA}

#: The per-layer weight matrices, in the order the backends and llama2.c files use.
MATRIX_NAMES = ("wq", "wk", "wv", "wo", "w1", "w2", "w3")
BIAS_NAMES = ("bq", "bk", "bv")


def table(config: ModelConfig) -> tuple[TensorSpec, ...]:
    """Every tensor the architecture can have (present or not for this config)."""
    try:
        return TABLES[config.arch]
    except KeyError:
        raise ValueError(f"architecture {config.arch!r} is not supported") from None


def tensor_specs(config: ModelConfig) -> list[TensorSpec]:
    """The tensors this config's model has."""
    return [s for s in table(config) if s.present(config)]


def spec(name: str, config: ModelConfig | None = None) -> TensorSpec:
    """The table row of canonical tensor `name`."""
    rows = table(config) if config is not None else _LLAMA
    for s in rows:
        if s.name == name:
            return s
    raise KeyError(name)


def tensor_keys(config: ModelConfig) -> list[tuple[str, int | None]]:
    """(name, layer or None) of every tensor instance, in table order then layer order."""
    out: list[tuple[str, int | None]] = []
    for s in tensor_specs(config):
        if s.per_layer:
            out.extend((s.name, layer) for layer in range(config.n_layers))
        else:
            out.append((s.name, None))
    return out


def check_shape(config: ModelConfig, name: str, layer: int | None, got: tuple[int, ...]) -> None:
    """Raise ValueError naming the tensor if `got` is not the shape the config implies."""
    want = spec(name, config).shape(config)
    if tuple(int(g) for g in got) != tuple(want):
        where = f"layer {layer} " if layer is not None else ""
        raise ValueError(f"{where}tensor {name} has shape {tuple(got)}, the hyper-parameters say {tuple(want)}")
