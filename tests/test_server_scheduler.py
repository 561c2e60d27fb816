"""The batch scheduler behind `llama-chat serve`, in process on the bundled stories260K:
batched sequences give exactly what each gives alone in the engine, prefix reuse per
slot, cancellation, the bounded queue, context limits, stop strings, the prompt cache,
and `Sampler.sample_logits` drawing what `Sampler.sample` draws."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from inference.backends.cpu import CpuBackend
from inference.batch import BatchScheduler, QueueFullError, StopMatcher
from inference.engine import Engine, Finished, TokenEvent
from inference.errors import ContextOverflowError
from inference import prompt_cache
from inference.sampler import GREEDY, Sampler, SamplingSettings

from .conftest import ROOT

PROMPTS = ["Once upon a time", "The cat sat on the", "Lily and Tom went to the park. They", "One day, a big"]
SEEDED = SamplingSettings(temperature=1.0, top_p=0.9, top_k=40, seed=11, max_new_tokens=50, repeat_penalty=1.15)


class Collector:
    """Events of one job, and a flag set when it finishes."""

    def __init__(self) -> None:
        self.events: list = []
        self.done = threading.Event()

    def __call__(self, ev) -> None:
        self.events.append(ev)
        if isinstance(ev, Finished):
            self.done.set()

    def wait(self, timeout: float = 60.0) -> "Collector":
        assert self.done.wait(timeout), "the job did not finish"
        return self

    @property
    def text(self) -> str:
        return "".join(e.text for e in self.events if isinstance(e, TokenEvent))

    @property
    def finished(self) -> Finished:
        assert isinstance(self.events[-1], Finished)
        return self.events[-1]


def solo(model, prompt, settings):
    """(text, Finished) of the single-sequence engine."""
    engine = Engine(CpuBackend(model.weights), model.tokenizer)
    text, fin = [], None
    for ev in engine.generate(prompt, settings):
        if isinstance(ev, Finished):
            fin = ev
        else:
            text.append(ev.text)
    return "".join(text), fin


@pytest.fixture()
def sched(default_model):
    s = BatchScheduler(CpuBackend(default_model.weights, slots=4), default_model.tokenizer, max_queue=8)
    s.warm_up()
    s.start()
    yield s
    s.close()


def submit(sched, model, prompt, settings, stop=()):
    c = Collector()
    ids = model.tokenizer.encode(prompt) if isinstance(prompt, str) else prompt
    return sched.submit(ids, settings, c, stop), c


@pytest.mark.parametrize("settings", [GREEDY.with_(max_new_tokens=60), SEEDED], ids=["greedy", "seeded"])
def test_batched_sequences_equal_their_solo_runs(default_model, sched, settings):
    ref = [solo(default_model, p, settings) for p in PROMPTS]
    runs = [submit(sched, default_model, p, settings)[1] for p in PROMPTS]
    for (text, fin), c in zip(ref, runs):
        c.wait()
        assert c.text == text
        assert c.finished.new_tokens == fin.new_tokens and c.finished.reason == fin.reason


def test_padded_decode_steps_change_no_token(default_model, sched):
    """Pad rows repeat a real entry; whatever the padding, each sequence gets its solo tokens."""
    settings = GREEDY.with_(max_new_tokens=30)
    ref = [solo(default_model, p, settings)[0] for p in PROMPTS[:3]]
    for padding in ({1: 4, 2: 4, 3: 4}, {1: 3, 2: 5, 3: 7}):
        sched.padding = padding
        for k in (1, 2, 3):
            runs = [submit(sched, default_model, p, settings)[1] for p in PROMPTS[:k]]
            assert [c.wait().text for c in runs] == ref[:k]


class NanSlotBackend(CpuBackend):
    """Slot 0's logits are NaN once `armed`: what weights damaged where only one request's
    tokens reach would give it."""

    armed = False

    def forward(self, tokens, start_pos, slot=0):
        super().forward(tokens, start_pos, slot=slot)
        if self.armed and slot == 0:
            self._logits[-1][:] = np.nan

    def forward_batch(self, tokens, positions, slots):
        lg = np.array(super().forward_batch(tokens, positions, slots))
        if self.armed:
            lg[np.asarray(slots) == 0] = np.nan
        return lg


def test_non_finite_logits_end_that_request_alone(default_model):
    """NaN logits are an error for the request they belong to (its slot's cache is
    forgotten); the requests beside it get their solo replies; the engine alone refuses
    them in one line."""
    from inference.errors import NonFiniteError
    settings = GREEDY.with_(max_new_tokens=30)
    backend = NanSlotBackend(default_model.weights, slots=3)
    s = BatchScheduler(backend, default_model.tokenizer, max_queue=8)
    s.warm_up()
    s.start()
    try:
        backend.armed = True
        bad = submit(s, default_model, PROMPTS[0], settings)[1]   # the first free slot: 0
        good = [submit(s, default_model, p, settings)[1] for p in PROMPTS[1:3]]
        assert bad.wait().finished.reason == "error" and "non-finite logit" in bad.finished.error
        assert [c.wait().text for c in good] == [solo(default_model, p, settings)[0] for p in PROMPTS[1:3]]
        backend.armed = False
        again = submit(s, default_model, PROMPTS[0], settings)[1]
        assert again.wait().text == solo(default_model, PROMPTS[0], settings)[0]
    finally:
        s.close()
    engine = Engine(backend, default_model.tokenizer)
    backend.armed = True
    for st in (settings, SEEDED, SEEDED.with_(top_k=0), settings.with_(repeat_penalty=1.2)):
        with pytest.raises(NonFiniteError, match="non-finite logit"):
            list(engine.generate(PROMPTS[1], st))


def test_a_request_joining_mid_stream_and_a_queue_longer_than_the_slots(default_model):
    """Two slots, six requests arriving while others decode: all equal their solo runs."""
    s = BatchScheduler(CpuBackend(default_model.weights, slots=2), default_model.tokenizer, max_queue=8)
    s.start()
    try:
        settings = GREEDY.with_(max_new_tokens=40)
        prompts = PROMPTS + ["Tim had a red ball", "The sun"]
        runs = []
        for p in prompts:
            runs.append(submit(s, default_model, p, settings)[1])
            time.sleep(0.003)
        for p, c in zip(prompts, runs):
            c.wait()
            assert c.text == solo(default_model, p, settings)[0]
        assert s.status().served == len(prompts) and s.status().busy == 0
    finally:
        s.close()


def test_next_turn_goes_to_the_slot_holding_its_prefix(default_model, sched):
    tok = default_model.tokenizer
    settings = GREEDY.with_(max_new_tokens=20)
    first = [submit(sched, default_model, p, settings)[1].wait() for p in PROMPTS]
    cached = sched.status().cached_tokens
    # continue the third conversation: its prompt + reply + more words
    ids = tok.encode(PROMPTS[2]) + list(first[2].finished.new_tokens) + tok.encode(" Then", bos=False)
    c = submit(sched, default_model, ids, settings)[1].wait()
    st = c.finished.stats
    # a reply cut at max_tokens never ran its last token
    held = len(tok.encode(PROMPTS[2])) + len(first[2].finished.new_tokens) - (first[2].finished.reason == "max_tokens")
    assert st.prompt_tokens == len(ids) and st.prefilled_tokens == len(ids) - held
    after = sched.status().cached_tokens
    changed = [i for i in range(4) if after[i] != cached[i]]
    assert len(changed) == 1 and cached[changed[0]] == held
    assert c.text == solo(default_model, ids, settings)[0]


def test_cancel_ends_a_job_at_the_next_step_and_frees_its_slot(default_model, sched):
    job, c = submit(sched, default_model, "Once upon a time", SamplingSettings(temperature=1.0, seed=1, max_new_tokens=400))
    deadline = time.time() + 30
    while not any(isinstance(e, TokenEvent) for e in c.events) and time.time() < deadline:
        time.sleep(0.001)
    sched.cancel(job)
    c.wait(10)
    assert c.finished.reason == "stopped" and c.finished.stats.generated_tokens < 400
    deadline = time.time() + 10
    while sched.status().busy and time.time() < deadline:
        time.sleep(0.01)
    assert sched.status().busy == 0


def test_the_queue_is_bounded(default_model):
    s = BatchScheduler(CpuBackend(default_model.weights, slots=1), default_model.tokenizer, max_queue=1)
    ids = default_model.tokenizer.encode("Hello")
    a, b = Collector(), Collector()
    s.submit(ids, GREEDY, a)
    s.submit(ids, GREEDY, b)
    with pytest.raises(QueueFullError):
        s.submit(ids, GREEDY, Collector())
    s.start()
    a.wait()
    b.wait()
    s.close()
    assert a.text == b.text


def test_context_limits(default_model):
    s = BatchScheduler(CpuBackend(default_model.weights, slots=2, context=40), default_model.tokenizer)
    with pytest.raises(ContextOverflowError):
        s.submit(list(range(1, 41)), GREEDY, Collector())
    s.start()
    try:
        ids = default_model.tokenizer.encode("Once upon a time there was a girl")
        c = Collector()
        s.submit(ids, GREEDY.with_(max_new_tokens=100), c)
        c.wait()
        assert c.finished.reason == "context_full"
        assert len(ids) + c.finished.stats.generated_tokens == 40
    finally:
        s.close()


def test_stop_matcher_holds_back_a_possible_start():
    m = StopMatcher(["</s>", "\n\nUser:"])
    assert m.feed("Hello <") == ("Hello ", False)
    assert m.feed("/b> and\n") == ("</b> and", False)
    assert m.feed("\nUs") == ("", False)
    assert m.feed("er: hi") == ("", True)
    m = StopMatcher(["abc"])
    assert m.feed("xxab") == ("xx", False)
    assert m.flush() == "ab"
    assert StopMatcher([]).feed("abc") == ("abc", False)


def test_a_stop_string_ends_the_reply_before_it(default_model, sched):
    settings = GREEDY.with_(max_new_tokens=60)
    full, _ = solo(default_model, PROMPTS[0], settings)
    word = full.split()[4]
    _, c = submit(sched, default_model, PROMPTS[0], settings, stop=[word, "zzzz"])
    c.wait()
    assert c.finished.reason == "stop"
    assert c.text == full[:full.index(word)]


def test_sample_logits_draws_what_sample_draws(default_model):
    b = CpuBackend(default_model.weights)
    b.forward(default_model.tokenizer.encode("Once upon a time"), 0)
    logits = b.logits()
    recent = [5, 6, 7, 300]
    for s in (GREEDY, SamplingSettings(temperature=0.9, top_k=40, seed=3), SamplingSettings(temperature=0.7, top_k=0, top_p=0.8, min_p=0.05, seed=4),
              SamplingSettings(temperature=1.1, top_k=300, seed=5), SamplingSettings(temperature=1.0, repeat_penalty=1.3, seed=6)):
        a, c = Sampler(s.seed), Sampler(s.seed)
        assert [a.sample(b, s, recent) for _ in range(20)] == [c.sample_logits(logits, s, recent) for _ in range(20)]


def test_prompt_cache_round_trip(default_model, tmp_path):
    tok = default_model.tokenizer
    path = str(tmp_path / "primed.lcpc")
    key = prompt_cache.model_key(default_model)
    prime = tok.encode("Once upon a time, in a land far away, there lived a")
    a = CpuBackend(default_model.weights, slots=2)
    a.forward(prime, 0, slot=1)
    prompt_cache.save(path, a, 1, prime, key)

    b = CpuBackend(default_model.weights, slots=3)
    state = prompt_cache.load(path, b, key)
    assert state.tokens == prime
    prompt_cache.install(b, 2, state)
    assert np.array_equal(b.k_cache[2, :, :, :len(prime)], a.k_cache[1, :, :, :len(prime)])
    s = BatchScheduler(b, tok)
    s.set_slot_tokens(2, state.tokens)
    s.start()
    try:
        ids = prime + tok.encode(" little dog", bos=False)
        c = Collector()
        s.submit(ids, GREEDY.with_(max_new_tokens=30), c)
        c.wait()
    finally:
        s.close()
    assert c.finished.stats.prefilled_tokens == len(ids) - len(prime)
    assert c.text == solo(default_model, ids, GREEDY.with_(max_new_tokens=30))[0]

    with pytest.raises(prompt_cache.PromptCacheError, match="another model"):
        prompt_cache.load(path, b, "0" * 64)
    data = open(path, "rb").read()
    for bad in (data[:-4], data[:30], b"nonsense" + data, data[:len(prompt_cache.MAGIC)] + b"\xff\xff\xff\x7f" + data[28:]):
        with open(path, "wb") as f:
            f.write(bad)
        with pytest.raises(prompt_cache.PromptCacheError):
            prompt_cache.load(path, b, key)
    short = CpuBackend(default_model.weights, context=8)
    with open(path, "wb") as f:
        f.write(data)
    with pytest.raises(prompt_cache.PromptCacheError, match="room"):
        prompt_cache.load(path, short, key)


def test_generate_prompt_cache_reuses_the_saved_prompt(tmp_path):
    path = str(tmp_path / "p.cache")
    env = {**os.environ, "PYTHONPATH": ROOT}

    def gen(prompt: str) -> dict:
        r = subprocess.run([sys.executable, "-m", "app.cli", "generate", "-p", prompt, "--temperature", "0", "-n", "20",
                            "--json", "--prompt-cache", path], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        return json.loads(r.stdout)

    first = gen("Once upon a time, there was a little girl")
    assert first["stats"]["prefilled_tokens"] == first["stats"]["prompt_tokens"] and os.path.exists(path)
    again = gen("Once upon a time, there was a little girl named")
    assert again["stats"]["prefilled_tokens"] == again["stats"]["prompt_tokens"] - len(first["prompt_ids"])
    fresh = subprocess.run([sys.executable, "-m", "app.cli", "generate", "-p", "Once upon a time, there was a little girl named",
                            "--temperature", "0", "-n", "20", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                           timeout=300)
    assert json.loads(fresh.stdout)["ids"] == again["ids"]
    # the stats line says where the prompt came from
    r = subprocess.run([sys.executable, "-m", "app.cli", "generate", "-p", "Once upon a time, there was a little girl",
                        "--temperature", "0", "-n", "2", "--prompt-cache", path], cwd=ROOT, env=env,
                       capture_output=True, text=True, timeout=300)
    n = len(first["prompt_ids"])
    assert r.returncode == 0 and f"prompt {n} tok, {n - 1} from the prompt cache, 1 read at " in r.stderr, r.stderr


def test_a_prompt_cache_file_that_is_not_ours_is_never_overwritten(tmp_path):
    """--prompt-cache naming a user's file by mistake: one line, exit 2, the file as it
    was; a damaged or foreign prompt cache (our magic) is replaced with a warning."""
    from .test_cli import cli

    notes = tmp_path / "notes.txt"
    notes.write_text("my notes\n" * 100)
    r = cli("generate", "-p", "Once", "-n", "2", "--prompt-cache", str(notes), cwd=str(tmp_path))
    assert r.returncode == 2 and r.stderr.splitlines() == [
        f"llama-chat: error: {notes} is not a llama-chat prompt cache; choose another --prompt-cache file "
        "(it is left as it is)"]
    assert notes.read_text() == "my notes\n" * 100

    empty = tmp_path / "empty.cache"                   # as mktemp makes it: filled
    empty.write_bytes(b"")
    r = cli("generate", "-p", "Once", "-n", "2", "--prompt-cache", str(empty), cwd=str(tmp_path))
    assert r.returncode == 0 and "warning" not in r.stderr and empty.read_bytes().startswith(prompt_cache.MAGIC)

    damaged = tmp_path / "p.cache"
    damaged.write_bytes(prompt_cache.MAGIC + b"\x05\x00\x00\x00{oops")
    r = cli("generate", "-p", "Once", "-n", "2", "--prompt-cache", str(damaged), cwd=str(tmp_path))
    assert r.returncode == 0 and "damaged" in r.stderr and "it will be replaced" in r.stderr
    assert damaged.read_bytes().startswith(prompt_cache.MAGIC) and b"oops" not in damaged.read_bytes()


def test_serve_prompt_cache_refuses_a_file_that_is_not_ours(default_model, tmp_path):
    from app.commands.serve import setup_prompt_cache

    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"\x00" * 64)
    backend = CpuBackend(default_model.weights, slots=2)
    with pytest.raises(prompt_cache.NotOurs, match="not a llama-chat prompt cache"):
        setup_prompt_cache(str(notes), default_model, backend, BatchScheduler(backend, default_model.tokenizer))
    assert notes.read_bytes() == b"\x00" * 64
    from app.cli import main                            # and at the door, before a model loads
    t0 = time.monotonic()
    assert main(["serve", "--port", "0", "--prompt-cache", str(notes)]) == 2
    assert time.monotonic() - t0 < 5 and notes.read_bytes() == b"\x00" * 64
