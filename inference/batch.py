"""Batched generation: several sequences, each in its own KV-cache slot, decoded together.

A server's requests arrive at any time and end at any time; decoding them one after
another would read every weight once per token per request. `BatchScheduler` owns a
backend with `slots` cache slots and one thread that advances every running sequence
by one token per step, in a single `forward_batch` call (every weight row is read once
for the whole batch). Each step:

1. sequences whose request was cancelled (a client went away) leave; their slot is free;
2. waiting requests take free slots, oldest first: the slot whose cached tokens the
   prompt continues furthest (a conversation's next turn, a primed system prompt), else
   the least recently used one; only the part of the prompt after the common prefix is
   computed;
3. one chunk of at most `prefill_step` prompt tokens of the oldest sequence still being
   prefilled: a long new prompt delays the running streams by one chunk per step, not
   by its whole length;
4. one decode step: the next token of every sequence that has one, in one pass
   (padded to more rows where warm-up measured that to be faster).

Each sequence samples with its own settings and its own seeded `Sampler` from its own
row of logits, so its tokens are those it would get alone. The stop rule is the
engine's (`Tokenizer.stop_ids`, the end-of-generation ids, are never shown); stop
strings end a sequence at the token that completes one, the text before it kept and
text that might begin one held back until it is decided. Events are the engine's
`TokenEvent`s and one `Finished`, delivered through each request's `emit` callback on
the scheduler thread; `Finished.reason` is one of the engine's (eos, max_tokens,
stopped, context_full), "stop" (a stop string), or "error".

Nothing here knows about HTTP: `app/server` puts a web API in front of it.
"""
from __future__ import annotations

import itertools
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable, Sequence

import numpy as np

from .backends.base import Backend, check_finite
from .engine import Event, Finished, GenerationStats, TokenEvent
from .errors import ContextOverflowError, LlamaChatError, NonFiniteError
from .sampler import Sampler, SamplingSettings, load_kernels
from .tokenizer import StreamDecoder, Tokenizer

#: Prompt tokens one step prefills. A divisor of the engine's PREFILL_CHUNK, so a prompt
#: is cut into the same groups of rows as `Engine.generate` cuts it.
PREFILL_STEP = 32
#: Decode batches smaller than this may be padded up to it (see `_measure_padding`)...
PAD_TO = 4
#: ...when a padded step measured at most this fraction of the unpadded one's time.
PAD_GAIN = 0.8


class QueueFullError(LlamaChatError):
    """Every slot is busy and the waiting queue is full."""


@dataclass(frozen=True)
class SchedulerStatus:
    """A snapshot for /health and tests."""

    slots: int
    busy: int          # slots running a sequence
    queued: int        # requests waiting for a slot
    cached_tokens: tuple[int, ...]   # tokens held in each slot's cache
    served: int        # requests finished since start


class StopMatcher:
    """Streams text through, cut before the first stop string and held back while its
    end could be the start of one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = [s for s in stops if s]
        self.pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """(text that is safe to show now, whether a stop string was completed)."""
        if not self.stops:
            return text, False
        buf = self.pending + text
        hits = [i for i in (buf.find(s) for s in self.stops) if i >= 0]
        if hits:
            self.pending = ""
            return buf[:min(hits)], True
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(buf)), hold, -1):
                if buf.endswith(s[:k]):
                    hold = k
                    break
        self.pending = buf[len(buf) - hold:]
        return buf[:len(buf) - hold], False

    def flush(self) -> str:
        out, self.pending = self.pending, ""
        return out


class Job:
    """One submitted request: its prompt, settings and event callback; `cancel()` from
    any thread ends it at the next step."""

    _ids = itertools.count(1)

    def __init__(self, prompt: list[int], settings: SamplingSettings, stop: Sequence[str],
                 emit: Callable[[Event], None]) -> None:
        self.id = next(Job._ids)
        self.prompt = prompt
        self.settings = settings
        self.stop = tuple(stop)
        self.emit = emit
        self.submitted = time.perf_counter()
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


@dataclass
class _Seq:
    """A job's state while it holds a slot (touched by the scheduler thread only)."""

    job: Job
    slot: int
    pos: int                      # next cache position to write = tokens in the slot
    todo: list[int]               # prompt tokens still to prefill
    cached: int                   # prompt tokens found in the slot's cache
    sampler: Sampler
    decoder: StreamDecoder
    stopper: StopMatcher
    seed: int
    admitted: float
    new: list[int] = field(default_factory=list)
    next_tok: int | None = None   # sampled, to be run in the next decode step
    prefilled: float = 0.0
    first: float = 0.0
    done: bool = False


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def slot_score(held: Sequence[int], prompt: Sequence[int], last_used: float) -> tuple[bool, int, float]:
    """How well a free slot holding `held` suits `prompt`; the highest score wins.

    A prompt that shares at least half of what a slot holds continues that conversation
    (a next turn, a regenerate, a primed system prompt): the longest such prefix wins.
    Otherwise reusing a slot would throw away a cache some other conversation may come
    back to, so the least recently used slot is taken (an empty one first); whatever
    prefix it happens to share is still kept.
    """
    lcp = common_prefix(held, prompt)
    extends = lcp > 0 and 2 * lcp >= len(held)
    return extends, lcp if extends else 0, -last_used


