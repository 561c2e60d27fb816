"""The CLI under bad flags, broken files, unwritable output and signals, run as users run
it (`python -m app.cli` in a subprocess): exit status 2 and exactly one stderr line
`llama-chat: error: ...`, never a traceback; Ctrl-C ends `generate` with status 130."""
from __future__ import annotations

import ctypes.util
import json
import os
import shutil
import signal
import struct
import subprocess
import threading
import time

import numpy as np
import pytest

from .hostile import (ASSETS_BIN, ASSETS_TOK, CONVERTED, DATA, FORMATS, PYTHON, ROOT, assert_cli_error,
                      gguf_meta_and_tensors, run_cli, write, write_gguf_file)


# -- flags ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,words", [
    (("-n", "0"), "max-new-tokens"), (("-n", "-1"), "max-new-tokens"), (("--top-p", "2"), "top-p"),
    (("--top-p", "nan"), "top-p"), (("--temperature", "-1"), "temperature"), (("--temperature", "inf"), "temperature"),
    (("--top-k", "-1"), "top-k"), (("--min-p", "1.5"), "min-p"), (("--repeat-penalty", "0"), "repeat-penalty"),
    (("--repeat-last-n", "-1"), "repeat-last-n"), (("--seed", "-1"), "seed"), (("--seed", str(1 << 64)), "seed"),
    (("-n", "abc"), "invalid int"), (("--top-p", "x"), "invalid float"), (("--ctx", "0"), "ctx"),
    (("--ctx", "100000"), "context"), (("--group-size", "0"), "group size"),
    (("--group-size", "100000000000"), "group size"), (("--group-size", "-1"), "group size"),
    (("--gpu-mem", "x"), "gpu-mem"), (("--gpu-mem", "8"), "--device cuda"), (("--device", "tpu"), "invalid choice"),
    (("--quant", "int3"), "invalid choice"), (("--bogus",), "unrecognized"), (("--prompt-ids", "1,x"), "prompt-ids"),
    (("--prompt-ids", "99999"), "outside the vocabulary"), (("--prompt-ids", "-1"), "outside the vocabulary"),
    (("--prompt-ids", ","), "empty"), (("-f", "/nonexistent/prompt.txt"), "prompt file"),
    (("-f", "/dev/zero"), "larger than"), (("-f", "/"), "prompt file"), (("--system", "x"), "--chat"),
    (("--chat", "hi", "--template", "/nonexistent.jinja"), "template"), (("-m", "/nonexistent/model.bin"), "not found"),
    (("-t", "/nonexistent/tok.bin"), "not found"), (("-t", os.path.join(DATA, "tokenizer.model")), "32000"),
    (("-p", "x", "--chat", "y"), "not allowed"),
])
def test_bad_generate_flags(args, words):
    has_prompt = any(a in args for a in ("-p", "--prompt-ids", "-f", "--chat"))
    assert_cli_error(run_cli("generate", *args) if has_prompt else run_cli("generate", "-p", "Once", *args), words)


def test_invalid_utf8_argument_and_bad_commands():
    r = run_cli("generate", "-p", b"\xff\xfe".decode("utf-8", "surrogateescape"))
    assert_cli_error(r, "UTF-8")
    assert_cli_error(run_cli("nosuchcommand"), "invalid choice")
    assert_cli_error(run_cli("info"), "required")
    assert_cli_error(run_cli("tokenize"), "required")
    assert_cli_error(run_cli("tokenize", "hi", "-t", "/dev/null"), "tokenizer")
    assert_cli_error(run_cli("info", "/dev/zero"), "not a regular file")


def test_bad_template_file(tmp_path):
    bad = write(str(tmp_path / "bad.jinja"), b"{% for %}")
    assert_cli_error(run_cli("generate", "--chat", "hi", "--template", bad), "does not compile")
    binary = write(str(tmp_path / "bin.jinja"), b"\xff\xfe{{ x }}")
    assert_cli_error(run_cli("generate", "--chat", "hi", "--template", binary))
    os.mkfifo(tmp_path / "fifo.jinja")
    assert_cli_error(run_cli("generate", "--chat", "hi", "--template", str(tmp_path / "fifo.jinja"), timeout=60),
                     "not a regular file")
    for body in (b"{{ 1/0 }}", b"{{ raise_exception('no') }}", b"{% for i in range(10**10) %}x{% endfor %}"):
        assert_cli_error(run_cli("generate", "--chat", "hi", "--template", write(str(tmp_path / "t.jinja"), body)),
                         "failed to render")


def test_fifo_as_model_tokenizer_and_info(tmp_path):
    fifo = str(tmp_path / "model.gguf")
    os.mkfifo(fifo)
    for args in (("generate", "-m", fifo, "-p", "x"), ("info", fifo), ("tokenize", "x", "-t", fifo),
                 ("generate", "-t", fifo, "-p", "x")):
        assert_cli_error(run_cli(*args, timeout=60))


