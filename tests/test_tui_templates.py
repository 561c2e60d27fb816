"""Chat templates and the session's context management (no UI)."""
from __future__ import annotations

import pytest

from inference.engine import Engine
from inference.sampler import SamplingSettings
from app.tui.session import ChatSession, Message
from app.tui.templates import (CompletionTemplate, Llama2Template, Turn, build_sequence,
                               make_template)


@pytest.fixture(scope="module")
def tok(default_model):
    return default_model.tokenizer


def test_llama2_builds_meta_dialog_format(tok):
    t = Llama2Template(tok)
    r1 = [100, 101, 102]
    seq = build_sequence(t, "Be kind.", [Turn("Hi", r1), Turn("More", None)])
    first = tok.encode("[INST] <<SYS>>\nBe kind.\n<</SYS>>\n\nHi [/INST]", bos=True)
    second = tok.encode("[INST] More [/INST]", bos=True)
    assert seq == first + r1 + [tok.eos_id] + second
    assert seq[0] == tok.bos_id and seq.count(tok.bos_id) == 2
    # no system prompt: no <<SYS>> block at all
    assert build_sequence(t, "", [Turn("Hi")]) == tok.encode("[INST] Hi [/INST]", bos=True)


def test_completion_is_one_running_text(tok):
    t = CompletionTemplate(tok)
    seq = build_sequence(t, "ignored", [Turn("Once upon a time", [5, 6]), Turn("", None), ])
    assert seq == tok.encode("Once upon a time", bos=True) + [5, 6]
    seq2 = build_sequence(t, "", [Turn("Once", [5]), Turn("The dog", None)])
    assert seq2 == tok.encode("Once", bos=True) + [5] + tok.encode("The dog", bos=False)


def test_auto_template_choice(tok, default_model):
    assert make_template("auto", tok, default_model.name, default_model.path).name == "completion"
    assert make_template("auto", tok, "llama-2-7b-chat", "/m/llama-2-7b-chat").name == "llama2"
    assert make_template("completion", tok, "x-chat", "").name == "completion"  # override wins
    with pytest.raises(ValueError):
        make_template("alpaca", tok)


def _session(default_model, template: str, system: str = "", max_new: int = 100) -> ChatSession:
    from inference.loader import create_backend
    eng = Engine(create_backend(default_model, "cpu"), default_model.tokenizer,
                 SamplingSettings(max_new_tokens=max_new))
    return ChatSession(eng, make_template(template, default_model.tokenizer), system)


def test_plan_reply_drops_oldest_turns_and_keeps_system(default_model):
    s = _session(default_model, "llama2", system="You tell stories.")
    for i in range(12):
        turn = s.add_user(f"Tell me about the number {i} and a cat")
        turn.reply = Message("assistant", "", [300 + i] * 30)
    s.add_user("last one")
    ids, dropped = s.plan_reply()
    assert dropped > 0 and s.first_in_context == dropped
    assert len(ids) + s.reserve() <= s.n_ctx
    kept = s.turns[s.first_in_context]
    head = s.template.user_ids(kept.user.text, s.system, first=True)
    assert ids[:len(head)] == head and s.engine.tokenizer.encode("You tell stories.", bos=False)[1] in head


def test_plan_reply_refuses_a_message_longer_than_the_context(default_model):
    s = _session(default_model, "completion")
    s.add_user("word " * 2000)
    with pytest.raises(ValueError, match="context holds 512"):
        s.plan_reply()
