"""Pilot tests of the chat TUI on the real default model (stories260K, CPU): streaming,
settings mid-reply, stop, regenerate, reopening, the context window, control keys.

See tests/tui_helpers.py for the paced backend and the polling waits. The issue-12
defects and the additions have their own files (test_tui_defects.py, test_tui_features.py).
"""
from __future__ import annotations

import asyncio
import os
import time

import pytest

from inference.chat import prompt_ids

from .tui_helpers import (cpu_backend, key, make_app, replies, run, type_and_send,  # noqa: F401
                          until, wait_reply)

from app.tui.store import HistoryStore  # noqa: E402
from app.tui.widgets.context_bar import ContextBar  # noqa: E402
from app.tui.widgets.message import MessageView, NoticeView  # noqa: E402
from app.tui.widgets.prompt_input import PromptInput  # noqa: E402
from app.tui.widgets.sampling_panel import SamplingPanel  # noqa: E402
from app.tui.widgets.speed_panel import SpeedPanel  # noqa: E402


def test_prompt_streams_tokens_then_renders_markdown(make_app):
    app = make_app(delay=0.004, max_new_tokens=120, seed=1)
    seen: list[int] = []   # reply length on screen at each frame

    async def body(pilot) -> None:
        real_drain = app._drain

        async def spy() -> None:
            await real_drain()
            if app.streaming_view is not None:
                seen.append(len(app.streaming_view.text))

        app._drain = spy  # type: ignore[method-assign]
        await type_and_send(pilot, "Once upon a time")
        await wait_reply(app, 0)
        grew = [n for n in seen if n > 0]
        assert len(set(grew)) >= 3, f"text should grow over several frames, saw lengths {seen}"
        view = replies(app)[-1]
        assert not view.streaming and len(view.text) > 50
        assert view.query_one(".message-body").__class__.__name__ == "Markdown"
        assert view.query_one(".message-body").source == view.text, "the Markdown holds the whole reply"
        speed = app.query_one(SpeedPanel)
        assert speed.stats.generated_tokens == 120 and speed.stats.decode_tok_s > 0
        assert "tok/s" in str(speed.query_one("#speed-now").render())
        assert app.query_one(ContextBar).used == app.session.context_used() > 120
        turn = app.session.turns[-1]
        assert turn.reply.status == "max_tokens" and len(turn.reply.ids) == 120
        # the reply was written with its ids
        msgs = app.store.messages(app.session.conversation_id)
        assert [m.role for m in msgs] == ["user", "assistant"]
        assert list(msgs[1].token_ids) == turn.reply.ids

    run(app, body)


def test_temperature_change_mid_stream_applies_from_next_token(make_app):
    app = make_app(delay=0.003, max_new_tokens=300, temperature=0.8)
    used: list[float] = []
    sampler = app.engine.sampler
    real_sample = sampler.sample

    def spy(backend, s, recent):
        used.append(s.temperature)
        return real_sample(backend, s, recent)

    sampler.sample = spy  # type: ignore[method-assign]

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await until(lambda: len(used) >= 10, what="10 sampled tokens")
        n_before = len(used)
        key(app, "f6")  # temperature +0.1, from anywhere
        await until(lambda: app.engine.settings.temperature == pytest.approx(0.9), 2, "the new temperature")
        assert "0.90" in str(app.query_one(SamplingPanel).render())
        n_after = len(used)
        await until(lambda: len(used) > n_after + 3, what="tokens after the change")
        assert app.generating, "the reply should still be streaming"
        await app._stop_and_wait()
        assert all(t == pytest.approx(0.8) for t in used[:n_before])
        first_new = next(i for i, t in enumerate(used) if t != pytest.approx(0.8))
        assert n_before <= first_new <= n_after + 1, "the new value is used from the next token"
        assert all(t == pytest.approx(0.9) for t in used[first_new:])

        # the sampling panel edits values by keys too: F2, down to top-k, nudge down
        await pilot.press("f2", "down", "down", "left")
        assert app.engine.settings.top_k == 35
        assert "35" in str(app.query_one(SamplingPanel).render())

    run(app, body)


