"""The UI-free conversation's alternatives, edit-and-resend and model switch
(inference/chat/conversation.py), which the TUI and a server share."""
from __future__ import annotations

import pytest

from inference.chat import Conversation, Message, builtin_template


@pytest.fixture()
def conv(default_model):
    return Conversation(default_model.tokenizer, builtin_template("chatml"), 512)


def reply(text: str) -> Message:
    return Message("assistant", text, [1])


def test_regenerated_replies_are_kept_in_order_and_flipped(conv):
    turn = conv.add_user("Hi")
    a, b, c = reply("a"), reply("b"), reply("c")
    conv.set_reply(turn, a)
    assert conv.drop_last_reply() is a and turn.reply is None
    conv.set_reply(turn, b)
    conv.drop_last_reply()
    conv.set_reply(turn, c)
    assert turn.alternatives() == [a, b, c] and turn.position() == (3, 3)
    assert conv.flip_reply(1) is None                       # already the newest
    assert conv.flip_reply(-1) is b and turn.position() == (2, 3)
    assert conv.flip_reply(-5) is a
    assert conv.flip_reply(-1) is None
    assert "a" in [m["content"] for m in conv.messages()]   # the shown one is what the model sees
    assert "c" not in [m["content"] for m in conv.messages()]


def test_a_reply_set_directly_counts_as_one_alternative(conv):
    turn = conv.add_user("Hi")
    turn.reply = reply("x")          # older callers set the field
    assert turn.alternatives() == [turn.reply] and turn.position() == (1, 1)
    assert conv.flip_reply(1) is None


def test_edit_last_replaces_the_turn(conv):
    first = conv.add_user("one")
    conv.set_reply(first, reply("1"))
    last = conv.add_user("twoo")
    conv.set_reply(last, reply("2?"))
    old, new = conv.edit_last("two")
    assert old is last and conv.turns == [first, new] and new.reply is None
    assert [m["content"] for m in conv.messages()] == ["one", "1", "two"]
    with pytest.raises(ValueError):
        Conversation(conv.tokenizer, conv.template, 512).edit_last("x")


def test_rebind_continues_on_another_template_and_context(conv, default_model):
    conv.set_reply(conv.add_user("Hi"), reply("Hello"))
    conv.first_in_context = 1
    conv.rebind(default_model.tokenizer, builtin_template("llama2"), 256)
    assert (conv.n_ctx, conv.template.name, conv.first_in_context) == (256, "llama2", 0)
    assert conv.sequence()[:1] == [default_model.tokenizer.bos_id]
