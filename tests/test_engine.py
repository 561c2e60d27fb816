"""Engine behaviour: sampling determinism, live settings, stop, context limits, prefix reuse."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from inference.backends.cpu import CpuBackend
from inference.engine import Engine, Finished, TokenEvent
from inference.errors import ContextOverflowError
from inference.sampler import GREEDY, Sampler, SamplingSettings


@pytest.fixture()
def engine(default_model):
    return Engine(CpuBackend(default_model.weights), default_model.tokenizer)


def run(engine: Engine, prompt, settings=None) -> tuple[list[int], Finished]:
    toks: list[int] = []
    fin = None
    for ev in engine.generate(prompt, settings):
        if isinstance(ev, Finished):
            fin = ev
        elif ev.token_id >= 0:
            toks.append(ev.token_id)
    assert fin is not None
    return toks, fin


def test_same_seed_same_text_different_seed_different(engine):
    s = SamplingSettings(temperature=1.0, top_p=0.95, top_k=40, seed=7, max_new_tokens=60)
    a, _ = run(engine, "Once upon a time", s)
    b, _ = run(engine, "Once upon a time", s)
    c, _ = run(engine, "Once upon a time", s.with_(seed=8))
    assert a == b and a != c


def test_top_k_1_is_greedy(engine):
    g, _ = run(engine, "The sun was", GREEDY.with_(max_new_tokens=40))
    k1, _ = run(engine, "The sun was", SamplingSettings(temperature=1.3, top_k=1, seed=1, max_new_tokens=40))
    assert g == k1


def test_sampler_filters():
    class FakeBackend:
        def __init__(self, logits):
            self._l = np.asarray(logits, np.float32)

        def logits(self):
            return self._l.copy()

        def argmax(self):
            return int(np.argmax(self._l))

        def topk(self, k):
            idx = np.argsort(-self._l, kind="stable")[:k]
            return idx, self._l[idx]

    b = FakeBackend([5.0, 4.9, 0.0, -3.0, 2.0])
    smp = Sampler(0)
    draws = {smp.sample(b, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5), []) for _ in range(300)}
    assert draws == {0, 1}  # min-p drops everything below half of p(max)
    draws = {smp.sample(b, SamplingSettings(temperature=1.0, top_k=0, top_p=0.3), []) for _ in range(300)}
    assert draws == {0}     # the nucleus of 0.3 is the top token alone
    draws = {smp.sample(b, SamplingSettings(temperature=1.0, top_k=3, top_p=1.0), []) for _ in range(500)}
    assert draws == {0, 1, 4}
    # repetition penalty: the recently seen top token loses to the runner-up under greedy
    assert smp.sample(b, SamplingSettings(temperature=0, repeat_penalty=1.5), [0]) == 1


def test_settings_change_applies_from_next_token(engine, default_model):
    """Switch from hot sampling to greedy mid-stream: the rest is the greedy continuation."""
    engine.settings = SamplingSettings(temperature=1.5, top_k=0, top_p=1.0, seed=3, max_new_tokens=50)
    toks: list[int] = []
    for ev in engine.generate("Tom and his dog"):
        if isinstance(ev, TokenEvent):
            toks.append(ev.token_id)
            if len(toks) == 10:
                engine.settings = GREEDY.with_(max_new_tokens=50)
    prompt = default_model.tokenizer.encode("Tom and his dog")
    fresh = Engine(CpuBackend(default_model.weights), default_model.tokenizer)
    cont, _ = run(fresh, prompt + toks[:10], GREEDY.with_(max_new_tokens=len(toks) - 10))
    assert toks[10:] == cont[: len(toks) - 10]


def test_stop_from_another_thread(engine):
    engine.settings = SamplingSettings(temperature=1.0, seed=1, max_new_tokens=400)
    got: list[TokenEvent] = []
    fin: list[Finished] = []

    def worker():
        for ev in engine.generate("Once upon a time"):
            if isinstance(ev, Finished):
                fin.append(ev)
            else:
                got.append(ev)
                if len(got) == 5:
                    engine.stop()

    t = threading.Thread(target=worker)
    t.start()
    t.join(60)
    assert fin and fin[0].reason == "stopped"
    assert 5 <= len(got) <= 6


def test_context_full_is_a_reason_not_an_exception(engine, default_model):
    n_ctx = default_model.config.seq_len
    ids = [1] + [400] * (n_ctx - 11)
    toks, fin = run(engine, ids, SamplingSettings(temperature=1.0, seed=0, max_new_tokens=100))
    assert fin.reason in ("context_full", "eos")
    if fin.reason == "context_full":
        assert len(ids) + len(toks) == n_ctx


def test_prompt_longer_than_context(engine, default_model):
    with pytest.raises(ContextOverflowError, match="context holds 512"):
        run(engine, [1] * (default_model.config.seq_len + 1))


def test_prefix_reuse_prefills_only_new_tokens(engine, default_model):
    tok = default_model.tokenizer
    first = tok.encode("Once upon a time")
    a, fin_a = run(engine, first, GREEDY.with_(max_new_tokens=20))
    assert fin_a.stats.prefilled_tokens == len(first)
    follow = first + a + tok.encode(" Then", bos=False)
    b, fin_b = run(engine, follow, GREEDY.with_(max_new_tokens=20))
    # everything but the last reply token (never fed back) and the new words was cached
    assert fin_b.stats.prefilled_tokens == len(follow) - len(first) - len(a) + 1
    fresh = Engine(CpuBackend(default_model.weights), tok)
    c, _ = run(fresh, follow, GREEDY.with_(max_new_tokens=20))
    assert b == c
    # rolling back (regenerate) recomputes nothing before the cut
    _, fin_c = run(engine, first, GREEDY.with_(max_new_tokens=5))
    assert fin_c.stats.prefilled_tokens == 1


def test_stats_are_reported(engine):
    _, fin = run(engine, "Once upon a time", GREEDY.with_(max_new_tokens=30))
    s = fin.stats
    assert s.generated_tokens == 30 and s.decode_tok_s > 0 and s.prefill_tok_s > 0 and s.ttft_s > 0


def test_stop_before_start_cancels_that_generation_only(engine):
    engine.stop()
    toks, fin = run(engine, "Once upon a time", GREEDY.with_(max_new_tokens=20))
    assert fin.reason == "stopped" and toks == []
    toks, fin = run(engine, "Once upon a time", GREEDY.with_(max_new_tokens=20))
    assert fin.reason == "max_tokens" and len(toks) == 20


def test_a_conversation_starts_greedy_with_a_light_repeat_penalty_unless_told_otherwise():
    """Chat defaults (`for_conversation`): greedy plus CHAT_REPEAT_PENALTY when the user chose
    no temperature; a chosen temperature (0 included: exact greedy) or penalty stays as given;
    completion mode keeps the sampled defaults."""
    from inference.sampler import CHAT_REPEAT_PENALTY, for_conversation
    base = SamplingSettings()
    s = for_conversation(base, True, set())
    assert s.temperature == 0.0 and s.repeat_penalty == CHAT_REPEAT_PENALTY > 1.0
    s = for_conversation(SamplingSettings(temperature=0.0), True, {"temperature"})
    assert s.temperature == 0.0 and s.repeat_penalty == 1.0
    s = for_conversation(SamplingSettings(repeat_penalty=1.3), True, {"repeat_penalty"})
    assert s.temperature == 0.0 and s.repeat_penalty == 1.3
    s = for_conversation(SamplingSettings(temperature=0.7), True, {"temperature"})
    assert (s.temperature, s.repeat_penalty) == (0.7, 1.0)
    assert for_conversation(base, False, set()) == base


def test_top_k_kernel_is_the_descending_order_with_ties_by_id():
    """kernels.cpu_select.top_k against numpy's stable order (value descending, ties by
    lower id: what the CUDA `topk` kernel gives), on rows full of ties and on real-size
    vocabularies, for k from 0 past the row's length; and the batched path's sampling
    (sample_logits) draws what the single path (sample, through Backend.topk) draws."""
    from hypothesis import given, settings, strategies as st

    from inference.backends.base import Backend
    from kernels.cpu_select import top_k

    @settings(max_examples=300, deadline=None)
    @given(st.lists(st.integers(-4, 4), min_size=1, max_size=300), st.integers(0, 320))
    def ties(values, k):
        v = np.asarray(values, np.float32)
        assert np.array_equal(top_k(v, k), np.argsort(-v, kind="stable")[:k])

    ties()
    rng = np.random.default_rng(5)
    for n, k in ((32000, 40), (49152, 1), (49152, 256), (151936, 6000), (49152, 49152)):
        v = rng.standard_normal(n).astype(np.float32)
        v[rng.integers(0, n, 50)] = v.max()            # many ties at the top
        assert np.array_equal(top_k(v, k), np.argsort(-v, kind="stable")[:k])

    lg = rng.integers(-3, 3, 500).astype(np.float32)   # boundary ties everywhere

    class Fake:
        logits = staticmethod(lambda: lg.copy())
        topk = Backend.topk

    for k in (1, 7, 40):
        s = SamplingSettings(temperature=0.9, top_k=k, top_p=0.9, seed=11)
        a, b = Sampler(3), Sampler(3)
        assert [a.sample(Fake(), s, []) for _ in range(50)] == [b.sample_logits(lg, s, []) for _ in range(50)]


def test_the_row_normaliser_is_the_float64_sum_to_float32_rounding():
    """float32 exponentials summed in float64 (4x faster) stay within float32 rounding
    (2e-7 relative) of a float64 softmax normaliser, across temperatures and scales."""
    from inference.sampler import _row_total
    rng = np.random.default_rng(4)
    for scale in (0.05, 1.0, 3.0, 30.0):
        row = (rng.standard_normal(49152) * scale).astype(np.float32)
        for t in (0.1, 0.7, 1.0, 2.5):
            want = np.exp((row.astype(np.float64) - float(row.max())) / t).sum()
            assert abs(_row_total(row, float(row.max()), t) - want) <= 2e-7 * want, (scale, t)


def test_top_k_off_draws_what_sorting_the_whole_row_draws():
    """With top-k off, min-p or top-p is applied to the best HEAD tokens first (the whole
    row is sorted only when they keep more): the tokens drawn equal those of a draw over
    the whole sorted row, seed for seed."""
    from inference import sampler as sm

    def whole_row(rng, logits, s):
        order = np.argsort(-logits, kind="stable")
        z = logits[order].astype(np.float64) / s.temperature
        p = np.exp(z - z[0])
        p /= p.sum()
        keep = p.size
        if s.min_p > 0.0:
            keep = min(keep, max(1, int(np.count_nonzero(p >= s.min_p * p[0]))))
        if s.top_p < 1.0:
            keep = min(keep, int(np.searchsorted(np.cumsum(p[:keep]), s.top_p, side="left")) + 1)
        p = p[:keep] / p[:keep].sum()
        return int(order[min(int(np.searchsorted(np.cumsum(p), rng.random(), side="right")), keep - 1)])

    rng = np.random.default_rng(9)
    for trial, (scale, s) in enumerate([
            (3.0, SamplingSettings(temperature=0.8, top_k=0, top_p=0.95)),
            (3.0, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.05)),
            (0.3, SamplingSettings(temperature=1.5, top_k=0, top_p=0.9)),     # flat: more than HEAD kept
            (0.05, SamplingSettings(temperature=1.0, top_k=0, top_p=1.0, min_p=0.5)),
            (2.0, SamplingSettings(temperature=0.7, top_k=0, top_p=1.0))]):   # nothing cut
        logits = (rng.standard_normal(49152) * scale).astype(np.float32)
        ours, ref = sm.Sampler(trial), np.random.Generator(np.random.PCG64(trial))
        got = [ours.sample_logits(logits, s, []) for _ in range(60)]
        assert got == [whole_row(ref, logits, s) for _ in range(60)], s
