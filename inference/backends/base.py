"""What the engine needs from a compute backend (CPU/Numba or CUDA).

A backend owns the weights on its device and the KV cache. The engine drives it one call
per step: `forward(tokens, start_pos)` runs a batch of tokens (a prompt chunk for prefill,
or one token for decode) whose positions begin at `start_pos`, writes their keys/values
into the cache, and keeps the logits of the *last* token on the device. The sampler then
asks for as little as it needs: `argmax()` for greedy, `topk(k)` for top-k sampling, or
`logits()` for everything — so a GPU backend sends a handful of numbers per token.

Rolling back the conversation is free: positions >= start_pos are simply overwritten.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, Sequence, TypeVar

import numpy as np

from ..config import ModelConfig
from ..errors import BackendError, NonFiniteError

R = TypeVar("R")

#: Longest context a backend allocates by default (the KV cache is sized for it; a model
#: trained for 128K positions would otherwise reserve tens of GB). `context=` raises it.
DEFAULT_MAX_CONTEXT = 8192
MAX_SLOTS = 1024


def check_finite(best: float) -> None:
    """Raise NonFiniteError unless `best`, the largest logit picked, is finite. One value
    suffices: a NaN in the hidden state makes every logit NaN, and numpy's argmax returns
    the first NaN of a row that holds one."""
    if not np.isfinite(best):
        raise NonFiniteError(f"the model computed a non-finite logit ({float(best)}): its weights hold NaN or "
                             "infinite values, or its activations overflow; the file may be damaged")


def finite_argmax(row: np.ndarray) -> int:
    """The greedy token of a row of logits (first maximum, like numpy/llama2.c), refused
    by `check_finite` when its logit is NaN or infinite."""
    i = int(np.argmax(row))
    check_finite(row[i])
    return i


def cache_positions(config: ModelConfig, context: int | None, slots: int) -> int:
    """Positions per KV-cache slot a backend allocates (the model's context, at most
    DEFAULT_MAX_CONTEXT, unless `context` says), with both settings checked."""
    n_ctx = min(config.seq_len, DEFAULT_MAX_CONTEXT) if context is None else int(context)
    if not 1 <= n_ctx <= config.seq_len:
        raise BackendError(f"the context must be between 1 and the model's {config.seq_len} positions, got {n_ctx}")
    if not 1 <= int(slots) <= MAX_SLOTS:
        raise BackendError(f"slots must be between 1 and {MAX_SLOTS}, got {slots}")
    return n_ctx


def check_entries(config: ModelConfig, slots: int, ids: np.ndarray, pos: np.ndarray, sl: np.ndarray,
                  error: type[Exception] = BackendError) -> None:
    """The ranges a non-empty batch of (token, position, slot) entries must be in before
    a forward writes the KV cache at them; `error` is what each backend raises."""
    if ids.min() < 0 or ids.max() >= config.vocab_size:
        raise error(f"token id out of range 0..{config.vocab_size - 1}")
    if pos.min() < 0 or pos.max() >= config.seq_len:
        raise error(f"positions {pos.min()}..{pos.max()} exceed the context {config.seq_len}")
    if sl.min() < 0 or sl.max() >= slots:
        raise error(f"slot out of range 0..{slots - 1}")


@dataclass(frozen=True)
class MemoryInfo:
    """Memory figures for the TUI's memory panel (bytes; None where not applicable)."""

    weight_bytes: int
    kv_cache_bytes: int
    device_used: int | None = None    # GPU: total used on the device (cuMemGetInfo)
    device_total: int | None = None   # GPU: device capacity


class Backend(ABC):
    """One model on one device (or a set of devices), with its KV cache."""

    name: str = "?"          # "cpu" or "cuda"
    config: ModelConfig
    weight_type: str = "fp32"  # "fp32" | "fp16" | "int8"

    @abstractmethod
    def forward(self, tokens: Sequence[int], start_pos: int) -> None:
        """Run `tokens` at positions start_pos.. ; keep the last token's logits."""

    @abstractmethod
    def logits(self) -> np.ndarray:
        """Host copy of the last token's logits, float32 (vocab,)."""

    def run_loop(self, fn: Callable[..., R], *args: Any, on_interrupt: Callable[[], None] | None = None) -> R:
        """fn(*args): a loop of many calls on this backend (a reply's decode, a server's
        busy period), run where those calls cost least. Here: directly. The CPU backend
        runs it on its compute thread, so the loop's calls skip the hand-over to that
        thread (two thread wake-ups per token otherwise). Ctrl-C in the caller runs
        `on_interrupt` (which should end the loop soon, e.g. `Engine.stop`) and waits
        for fn to return before the interrupt propagates."""
        return fn(*args)

    def argmax(self) -> int:
        """Greedy next token (first maximum, like numpy/llama2.c)."""
        return finite_argmax(self.logits())

    def topk(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The k largest logits and their ids, sorted descending (ids int64, logits float32)."""
        from kernels.cpu_select import top_k

        lg = self.logits()
        idx = top_k(lg, k)
        if idx.size:
            check_finite(lg[idx[0]])
        return idx, lg[idx]

    @abstractmethod
    def memory(self) -> MemoryInfo:
        """Current memory use, for display."""

    def describe(self) -> str:
        """Device in words, e.g. 'CPU (numba, 2 threads)' or 'NVIDIA H100 80GB HBM3'."""
        return self.name

    def close(self) -> None:
        """Release device memory. The backend is unusable afterwards."""
