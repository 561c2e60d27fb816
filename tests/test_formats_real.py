"""The shipped stories260K, converted by torch / safetensors / gguf, decodes llama2.c's tokens.

assets/stories260K.bin (5 layers, 8 heads / 4 kv heads, shared classifier) is written as a
Meta checkpoint (one shard with a tied classifier, two model-parallel shards), as HF
safetensors (rotary-permuted q/k) and as a GGUF file carrying the tokenizer in its
metadata; each must give the recorded greedy continuation token for token through the
ordinary loader, engine and CPU backend. The conversions were made once by torch,
safetensors and gguf (`python -m tests.test_formats_real` rewrites them) and are committed
under tests/data/stories260K-converted, so CI checks them without those libraries.
"""
from __future__ import annotations

import importlib.util
import os
import shutil

import numpy as np
import pytest

from .conftest import ASSETS, DATA

CONVERTED = os.path.join(DATA, "stories260K-converted")
KINDS = {"meta-1-shard": "meta1", "meta-2-shards": "meta2", "hf": "hf", "gguf-f32": "stories260K.gguf"}


def _fixture_writers():
    path = os.path.join(DATA, "formats", "make_fixtures.py")
    spec = importlib.util.spec_from_file_location("make_fixtures", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def write_conversions(root: str) -> dict[str, str]:
    """Convert the shipped model with the independent writers (needs torch, safetensors, gguf)."""
    from pathlib import Path

    from inference.formats.llama2c import load_llama2c
    mk = _fixture_writers()
    src = load_llama2c(os.path.join(ASSETS, "stories260K.bin"))
    c = src.config
    w = {n: np.asarray(getattr(src, n), np.float32) for n in
         ("tok_embeddings", "attn_norm", "ffn_norm", "final_norm", "wq", "wk", "wv", "wo", "w1", "w2", "w3", "output")}
    root = Path(root)
    # no hidden_dim: it must be derived from dim 64 and multiple_of 4 as Meta does (172)
    params = {"dim": c.dim, "n_layers": c.n_layers, "n_heads": c.n_heads, "n_kv_heads": c.n_kv_heads,
              "vocab_size": c.vocab_size, "multiple_of": 4, "norm_eps": 1e-5, "max_seq_len": c.seq_len}
    out = {}
    out["meta-1-shard"] = str(root / "meta1")
    mk.write_meta(out["meta-1-shard"], w, params, tie=True)
    out["meta-2-shards"] = str(root / "meta2")
    mk.write_meta(out["meta-2-shards"], w, params, shards=2)
    out["hf"] = str(root / "hf")
    mk.write_hf(out["hf"], w, mk.hf_config(w, c.n_heads, c.n_kv_heads, c.seq_len, tied=True))
    for d in out.values():
        shutil.copy(os.path.join(DATA, "tok512.model"), os.path.join(d, "tokenizer.model"))
    if importlib.util.find_spec("gguf") is not None:
        import sentencepiece as spm
        sp = spm.SentencePieceProcessor(model_file=os.path.join(DATA, "tok512.model"))
        n = sp.get_piece_size()
        tokens = [sp.id_to_piece(i) for i in range(n)]
        scores = [sp.get_score(i) for i in range(n)]
        types = [3 if sp.is_control(i) else 2 if sp.is_unknown(i) else 6 if sp.is_byte(i) else 1 for i in range(n)]
        out["gguf-f32"] = str(root / "stories260K.gguf")
        mk.write_gguf(out["gguf-f32"], w, c.n_heads, c.n_kv_heads, c.seq_len, "F32", tokens, scores, types, tied=True)
    return out


@pytest.fixture(scope="module")
def converted():
    return {kind: os.path.join(CONVERTED, name) for kind, name in KINDS.items()
            if os.path.exists(os.path.join(CONVERTED, name))}


@pytest.mark.parametrize("kind", ["meta-1-shard", "meta-2-shards", "hf", "gguf-f32"])
def test_greedy_tokens_equal_llama2c(kind, converted, reference, tmp_path, monkeypatch):
    if kind not in converted:
        pytest.fail(f"committed conversion {KINDS[kind]} is missing: run python -m tests.test_formats_real")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    from inference.backends.cpu import CpuBackend
    from inference.engine import Engine, Finished
    from inference.loader import load_model
    from inference.sampler import GREEDY

    loaded = load_model(converted[kind], quant="none")
    assert loaded.config.hidden_dim == 172 and loaded.config.n_kv_heads == 4
    assert loaded.weights.weight_type == "fp32"
    if kind == "meta-1-shard":
        assert loaded.config.shared_classifier  # one storage referenced twice
    engine = Engine(CpuBackend(loaded.weights), loaded.tokenizer)
    for case in reference["cases"]:
        assert loaded.tokenizer.encode(case["prompt"]) == case["prompt_ids"]
        n_new = case["steps"] - len(case["prompt_ids"]) + 1
        engine.tokens.clear()
        events = list(engine.generate(case["prompt_ids"], GREEDY.with_(max_new_tokens=n_new)))
        fin = events[-1]
        assert isinstance(fin, Finished)
        got = case["prompt_ids"][1:] + list(fin.new_tokens)
        assert got == case["ids_after_bos"][: len(got)], (kind, case["prompt"])
        assert len(got) == len(case["ids_after_bos"]) or fin.reason == "eos"


if __name__ == "__main__":
    shutil.rmtree(CONVERTED, ignore_errors=True)
    os.makedirs(CONVERTED)
    print(write_conversions(CONVERTED))
