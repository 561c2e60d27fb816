"""`llama-chat serve` as a command: bad flags and an unusable port or device are one line
and exit 2 (before any model is loaded where possible); --prompt-cache writes the first
prompt and a restarted server starts with it in every slot."""
from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from .conftest import ROOT
from .test_server_openai import Server, openai

STORIES = os.path.join(ROOT, "assets", "stories260K.bin")


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "app.cli", "serve", "--model", STORIES, *args], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, timeout=300,
                          stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,words", [
    (["--port", "70000"], "--port"), (["--parallel", "0"], "--parallel"), (["--queue", "-1"], "--queue"),
    (["--ctx-per-slot", "1"], "--ctx-per-slot"), (["--ctx-per-slot", "999999", "--port", "0"], "context"),
    (["--host", "no-such-host.invalid", "--port", "0"], "cannot listen"), (["--api-key", ""], "--api-key"),
    (["--threads", "0"], "--threads"), (["--template", "nope", "--port", "0"], "template"),
])
def test_bad_settings_are_one_line(args, words):
    r = serve(*args)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("llama-chat: error:") and words in lines[0], r.stderr


def test_a_taken_port_is_one_line():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen()
        r = serve("--port", str(s.getsockname()[1]))
    assert r.returncode == 2 and "cannot listen on 127.0.0.1" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_cuda_without_batching_is_refused():
    from inference.backends import cuda
    if hasattr(getattr(cuda, "CudaBackend", None), "forward_batch"):
        pytest.skip("this CUDA backend has forward_batch")
    r = serve("--device", "cuda", "--port", "0")
    assert r.returncode == 2 and "--device cpu" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.skipif(openai is None, reason="the openai client is not installed")
def test_prompt_cache_is_written_then_loaded_into_every_slot(tmp_path, default_model):
    from inference.batch import common_prefix

    tok = default_model.tokenizer
    path = str(tmp_path / "primed.cache")
    prime = "Once upon a time, there was a little girl named Lily who loved to"
    s = Server("--model", STORIES, "--parallel", "2", "--prompt-cache", path)
    try:
        r = s.client().completions.create(model="stories260K", prompt=prime, max_tokens=8, temperature=0)
        first = r.choices[0].text
        assert os.path.exists(path) and "wrote" in s.stderr()
    finally:
        s.stop()
    s = Server("--model", STORIES, "--parallel", "2", "--prompt-cache", path)
    try:
        assert "tokens in every slot" in s.stderr()
        client = s.client()
        for word in (" play", " run"):   # the second finds the other slot primed too
            ids = tok.encode(prime + word)
            r = client.completions.create(model="stories260K", prompt=prime + word, max_tokens=8, temperature=0)
            assert r.usage.prompt_tokens == len(ids)
            assert r.usage.prompt_tokens_details.cached_tokens == common_prefix(tok.encode(prime), ids)
        assert s.health()["slots"] == 2
        again = client.completions.create(model="stories260K", prompt=prime, max_tokens=8, temperature=0)
        assert again.choices[0].text == first
    finally:
        s.stop()


def test_the_default_context_is_the_models_capped_by_memory(monkeypatch):
    from app.commands import serve as cmd
    from inference.config import SHAPES
    from inference.errors import LlamaChatError

    cfg = SHAPES["llama3-8b"]                    # 8192 positions, 128 KiB of keys and values each
    monkeypatch.setattr(cmd, "available_memory", lambda: 1 << 40)
    assert cmd.default_context(cfg, 4) == cfg.seq_len
    monkeypatch.setattr(cmd, "available_memory", lambda: 8 << 30)
    ctx = cmd.default_context(cfg, 4)
    assert 256 <= ctx < cfg.seq_len and 4 * ctx * cmd.kv_bytes_per_position(cfg) <= 4 << 30
    monkeypatch.setattr(cmd, "available_memory", lambda: 64 << 20)
    with pytest.raises(LlamaChatError, match="--parallel"):
        cmd.default_context(cfg, 4)