class BatchScheduler:
    """Runs submitted jobs on `backend`'s slots, decoding them together (see the module
    docstring). `max_queue` jobs may wait for a slot; beyond that `submit` refuses."""

    def __init__(self, backend: Backend, tokenizer: Tokenizer, max_queue: int = 16,
                 prefill_step: int = PREFILL_STEP) -> None:
        if not hasattr(backend, "forward_batch"):
            raise LlamaChatError(f"the {backend.name} backend cannot decode a batch of sequences")
        self.backend = backend
        self.tokenizer = tokenizer
        self.slots = int(getattr(backend, "slots", 1))
        self.n_ctx = backend.config.seq_len
        self.vocab_size = backend.config.vocab_size
        self.max_queue = max(0, int(max_queue))
        self.prefill_step = max(1, int(prefill_step))
        self.stop_ids = frozenset(tokenizer.stop_ids)
        #: called on the scheduler thread when a job's prompt is in its slot: (slot, prompt)
        self.on_prefilled: Callable[[int, list[int]], None] | None = None
        self._cond = threading.Condition()
        self._waiting: deque[Job] = deque()
        self._active: list[_Seq] = []
        self._n_active = 0
        self._served = 0
        self._slot_tokens: list[list[int]] = [[] for _ in range(self.slots)]
        self._slot_used = [0.0] * self.slots
        self._free = set(range(self.slots))
        self._closed = False
        self._thread: threading.Thread | None = None
        #: decode batch size -> rows actually run (set by warm_up's measurement)
        self.padding: dict[int, int] = {}

    # -- any thread ------------------------------------------------------------------
    def submit(self, prompt: Sequence[int], settings: SamplingSettings, emit: Callable[[Event], None],
               stop: Sequence[str] = ()) -> Job:
        """Queue a job continuing `prompt` (the full id sequence). Raises
        ContextOverflowError when the prompt leaves no room for a token, QueueFullError
        when the queue is full, LlamaChatError for ids outside the vocabulary."""
        ids = [int(t) for t in prompt]
        if not ids and self.tokenizer.bos_id is not None:
            ids = [self.tokenizer.bos_id]
        if not ids:
            raise LlamaChatError("the prompt is empty and this model has no BOS token to start from")
        if len(ids) >= self.n_ctx:
            raise ContextOverflowError(f"the prompt is {len(ids)} tokens but a slot's context holds "
                                       f"{self.n_ctx}, the reply included")
        if min(ids) < 0 or max(ids) >= self.vocab_size:
            raise LlamaChatError(f"token ids must be from 0 to {self.vocab_size - 1}")
        job = Job(ids, settings.validated(), stop, emit)
        with self._cond:
            if self._closed:
                raise LlamaChatError("the server is shutting down")
            if self._n_active + len(self._waiting) >= self.slots + self.max_queue:
                raise QueueFullError(f"all {self.slots} slots are busy and {len(self._waiting)} "
                                     f"requests are waiting; try again later")
            self._waiting.append(job)
            self._cond.notify()
        return job

    def cancel(self, job: Job) -> None:
        job.cancel()
        with self._cond:
            self._cond.notify()

    def status(self) -> SchedulerStatus:
        with self._cond:
            return SchedulerStatus(self.slots, self._n_active, len(self._waiting),
                                   tuple(len(t) for t in self._slot_tokens), self._served)

    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="batch-scheduler", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 10.0) -> None:
        """Stop every job ("stopped") and the scheduler thread."""
        with self._cond:
            self._closed = True
            self._cond.notify()
        if self._thread is not None:
            self._thread.join(timeout)

    # -- before start() ----------------------------------------------------------------
    def warm_up(self, tune: bool = True) -> None:
        """Run the forward once in each shape a request will use (a prompt chunk, one
        token, a batch over every slot) so no request waits for a compile; with `tune`,
        measure which decode batch sizes to pad (see `_measure_padding`)."""
        tok = self.tokenizer.bos_id if self.tokenizer.bos_id is not None else 0
        n = min(8, self.n_ctx)
        self.backend.forward([tok] * n, 0, slot=0)
        self.backend.forward([tok], 0, slot=0)
        check_finite(float(np.max(self.backend.logits())))   # a model broken throughout: refused before serving
        self.backend.forward_batch([tok] * self.slots, [0] * self.slots, list(range(self.slots)))
        load_kernels()
        for t in self._slot_tokens:
            t.clear()
        if tune:
            self.padding = self._measure_padding(tok)

    def _measure_padding(self, tok: int) -> dict[int, int]:
        """Batch sizes that run faster padded to PAD_TO rows, measured on this backend.

        A backend's matrix kernels may switch strategy with the number of rows (the
        CPU ones run 4, 2 or 1 tokens per decoded weight row; a GPU's small-batch path
        may prefer whole groups), so a step of 1 to 3 sequences could cost more than a
        step of 4; measured, never assumed. The pad rows repeat the last real entry
        (same token, position and slot: they write the same key and value again) and
        their logits are dropped.
        """
        cost = {n: float("inf") for n in range(1, PAD_TO + 1)}
        for _ in range(2):   # interleaved, best of two: other work on the machine comes and goes
            for n in cost:
                t0 = time.perf_counter()
                self.backend.forward_batch([tok] * n, [0] * n, [0] * n)
                cost[n] = min(cost[n], time.perf_counter() - t0)
        return {n: PAD_TO for n in range(1, PAD_TO) if cost[PAD_TO] < PAD_GAIN * cost[n]}

    def set_slot_tokens(self, slot: int, tokens: Sequence[int]) -> None:
        """Declare what a slot's cache holds (a prompt cache copied in by the caller)."""
        self._slot_tokens[slot] = [int(t) for t in tokens]

    # -- the scheduler thread --------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._closed and not self._waiting and not self._active:
                    self._cond.wait()
                if self._closed:
                    break
            # a busy period runs on the backend's own thread (no hand-over per step); it
            # returns when nothing runs or waits, so idle waiting holds no compute thread
            self.backend.run_loop(self._busy)
        for s in self._active:
            self._finish(s, "stopped")
        self._retire()
        with self._cond:
            waiting, self._waiting = list(self._waiting), deque()
        for j in waiting:
            self._send(j, Finished("stopped", GenerationStats(prompt_tokens=len(j.prompt))))

    def _busy(self) -> None:
        """Admit, step and retire until no job runs or waits (or the scheduler closes)."""
        while True:
            with self._cond:
                if self._closed or (not self._waiting and not self._active):
                    return
                dropped = [j for j in self._waiting if j.cancelled]
                for j in dropped:
                    self._waiting.remove(j)
                admitted = []
                while self._free and self._waiting:
                    admitted.append(self._admit(self._waiting.popleft()))
                self._n_active += len(admitted)
                self._served += len(dropped)
            for j in dropped:
                self._send(j, Finished("stopped", GenerationStats(prompt_tokens=len(j.prompt))))
            self._active.extend(admitted)
            try:
                self._step()
            except Exception as e:  # a backend failure must not end the thread
                self._fail_all(e)
            self._retire()

    def _admit(self, job: Job) -> _Seq:
        """Give `job` a free slot (under the lock): the one whose cache its prompt extends
        furthest, else the least recently used (see `slot_score`)."""
        ids = job.prompt

        def score(slot: int) -> tuple[bool, int, float]:
            return slot_score(self._slot_tokens[slot], ids, self._slot_used[slot])

        slot = max(sorted(self._free), key=score)
        self._free.discard(slot)
        # the last prompt token is always run again: the first new token comes from its logits
        keep = min(common_prefix(self._slot_tokens[slot], ids), len(ids) - 1)
        del self._slot_tokens[slot][keep:]
        sampler = Sampler()
        seed = sampler.reseed(job.settings.seed)
        decoder = StreamDecoder(self.tokenizer)
        decoder.prime(ids)
        return _Seq(job, slot, keep, list(ids[keep:]), keep, sampler, decoder, StopMatcher(job.stop),
                    seed, time.perf_counter())

    def _step(self) -> None:
        for s in self._active:
            if s.job.cancelled and not s.done:
                self._finish(s, "stopped")
        # -- one prefill chunk --------------------------------------------------------
        s = next((s for s in self._active if s.todo and not s.done), None)
        if s is not None:
            chunk = s.todo[:self.prefill_step]
            self.backend.forward(chunk, s.pos, slot=s.slot)
            del s.todo[:len(chunk)]
            self._slot_tokens[s.slot].extend(chunk)
            s.pos += len(chunk)
            if not s.todo:
                s.prefilled = time.perf_counter()
                if self.on_prefilled is not None:
                    try:
                        self.on_prefilled(s.slot, s.job.prompt)
                    except Exception as e:  # an observer's failure is not the job's
                        print(f"llama-chat: warning: after a prefill: {type(e).__name__}: {e}", file=sys.stderr)
                self._take(s, self.backend.logits())
        # -- one decode step for every sequence with a token to run ---------------------
        batch = [s for s in self._active if s.next_tok is not None and not s.done]
        if not batch:
            return
        rows = batch + [batch[-1]] * (self.padding.get(len(batch), len(batch)) - len(batch))
        logits = self.backend.forward_batch([s.next_tok for s in rows], [s.pos for s in rows],
                                            [s.slot for s in rows])
        for i, s in enumerate(batch):
            self._slot_tokens[s.slot].append(s.next_tok)
            s.next_tok = None
            s.pos += 1
            self._take(s, logits[i])

    def _take(self, s: _Seq, logits: np.ndarray) -> None:
        """Sample `s`'s next token from its logits and accept it. Non-finite logits end
        this sequence alone with "error" (its slot's cache holds their keys and values:
        it is forgotten); the other sequences go on."""
        try:
            tok = self._sample(s, logits)
        except NonFiniteError as e:
            self._slot_tokens[s.slot].clear()
            self._finish(s, "error", error=str(e))
            return
        self._accept(s, tok)

    def _sample(self, s: _Seq, logits: np.ndarray) -> int:
        st = s.job.settings
        n = st.repeat_last_n
        if n <= 0:
            recent: list[int] = []
        elif len(s.new) >= n:
            recent = s.new[-n:]
        else:
            recent = s.job.prompt[-(n - len(s.new)):] + s.new
        return s.sampler.sample_logits(logits, st, recent)

    def _stats(self, s: _Seq) -> GenerationStats:
        now = time.perf_counter()
        n = len(s.new)
        return GenerationStats(
            prompt_tokens=len(s.job.prompt), prefilled_tokens=len(s.job.prompt) - s.cached,
            generated_tokens=n, prefill_s=(s.prefilled or now) - s.admitted,
            ttft_s=(s.first - s.job.submitted) if s.first else 0.0,
            decode_s=(now - s.first) if s.first else 0.0)

    def _accept(self, s: _Seq, tok: int) -> None:
        """A token was sampled for `s` (it sits at position s.pos): show it, or end."""
        if not s.first:
            s.first = time.perf_counter()
        if tok in self.stop_ids:
            self._finish(s, "eos")
            return
        s.new.append(tok)
        text, hit = s.stopper.feed(s.decoder.feed(tok))
        self._send(s.job, TokenEvent(tok, text, s.pos, False, self._stats(s)))
        if hit:
            self._finish(s, "stop", flush=False)
        elif s.pos >= self.n_ctx - 1:
            self._finish(s, "context_full")   # nothing can follow the last position
        elif len(s.new) >= s.job.settings.max_new_tokens:
            self._finish(s, "max_tokens")
        else:
            s.next_tok = tok

    def _finish(self, s: _Seq, reason: str, flush: bool = True, error: str = "") -> None:
        if s.done:
            return
        s.done = True
        s.next_tok = None
        if flush:
            tail, hit = s.stopper.feed(s.decoder.flush())
            if hit:
                reason = "stop"
            else:
                tail += s.stopper.flush()
            if tail:
                self._send(s.job, TokenEvent(-1, tail, s.pos, False, self._stats(s)))
        self._send(s.job, Finished(reason, self._stats(s), tuple(s.new), s.seed, error))

    def _retire(self) -> None:
        """Free the slots of finished sequences."""
        gone = [s for s in self._active if s.done]
        if not gone:
            return
        self._active = [s for s in self._active if not s.done]
        now = time.perf_counter()
        with self._cond:
            for s in gone:
                self._free.add(s.slot)
                self._slot_used[s.slot] = now
            self._n_active -= len(gone)
            self._served += len(gone)

    def _fail_all(self, e: Exception) -> None:
        """The backend raised: end every running sequence with "error" and forget what
        their slots hold (the cache may be half written)."""
        print(f"llama-chat: error in the batch scheduler: {type(e).__name__}: {e}", file=sys.stderr)
        for s in self._active:
            self._slot_tokens[s.slot].clear()
            if not s.done:
                s.done = True
                self._send(s.job, Finished("error", self._stats(s), tuple(s.new), s.seed))

    def _send(self, job: Job, ev: Event) -> None:
        try:
            job.emit(ev)
        except Exception:  # a consumer that cannot take events is gone
            job.cancel()
