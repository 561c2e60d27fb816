"""One entry point from a path on disk to a runnable model: `load_model`, `create_backend`.

`load_model` detects the format by content, validates every header at the door, applies
the quantization plan (through the on-disk cache), and finds the tokenizer: the model
file's own (GGUF), else one that belongs to it (HF/Meta directories), else one beside it
whose vocabulary matches the model.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Callable

from .config import ModelConfig
from .errors import BackendError, LlamaChatError, ModelFormatError, TokenizerError
from .tokenizer import Tokenizer, load_tokenizer
from .weights import ModelWeights

Progress = Callable[[int, int], None]

ASSETS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "assets")
DEFAULT_MODEL = os.path.join(ASSETS, "stories260K.bin")


@dataclass
class LoadedModel:
    """A model's weights on the host, its tokenizer, and where they came from."""

    config: ModelConfig
    weights: ModelWeights
    tokenizer: Tokenizer
    path: str
    format: str          # "llama2c", "meta-pth", "hf-safetensors", "gguf"
    source_dtype: str    # storage of the matrices in the file: "fp32", "q4_k+q6_k", ...
    chat_template: str | None = None   # the model's own Jinja chat template, if it has one
    description: str = ""

    @property
    def name(self) -> str:
        base = os.path.basename(os.path.normpath(self.path))
        return os.path.splitext(base)[0] if os.path.isfile(self.path) else base


def tokenizer_candidates(model_path: str) -> list[str]:
    """Tokenizer files beside (or inside, for a directory) a model, best guesses first."""
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    out: list[str] = []
    for pattern in ("tokenizer.json", "tokenizer.model", "tokenizer.bin", "tok*.bin", "tok*.model"):
        for hit in sorted(glob.glob(os.path.join(folder, pattern))):
            if hit not in out and os.path.isfile(hit):
                out.append(hit)
    return out


def find_tokenizer(model_path: str, vocab_size: int | None = None) -> str | None:
    """The first tokenizer beside a model whose vocabulary has `vocab_size` tokens (any,
    when None); None when there is none."""
    for path in tokenizer_candidates(model_path):
        if vocab_size is None:
            return path
        try:
            load_tokenizer(path, vocab_size)
        except TokenizerError:
            continue
        return path
    return None


def resolve_tokenizer(source, model_path: str, requested: str | None) -> Tokenizer:
    """The tokenizer for an opened model (see the module docstring); one-line errors."""
    vocab = source.config.vocab_size
    if requested:
        return load_tokenizer(requested, vocab)
    own = source.tokenizer()
    if own is not None:
        if own.vocab_size != vocab:
            raise TokenizerError(f"the tokenizer in {model_path} has {own.vocab_size} tokens, the model {vocab}")
        return own
    if source.tokenizer_path:
        return load_tokenizer(source.tokenizer_path, vocab)
    found = find_tokenizer(model_path, vocab)
    if found is not None:
        return load_tokenizer(found, vocab)
    near = tokenizer_candidates(model_path)
    if near:
        raise TokenizerError(f"no tokenizer beside {model_path} has the model's {vocab}-token vocabulary "
                             f"({', '.join(os.path.basename(p) for p in near)} do not): pass --tokenizer")
    raise TokenizerError(f"no tokenizer found beside {model_path}: pass --tokenizer")


class NoTextTokenizer:
    """Stands in for a tokenizer that could not be loaded when the caller works in token
    ids alone (`generate --prompt-ids`): nothing is decoded and only -n ends a reply."""

    kind = "none"
    path = ""
    bos_id = eos_id = None
    add_bos = False
    chat_template = None
    eog_ids: frozenset[int] = frozenset()
    stop_ids: frozenset[int] = frozenset()

    def __init__(self, vocab_size: int, problem: str) -> None:
        self.vocab_size, self.problem = vocab_size, problem

    def describe(self) -> str:
        return f"no usable tokenizer: {self.problem}"

    def encode(self, text: str, bos: bool = True, **_: object) -> list[int]:
        raise TokenizerError(self.problem)

    def piece_bytes(self, token_id: int, prev_id: int | None = None) -> bytes:
        return b""

    def decode(self, ids) -> str:
        return ""


def load_model(path: str | None = None, tokenizer: str | None = None,
               quant: str | None = None, progress: Progress | None = None,
               group_size: int = 64, tokenizer_optional: bool = False) -> LoadedModel:
    """Load weights + tokenizer. `quant`: 'int8', 'int4', 'none', or None for the default.

    `group_size`: input columns per int8 scale when float weights are quantized (shrunk
    to divide the model's widths; part of the cache key). `progress(done, total)` is
    called while a first load quantizes; later loads map the cached weights.
    `tokenizer_optional`: a tokenizer that cannot be loaded is a warning, not an error.
    """
    from .formats import open_source
    from .quant_cache import quantized_weights
    from .quantize import resolve_plan

    if isinstance(group_size, bool) or not isinstance(group_size, int) or not 1 <= group_size <= 4096:
        raise LlamaChatError(f"the group size must be between 1 and 4096, got {group_size}")
    path = path or DEFAULT_MODEL
    if not os.path.exists(path):
        raise ModelFormatError(f"model not found: {path}")
    source = open_source(path)
    try:
        tok = resolve_tokenizer(source, path, tokenizer)
    except TokenizerError as e:
        if not tokenizer_optional:
            raise
        import sys
        print(f"llama-chat: warning: {e}; the output is not decoded", file=sys.stderr)
        tok = NoTextTokenizer(source.config.vocab_size, str(e))  # type: ignore[assignment]
    if getattr(tok, "chat_template", None) is None and source.chat_template:
        tok.chat_template = source.chat_template  # an HF directory whose tokenizer file has no template field
    plan = resolve_plan(source.config, source.all_float(), quant)
    weights = quantized_weights(source, path, plan, group_size, progress)
    return LoadedModel(source.config, weights, tok, path, source.format, source.dtype,
                       source.chat_template, source.description)


def create_backend(loaded: LoadedModel | ModelWeights, device: str = "cpu", **options: object):
    """A backend holding the weights on `device` ('cpu' or 'cuda')."""
    weights = loaded.weights if isinstance(loaded, LoadedModel) else loaded
    if device == "cpu":
        from .backends.cpu import CpuBackend
        return CpuBackend(weights, **options)
    if device == "cuda":
        try:
            from .backends.cuda import CudaBackend
        except ImportError as e:
            raise BackendError(f"the CUDA backend is unavailable ({e}); install llama-chat[cuda] or use --device cpu") from None
        return CudaBackend(weights, **options)
    raise LlamaChatError(f"unknown device {device!r}: use cpu or cuda")
