"""llama2.c checkpoint formats load to the same model; bad files fail with one clear line."""
from __future__ import annotations

import mmap
import os
import struct
import subprocess
import sys

import numpy as np
import pytest

from inference.backends.cpu import CpuBackend
from inference.formats.llama2c import MAGIC, load_llama2c
from inference.config import ModelConfig
from inference.errors import ModelFormatError
from inference.weights import ModelWeights, random_weights

from .conftest import ASSETS, ROOT

DEFAULT_BIN = os.path.join(ASSETS, "stories260K.bin")


def write_v1(path: str, w: ModelWeights) -> None:
    """Test-side writer of llama2.c's version-1 layout (fp32), from the format's spec."""
    c = w.config
    head = struct.pack("<Ii7iB", MAGIC, 1, c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads,
                       c.vocab_size, c.seq_len, int(c.shared_classifier))
    with open(path, "wb") as f:
        f.write(head + b"\0" * (256 - len(head)))
        for t in (w.attn_norm, w.ffn_norm, w.final_norm, w.tok_embeddings,
                  w.wq, w.wk, w.wv, w.wo, w.w1, w.w2, w.w3):
            f.write(np.ascontiguousarray(t, np.float32).tobytes())
        if not c.shared_classifier:
            f.write(np.ascontiguousarray(w.output, np.float32).tobytes())


def write_v0(path: str, w: ModelWeights) -> None:
    """Test-side writer of the legacy layout (negative vocab = separate classifier)."""
    c = w.config
    vocab = c.vocab_size if c.shared_classifier else -c.vocab_size
    with open(path, "wb") as f:
        f.write(struct.pack("<7i", c.dim, c.hidden_dim, c.n_layers, c.n_heads, c.n_kv_heads, vocab, c.seq_len))
        for t in (w.tok_embeddings, w.attn_norm, w.wq, w.wk, w.wv, w.wo, w.ffn_norm, w.w1, w.w2, w.w3,
                  w.final_norm, np.zeros(c.seq_len * c.head_dim, np.float32)):
            f.write(np.ascontiguousarray(t, np.float32).tobytes())
        if not c.shared_classifier:
            f.write(np.ascontiguousarray(w.output, np.float32).tobytes())


def logits_after(weights: ModelWeights, ids: list[int]) -> np.ndarray:
    b = CpuBackend(weights)
    b.forward(ids, 0)
    return b.logits()


def test_default_model_is_memory_mapped():
    w = load_llama2c(DEFAULT_BIN)
    assert w.config.n_kv_heads < w.config.n_heads  # the shipped model uses GQA
    assert w.output is w.tok_embeddings
    base = w.wq[0]
    while getattr(base, "base", None) is not None:
        base = base.base
    assert isinstance(base, memoryview) and isinstance(base.obj, mmap.mmap)  # a view of the file, not a copy


def test_v1_of_default_model_gives_same_logits(tmp_path):
    w0 = load_llama2c(DEFAULT_BIN)
    p = str(tmp_path / "v1.bin")
    write_v1(p, w0)
    w1 = load_llama2c(p)
    assert w1.config == w0.config
    ids = [1, 403, 407, 261, 378]
    np.testing.assert_array_equal(logits_after(w0, ids), logits_after(w1, ids))


@pytest.mark.parametrize("shared", [True, False])
def test_v0_and_v1_random_model_with_separate_classifier(tmp_path, shared):
    cfg = ModelConfig(dim=48, hidden_dim=100, n_layers=2, n_heads=6, n_kv_heads=2, vocab_size=96,
                      seq_len=32, shared_classifier=shared)
    w = random_weights(cfg, seed=5)
    p0, p1 = str(tmp_path / "v0.bin"), str(tmp_path / "v1.bin")
    write_v0(p0, w)
    write_v1(p1, w)
    a, b = load_llama2c(p0), load_llama2c(p1)
    assert a.config == b.config == cfg
    assert (a.output is a.tok_embeddings) == shared
    ids = [1, 5, 9, 20]
    np.testing.assert_array_equal(logits_after(a, ids), logits_after(b, ids))
    np.testing.assert_array_equal(logits_after(a, ids), logits_after(w, ids))


def test_truncated_file(tmp_path):
    data = open(DEFAULT_BIN, "rb").read()
    p = tmp_path / "cut.bin"
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError, match="truncated"):
        load_llama2c(str(p))


def test_foreign_files(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"PK\x03\x04" + os.urandom(300))
    with pytest.raises(ModelFormatError):
        load_llama2c(str(p))
    p.write_bytes(struct.pack("<Ii", MAGIC, 7) + b"\0" * 300)
    with pytest.raises(ModelFormatError, match="version 7"):
        load_llama2c(str(p))
    p.write_bytes(b"tiny")
    with pytest.raises(ModelFormatError, match="too short"):
        load_llama2c(str(p))


def run_cli(*args: str, cwd: str | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300)


@pytest.mark.parametrize("case", ["truncated", "magic", "missing", "small_tokenizer"])
def test_cli_bad_input_is_one_line_exit_2(tmp_path, case):
    data = open(DEFAULT_BIN, "rb").read()
    model = tmp_path / "model.bin"
    args: list[str] = []
    if case == "truncated":
        model.write_bytes(data[:-1000])
    elif case == "magic":
        model.write_bytes(struct.pack("<Ii", MAGIC, 9) + data[8:])
    elif case == "missing":
        model = tmp_path / "nope.bin"
    else:
        model.write_bytes(data)
        small = tmp_path / "small_tok.bin"
        tok = open(os.path.join(ASSETS, "tok512.bin"), "rb").read()
        off = 4
        for _ in range(300):  # keep the first 300 whole records: a valid but smaller vocabulary
            off += 8 + struct.unpack_from("<i", tok, off + 4)[0]
        small.write_bytes(tok[:off])
        args = ["--tokenizer", str(small)]
    r = run_cli("generate", "--model", str(model), *args, "-p", "hi", "-n", "3", cwd=str(tmp_path))
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-chat: error:"), r.stderr
    assert "Traceback" not in r.stderr
    if case == "small_tokenizer":
        assert "300 tokens" in r.stderr and "512" in r.stderr
