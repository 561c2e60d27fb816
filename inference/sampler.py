"""Choosing the next token: greedy, temperature, top-k, top-p, min-p, repetition penalty.

`SamplingSettings` is immutable: the UI replaces the engine's settings object as a whole,
and the engine reads the current object once per token, so a change made from another
thread takes effect from the next token and never half-applies.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Sequence

import numpy as np

from .backends.base import Backend, check_finite, finite_argmax


@dataclass(frozen=True)
class Knob:
    """The valid range of one sampling setting: what the CLI rejects outside of, what the
    TUI's nudges stop at, what a server answers 400 for. One table, shared by all three."""

    lo: float
    hi: float
    step: float          # one nudge in the TUI
    integer: bool
    help: str

    def span(self, sep: str = " to ") -> str:
        """The range as people write it: "1 to 1048576", not "1 to 1.04858e+06"."""
        return f"{_show(self.lo)}{sep}{_show(self.hi)}"


#: Every sampling setting's range, in the order the UI lists them.
KNOBS: dict[str, Knob] = {
    "temperature": Knob(0.0, 5.0, 0.1, False, "randomness; 0 = greedy (always the most likely token)"),
    "top_p": Knob(0.0, 1.0, 0.05, False, "nucleus: sample from the smallest set holding this much probability; 1 = off"),
    "top_k": Knob(0, 100_000, 5, True, "sample from the k most likely tokens; 0 = off"),
    "min_p": Knob(0.0, 1.0, 0.01, False, "drop tokens less likely than min_p x the most likely one; 0 = off"),
    "repeat_penalty": Knob(0.5, 5.0, 0.05, False, "divide the logits of recently seen tokens by this; 1 = off"),
    "repeat_last_n": Knob(0, 1 << 20, 16, True, "how many recent tokens the repeat penalty looks at"),
    "max_new_tokens": Knob(1, 1 << 20, 32, True, "most tokens in one reply"),
    "seed": Knob(0, (1 << 63) - 1, 1, True, "random seed (same seed + settings + prompt = same text); none = fresh"),
}


def check_value(name: str, value: object) -> float | int | None:
    """`value` if it is valid for setting `name`, else ValueError saying the range."""
    k = KNOBS[name]
    if value is None and name == "seed":
        return None
    kind = "an integer" if k.integer else "a number"
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (k.integer and not float(value).is_integer()):
        raise ValueError(f"{name.replace('_', '-')} must be {kind} from {k.span()}, got {value!r}")
    if not (k.lo <= value <= k.hi):  # NaN fails this too
        raise ValueError(f"{name.replace('_', '-')} must be from {k.span()}, got {value!r}")
    return int(value) if k.integer else float(value)


def _show(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:g}"


@dataclass(frozen=True)
class SamplingSettings:
    """How to pick tokens. temperature 0 means greedy (argmax). Ranges: `KNOBS`."""

    temperature: float = 0.8
    top_p: float = 0.95
    top_k: int = 40
    min_p: float = 0.0
    repeat_penalty: float = 1.0
    repeat_last_n: int = 64
    max_new_tokens: int = 256
    seed: int | None = None      # None: a fresh random seed per generation

    def validated(self) -> "SamplingSettings":
        """Self if every value is in its range, else ValueError naming the first bad one."""
        for name in KNOBS:
            check_value(name, getattr(self, name))
        return self

    def with_(self, **changes: object) -> "SamplingSettings":
        """A copy with some fields changed, each clamped into its range (UI nudges)."""
        return replace(self, **changes).clamped()

    def clamped(self) -> "SamplingSettings":
        vals = {}
        for name, k in KNOBS.items():
            v = getattr(self, name)
            if v is None:
                vals[name] = None
                continue
            v = min(max(v, k.lo), k.hi)
            vals[name] = int(v) if k.integer else float(v)
        return SamplingSettings(**vals)

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0


#: A conversation's repeat penalty when the user chose neither it nor a temperature.
CHAT_REPEAT_PENALTY = 1.05


def for_conversation(settings: SamplingSettings, chat: bool, chosen: set[str]) -> SamplingSettings:
    """The settings a conversation starts with: through a chat template (an instruct
    model) it answers greedily unless the user chose a temperature (`chosen`: the settings
    given by flag, settings file or preset) — small instruct models wander off at the usual
    0.8 (SmolLM2-135M names Paris as France's capital 2 times in 10 there, every time
    greedily). Plain greedy decoding loops on long replies (a story repeats one sentence
    until the token limit: 3 of 12 SmolLM2 prompts of 200 tokens), so that default also
    takes a light repeat penalty (1 of 12) unless one was chosen. A temperature the user
    chose, 0 included, keeps every other default as it is: `--temperature 0` is exact
    greedy decoding. Completion mode (base models, stories) keeps the sampled default."""
    if chat and "temperature" not in chosen:
        penalty = settings.repeat_penalty if "repeat_penalty" in chosen else CHAT_REPEAT_PENALTY
        return replace(settings, temperature=0.0, repeat_penalty=penalty)
    return settings


