"""Shared by the tokenizer tests and tests/data/tokenizers/make_llamacpp_reference.py.

The llama.cpp reference ids were computed on vocab-only GGUF files that the generator
writes from these metadata dicts; the tests rebuild the same dicts and compare.
"""
from __future__ import annotations

import os

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
DATA = os.path.join(HERE, "data")
REFERENCE = os.path.join(DATA, "tokenizers", "llamacpp_reference.json")
SMOLLM2 = os.path.join(os.path.dirname(os.path.dirname(HERE)), "shared", "models",
                       "SmolLM2-135M-Instruct.Q4_1.gguf")
STORIES_GGUF = os.path.join(DATA, "stories260K-converted", "stories260K.gguf")

#: the architecture keys llama.cpp needs to open a vocab-only file (a tiny llama)
TINY_LLAMA_HPARAMS = {
    "general.architecture": "llama", "llama.context_length": 512, "llama.embedding_length": 64,
    "llama.block_count": 1, "llama.feed_forward_length": 172, "llama.attention.head_count": 8,
    "llama.attention.head_count_kv": 4, "llama.rope.dimension_count": 8,
    "llama.attention.layer_norm_rms_epsilon": 1e-5,
}


def sentencepiece_gguf_metadata(model_path: str) -> dict:
    """llama-type GGUF tokenizer metadata from a sentencepiece .model, the way llama.cpp's
    converter writes it (pieces with U+2581, scores, types 1/2/3/5/6)."""
    import sentencepiece as spm
    sp = spm.SentencePieceProcessor()
    sp.load(model_path)
    n = sp.get_piece_size()
    types = np.ones(n, np.int32)
    for i in range(n):
        if sp.is_unknown(i):
            types[i] = 2
        elif sp.is_control(i):
            types[i] = 3
        elif sp.is_unused(i):
            types[i] = 5
        elif sp.is_byte(i):
            types[i] = 6
    return {
        **TINY_LLAMA_HPARAMS, "general.name": os.path.basename(model_path),
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": [sp.id_to_piece(i) for i in range(n)],
        "tokenizer.ggml.scores": np.array([sp.get_score(i) for i in range(n)], np.float32),
        "tokenizer.ggml.token_type": types,
        "tokenizer.ggml.bos_token_id": sp.bos_id(), "tokenizer.ggml.eos_token_id": sp.eos_id(),
        "tokenizer.ggml.unknown_token_id": sp.unk_id(),
    }


def with_pre(meta: dict, pre: str) -> dict:
    """A byte-level vocabulary's metadata naming another pre-tokenizer."""
    return {**meta, "tokenizer.ggml.pre": pre}
