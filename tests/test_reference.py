"""The CPU path reproduces the independent reference on the shipped model, token for token."""
from __future__ import annotations

import numpy as np
import pytest

from inference.backends.cpu import CpuBackend
from inference.engine import Engine, Finished
from inference.sampler import GREEDY


@pytest.fixture(scope="module")
def backend(default_model):
    return CpuBackend(default_model.weights)


def test_prompt_ids_match_reference(default_model, reference):
    for case in reference["cases"]:
        assert default_model.tokenizer.encode(case["prompt"]) == case["prompt_ids"], case["prompt"]


def test_first_logits_within_1e4(backend, reference):
    for case in reference["cases"]:
        ids = [1] + case["ids_after_bos"]
        for pos in range(3):
            backend.forward([ids[pos]], pos)
            want = np.asarray(case["first_logits"][pos], dtype=np.float32)
            diff = float(np.abs(backend.logits() - want).max())
            assert diff < 1e-4, (case["prompt"], pos, diff)


def test_batched_prefill_equals_token_by_token(backend, reference):
    ids = [1] + reference["cases"][0]["ids_after_bos"][:40]
    backend.forward(ids, 0)
    batched = backend.logits()
    for pos, tok in enumerate(ids):
        backend.forward([tok], pos)
    np.testing.assert_allclose(batched, backend.logits(), atol=1e-4)


def test_greedy_generation_equals_reference(default_model, backend, reference):
    """The engine (prefill + greedy decode) gives the reference continuation and text."""
    engine = Engine(backend, default_model.tokenizer)
    for case in reference["cases"]:
        n_prompt = len(case["prompt_ids"])
        n_new = case["steps"] - n_prompt + 1
        settings = GREEDY.with_(max_new_tokens=n_new)
        engine.tokens.clear()
        events = list(engine.generate(case["prompt_ids"], settings, echo_prompt=True))
        fin = events[-1]
        assert isinstance(fin, Finished)
        got = case["prompt_ids"][1:] + list(fin.new_tokens)
        assert got == case["ids_after_bos"][: len(got)], case["prompt"]
        assert len(got) == len(case["ids_after_bos"]) or fin.reason == "eos"
        text = "".join(e.text for e in events[:-1])
        assert text == case["text"][: len(text)] and len(text) >= len(case["text"]) - 1
