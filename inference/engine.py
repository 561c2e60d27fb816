"""The generation loop: prefill what the KV cache lacks, then decode token by token.

The engine is driven from one background thread (the TUI's worker or the CLI's main
thread). Other threads may only call `stop()` and assign `settings`; both are single
reference writes, read by the loop once per token.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field, replace
from typing import Iterator, Sequence, Union

from .backends.base import Backend
from .errors import ContextOverflowError, LlamaChatError
from .sampler import Sampler, SamplingSettings
from .tokenizer import StreamDecoder, Tokenizer

#: Prompt tokens run per forward call during prefill: bounds activation memory, and lets
#: a stop request interrupt a long prefill.
PREFILL_CHUNK = 128


@dataclass(frozen=True)
class GenerationStats:
    """Timings of one `generate` call so far."""

    prompt_tokens: int = 0        # length of the sequence the reply continues
    prefilled_tokens: int = 0     # of those, how many had to be computed (rest was cached)
    generated_tokens: int = 0
    prefill_s: float = 0.0
    ttft_s: float = 0.0           # call -> first new token sampled
    decode_s: float = 0.0         # time spent after the first new token
    recent_tok_s: float = 0.0     # decode speed over the last few tokens (for live display)

    @property
    def prefill_tok_s(self) -> float:
        return self.prefilled_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def decode_tok_s(self) -> float:
        n = self.generated_tokens - 1  # the first token's time is in ttft
        return n / self.decode_s if n > 0 and self.decode_s > 0 else 0.0


@dataclass(frozen=True)
class TokenEvent:
    """One token: a prompt token echoed (is_prompt) or a newly generated one."""

    token_id: int
    text: str              # its text, '' while a multi-byte character is incomplete
    position: int          # its position in the sequence (0 = BOS)
    is_prompt: bool
    stats: GenerationStats


@dataclass(frozen=True)
class Finished:
    """The end of a `generate` call; `reason` says why it ended."""

    reason: str            # "eos" | "max_tokens" | "stopped" | "context_full" (batch: also "stop", "error")
    stats: GenerationStats
    new_tokens: tuple[int, ...] = field(default=())
    seed: int | None = None
    error: str = ""        # with "error": what went wrong, for the one who asked


Event = Union[TokenEvent, Finished]


class Engine:
    """A backend + tokenizer + sampler, and the token sequence held in the KV cache."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer,
                 settings: SamplingSettings | None = None) -> None:
        self.backend = backend
        self.tokenizer = tokenizer
        self.config = backend.config
        self.settings = settings or SamplingSettings()
        self.sampler = Sampler()
        self.tokens: list[int] = []   # ids whose keys/values are in the cache, in order
        self._stop = threading.Event()
        self.stop_ids = set(tokenizer.stop_ids)   # any end-of-generation id ends a reply

    # -- called from any thread ------------------------------------------------------
    def stop(self) -> None:
        """Ask the running `generate` to end after the current token.

        A stop that arrives before a `generate` has started ends that one at once (a UI
        may schedule a reply and cancel it before the engine thread picks it up); the
        request is cleared when a `generate` finishes.
        """
        self._stop.set()

    @property
    def context_length(self) -> int:
        return self.config.seq_len

    # -- called from the engine thread ----------------------------------------------
    def check_fits(self, text: str) -> None:
        """ContextOverflowError if `text` is certainly too long for the context, decided
        before tokenizing it (a 16 MB prompt file is refused at once, not after minutes)."""
        n_ctx = self.config.seq_len
        cannot_fit = getattr(self.tokenizer, "cannot_fit", None)
        if cannot_fit is not None and cannot_fit(text, n_ctx):
            raise ContextOverflowError(
                f"the prompt is {len(text.encode('utf-8', 'surrogatepass'))} bytes, far more than the model's "
                f"context of {n_ctx} tokens can hold")

    def encode(self, text: str, bos: bool | None = None) -> list[int]:
        """Ids of plain text (BOS per the model unless `bos` says otherwise); text that
        cannot fit the context is refused before it is tokenized."""
        self.check_fits(text)
        return self.tokenizer.encode(text, bos=bos)

    def generate(self, prompt: Union[str, Sequence[int]],
                 settings: SamplingSettings | None = None,
                 echo_prompt: bool = False) -> Iterator[Event]:
        """Continue `prompt` (text, or the full id sequence incl. BOS); yields events.

        Only the part of `prompt` not already in the KV cache is computed. `settings`
        pins the settings for this call; None means read `self.settings` at every token.
        """
        try:
            yield from self._generate(prompt, settings, echo_prompt)
        finally:
            self._stop.clear()

    def _generate(self, prompt: Union[str, Sequence[int]], settings: SamplingSettings | None,
                  echo_prompt: bool) -> Iterator[Event]:
        t0 = time.perf_counter()
        ids = self.encode(prompt) if isinstance(prompt, str) else [int(t) for t in prompt]
        if not ids and self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id]
        if not ids:
            raise LlamaChatError("the prompt is empty and this model has no BOS token to start from")
        n_ctx = self.config.seq_len
        if len(ids) > n_ctx:
            raise ContextOverflowError(
                f"the prompt is {len(ids)} tokens but the model's context holds {n_ctx}")
        bad = [t for t in ids if not 0 <= t < self.config.vocab_size]
        if bad:
            raise LlamaChatError(f"token id {bad[0]} is outside the vocabulary (0 to {self.config.vocab_size - 1})")

        settings_now = settings or self.settings
        seed = self.sampler.reseed(settings_now.seed)

        # Reuse the cached prefix, but always recompute the last prompt token: its
        # logits are what the first new token is sampled from.
        keep = 0
        limit = min(len(self.tokens), len(ids) - 1)
        while keep < limit and self.tokens[keep] == ids[keep]:
            keep += 1
        del self.tokens[keep:]

        decoder = StreamDecoder(self.tokenizer)
        stats = GenerationStats(prompt_tokens=len(ids))
        if echo_prompt:
            for pos, tok in enumerate(ids):
                yield TokenEvent(tok, decoder.feed(tok), pos, True, stats)
        else:
            decoder.prime(ids)

        # -- prefill -------------------------------------------------------------
        todo = ids[keep:]
        pos = keep
        while todo:
            if self._stop.is_set():
                yield Finished("stopped", stats, (), seed)
                return
            chunk, todo = todo[:PREFILL_CHUNK], todo[PREFILL_CHUNK:]
            self.backend.forward(chunk, pos)
            self.tokens.extend(chunk)
            pos += len(chunk)
        t_prefill = time.perf_counter()
        stats = GenerationStats(prompt_tokens=len(ids), prefilled_tokens=len(ids) - keep,
                                prefill_s=t_prefill - t0)

        # -- decode --------------------------------------------------------------
        new: list[int] = []
        t_first = 0.0
        recent_times: list[float] = []
        reason = "max_tokens"
        while True:
            s = settings or self.settings
            if len(new) >= s.max_new_tokens:
                reason = "max_tokens"
                break
            if self._stop.is_set():
                reason = "stopped"
                break
            recent = (ids + new)[-s.repeat_last_n:] if s.repeat_last_n else []
            tok = self.sampler.sample(self.backend, s, recent)
            now = time.perf_counter()
            if not new:
                t_first = now
            new.append(tok)
            recent_times.append(now)
            if len(recent_times) > 16:
                del recent_times[0]
            span = recent_times[-1] - recent_times[0]
            stats = GenerationStats(
                prompt_tokens=len(ids), prefilled_tokens=len(ids) - keep,
                generated_tokens=len(new), prefill_s=t_prefill - t0, ttft_s=t_first - t0,
                decode_s=now - t_first,
                recent_tok_s=(len(recent_times) - 1) / span if span > 0 else 0.0)
            if tok in self.stop_ids:
                new.pop()
                stats = replace(stats, generated_tokens=len(new))
                reason = "eos"
                break
            yield TokenEvent(tok, decoder.feed(tok), pos, False, stats)
            if pos >= n_ctx - 1:
                # the token just sampled sits at the last position: nothing can follow it
                reason = "context_full"
                break
            if len(new) >= (settings or self.settings).max_new_tokens or self._stop.is_set():
                continue  # loop top reports the reason without computing another step
            self.backend.forward([tok], pos)
            self.tokens.append(tok)
            pos += 1
        tail = decoder.flush()
        if tail:
            yield TokenEvent(-1, tail, pos, False, stats)
        yield Finished(reason, stats, tuple(new), seed)
