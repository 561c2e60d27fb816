"""Model hyper-parameters: one frozen record, validated once, plus named shapes for `--random`.

Every loader (llama2.c, Meta .pth, HF safetensors, GGUF) produces a `ModelConfig` and calls
`validate()` before anything is allocated or read; every backend and the tensor table
(`inference.architecture`) read their shapes from here, so there is one place that says
what "dim", "head_dim" or "kv_dim" means.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace

#: Architectures the tensor table describes (GGUF `general.architecture` names).
ARCHITECTURES = ("llama", "qwen2")
#: RoPE pairings: "interleaved" rotates (2i, 2i+1) (Meta/llama.cpp `llama`), "neox" rotates
#: (i, i + head_dim/2) (GPT-NeoX, Qwen2, HF checkpoints before un-permuting).
ROPE_STYLES = ("interleaved", "neox")
#: Above this, a size is not a model we could hold (and products of sizes stay in int64).
MAX_SIZE = 1 << 24
#: Real models use 1e4 .. 1e7; far beyond, the rotation frequencies underflow to nothing.
MAX_ROPE_THETA = 1e12


@dataclass(frozen=True)
class RopeScaling:
    """Context-extension settings for rotary embeddings.

    kind "linear": positions are divided by `factor`. kind "llama3" (Llama 3.1+): low
    frequencies are divided by `factor`, high ones kept, and a smooth blend between them
    (`low_freq_factor`, `high_freq_factor`, relative to `original_context`).
    """

    kind: str = "none"                 # "none" | "linear" | "llama3"
    factor: float = 1.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    original_context: int = 8192


@dataclass(frozen=True)
class ModelConfig:
    """Shapes and numerics of a LLaMA-family transformer (llama2.c naming).

    `head_dim` 0 means dim // n_heads (a few models use another width: then the query
    projection is n_heads * head_dim wide, not dim).
    """

    dim: int                 # residual stream width
    hidden_dim: int          # SwiGLU inner width
    n_layers: int
    n_heads: int             # query heads
    n_kv_heads: int          # key/value heads (< n_heads means grouped-query attention)
    vocab_size: int
    seq_len: int             # context length the model was trained for
    shared_classifier: bool = True   # output projection == token embedding table
    norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    arch: str = "llama"
    head_dim: int = 0
    rope_style: str = "interleaved"
    rope_scaling: RopeScaling = field(default_factory=RopeScaling)
    qkv_bias: bool = False   # Qwen2: biases on the q, k and v projections
    rope_freqs: bool = False  # the file carries per-frequency divisors (GGUF rope_freqs.weight)

    def __post_init__(self) -> None:
        if not self.head_dim and isinstance(self.dim, int) and isinstance(self.n_heads, int) and self.n_heads > 0:
            object.__setattr__(self, "head_dim", self.dim // self.n_heads)

    @property
    def q_dim(self) -> int:
        """Width of the query projection (and of the attention output)."""
        return self.head_dim * self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    @property
    def kv_mul(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def with_(self, **changes: object) -> "ModelConfig":
        return replace(self, **changes)

    def n_params(self) -> int:
        """Parameter count, counting a shared classifier once (from the tensor table)."""
        from .architecture import tensor_specs
        total = 0
        for spec in tensor_specs(self):
            n = math.prod(spec.shape(self))
            total += n * (self.n_layers if spec.per_layer else 1)
        return total

    def validate(self) -> None:
        """Raise ValueError if the numbers cannot describe a real model.

        Called by every loader before any tensor is touched: sizes are positive integers
        small enough that no product overflows, heads divide evenly, the floats are
        finite and in range, and the names are ones the kernels implement.
        """
        ints = {"dim": self.dim, "hidden_dim": self.hidden_dim, "n_layers": self.n_layers,
                "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads, "vocab_size": self.vocab_size,
                "seq_len": self.seq_len, "head_dim": self.head_dim}
        for name, v in ints.items():
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"{name} must be an integer, got {v!r}")
            if v <= 0:
                raise ValueError(f"{name} must be positive, got {v}")
            if v > MAX_SIZE:
                raise ValueError(f"{name} {v} is implausibly large")
        if self.n_layers > 4096 or self.n_heads > 4096:
            raise ValueError(f"implausible layer/head counts ({self.n_layers} layers, {self.n_heads} heads)")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")
        if self.q_dim > MAX_SIZE:
            raise ValueError(f"n_heads x head_dim = {self.q_dim} is implausibly large")
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"architecture {self.arch!r} is not supported ({', '.join(ARCHITECTURES)} are)")
        if self.rope_style not in ROPE_STYLES:
            raise ValueError(f"rope style {self.rope_style!r} is unknown")
        for name, v in (("norm_eps", self.norm_eps), ("rope_theta", self.rope_theta)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ValueError(f"{name} must be a finite number, got {v!r}")
        if not 0 < self.norm_eps < 1:
            raise ValueError(f"norm_eps {self.norm_eps!r} is outside (0, 1)")
        if not 1 < self.rope_theta <= MAX_ROPE_THETA:
            raise ValueError(f"rope_theta {self.rope_theta!r} is outside (1, {MAX_ROPE_THETA:g}]")
        rs = self.rope_scaling
        if rs.kind not in ("none", "linear", "llama3"):
            raise ValueError(f"rope scaling {rs.kind!r} is not supported (linear and llama3 are)")
        if rs.kind != "none":
            for name in ("factor", "low_freq_factor", "high_freq_factor"):
                v = getattr(rs, name)
                if not isinstance(v, (int, float)) or not math.isfinite(v) or not 0 < v < 1e6:
                    raise ValueError(f"rope scaling {name} {v!r} is out of range")
            if rs.kind == "llama3" and not rs.high_freq_factor > rs.low_freq_factor:
                raise ValueError("rope scaling high_freq_factor must exceed low_freq_factor")
            if not isinstance(rs.original_context, int) or not 0 < rs.original_context <= MAX_SIZE:
                raise ValueError(f"rope scaling original context {rs.original_context!r} is out of range")


def _shape(**kw: object) -> ModelConfig:
    return ModelConfig(**kw)  # type: ignore[arg-type]


#: Real shapes, for `--random SHAPE` benchmarks (speed does not depend on weight values).
SHAPES: dict[str, ModelConfig] = {
    "stories260K": _shape(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4,
                          vocab_size=512, seq_len=512),
    "stories15M": _shape(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6,
                         vocab_size=32000, seq_len=256),
    "stories42M": _shape(dim=512, hidden_dim=1376, n_layers=8, n_heads=8, n_kv_heads=8,
                         vocab_size=32000, seq_len=1024),
    "stories110M": _shape(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12,
                          vocab_size=32000, seq_len=1024),
    "smollm2-135m": _shape(dim=576, hidden_dim=1536, n_layers=30, n_heads=9, n_kv_heads=3,
                           vocab_size=49152, seq_len=8192, rope_theta=100000.0),
    "qwen2-0.5b": _shape(dim=896, hidden_dim=4864, n_layers=24, n_heads=14, n_kv_heads=2,
                         vocab_size=151936, seq_len=32768, rope_theta=1000000.0, norm_eps=1e-6,
                         arch="qwen2", rope_style="neox", qkv_bias=True),
    "tinyllama-1.1b": _shape(dim=2048, hidden_dim=5632, n_layers=22, n_heads=32, n_kv_heads=4,
                             vocab_size=32000, seq_len=2048, shared_classifier=False),
    "llama2-7b": _shape(dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32,
                        vocab_size=32000, seq_len=4096, shared_classifier=False),
    "llama3-8b": _shape(dim=4096, hidden_dim=14336, n_layers=32, n_heads=32, n_kv_heads=8,
                        vocab_size=128256, seq_len=8192, shared_classifier=False, rope_theta=500000.0),
    "llama2-13b": _shape(dim=5120, hidden_dim=13824, n_layers=40, n_heads=40, n_kv_heads=40,
                         vocab_size=32000, seq_len=4096, shared_classifier=False),
}
