"""One entry point from a path on disk to a runnable model: `load_model`, `create_backend`.

`load_model` detects the format by content (llama2.c .bin here; Meta .pth, HF
safetensors and GGUF through `inference.formats`), finds the tokenizer beside the model
when none is given, checks that the two fit, and applies the requested quantization.
"""
from __future__ import annotations

import glob
import os
from dataclasses import dataclass
from typing import Callable

from .config import ModelConfig
from .errors import BackendError, LlamaChatError, ModelFormatError
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
    source_dtype: str    # storage in the file: "fp32", "fp16", "bf16", "int8"

    @property
    def name(self) -> str:
        base = os.path.basename(os.path.normpath(self.path))
        return os.path.splitext(base)[0] if os.path.isfile(self.path) else base


def find_tokenizer(model_path: str) -> str | None:
    """The tokenizer that sits beside (or inside, for a directory) a model file."""
    folder = model_path if os.path.isdir(model_path) else os.path.dirname(os.path.abspath(model_path))
    for pattern in ("tokenizer.model", "tokenizer.bin", "tok*.bin", "tok*.model"):
        hits = sorted(glob.glob(os.path.join(folder, pattern)))
        if hits:
            return hits[0]
    return None


def _detect(path: str) -> str:
    try:
        from .formats import detect_format
    except ImportError:
        return "llama2c"
    return detect_format(path)


def load_model(path: str | None = None, tokenizer: str | None = None,
               quant: str | None = None, progress: Progress | None = None,
               group_size: int = 64) -> LoadedModel:
    """Load weights + tokenizer. `quant`: 'int8', 'none', or None for the default policy.

    `group_size`: input columns per int8 scale when fp weights are quantized (shrunk to
    divide the model's widths; part of the cache key). `progress(done, total)` is called
    while a first load quantizes (a 7B model takes a minute or two); later loads map the
    cached int8 weights and call nothing.
    """
    if group_size < 1:
        raise LlamaChatError(f"the group size must be at least 1, got {group_size}")
    path = path or DEFAULT_MODEL
    if not os.path.exists(path):
        raise ModelFormatError(f"model not found: {path}")
    fmt = _detect(path)
    tok_path = tokenizer
    tok_obj: Tokenizer | None = None
    if fmt == "llama2c":
        from .checkpoint import load_llama2c
        weights = load_llama2c(path)
        source_dtype = weights.weight_type
        weights = apply_quant(weights, quant, path, progress, group_size)
    else:
        weights, source_dtype, default_tok = _load_other_format(path, quant, progress, group_size)
        if tok_path is None:
            if isinstance(default_tok, Tokenizer):
                tok_obj = default_tok
            else:
                tok_path = default_tok
    try:
        weights.check_shapes()
    except ValueError as e:
        raise ModelFormatError(f"{path}: {e}") from None
    config = weights.config
    if tok_obj is None:
        tok_path = tok_path or find_tokenizer(path)
        if tok_path is None:
            raise LlamaChatError(f"no tokenizer found beside {path}: pass --tokenizer")
        tok_obj = load_tokenizer(tok_path, config.vocab_size)
    elif tok_obj.vocab_size != config.vocab_size:
        raise LlamaChatError(f"the tokenizer in {path} has {tok_obj.vocab_size} tokens, the model {config.vocab_size}")
    return LoadedModel(config, weights, tok_obj, path, fmt, source_dtype)


def _load_other_format(path: str, quant: str | None, progress: Progress | None,
                       group_size: int = 64) -> tuple[ModelWeights, str, object]:
    """Meta / HF / GGUF weights, int8 through the cache when the policy says so.

    For int8 a valid cache is used without touching the source's tensors; otherwise the
    source is quantized layer by layer as it is read (never a full fp32 copy of an
    fp16/bf16 model in RAM) and the cache is written from that.
    """
    from .formats import load as load_format, open_source
    from .quantize import cached_int8, quantize_cached, resolve_quant_for

    src = open_source(path)
    plan = resolve_quant_for(src.config, src.dtype, quant)
    if plan == "int8" and src.dtype != "int8":
        weights = cached_int8(path, src.config, group_size)
        if weights is not None:
            return weights, src.dtype, src.tokenizer()
        res = load_format(path, quant="int8")
        return quantize_cached(res.weights, path, group_size, progress), res.dtype, res.tokenizer_path
    res = load_format(path)
    return res.weights, res.dtype, res.tokenizer_path


def apply_quant(weights: ModelWeights, quant: str | None, source_path: str,
                progress: Progress | None = None, group_size: int = 64) -> ModelWeights:
    """Quantize fp weights to int8 when asked (or by default for big models), via the cache."""
    from .quantize import quantize_cached, resolve_quant
    if resolve_quant(weights, quant) == "int8" and weights.weight_type != "int8":
        return quantize_cached(weights, source_path, group_size, progress)
    return weights


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
