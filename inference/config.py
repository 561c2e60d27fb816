"""Model hyper-parameters: one frozen record, plus the named shapes used by `--random`.

Every loader (llama2.c, Meta .pth, HF safetensors, GGUF) produces a `ModelConfig`; every
backend and kernel reads its shapes from here, so there is exactly one place that says
what "dim" or "kv_dim" means.
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ModelConfig:
    """Shapes of a Llama-2-architecture transformer (llama2.c naming)."""

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

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads

    @property
    def kv_dim(self) -> int:
        return self.head_dim * self.n_kv_heads

    @property
    def kv_mul(self) -> int:
        """How many query heads share one key/value head."""
        return self.n_heads // self.n_kv_heads

    def n_params(self) -> int:
        """Parameter count, counting a shared classifier once."""
        d, h, L, kv = self.dim, self.hidden_dim, self.n_layers, self.kv_dim
        per_layer = 2 * d + d * d * 2 + 2 * d * kv + 3 * d * h
        total = self.vocab_size * d + L * per_layer + d
        if not self.shared_classifier:
            total += self.vocab_size * d
        return total

    def validate(self) -> None:
        """Raise ValueError if the numbers cannot describe a real model."""
        ints = (self.dim, self.hidden_dim, self.n_layers, self.n_heads,
                self.n_kv_heads, self.vocab_size, self.seq_len)
        if min(ints) <= 0:
            raise ValueError(f"non-positive size in config {ints}")
        if max(ints) > 1 << 24:
            raise ValueError(f"implausibly large size in config {ints}")
        if self.dim % self.n_heads:
            raise ValueError(f"dim {self.dim} is not divisible by n_heads {self.n_heads}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(f"n_heads {self.n_heads} is not a multiple of n_kv_heads {self.n_kv_heads}")
        if self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for RoPE")


#: Real shapes, for `--random SHAPE` benchmarks (speed does not depend on weight values).
SHAPES: dict[str, ModelConfig] = {
    "stories260K": ModelConfig(dim=64, hidden_dim=172, n_layers=5, n_heads=8, n_kv_heads=4,
                               vocab_size=512, seq_len=512),
    "stories15M": ModelConfig(dim=288, hidden_dim=768, n_layers=6, n_heads=6, n_kv_heads=6,
                              vocab_size=32000, seq_len=256),
    "stories42M": ModelConfig(dim=512, hidden_dim=1376, n_layers=8, n_heads=8, n_kv_heads=8,
                              vocab_size=32000, seq_len=1024),
    "stories110M": ModelConfig(dim=768, hidden_dim=2048, n_layers=12, n_heads=12, n_kv_heads=12,
                               vocab_size=32000, seq_len=1024),
    "llama2-7b": ModelConfig(dim=4096, hidden_dim=11008, n_layers=32, n_heads=32, n_kv_heads=32,
                             vocab_size=32000, seq_len=4096, shared_classifier=False),
    "llama2-13b": ModelConfig(dim=5120, hidden_dim=13824, n_layers=40, n_heads=40, n_kv_heads=40,
                              vocab_size=32000, seq_len=4096, shared_classifier=False),
}