def test_escape_stops_and_keeps_the_partial_reply(make_app):
    app = make_app(delay=0.004, max_new_tokens=400)

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await until(lambda: app.streaming_view is not None and len(app.streaming_view.text) > 10,
                    what="some streamed text")
        key(app, "escape")
        await wait_reply(app, 0)
        turn = app.session.turns[-1]
        assert turn.reply.status == "stopped"
        assert 0 < len(turn.reply.ids) < 400
        view = replies(app)[-1]
        assert view.has_class("-stopped") and "stopped" in str(view.query_one(".message-header").render())
        assert app.store.messages(app.session.conversation_id)[-1].status == "stopped"

    run(app, body)


def test_ctrl_r_regenerates_from_the_cached_prefix(make_app):
    app = make_app(max_new_tokens=60)

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await wait_reply(app, 0)
        old = app.session.turns[-1].reply
        await pilot.press("ctrl+r")
        await wait_reply(app, 1)
        turn = app.session.turns[-1]
        new = turn.reply
        assert new is not old and len(app.session.turns) == 1
        assert len(replies(app)) == 1, "the old reply is replaced on screen"
        assert turn.alternatives() == [old, new], "and kept as an alternative"
        # rolled back, not recomputed: only the last prompt token was run again
        assert app.query_one(SpeedPanel).stats.prefilled_tokens == 1
        stored = app.store.messages(app.session.conversation_id)
        assert [(m.role, m.state) for m in stored] == [("user", "shown"), ("assistant", "alternative"),
                                                       ("assistant", "shown")]
        assert stored[-1].id == new.db_id and stored[1].id == old.db_id

    run(app, body)


