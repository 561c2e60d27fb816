"""Write the tiny format fixtures with the formats' own libraries (run once, output committed).

    pip install torch safetensors gguf   # fixture tools only, never run-time dependencies
    python tests/data/formats/make_fixtures.py

One small random Llama (2 layers, dim 32, 4 query / 2 key-value heads, vocab 32) is
written as a llama2.c v0 .bin (the reference path) and, by torch / safetensors / gguf as
independent writers, as Meta .pth (zip 1 shard fp32, zip 2 shards fp16, legacy bf16 tied),
HF safetensors (fp32 untied, 2 bf16 shards tied) and GGUF (F16 with a tokenizer, Q8_0).
Every weight is k * 2^-e with |k| <= 127 and a 127 in every 32-wide block, so fp16, bf16
and Q8_0 hold it exactly and all files describe bit-identical weights. The classifier
equals the embedding table, so tied and untied copies give the same logits too.

`write_meta`, `write_hf` and `write_gguf` are reused by the real-model test, which converts
assets/stories260K.bin the same way when torch is installed.
"""
from __future__ import annotations

import json
import os
import struct
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DIM, HIDDEN, LAYERS, HEADS, KV_HEADS, VOCAB, SEQ = 32, 64, 2, 4, 2, 32, 64


def exact_matrix(rng: np.random.Generator, rows: int, cols: int) -> np.ndarray:
    """Values k * 2^-e, one |k| = 127 per 32-column block: exact in fp16, bf16 and Q8_0."""
    k = rng.integers(-100, 101, size=(rows, cols // 32, 32))
    k[:, :, 0] = 127 * rng.choice([-1, 1], size=(rows, cols // 32))
    k = rng.permuted(k, axis=2)
    e = rng.integers(8, 11, size=(rows, cols // 32, 1))
    return (k * np.exp2(-e.astype(np.float64))).reshape(rows, cols).astype(np.float32)


def tiny_weights(seed: int = 6) -> dict[str, np.ndarray]:
    """llama2.c-named fp32 tensors (Meta/llama2.c rotary layout), layers stacked."""
    rng = np.random.default_rng(seed)
    kv = DIM // HEADS * KV_HEADS

    def stack(rows: int, cols: int) -> np.ndarray:
        return np.stack([exact_matrix(rng, rows, cols) for _ in range(LAYERS)])

    def norm(*shape: int) -> np.ndarray:
        return (1 + rng.integers(-16, 17, size=shape) / 64).astype(np.float32)

    emb = exact_matrix(rng, VOCAB, DIM) * 8
    return {
        "tok_embeddings": emb, "attn_norm": norm(LAYERS, DIM), "ffn_norm": norm(LAYERS, DIM),
        "final_norm": norm(DIM),
        "wq": stack(DIM, DIM), "wk": stack(kv, DIM), "wv": stack(kv, DIM), "wo": stack(DIM, DIM),
        "w1": stack(HIDDEN, DIM), "w2": stack(DIM, HIDDEN), "w3": stack(HIDDEN, DIM), "output": emb.copy(),
    }


# -- llama2.c v0 (the reference) ------------------------------------------------------
def write_llama2c_v0(path: str, w: dict[str, np.ndarray], heads: int, kv_heads: int, seq: int) -> None:
    L, hidden, dim = w["w1"].shape
    vocab = w["tok_embeddings"].shape[0]
    hd = dim // heads
    freqs = 1.0 / 10000.0 ** (np.arange(0, hd, 2, dtype=np.float32) / hd)
    angles = np.outer(np.arange(seq, dtype=np.float32), freqs)
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", dim, hidden, L, heads, kv_heads, vocab, seq))  # vocab > 0: shared
        for name in ("tok_embeddings", "attn_norm", "wq", "wk", "wv", "wo", "ffn_norm", "w1", "w2", "w3",
                     "final_norm"):
            f.write(np.ascontiguousarray(w[name], np.float32).tobytes())
        f.write(np.cos(angles).astype(np.float32).tobytes())
        f.write(np.sin(angles).astype(np.float32).tobytes())


# -- Meta .pth via torch ----------------------------------------------------------------
_META = {"attn_norm": "attention_norm", "ffn_norm": "ffn_norm", "wq": "attention.wq", "wk": "attention.wk",
         "wv": "attention.wv", "wo": "attention.wo", "w1": "feed_forward.w1", "w2": "feed_forward.w2",
         "w3": "feed_forward.w3"}
_ROWS = {"wq", "wk", "wv", "w1", "w3", "output"}
_COLS = {"wo", "w2", "tok_embeddings"}


def write_meta(directory: str, w: dict[str, np.ndarray], params: dict, shards: int = 1,
               dtype: str = "float32", legacy: bool = False, tie: bool = False) -> None:
    """consolidated.NN.pth (model-parallel split as Meta's checkpoints are) + params.json.

    `tie` (one shard only) saves output.weight as the very tensor of tok_embeddings, as
    torch.save does for a model with tied weights: one storage, referenced twice."""
    import torch
    os.makedirs(directory, exist_ok=True)
    tdtype = getattr(torch, dtype)

    def split(name: str, a: np.ndarray) -> list[np.ndarray]:
        if shards == 1 or a.ndim == 1:
            return [a] * shards
        return np.split(a, shards, axis=0 if name in _ROWS else 1)

    flat: dict[str, np.ndarray] = {"tok_embeddings.weight": w["tok_embeddings"], "norm.weight": w["final_norm"],
                                   "output.weight": w["output"]}
    for name, meta_name in _META.items():
        for layer in range(w[name].shape[0]):
            flat[f"layers.{layer}.{meta_name}.weight"] = w[name][layer]
    for s in range(shards):
        sd = {}
        for key, a in flat.items():
            short = key.split(".")[-2] if key.startswith("layers.") else key.split(".")[0]
            short = {"norm": "final_norm"}.get(short, short)
            sd[key] = torch.from_numpy(np.array(split(short, a)[s])).to(tdtype)
        if tie and shards == 1:
            sd["output.weight"] = sd["tok_embeddings.weight"]
        sd["rope.freqs"] = torch.ones(4)  # present in Meta's files, unused
        torch.save(sd, os.path.join(directory, f"consolidated.{s:02d}.pth"),
                   _use_new_zipfile_serialization=not legacy)
    with open(os.path.join(directory, "params.json"), "w") as f:
        json.dump(params, f)


# -- HF safetensors ---------------------------------------------------------------------
def hf_permute(a: np.ndarray, n_heads: int) -> np.ndarray:
    """HF's convert_llama_weights_to_hf rotary permutation, written with torch as it does."""
    import torch
    t = torch.from_numpy(np.array(a))
    rows, cols = t.shape
    return t.view(n_heads, rows // n_heads // 2, 2, cols).transpose(1, 2).reshape(rows, cols).numpy()


def write_hf(directory: str, w: dict[str, np.ndarray], config: dict, shards: int = 1,
             dtype: str = "float32") -> None:
    import torch
    from safetensors.torch import save_file
    os.makedirs(directory, exist_ok=True)
    names = {"attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm", "wq": "self_attn.q_proj",
             "wk": "self_attn.k_proj", "wv": "self_attn.v_proj", "wo": "self_attn.o_proj", "w1": "mlp.gate_proj",
             "w2": "mlp.down_proj", "w3": "mlp.up_proj"}
    flat = {"model.embed_tokens.weight": w["tok_embeddings"], "model.norm.weight": w["final_norm"]}
    if not config.get("tie_word_embeddings"):
        flat["lm_head.weight"] = w["output"]
    for name, hf in names.items():
        for layer in range(w[name].shape[0]):
            a = w[name][layer]
            if name == "wq":
                a = hf_permute(a, config["num_attention_heads"])
            elif name == "wk":
                a = hf_permute(a, config["num_key_value_heads"])
            flat[f"model.layers.{layer}.{hf}.weight"] = a
    tensors = {k: torch.from_numpy(np.array(v)).to(getattr(torch, dtype)) for k, v in flat.items()}
    keys = sorted(tensors)
    if shards == 1:
        save_file(tensors, os.path.join(directory, "model.safetensors"), metadata={"format": "pt"})
    else:
        weight_map = {}
        for s in range(shards):
            fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
            part = {k: tensors[k] for k in keys[s::shards]}
            save_file(part, os.path.join(directory, fname), metadata={"format": "pt"})
            weight_map.update({k: fname for k in part})
        with open(os.path.join(directory, "model.safetensors.index.json"), "w") as f:
            json.dump({"metadata": {}, "weight_map": weight_map}, f)
    with open(os.path.join(directory, "config.json"), "w") as f:
        json.dump(config, f)


def hf_config(w: dict[str, np.ndarray], heads: int, kv_heads: int, seq: int, tied: bool) -> dict:
    L, hidden, dim = w["w1"].shape
    return {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": dim,
            "intermediate_size": hidden, "num_hidden_layers": L, "num_attention_heads": heads,
            "num_key_value_heads": kv_heads, "vocab_size": w["tok_embeddings"].shape[0],
            "max_position_embeddings": seq, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
            "tie_word_embeddings": tied, "hidden_act": "silu", "torch_dtype": "float32"}


# -- GGUF via gguf-py ---------------------------------------------------------------------
def write_gguf(path: str, w: dict[str, np.ndarray], heads: int, kv_heads: int, seq: int, qtype: str,
               tokens: list[str] | None = None, scores: list[float] | None = None,
               token_types: list[int] | None = None, tied: bool = False) -> None:
    """A llama GGUF as llama.cpp's converter lays it out (q/k rows in Meta's order)."""
    import gguf
    L, hidden, dim = w["w1"].shape
    wr = gguf.GGUFWriter(path, "llama")
    wr.add_name("tiny-test")
    wr.add_context_length(seq)
    wr.add_embedding_length(dim)
    wr.add_block_count(L)
    wr.add_feed_forward_length(hidden)
    wr.add_head_count(heads)
    wr.add_head_count_kv(kv_heads)
    wr.add_rope_dimension_count(dim // heads)
    wr.add_layer_norm_rms_eps(1e-5)
    wr.add_rope_freq_base(10000.0)
    if tokens is not None:
        wr.add_tokenizer_model("llama")
        wr.add_token_list(tokens)
        wr.add_token_scores(scores or [0.0] * len(tokens))
        wr.add_token_types(token_types or [1] * len(tokens))
        wr.add_bos_token_id(1)
        wr.add_eos_token_id(2)
    q = {"F16": gguf.GGMLQuantizationType.F16, "F32": gguf.GGMLQuantizationType.F32,
         "Q8_0": gguf.GGMLQuantizationType.Q8_0}[qtype]

    def add(name: str, a: np.ndarray, matrix: bool) -> None:
        a = np.ascontiguousarray(a, np.float32)
        if not matrix or qtype == "F32":
            wr.add_tensor(name, a)
        elif qtype == "F16":
            wr.add_tensor(name, a.astype(np.float16))
        else:
            wr.add_tensor(name, gguf.quants.quantize(a, q), raw_dtype=q)

    names = {"attn_norm": "attn_norm", "ffn_norm": "ffn_norm", "wq": "attn_q", "wk": "attn_k", "wv": "attn_v",
             "wo": "attn_output", "w1": "ffn_gate", "w2": "ffn_down", "w3": "ffn_up"}
    add("token_embd.weight", w["tok_embeddings"], True)
    add("output_norm.weight", w["final_norm"], False)
    if not tied:
        add("output.weight", w["output"], True)
    for name, g in names.items():
        for layer in range(L):
            add(f"blk.{layer}.{g}.weight", w[name][layer], w[name].ndim == 3)
    wr.write_header_to_file()
    wr.write_kv_data_to_file()
    wr.write_tensors_to_file()
    wr.close()


def tiny_tokens() -> tuple[list[str], list[float], list[int]]:
    words = ["\u2581a", "\u2581b", "\u2581c", "\u2581the", "\u2581cat", "\u2581sat"]
    letters = list("abcdefghijklmnopqrstuvw")
    toks = ["<unk>", "<s>", "</s>"] + words + letters
    assert len(toks) == VOCAB, len(toks)
    scores = [0.0, 0.0, 0.0] + [-float(i) for i in range(len(toks) - 3)]
    types = [2, 3, 3] + [1] * (len(toks) - 3)
    return toks, scores, types


def main() -> None:
    w = tiny_weights()
    kv = KV_HEADS
    write_llama2c_v0(os.path.join(HERE, "tiny.bin"), w, HEADS, kv, SEQ)
    params = {"dim": DIM, "n_layers": LAYERS, "n_heads": HEADS, "n_kv_heads": kv, "vocab_size": VOCAB,
              "multiple_of": 32, "norm_eps": 1e-5, "max_seq_len": SEQ}
    # Meta's formula: int(2 * 4 * 32 / 3) = 85 -> rounded up to a multiple of 32 = 96, so say it explicitly
    write_meta(os.path.join(HERE, "meta1"), w, {**params, "hidden_dim": HIDDEN})
    write_meta(os.path.join(HERE, "meta2"), w, {**params, "hidden_dim": HIDDEN}, shards=2, dtype="float16")
    # legacy (non-zip) serialization, tied classifier; hidden derived: multiple_of 16, ffn_dim_multiplier 0.75 -> 64
    write_meta(os.path.join(HERE, "meta_legacy"), w,
               {**params, "vocab_size": -1, "multiple_of": 16, "ffn_dim_multiplier": 0.75},
               dtype="bfloat16", legacy=True, tie=True)
    write_hf(os.path.join(HERE, "hf"), w, hf_config(w, HEADS, kv, SEQ, tied=False))
    write_hf(os.path.join(HERE, "hf_sharded"), w, hf_config(w, HEADS, kv, SEQ, tied=True), shards=2,
             dtype="bfloat16")
    toks, scores, types = tiny_tokens()
    write_gguf(os.path.join(HERE, "tiny-f16.gguf"), w, HEADS, kv, SEQ, "F16", toks, scores, types)
    write_gguf(os.path.join(HERE, "tiny-q8_0.gguf"), w, HEADS, kv, SEQ, "Q8_0", toks, scores, types, tied=True)
    print("fixtures written to", HERE, file=sys.stderr)


if __name__ == "__main__":
    main()