# -- output that cannot be written -----------------------------------------------------------------
@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="no /dev/full here")
def test_stdout_full_or_closed():
    with open("/dev/full", "w") as full:
        r = subprocess.run([PYTHON, "-m", "app.cli", "generate", "-p", "Once", "-n", "4"], stdout=full,
                           stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=120)
    assert_cli_error(r, "cannot write")
    r = subprocess.run([PYTHON, "-m", "app.cli", "tokenize", "hello"], stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT), timeout=60,
                       preexec_fn=lambda: os.close(1))
    assert_cli_error(r, "closed")


# -- models that are broken, and --prompt-ids with a broken tokenizer ----------------------------------
@pytest.fixture(scope="module")
def unbuildable_gguf(tmp_path_factory):
    """The tiny F16 model whose vocabulary names an unknown pre-tokenizer (byte-level)."""
    meta, tensors = gguf_meta_and_tensors(os.path.join(FORMATS, "tiny-f16.gguf"))
    meta.update({"tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "mystery-9",
                 "tokenizer.ggml.merges": ["a b"]})
    return write_gguf_file(str(tmp_path_factory.mktemp("g") / "m.gguf"), meta, tensors)


def test_prompt_ids_run_without_a_buildable_tokenizer(unbuildable_gguf):
    r = run_cli("generate", "-m", unbuildable_gguf, "--prompt-ids", "1,5,7", "-n", "3", "--temperature", "0",
                "--json", timeout=300)
    err = r.stderr.decode()
    assert r.returncode == 0 and "Traceback" not in err, err
    warnings = [ln for ln in err.splitlines() if ln.startswith("llama-chat:")]
    assert len(warnings) == 1 and warnings[0].startswith("llama-chat: warning:") and "mystery-9" in warnings[0]
    out = json.loads(r.stdout)
    assert out["prompt_ids"] == [1, 5, 7] and len(out["ids"]) == 3 and out["text"] == ""
    # without --prompt-ids the same problem is an error, and info calls it one
    assert_cli_error(run_cli("generate", "-m", unbuildable_gguf, "-p", "hi"), "mystery-9")
    assert_cli_error(run_cli("info", unbuildable_gguf), "mystery-9")


def test_model_and_tokenizer_mismatch():
    for args in (("generate", "-m", ASSETS_BIN, "-t", os.path.join(DATA, "tokenizer.model"), "-p", "x"),
                 ("info", ASSETS_BIN, "-t", os.path.join(DATA, "tokenizer.model")),
                 ("info", os.path.join(FORMATS, "tiny.bin"), "-t", ASSETS_TOK),
                 ("generate", "-m", os.path.join(FORMATS, "tiny.bin"), "-p", "x")):
        assert_cli_error(run_cli(*args))


@pytest.mark.parametrize("damage", ["truncated", "lying-header", "garbage", "memo-bomb", "deep-json"])
def test_info_and_generate_on_broken_models(tmp_path, damage):
    if damage == "truncated":
        path = write(str(tmp_path / "m.gguf"), open(os.path.join(CONVERTED, "stories260K.gguf"), "rb").read()[:5000])
    elif damage == "lying-header":
        data = open(ASSETS_BIN, "rb").read()
        path = write(str(tmp_path / "m.bin"), struct.pack("<i", 4) + data[4:12] + struct.pack("<i", 4) + data[16:])
    elif damage == "garbage":
        path = write(str(tmp_path / "m.bin"), os.urandom(4096))
    elif damage == "memo-bomb":
        from .test_hostile_pth import _memo_bomb
        from .hostile import TINY_PARAMS, write_pth
        path = str(tmp_path / "meta")
        os.mkdir(path)
        with open(os.path.join(path, "params.json"), "w") as f:
            json.dump(TINY_PARAMS, f)
        write_pth(os.path.join(path, "consolidated.00.pth"), None, pkl=_memo_bomb(), storages=[])
    else:
        path = str(tmp_path / "hf")
        shutil.copytree(os.path.join(FORMATS, "hf"), path)
        with open(os.path.join(path, "config.json"), "w") as f:
            f.write("[" * 100000 + "]" * 100000)
    assert_cli_error(run_cli("info", path, timeout=60))
    assert_cli_error(run_cli("generate", "-m", path, "-p", "x", timeout=60))


@pytest.mark.skipif(bool(ctypes.util.find_library("cuda")), reason="a CUDA driver is installed")
def test_cuda_without_a_gpu():
    assert_cli_error(run_cli("generate", "-p", "x", "--device", "cuda"), "--device cpu")
    assert_cli_error(run_cli("info", ASSETS_BIN, "--device", "cuda", "--tokenizer", ASSETS_TOK + ".missing"))


