"""The conversation without a UI: ids through the template, dropping old turns when the
context is full (the system prompt stays), regenerate, and reuse of the KV cache."""
from __future__ import annotations

import os

import pytest

from inference.chat import Conversation, Message, builtin_template, prompt_ids, resolve_template
from inference.engine import Engine, Finished
from inference.errors import ContextOverflowError
from inference.sampler import GREEDY
from inference.tokenizer import load_tokenizer

from .tokenizer_fixtures import SMOLLM2


@pytest.fixture(scope="module")
def tok(default_model):
    return default_model.tokenizer


def _reply(turn, text: str, ids=None) -> None:
    turn.reply = Message("assistant", text, ids or [])


def test_llama2_sequence_is_the_rendered_dialog(tok):
    conv = Conversation(tok, builtin_template("llama2"), 512, system="Be kind.")
    _reply(conv.add_user("Hi"), "Hello!")
    conv.add_user("More")
    want = prompt_ids(builtin_template("llama2"), tok, [
        {"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "More"}])
    assert conv.sequence() == want
    assert want[0] == tok.bos_id and want.count(tok.bos_id) == 2 and want.count(tok.eos_id) == 1
    # without a system prompt there is no <<SYS>> block at all
    plain = Conversation(tok, builtin_template("llama2"), 512)
    plain.add_user("Hi")
    assert plain.sequence() == [tok.bos_id, *tok.encode("[INST] Hi [/INST]", bos=False)]


def test_completion_is_one_running_text(tok):
    conv = Conversation(tok, builtin_template("completion"), 512, system="ignored")
    _reply(conv.add_user("Once upon a time"), " there was a dog.")
    conv.add_user("")
    assert conv.sequence() == tok.encode("Once upon a time there was a dog.")
    conv.turns[-1].user.text = "The dog"
    assert conv.sequence() == tok.encode("Once upon a time there was a dog. The dog")


def test_plan_reply_drops_oldest_turns_and_keeps_system(tok):
    conv = Conversation(tok, builtin_template("llama2"), 512, system="You tell stories.")
    for i in range(12):
        _reply(conv.add_user(f"Tell me about the number {i} and a cat"), "a story " * 12)
    conv.add_user("last one")
    plan = conv.plan_reply(max_new_tokens=100)
    assert plan.dropped > 0 and conv.first_in_context == plan.dropped
    assert plan.kept == 13 - plan.dropped and len(plan.ids) + 100 <= 512
    first = conv.turns[conv.first_in_context].user.text
    head = prompt_ids(conv.template, tok, [{"role": "system", "content": "You tell stories."},
                                            {"role": "user", "content": first}])
    assert plan.ids[:len(head)] == head, "the system prompt moved into the first turn kept"
    # one turn fewer would not have left room
    conv.first_in_context -= 1
    assert len(conv.sequence()) + 100 > 512


def test_plan_reply_refuses_a_message_longer_than_the_context(tok):
    conv = Conversation(tok, builtin_template("completion"), 512)
    conv.add_user("word " * 2000)
    with pytest.raises(ContextOverflowError, match="context holds 512"):
        conv.plan_reply(100)


def test_regenerate_plans_the_sequence_without_the_last_reply(tok):
    conv = Conversation(tok, builtin_template("llama2"), 512)
    conv.add_user("Hi")
    before = conv.plan_reply(50).ids
    _reply(conv.turns[-1], "Hello there.")
    assert conv.sequence() != before
    old = conv.drop_last_reply()
    assert old.text == "Hello there." and conv.turns[-1].reply is None
    assert conv.plan_reply(50).ids == before
    assert conv.drop_last_reply() is None


def test_chatml_history_only_grows_so_the_cache_prefix_holds():
    if not os.path.exists(SMOLLM2):
        pytest.skip(f"{SMOLLM2} is not available")
    smol = load_tokenizer(SMOLLM2)
    conv = Conversation(smol, resolve_template("auto", smol), 8192)
    conv.add_user("Hello! Who are you?")
    first = conv.plan_reply(256).ids
    reply = "I'm SmolLM. <|im_end|> typed"
    reply_ids = smol.encode(reply)
    _reply(conv.turns[-1], reply, reply_ids)
    conv.add_user("Thanks")
    second = conv.plan_reply(256).ids
    assert second[:len(first) + len(reply_ids)] == first + reply_ids
    assert second[len(first) + len(reply_ids)] == smol.token_id("<|im_end|>")
    # system, user, assistant, user: the typed one in the reply stays text
    assert second.count(smol.token_id("<|im_end|>")) == 4


def test_the_engine_prefills_only_what_the_cache_lacks(default_model):
    """Turn 2 re-renders turn 1 and its reply; the engine keeps the common prefix."""
    from inference.loader import create_backend
    tok = default_model.tokenizer
    engine = Engine(create_backend(default_model, "cpu"), tok, GREEDY.with_(max_new_tokens=40))
    conv = Conversation(tok, builtin_template("completion"), engine.context_length)
    conv.add_user("Once upon a time")
    events = list(engine.generate(conv.plan_reply(40).ids))
    fin = events[-1]
    assert isinstance(fin, Finished) and fin.new_tokens
    _reply(conv.turns[-1], tok.decode(list(fin.new_tokens)), list(fin.new_tokens))
    cached = list(engine.tokens)
    conv.add_user("The dog")
    ids = conv.plan_reply(40).ids
    keep = 0
    while keep < min(len(cached), len(ids) - 1) and cached[keep] == ids[keep]:
        keep += 1
    fin2 = list(engine.generate(ids))[-1]
    assert fin2.stats.prefilled_tokens == len(ids) - keep
    assert keep >= len(cached) - 2, "the re-rendered history matches what is cached"
    assert fin2.stats.prefilled_tokens < len(ids) // 2


def test_replies_stop_at_any_end_of_generation_id(default_model):
    """The engine's stop set is the tokenizer's: an id in it ends the reply unprinted."""
    from inference.loader import create_backend
    tok = default_model.tokenizer
    engine = Engine(create_backend(default_model, "cpu"), tok, GREEDY.with_(max_new_tokens=30))
    first = [e for e in engine.generate("Once upon a time") if not isinstance(e, Finished)][0].token_id
    assert engine.stop_ids == set(tok.stop_ids) and tok.eos_id in engine.stop_ids
    engine.stop_ids = engine.stop_ids | {first}
    engine.tokens.clear()
    fin = list(engine.generate("Once upon a time"))[-1]
    assert fin.reason == "eos" and fin.new_tokens == ()


def test_a_reply_cut_short_is_continued_from_its_own_ids(tok):
    """The plan is the prompt the reply answered, then the reply's ids with no end-of-turn
    marker; ids that do not spell the reply (another model's) give way to its text."""
    t = builtin_template("chatml")
    conv = Conversation(tok, t, 512, system="Be brief.")
    turn = conv.add_user("Hi")
    ids = tok.encode("Hello there, my", bos=False)
    turn.reply = Message("assistant", tok.decode(ids), list(ids), "max_tokens")
    assert conv.can_continue()
    head = prompt_ids(t, tok, [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}])
    plan = conv.plan_continuation(64)
    assert plan.ids == head + ids and plan.dropped == 0
    # the ids of another tokenizer: the text is what counts
    turn.reply.ids = [5, 6, 7]
    assert conv.plan_continuation(64).ids == head + tok.encode(turn.reply.text, bos=False)
    assert turn.reply.ids == tok.encode(turn.reply.text, bos=False)
    # a reply the model ended, an error, or a completion-mode text: nothing to continue
    for status in ("complete", "error"):
        turn.reply.status = status
        assert not conv.can_continue()
        with pytest.raises(ValueError):
            conv.plan_continuation(64)
    turn.reply.status = "stopped"
    assert conv.can_continue()
    story = Conversation(tok, builtin_template("completion"), 512)
    _reply(story.add_user("Once"), " upon a time")
    story.turns[-1].reply.status = "max_tokens"
    assert not story.can_continue()


def test_a_reply_that_fills_the_context_cannot_be_continued(tok):
    conv = Conversation(tok, builtin_template("chatml"), 64)
    turn = conv.add_user("Hi")
    ids = tok.encode("a story " * 40, bos=False)
    turn.reply = Message("assistant", tok.decode(ids), list(ids), "context_full")
    with pytest.raises(ContextOverflowError, match="cannot be continued"):
        conv.plan_continuation(16)