GREEDY = SamplingSettings(temperature=0.0, top_p=1.0, top_k=0)


#: With top-k off, the draw first looks at this many of the best tokens (see sample_logits).
HEAD = 1024


def load_kernels() -> None:
    """Compile, or load from Numba's cache, the top-k kernel sampling uses, so that the
    first sampled token does not wait for it (warm-ups call this)."""
    from kernels.cpu_select import top_k

    top_k(np.zeros(2, dtype=np.float32), 1)


def _row_total(row: np.ndarray, best: float, temperature: float) -> float:
    """sum(exp((row - best) / temperature)) over a whole row of logits: the softmax's
    normaliser when only the best entries are drawn from. float32 exponentials (numpy's
    SIMD ones, ~4x faster than float64 over 49152 logits) summed in float64: within
    ~1e-7 relative of the float64 sum (float32's rounding of each term), far below what
    moves a top-p cut or a draw."""
    return float(np.exp((row - np.float32(best)) * np.float32(1.0 / temperature)).sum(dtype=np.float64))


class Sampler:
    """Draws tokens from a backend's last logits with a seeded generator."""

    def __init__(self, seed: int | None = None) -> None:
        self.reseed(seed)

    def reseed(self, seed: int | None) -> int:
        """Start a new random stream; returns the seed in use (chosen if None)."""
        if seed is None:
            seed = int(np.random.SeedSequence().entropy % (1 << 63))
        self.seed = seed
        self.rng = np.random.Generator(np.random.PCG64(seed))
        return seed

    def sample(self, backend: Backend, s: SamplingSettings, recent: Sequence[int]) -> int:
        """Pick the next token id. Pulls only what it needs from the backend."""
        penalize = s.repeat_penalty != 1.0 and s.repeat_last_n > 0 and len(recent) > 0
        if not penalize:
            if s.greedy:
                return backend.argmax()
            if 0 < s.top_k <= 256:
                ids, logits = backend.topk(s.top_k)
                return int(ids[self._draw(logits, s)])
        return self.sample_logits(backend.logits(), s, recent)

    def sample_logits(self, logits: np.ndarray, s: SamplingSettings, recent: Sequence[int]) -> int:
        """Pick the next token id from one row of logits (vocab,), e.g. a row of a batched
        forward. The same draw `sample` makes from a backend whose last logits these are
        (top-k ties broken by id in both), so a sequence's tokens do not depend on whether
        its logits came alone or in a batch."""
        logits = np.array(logits, dtype=np.float32)  # a copy: the penalty writes into it
        penalize = s.repeat_penalty != 1.0 and s.repeat_last_n > 0 and len(recent) > 0
        if penalize:
            window = np.unique(np.asarray(recent[-s.repeat_last_n:], dtype=np.int64))
            window = window[(window >= 0) & (window < logits.size)]
            vals = logits[window]
            logits[window] = np.where(vals > 0, vals / s.repeat_penalty, vals * s.repeat_penalty)
        if s.greedy:
            return finite_argmax(logits)
        from kernels.cpu_select import top_k

        check_finite(logits.max())   # (max: a NaN is no heap's largest, and propagates here)

        n = logits.size
        if not 0 < s.top_k < n and n > 8 * HEAD and (s.min_p > 0.0 or s.top_p < 1.0):  # (top_k sorts a small row whole)
            ids = top_k(logits, HEAD)    # top-k off: min-p or top-p nearly always cuts in here
            got = self._draw(logits[ids], s, row=logits)
            if got is not None:
                return int(ids[got])
        ids = top_k(logits, s.top_k if 0 < s.top_k < n else n)  # ties by id
        got = self._draw(logits[ids], s)
        assert got is not None
        return int(ids[got])

    def _draw(self, sorted_logits: np.ndarray, s: SamplingSettings, row: np.ndarray | None = None) -> int | None:
        """Index into `sorted_logits` (descending) after temperature, min-p and top-p.

        `row`: the whole row when `sorted_logits` is only its best entries (the probabilities
        are then normalised over all of it); None, before anything is drawn, when min-p and
        top-p keep more than those entries (the caller then sorts the whole row)."""
        z = sorted_logits.astype(np.float64) / s.temperature
        p = np.exp(z - z[0])
        p /= p.sum() if row is None else _row_total(row, sorted_logits[0], s.temperature)
        keep = p.size
        cut = row is None
        if s.min_p > 0.0:
            count = int(np.count_nonzero(p >= s.min_p * p[0]))
            cut = cut or count < keep
            keep = min(keep, max(1, count))
        if s.top_p < 1.0:
            cum = np.cumsum(p[:keep])
            at = int(np.searchsorted(cum, s.top_p, side="left"))
            cut = cut or at < keep
            keep = min(keep, at + 1)
        if not cut:
            return None
        p = p[:keep] / p[:keep].sum()
        r = self.rng.random()
        return min(int(np.searchsorted(np.cumsum(p), r, side="right")), keep - 1)