# -- signals ---------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def slow_model(tmp_path_factory):
    """A random llama2.c v0 model that never samples BOS/EOS (their embedding rows are zero,
    every other logit is positive somewhere) with an 8192-token context: greedy decoding
    runs for seconds, streaming text, until it is interrupted."""
    d = tmp_path_factory.mktemp("slow")
    dim, hidden, layers, heads, vocab, seq = 128, 384, 4, 4, 512, 8192
    rng = np.random.default_rng(0)
    emb = rng.normal(0, 0.5, (vocab, dim)).astype(np.float32)
    emb[:3] = 0
    parts = [struct.pack("<7i", dim, hidden, layers, heads, heads, vocab, seq), emb.tobytes()]
    g = lambda *s: rng.normal(0, 0.05, s).astype(np.float32).tobytes()  # noqa: E731
    parts += [np.ones((layers, dim), np.float32).tobytes(), g(layers, dim, dim), g(layers, dim, dim),
              g(layers, dim, dim), g(layers, dim, dim), np.ones((layers, dim), np.float32).tobytes(),
              g(layers, hidden, dim), g(layers, dim, hidden), g(layers, hidden, dim), np.ones(dim, np.float32).tobytes(),
              bytes(4 * seq * (dim // heads))]
    path = write(str(d / "slow.bin"), b"".join(parts))
    shutil.copy(ASSETS_TOK, d / "tokenizer.bin")
    return path


def _interrupt_after(args: list[str], first_output: bool, delay: float, cache: str,
                     sig: int = signal.SIGINT, ignored: int | None = None) -> tuple[int, str, bytes]:
    """Run the CLI, send `sig` (after its first output, then `delay` s); `ignored`: a
    signal it inherits as ignored, as under nohup."""
    ignore = None if ignored is None else (lambda: signal.signal(ignored, signal.SIG_IGN))
    p = subprocess.Popen([PYTHON, "-m", "app.cli", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                         cwd=ROOT, env=dict(os.environ, PYTHONPATH=ROOT, XDG_CACHE_HOME=cache), preexec_fn=ignore)
    watchdog = threading.Timer(300, p.kill)   # a cold Numba cache compiles for a minute on CI
    watchdog.start()
    try:
        out = b""
        if first_output:   # wait until it streams, then interrupt
            out = p.stdout.read1(1 << 16)
        time.sleep(delay)
        p.send_signal(sig)
        rest, err = p.communicate(timeout=60)
    finally:
        watchdog.cancel()
    return p.returncode, err.decode(), out + rest


def test_sigint_during_generate_is_exit_130(slow_model, tmp_path):
    code, err, out = _interrupt_after(["generate", "-m", slow_model, "-p", "Once", "-n", "100000", "--temperature",
                                       "0", "--ctx", "8192"], first_output=True, delay=0.5, cache=str(tmp_path))
    assert code == 130, (code, err)
    assert err.strip().splitlines() == ["llama-chat: interrupted"], err
    assert out.endswith(b"\n") and len(out) > 20


@pytest.mark.parametrize("sig,word", [(signal.SIGTERM, "terminated"), (signal.SIGHUP, "hung up")])
def test_sigterm_or_sighup_during_generate_ends_it_as_ctrl_c_does(slow_model, tmp_path, sig, word):
    code, err, out = _interrupt_after(["generate", "-m", slow_model, "-p", "Once", "-n", "100000", "--temperature",
                                       "0", "--ctx", "8192"], first_output=True, delay=0.5, cache=str(tmp_path),
                                      sig=sig)
    assert code == 128 + sig, (code, err)
    assert err.strip().splitlines() == [f"llama-chat: {word}"], err
    assert out.endswith(b"\n") and len(out) > 20          # the streamed text is kept, its line ended


def test_an_inherited_ignored_sighup_stays_ignored(slow_model, tmp_path):
    """`nohup llama-chat ...`: the terminal closing must not end the command."""
    code, err, _ = _interrupt_after(["generate", "-m", slow_model, "-p", "Once", "-n", "300", "--temperature", "0"],
                                    first_output=True, delay=0.0, cache=str(tmp_path), sig=signal.SIGHUP,
                                    ignored=signal.SIGHUP)
    assert code == 0 and "generated 300 tok" in err, (code, err)


@pytest.mark.parametrize("delay", [0.3, 0.8])
def test_sigint_while_starting_or_loading_is_exit_130(slow_model, delay, tmp_path):
    code, err, _ = _interrupt_after(["generate", "-m", slow_model, "-p", "Once", "-n", "100000", "--temperature",
                                     "0", "--ctx", "8192", "--quant", "int8"], first_output=False, delay=delay,
                                    cache=str(tmp_path))
    assert code == 130, (code, err)
    assert "Traceback" not in err and err.strip().splitlines()[-1] == "llama-chat: interrupted", err
    assert all(not ln.startswith("llama-chat:") or ln == "llama-chat: interrupted"
               for ln in err.strip().splitlines()), err


@pytest.mark.parametrize("args", [("bench", "--random", "nosuchshape"), ("bench", "--prompt-tokens", "0"),
                                  ("bench", "--threads", "-1"), ("bench", "--group-size", "0"),
                                  ("bench", "--random", "stories260K", "--prompt-tokens", "100000"),
                                  ("quantize", ASSETS_BIN, "-o", "/nonexistent/dir/out.bin"),
                                  ("quantize", ASSETS_BIN, "--group-size", "0"), ("validate", "--steps", "-1"),
                                  ("tokenize", "x", "--model", "/nonexistent")])
def test_other_commands_bad_flags(args):
    assert_cli_error(run_cli(*args))