def test_conversation_reopens_after_restart(make_app, tmp_path, default_model):
    db = str(tmp_path / "h.db")
    first = make_app(db=db, max_new_tokens=40, seed=3)
    saved: dict = {}

    async def chat(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await wait_reply(first, 0)
        cached = list(first.engine.tokens)
        await type_and_send(pilot, "The dog")
        await wait_reply(first, 1)
        # the second turn re-rendered the first and prefilled only from where it differs
        # from the KV cache: at most the new words, the first reply's last token (sampled
        # but never run through the model) and a re-tokenized seam
        ids = first.session.sequence()
        keep = next((k for k, (a, b) in enumerate(zip(cached, ids)) if a != b), min(len(cached), len(ids)))
        new_words = len(default_model.tokenizer.encode(" The dog", bos=False))
        prefilled = first.query_one(SpeedPanel).stats.prefilled_tokens
        assert prefilled <= new_words + 3 and keep >= len(cached) - 3, (prefilled, keep, len(cached))
        saved["ids"] = first.session.sequence()
        saved["id"] = first.session.conversation_id
        await pilot.press("ctrl+q")

    run(first, chat)
    assert first.return_value == 0

    second = make_app(db=db, max_new_tokens=40)

    async def reopen(pilot) -> None:
        sidebar = second.query_one("#history")
        assert sidebar.option_count == 1
        await pilot.press("ctrl+b")       # the history opens on a highlighted row
        assert sidebar.list.has_focus and sidebar.list.highlighted == 0
        await pilot.press("enter")
        await until(lambda: len(second.session.turns) == 2, what="the conversation to reopen")
        assert second.session.conversation_id == saved["id"]
        assert second.session.sequence() == saved["ids"], "replies come back as the same ids"
        assert len(replies(second)) == 2
        await type_and_send(pilot, "Then")
        await wait_reply(second, 0)
        assert len(second.store.messages(saved["id"])) == 6

    run(second, reopen)


def test_context_full_drops_oldest_turns_but_keeps_the_system_prompt(make_app):
    system = "You are a storyteller."
    app = make_app(template="llama2", system=system, max_new_tokens=150, seed=5)
    tmpl = app.session.template

    async def body(pilot) -> None:
        n = 0
        while app.session.first_in_context == 0:
            await type_and_send(pilot, f"Tell me story number {n} about a cat and a dog")
            await wait_reply(app, n)
            n += 1
            assert n < 20, "the context should have filled by now"
        s = app.session
        ids = s.sequence()
        assert len(ids) <= s.n_ctx
        first_kept = s.turns[s.first_in_context]
        head = prompt_ids(tmpl, s.tokenizer, [{"role": "system", "content": system},
                                               {"role": "user", "content": first_kept.user.text}])
        assert ids[:len(head)] == head, "system prompt moved to the first kept turn"
        notices = [str(v.render()) for v in app.query(NoticeView)]
        assert sum("context is full" in t for t in notices) == 1, "said once, not after every turn"
        assert len(replies(app)) == n, "dropped turns stay on screen"
        assert all(v.has_class("-dropped") for t in s.turns[:s.first_in_context] for v in t.views)
        assert not any(v.has_class("-dropped") for t in s.turns[s.first_in_context:] for v in t.views)

    run(app, body)


def test_keys_typed_while_streaming_reach_the_message_box(make_app):
    """Typing while a ~300 tok/s reply streams: every key lands, in order. (The latency
    figure is measured by tests/bench_tui_latency.py, not asserted here.)"""
    app = make_app(delay=0.003, max_new_tokens=480)

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await until(lambda: app.streaming_view is not None and len(app.streaming_view.text) > 0,
                    what="streaming")
        box = app.query_one(PromptInput)
        for ch in "hello":
            key(app, ch, ch)
            await asyncio.sleep(0.02)
        await until(lambda: box.text == "hello", 5, "the keys to reach the box")
        assert app.generating, "the reply was still streaming"

    run(app, body)


def test_corrupt_history_is_moved_aside(make_app, tmp_path):
    db = tmp_path / "history.db"
    db.write_bytes(b"this is not sqlite" * 100)
    app = make_app(db=str(db), max_new_tokens=20)

    async def body(pilot) -> None:
        await until(lambda: any("moved" in str(v.render()) for v in app.query(NoticeView)),
                    what="the corrupt-db notice")
        await type_and_send(pilot, "Once upon a time")
        await wait_reply(app, 0)
        assert len(app.store.messages(app.session.conversation_id)) == 2

    run(app, body)
    aside = [p for p in os.listdir(tmp_path) if p.startswith("history.db.corrupt-")]
    assert aside and (tmp_path / aside[0]).read_bytes().startswith(b"this is not sqlite")


def test_sampling_values_can_be_typed_and_bad_input_is_refused(make_app):
    from app.tui.widgets.value_dialog import ValueDialog

    app = make_app(max_new_tokens=20)

    async def body(pilot) -> None:
        await pilot.press("f2")                       # sampling panel, row 0 = temperature
        await pilot.press("enter")
        await until(lambda: isinstance(app.screen, ValueDialog), 2, "the value dialog")
        box = app.screen.query_one("#dialog-input")
        box.value = "hot"
        await pilot.press("enter")
        assert isinstance(app.screen, ValueDialog), "bad input keeps the dialog open"
        assert "number" in str(app.screen.query_one("#dialog-hint").render())
        box.value = "0"
        await pilot.press("enter")
        await until(lambda: not isinstance(app.screen, ValueDialog), 2, "the dialog to close")
        assert app.engine.settings.temperature == 0.0
        assert "greedy" in str(app.query_one(SamplingPanel).render())
        titles = [c.title for c in app.get_system_commands(app.screen)]
        for want in ("Stop generation", "Regenerate last reply", "New conversation", "Keys / help"):
            assert want in titles

    run(app, body)


@pytest.mark.parametrize("control", ["ctrl+q", "ctrl+n", "ctrl+r"])
def test_control_keys_mid_stream_stop_save_and_carry_on(make_app, tmp_path, control):
    """Quit / new chat / regenerate while a reply streams: the partial reply is saved as
    stopped first, promptly (the wait for the engine must not block the event loop)."""
    db = str(tmp_path / "h.db")
    app = make_app(db=db, delay=0.004, max_new_tokens=400)
    timing: dict = {}

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await until(lambda: app.streaming_view is not None and len(app.streaming_view.text) > 10,
                    what="some streamed text")
        t0 = time.perf_counter()
        key(app, control)
        if control == "ctrl+q":
            await until(lambda: app.return_value == 0, 5, "the app to exit")
        elif control == "ctrl+n":
            await until(lambda: not app.session.turns and not app.generating, 5, "a new conversation")
        else:
            await until(lambda: app.replies_finished >= 1, 5, "the stopped reply to be saved")
        timing["s"] = time.perf_counter() - t0
        if control == "ctrl+r":
            await until(lambda: app.replies_finished >= 2 and not app.generating, 20, "the new reply")

    run(app, body)
    assert timing["s"] < 3.0
    store = HistoryStore.open(db)
    msgs = store.messages(store.conversations()[0].id)
    store.close()
    if control == "ctrl+r":   # the stopped reply stays as an alternative to the new one
        assert [(m.role, m.status, m.state) for m in msgs][:2] == [("user", "complete", "shown"),
                                                                    ("assistant", "stopped", "alternative")]
        assert msgs[-1].state == "shown" and msgs[-1].status != "stopped" and len(msgs) == 3
    else:
        assert [(m.role, m.status) for m in msgs] == [("user", "complete"), ("assistant", "stopped")]


def test_a_full_speed_model_is_drawn_once_per_frame_not_once_per_token(make_app, monkeypatch):
    from app.tui.chat_app import FRAME_S

    app = make_app(max_new_tokens=400, temperature=1.0, seed=11)
    appends: list[int] = []
    real_append = MessageView.append

    async def counting_append(self, chunk: str) -> None:
        appends.append(len(chunk))
        await real_append(self, chunk)

    monkeypatch.setattr(MessageView, "append", counting_append)

    async def body(pilot) -> None:
        t0 = time.perf_counter()
        await type_and_send(pilot, "Once upon a time")
        await wait_reply(app, 0)
        elapsed = time.perf_counter() - t0
        tokens = len(app.session.turns[-1].reply.ids)
        text = replies(app)[-1].text
        assert len(appends) <= elapsed / FRAME_S + 3, (len(appends), elapsed)
        assert sum(appends) == len(text), "every character arrived"
        print(f"\n{tokens} tokens in {elapsed:.2f} s drawn in {len(appends)} frames")

    run(app, body)


def test_a_message_left_without_reply_can_be_answered_after_reopening(make_app, tmp_path):
    db = str(tmp_path / "h.db")
    store = HistoryStore.open(db)
    cid = store.new_conversation("Once", "stories260K", "completion", "", "tok512")
    store.add_message(cid, "user", "Once upon a time", None)  # the app died mid-reply
    store.close()
    app = make_app(db=db, max_new_tokens=30)

    async def body(pilot) -> None:
        await app.open_conversation(cid)
        assert any("Ctrl+R" in str(v.render()) for v in app.query(NoticeView))
        await pilot.press("ctrl+r")
        await wait_reply(app, 0)
        assert [m.role for m in app.store.messages(cid)] == ["user", "assistant"]

    run(app, body)


def test_help_and_dialogs_open_over_a_streaming_reply(make_app):
    """Panels keep updating under a modal screen (F1 help, the value dialog), and the
    layout follows terminal resizes even while a modal is up."""
    from app.tui.widgets.help_screen import HelpScreen

    app = make_app(delay=0.004, max_new_tokens=300)

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await until(lambda: app.streaming_view is not None and len(app.streaming_view.text) > 5,
                    what="streaming")
        key(app, "f1")
        await until(lambda: isinstance(app.screen, HelpScreen), 2, "the help screen")
        n = len(app.streaming_view.text)
        await until(lambda: app.streaming_view is None or len(app.streaming_view.text) > n + 20, 5,
                    "text to keep streaming under the help screen")
        await pilot.resize_terminal(60, 20)
        await until(lambda: app.screen_stack[0].has_class("-tiny"), 2, "the narrow layout")
        key(app, "escape")
        await until(lambda: not isinstance(app.screen, HelpScreen), 2, "help to close")
        await wait_reply(app, 0)
        assert not app.screen_stack[0].query_one("#panels").display
        await pilot.resize_terminal(120, 40)
        await until(lambda: app.screen_stack[0].query_one("#panels").display, 2, "panels back")

    run(app, body)
