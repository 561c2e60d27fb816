"""Issue 12's additions (and the TUI parts of issues 11 and 13), as a user meets them:
copy, export, edit and resend, alternatives, history management, the system prompt line,
presets, typing from anywhere, the model picker, signals, odd history rows.
"""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sqlite3

import pytest

from .tui_helpers import (cpu_backend, key, make_app, paste, replies, run, screen_lines,  # noqa: F401
                          send_and_wait, type_and_send, until, wait_reply)

from app.tui.store import HistoryStore  # noqa: E402
from app.tui.widgets.choice_dialog import ChoiceDialog, ConfirmDialog  # noqa: E402
from app.tui.widgets.conversation import ConversationView  # noqa: E402
from app.tui.widgets.history_sidebar import HistoryList, HistorySidebar  # noqa: E402
from app.tui.widgets.key_bar import KeyBar  # noqa: E402
from app.tui.widgets.loading_screen import LoadingScreen  # noqa: E402
from app.tui.widgets.message import SystemView  # noqa: E402
from app.tui.widgets.speed_panel import SpeedPanel  # noqa: E402
from app.tui.widgets.value_dialog import ValueDialog  # noqa: E402


def script(app, default_model, text: str) -> None:
    app.scripted.queue(default_model.tokenizer.encode(text, bos=False))


async def answer_dialog(pilot, app, kind, text: str | None = None) -> None:
    await until(lambda: isinstance(app.screen, kind), 3, f"the {kind.__name__}")
    if text is not None:
        box = app.screen.query_one("#dialog-input")
        box.value = text
    await pilot.press("enter")
    await until(lambda: not isinstance(app.screen, kind), 3, "the dialog to close")


# -- copy ---------------------------------------------------------------------------------
def test_copy_the_last_reply_or_one_of_its_code_blocks(make_app, default_model):
    app = make_app(backend="scripted")
    reply = "Here:\n\n```python\nprint('hi')\n```\n\nand\n\n```sh\nls -l\n```"

    async def body(pilot) -> None:
        script(app, default_model, "Just text.")
        await send_and_wait(pilot, "hello")
        await pilot.press("f7")                 # no code: copied at once
        assert app.clipboard.strip() == "Just text."
        script(app, default_model, reply)
        await send_and_wait(pilot, "code please")
        await pilot.press("f7")
        await until(lambda: isinstance(app.screen, ChoiceDialog), 3, "the copy menu")
        await pilot.press("down", "down", "enter")  # code block 2
        await until(lambda: not isinstance(app.screen, ChoiceDialog), 3, "the menu to close")
        assert app.clipboard == "ls -l\n"
        await pilot.press("f7", "enter")          # the whole reply
        await until(lambda: app.clipboard.strip() == reply, 3, "the whole reply")

    run(app, body)


# -- export -------------------------------------------------------------------------------
def test_export_key_writes_every_message_as_markdown_and_json(make_app, default_model, tmp_path):
    app = make_app(backend="scripted", template="chatml", system="Be brief.")

    async def body(pilot) -> None:
        script(app, default_model, "First answer")
        await send_and_wait(pilot, "First question")
        script(app, default_model, "Second answer\nwith two lines")
        await send_and_wait(pilot, "Second question")
        md, js = tmp_path / "chat.md", tmp_path / "chat.json"
        await pilot.press("ctrl+s")
        await answer_dialog(pilot, app, ValueDialog, str(md))
        await pilot.press("ctrl+s")
        await answer_dialog(pilot, app, ValueDialog, str(js))
        text = md.read_text()
        for want in ("## System", "Be brief.", "## User", "First question", "## Assistant (stories260K)",
                     "First answer", "Second question", "Second answer\nwith two lines"):
            assert want in text, want
        assert text.count("\n## ") == 5
        data = json.loads(js.read_text())
        assert [m["role"] for m in data] == ["system", "user", "assistant", "user", "assistant"]
        assert [m["content"].strip() for m in data] == ["Be brief.", "First question", "First answer",
                                                        "Second question", "Second answer\nwith two lines"]
        assert data[2]["model"] == "stories260K" and data[1]["model"] is None
        assert all(m["created"] for m in data)

        # a path that exists is written only when Enter confirms it a second time
        mine = tmp_path / "mine.md"
        mine.write_text("not a chat")

        async def asked_to_overwrite() -> None:
            await pilot.press("ctrl+s")
            await until(lambda: isinstance(app.screen, ValueDialog), 3, "the export dialog")
            app.screen.query_one("#dialog-input").value = str(mine)
            await pilot.press("enter")
            await until(lambda: isinstance(app.screen, ValueDialog) and "exists: overwrite it?" in
                        str(app.screen.query_one("#dialog-title").render()), 3, "the question")
            assert app.screen.query_one("#dialog-input").value == str(mine)

        await asked_to_overwrite()
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, ValueDialog), 3, "the dialog to close")
        assert mine.read_text() == "not a chat"
        await asked_to_overwrite()
        await pilot.press("enter")                                   # the same path again: written
        await until(lambda: "First question" in mine.read_text(), 3, "the export")

    run(app, body)


def test_llama_chat_export_command(tmp_path, capsys):
    from app.cli import main

    db = str(tmp_path / "h.db")
    s = HistoryStore.open(db)
    a = s.new_conversation("Older", "m", "chatml", "", "tok")
    s.add_message(a, "user", "old question", None)
    b = s.new_conversation("Newer", "m", "chatml", "sys", "tok")
    s.add_message(b, "user", "new question", None)
    s.add_message(b, "assistant", "new *answer*", [1], model="SmolLM2")
    s.close()
    assert main(["export", "--last", "--history-db", db]) == 0
    out = capsys.readouterr().out
    assert out.startswith("# Newer") and "new question" in out and "new *answer*" in out
    assert "## Assistant (SmolLM2)" in out
    target = tmp_path / "a.json"
    assert main(["export", str(a), "-o", str(target), "--history-db", db]) == 0
    assert [m["content"] for m in json.loads(target.read_text())] == ["old question"]
    # an existing file is the user's: kept unless --force says otherwise
    notes = tmp_path / "notes.md"
    notes.write_text("my notes")
    capsys.readouterr()
    assert main(["export", str(b), "-o", str(notes), "--history-db", db]) == 2
    assert notes.read_text() == "my notes"
    assert capsys.readouterr().err.strip() == f"llama-chat: error: {notes} exists: pass --force to overwrite it or -o " \
                                               "to choose another name"
    assert main(["export", str(b), "-o", str(notes), "--force", "--history-db", db]) == 0
    assert notes.read_text().startswith("# Newer")
    assert main(["export", "99", "--history-db", db]) == 2
    assert "no conversation 99" in capsys.readouterr().err
    assert main(["export", "--history-db", db]) == 2
    assert main(["export", "--last", "--history-db", str(tmp_path / "none.db")]) == 2


# -- edit and resend ----------------------------------------------------------------------
def test_edit_and_resend_replaces_the_last_turn(make_app, default_model, tmp_path):
    db = str(tmp_path / "h.db")
    app = make_app(backend="scripted", template="chatml", db=db)

    async def body(pilot) -> None:
        script(app, default_model, "One")
        await send_and_wait(pilot, "Say one")
        script(app, default_model, "Tow")
        await send_and_wait(pilot, "Say twoo")
        await pilot.press("up")                     # empty box: edit the last message
        assert app.prompt.editing and app.prompt.text == "Say twoo"
        await pilot.press("backspace", "backspace", "o")
        script(app, default_model, "Two")
        n = app.replies_finished
        await pilot.press("enter")
        await wait_reply(app, n)
        assert [t.user.text for t in app.session.turns] == ["Say one", "Say two"]
        assert [r.text.strip() for r in replies(app)] == ["One", "Two"]
        await until(lambda: "Say twoo" not in "\n".join(screen_lines(app.main)), 2, "the old turn gone")
        assert "Tow" not in "\n".join(screen_lines(app.main))
        msgs = app.store.messages(app.session.conversation_id)
        assert [m.text.strip() for m in msgs] == ["Say one", "One", "Say two", "Two"]
        hidden = app.store.messages(app.session.conversation_id, include_hidden=True)
        assert [m.state for m in hidden if m.text.strip() in ("Say twoo", "Tow")] == ["edited", "edited"]
        # the model saw the edited conversation, not the old turn
        assert "Say twoo" not in default_model.tokenizer.decode(app.session.sequence())

    run(app, body)


def test_an_empty_enter_continues_a_reply_cut_at_the_length_limit(make_app, default_model, cpu_backend, tmp_path):
    """The reply goes on in the same message and history row, from its last token: greedy,
    8 tokens then 8 more are the 16 one longer reply gives, and the prompt is not read
    again. Reopened, the chat shows the whole reply once and can continue it again."""
    from inference.chat import prompt_ids, resolve_template
    from inference.engine import Engine, Finished
    from inference.sampler import SamplingSettings
    db = str(tmp_path / "h.db")
    app = make_app(template="chatml", db=db, temperature=0.0, max_new_tokens=8)

    async def body(pilot) -> None:
        await send_and_wait(pilot, "Tell me a story")
        turn = app.session.turns[-1]
        first = turn.reply
        assert first.status == "max_tokens" and len(first.ids) == 8
        assert "empty: continue" in app.main.query_one(KeyBar).plain
        shown = first.text
        n = app.replies_finished
        key(app, "enter", "\r")
        await wait_reply(app, n)
        assert turn.reply is first and len(turn.alternatives()) == 1 and len(replies(app)) == 1
        assert len(first.ids) == 16 and first.status == "max_tokens" and first.stats["tokens"] == 16
        assert first.text.startswith(shown) and len(first.text) > len(shown)
        assert replies(app)[0].text == first.text
        assert app._q(SpeedPanel).stats.prefilled_tokens <= 1, "the prompt and the reply so far are cached"
        rows = app.store.messages(app.session.conversation_id)
        assert [(m.role, m.text) for m in rows] == [("user", "Tell me a story"), ("assistant", first.text)]
        assert list(rows[1].token_ids) == first.ids
        app.continued_ids = list(first.ids)   # type: ignore[attr-defined]

    run(app, body)
    tok = default_model.tokenizer
    tmpl = resolve_template("chatml", tok, default_model.name, default_model.path)
    ids = prompt_ids(tmpl, tok, [{"role": "user", "content": "Tell me a story"}])
    once = [ev for ev in Engine(cpu_backend, tok, SamplingSettings(temperature=0.0, max_new_tokens=16))
            .generate(ids) if isinstance(ev, Finished)][0]
    assert list(once.new_tokens) == app.continued_ids

    again = make_app(template="chatml", db=db, temperature=0.0, max_new_tokens=4)

    async def reopen(pilot) -> None:
        await again.open_conversation(again.store.conversations()[0].id)
        assert len(replies(again)) == 1 and again.session.can_continue()
        n = again.replies_finished
        key(again, "enter", "\r")
        await wait_reply(again, n)
        reply = again.session.turns[-1].reply
        assert len(reply.ids) == 20 and reply.ids[:16] == app.continued_ids
        assert [m.role for m in again.store.messages(again.session.conversation_id)] == ["user", "assistant"]

    run(again, reopen)


def test_a_continuation_that_ends_at_once_keeps_the_replys_figures(make_app, default_model):
    """The model may end right where the reply was cut: nothing was decoded, so the
    message keeps its token count and decode rate (not 0 tok/s) and is now complete."""
    app = make_app(backend="scripted", template="chatml", max_new_tokens=3)

    async def body(pilot) -> None:
        script(app, default_model, "one two three four")
        await send_and_wait(pilot, "Count")
        reply = app.session.turns[-1].reply
        assert reply.status == "max_tokens" and reply.stats["tokens"] == 3
        rate = reply.stats["decode_tok_s"]
        app.scripted.queue([])                 # the end of text at once
        n = app.replies_finished
        key(app, "enter", "\r")
        await wait_reply(app, n)
        assert reply.status == "complete" and reply.stats["tokens"] == 3 and reply.stats["decode_tok_s"] == rate
        assert " 0.0 tok/s" not in str(replies(app)[-1].query_one(".message-header").render())

    run(app, body)


def test_a_finished_reply_is_not_continued(make_app, default_model):
    """After an end-of-turn, an empty Enter does nothing (a chat model needs words)."""
    app = make_app(backend="scripted", template="chatml")

    async def body(pilot) -> None:
        script(app, default_model, "Done.")
        await send_and_wait(pilot, "Hi")
        assert app.session.turns[-1].reply.status == "complete" and not app.session.can_continue()
        assert "empty: continue" not in app.main.query_one(KeyBar).plain
        key(app, "enter", "\r")
        await pilot.pause()
        assert not app.generating and len(replies(app)) == 1 and app.replies_finished == 1

    run(app, body)


def test_esc_cancels_an_edit(make_app, default_model):
    app = make_app(backend="scripted", template="chatml")

    async def body(pilot) -> None:
        script(app, default_model, "ok")
        await send_and_wait(pilot, "hello")
        await pilot.press("up")
        assert app.prompt.editing
        await pilot.press("escape")
        assert not app.prompt.editing and app.prompt.text == ""
        assert len(app.session.turns) == 1

    run(app, body)


# -- regenerate keeps alternatives ---------------------------------------------------------
def test_regenerate_keeps_earlier_replies_to_flip_between_and_after_reopening(make_app, default_model, tmp_path):
    db = str(tmp_path / "h.db")
    app = make_app(backend="scripted", template="chatml", db=db)

    async def body(pilot) -> None:
        script(app, default_model, "first take")
        await send_and_wait(pilot, "Tell me")
        for text, n in (("second take", 1), ("third take", 2)):
            script(app, default_model, text)
            await pilot.press("ctrl+r")
            await wait_reply(app, n)
        turn = app.session.turns[-1]
        assert [r.text.strip() for r in turn.alternatives()] == ["first take", "second take", "third take"]
        view = replies(app)[-1]
        assert "‹3/3›" in str(view.query_one(".message-header").render())
        await pilot.press("alt+left", "alt+left")
        assert turn.reply.text.strip() == "first take" and view.text.strip() == "first take"
        assert "‹1/3›" in str(view.query_one(".message-header").render())
        # the conversation continues from the reply shown
        assert "first take" in default_model.tokenizer.decode(app.session.sequence())
        assert "third take" not in default_model.tokenizer.decode(app.session.sequence())
        await pilot.press("alt+right")
        assert turn.reply.text.strip() == "second take"

    run(app, body)
    again = make_app(backend="scripted", template="chatml", db=db)

    async def reopen(pilot) -> None:
        await again.open_conversation(again.store.conversations()[0].id)
        turn = again.session.turns[-1]
        assert [r.text.strip() for r in turn.alternatives()] == ["first take", "second take", "third take"]
        assert turn.reply.text.strip() == "second take", "the one shown when the app closed"
        assert len(replies(again)) == 1
        await pilot.press("alt+right")
        assert turn.reply.text.strip() == "third take"

    run(again, reopen)


# -- history management ---------------------------------------------------------------------
def test_history_search_rename_and_delete(make_app, default_model, tmp_path):
    db = str(tmp_path / "h.db")
    app = make_app(backend="scripted", template="chatml", db=db)

    async def body(pilot) -> None:
        for q in ("Paris facts", "Cooking pasta", "More on Paris"):
            script(app, default_model, f"about {q}")
            await send_and_wait(pilot, q)
            await pilot.press("ctrl+n")
            await until(lambda: not app.session.turns, 3, "a new chat")
        sidebar = app.main.query_one(HistorySidebar)
        lst = app.main.query_one(HistoryList)
        await pilot.press("ctrl+f")
        assert sidebar.search_box.has_focus
        await pilot.press(*"pasta")
        await until(lambda: lst.option_count == 1, 2, "the search to filter")
        await pilot.press("escape")
        assert app.focused is app.prompt
        sidebar.search_box.value = "paris"
        await until(lambda: lst.option_count == 2, 2, "two Paris chats")
        await pilot.press("ctrl+b")
        assert lst.has_focus
        target = lst.highlighted_id
        await pilot.press("ctrl+t")
        await answer_dialog(pilot, app, ValueDialog, "Renamed chat")
        assert app.store.conversation(target).title == "Renamed chat"
        sidebar.search_box.value = ""
        await until(lambda: lst.option_count == 3, 2, "all chats again")
        assert lst.has_focus, "back in the list after the rename"
        lst.highlighted = 0
        doomed = lst.highlighted_id
        await pilot.press("delete")
        await until(lambda: isinstance(app.screen, ConfirmDialog), 2, "the confirmation")
        await pilot.press("n")                    # no: nothing happens
        assert app.store.conversation(doomed) is not None
        await pilot.press("delete", "y")
        await until(lambda: app.store.conversation(doomed) is None, 2, "the delete")
        assert lst.option_count == 2

    run(app, body)


def test_deleting_the_open_chat_starts_a_new_one(make_app, default_model):
    app = make_app(backend="scripted", template="chatml")

    async def body(pilot) -> None:
        script(app, default_model, "hi")
        await send_and_wait(pilot, "hello")
        cid = app.session.conversation_id
        await pilot.press("ctrl+b", "delete", "enter")
        await until(lambda: app.store.conversation(cid) is None and not app.session.turns, 3, "the delete")
        assert app.session.conversation_id is None and not replies(app)

    run(app, body)


# -- the system prompt is visible -----------------------------------------------------------
def test_the_system_prompt_is_shown_at_the_top_and_follows_f3(make_app):
    app = make_app(template="chatml", system="You are a pirate.")

    async def body(pilot) -> None:
        line = app.main.query_one(SystemView)
        assert "You are a pirate." in str(line.render())
        await pilot.press("f3")
        await until(lambda: isinstance(app.screen, ValueDialog), 2, "the editor")
        box = app.screen.query_one("#dialog-input")
        box.value = "You are a poet.\nRhyme."
        await pilot.press("enter")
        await until(lambda: not isinstance(app.screen, ValueDialog), 2, "the editor to close")
        assert app.session.system == "You are a poet.\nRhyme."
        assert "You are a poet." in str(line.render())

    run(app, body)


def test_completion_mode_says_there_is_no_system_prompt(make_app):
    app = make_app()

    async def body(pilot) -> None:
        assert "no system prompt" in str(app.main.query_one(SystemView).render())

    run(app, body)


# -- presets ---------------------------------------------------------------------------------
def test_presets_from_the_settings_file_are_switchable(make_app):
    presets = {"precise": {"temperature": 0.2, "top_k": 10}, "wild": {"temperature": 1.5}}
    app = make_app(presets=presets, temperature=0.7, top_k=40)

    async def body(pilot) -> None:
        await pilot.press("f4")
        await until(lambda: isinstance(app.screen, ChoiceDialog), 2, "the preset list")
        await pilot.press("down", "enter")     # precise
        await until(lambda: app.engine.settings.temperature == 0.2, 2, "the preset")
        assert app.engine.settings.top_k == 10 and app.preset == "precise"
        await pilot.press("f4", "down", "enter")   # the list opens on the preset in use
        await until(lambda: app.engine.settings.temperature == 1.5, 2, "wild")
        assert app.engine.settings.top_k == 40, "a preset applies over the start-up settings"
        await pilot.press("f4", "up", "up", "enter")
        await until(lambda: app.engine.settings.temperature == 0.7, 2, "back to the start")

    run(app, body)


# -- typing from anywhere ----------------------------------------------------------------------
def test_printable_keys_go_to_the_message_box_whatever_has_focus(make_app, default_model):
    app = make_app(backend="scripted")

    async def body(pilot) -> None:
        script(app, default_model, "reply")
        await send_and_wait(pilot, "first")
        app.main.query_one(ConversationView).focus()
        await pilot.press("a")
        assert app.focused is app.prompt and app.prompt.text == "a"
        await pilot.press("ctrl+b", "b")            # from the history list
        assert app.focused is app.prompt and app.prompt.text == "ab"
        await pilot.press("f1")
        await pilot.press("q")                      # a dialog keeps its keys (q closes help)
        assert app.prompt.text == "ab"

    run(app, body)


# -- the model picker ----------------------------------------------------------------------------
def test_the_model_picker_switches_model_and_history_records_who_answered(make_app, default_model, monkeypatch):
    import inference.discovery as discovery

    from app.tui.model_host import ModelOpener

    entry = discovery.ModelEntry(name="stories-copy", format="llama2c", size=1 << 20, path=default_model.path,
                                 source="models-dir", root=os.path.dirname(default_model.path), quant="fp32")
    monkeypatch.setattr(discovery, "list_models", lambda: [entry])
    opener = ModelOpener("cpu", None, 64, "completion", {"context": 256})
    app = make_app(opener=opener, max_new_tokens=10, seed=1)

    async def body(pilot) -> None:
        await send_and_wait(pilot, "Once upon a time")
        old_host = app.host
        await pilot.press("ctrl+o")
        await until(lambda: isinstance(app.screen, ChoiceDialog), 20, "the model list")
        await until(lambda: "stories-copy" in "\n".join(screen_lines(app.screen)), 3, "the entry listed")
        await pilot.press("enter")
        await until(lambda: app.host is not old_host, 30, "the switch")
        await until(lambda: not isinstance(app.screen, LoadingScreen), 10, "the chat again")
        assert app.engine.context_length == 256 and app.session.n_ctx == 256
        assert app.host.name == "stories260K" and len(app.session.turns) == 1, "the conversation continues"
        app.host.name = "stories-copy"            # tell the two models apart in the history
        await send_and_wait(pilot, "The dog")
        msgs = app.store.messages(app.session.conversation_id)
        assert [m.model for m in msgs if m.role == "assistant"] == ["stories260K", "stories-copy"]
        assert replies(app)[-1].label == "stories-copy"

    run(app, body)


def test_a_model_that_fails_to_open_leaves_the_chat_as_it_was(make_app, tmp_path, monkeypatch):
    from app.tui.model_host import ModelOpener

    bad = tmp_path / "broken.gguf"
    bad.write_bytes(b"GGUF" + b"\x00" * 20)
    app = make_app(opener=ModelOpener("cpu"), max_new_tokens=5)

    async def body(pilot) -> None:
        host = app.host
        app.switch_model(str(bad))
        await until(lambda: isinstance(app.screen, LoadingScreen), 5, "the progress screen")
        await until(lambda: app.screen.job.phase == "failed", 10, "the failure")
        await until(lambda: "could not be opened" in "\n".join(screen_lines(app.screen)), 3, "the reason")
        await pilot.press("escape")
        await until(lambda: not isinstance(app.screen, LoadingScreen), 5, "back to the chat")
        assert app.host is host
        await send_and_wait(pilot, "Once upon a time")

    run(app, body)


def app_on_a_held_first_start(make_app):
    """An app whose start-up warm-up waits for the returned gate (a cold start's compile
    keeps the progress screen up as long as the test needs)."""
    import threading

    from app.tui.model_host import ModelJob
    from app.tui.warmup import warm_up

    gate = threading.Event()
    app = make_app(max_new_tokens=6)
    app.startup = ModelJob(host=app.host, run_warm_up=lambda engine: (gate.wait(10), warm_up(engine))).start()
    return app, gate


def test_what_is_typed_on_the_first_start_screen_is_kept_and_sent_when_ready(make_app):
    """A cold start keeps the progress screen up for tens of seconds; a question typed
    meanwhile (keys, a paste, a backspace) shows on it, and Enter sends it as soon as
    the model is ready instead of the keys being lost."""
    app, gate = app_on_a_held_first_start(make_app)

    async def body(pilot) -> None:
        await until(lambda: isinstance(app.screen, LoadingScreen), 5, "the progress screen")
        for ch in "Once upon":
            key(app, "space" if ch == " " else ch, ch)
        paste(app, " a timex")
        key(app, "backspace")
        await until(lambda: "your message: Once upon a time" in "\n".join(screen_lines(app.screen)), 3,
                    "the typed text on the progress screen")
        key(app, "enter", "\r")
        await until(lambda: "(sent when ready)" in "\n".join(screen_lines(app.screen)), 3, "the promise")
        n = app.replies_finished
        gate.set()
        await until(lambda: not isinstance(app.screen, LoadingScreen), 20, "the chat to open")
        await wait_reply(app, n)
        assert [t.user.text for t in app.session.turns] == ["Once upon a time"]
        assert app.prompt.value == ""

    run(app, body)


def test_typing_ahead_without_enter_leaves_the_text_in_the_box(make_app):
    app, gate = app_on_a_held_first_start(make_app)

    async def body(pilot) -> None:
        await until(lambda: isinstance(app.screen, LoadingScreen), 5, "the progress screen")
        for ch in "Hi":
            key(app, ch, ch)
        await until(lambda: "your message: Hi" in "\n".join(screen_lines(app.screen)), 3, "the typed text")
        gate.set()
        await until(lambda: not isinstance(app.screen, LoadingScreen), 20, "the chat to open")
        await until(lambda: app.prompt.value == "Hi", 3, "the text in the message box")
        assert app.replies_finished == 0 and not app.session.turns

    run(app, body)


# -- signals (issue 13) ---------------------------------------------------------------------------
@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGHUP, 129)])
def test_a_signal_saves_the_streaming_reply_marked_stopped(make_app, tmp_path, sig, code):
    db = str(tmp_path / "h.db")
    app = make_app(db=db, delay=0.004, max_new_tokens=400)

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")
        await until(lambda: app.streaming_view is not None and len(app.streaming_view.text) > 10,
                    what="some streamed text")
        os.kill(os.getpid(), sig)
        await until(lambda: app.return_value == code, 5, "the app to exit")

    run(app, body)
    assert app.return_value == code
    store = HistoryStore.open(db)
    msgs = store.messages(store.conversations()[0].id)
    store.close()
    assert [(m.role, m.status) for m in msgs] == [("user", "complete"), ("assistant", "stopped")]
    assert len(msgs[1].text) > 10


# -- odd history rows (issue 13) ---------------------------------------------------------------------
def test_reopening_rows_left_odd_by_another_program_works(make_app, tmp_path):
    db = str(tmp_path / "h.db")
    s = HistoryStore.open(db)
    cid = s.new_conversation("odd", "stories260K", "completion", "", "tok512")
    s.close()
    raw = sqlite3.connect(db)
    for role, text, blob, stats in (("user", b"Once upon \xff time", None, "{}"),
                                    ("assistant", "there was", b"\x01\x02\x03", "[1, 2]"),
                                    ("user", "The dog", None, "7"),
                                    ("assistant", b"ran away", None, '{"tokens": "many"}')):
        raw.execute("INSERT INTO messages (conversation_id, role, text, token_ids, stats, created)"
                    " VALUES (?, ?, ?, ?, ?, 0)", (cid, role, text, blob, stats))
    raw.commit()
    raw.close()
    app = make_app(db=db, max_new_tokens=10)

    async def body(pilot) -> None:
        await pilot.press("ctrl+b", "enter")
        await until(lambda: len(app.session.turns) == 2, 5, "the chat to reopen")
        assert [t.user.text for t in app.session.turns] == ["Once upon \ufffd time", "The dog"]
        assert [t.reply.text for t in app.session.turns] == ["there was", "ran away"]
        await send_and_wait(pilot, "Then")

    run(app, body)
    assert app.return_code in (None, 0)


def test_a_read_only_history_is_shown_and_said(make_app, tmp_path, monkeypatch):
    import app.tui.store as store_mod

    db = str(tmp_path / "h.db")
    s = HistoryStore.open(db)
    s.add_message(s.new_conversation("kept", "m", "completion", "", "tok512"), "user", "hello", None)
    s.close()
    real = os.access
    monkeypatch.setattr(store_mod.os, "access", lambda p, m, *a, **k: False if m & os.W_OK else real(p, m))
    app = make_app(db=db, max_new_tokens=5)

    async def body(pilot) -> None:
        await until(lambda: "read-only" in "\n".join(screen_lines(app.main)), 3, "the notice")
        assert app.main.query_one(HistoryList).option_count == 1
        await send_and_wait(pilot, "Once upon a time")        # chatting still works, unsaved
        assert len(app.store.conversations()) == 1

    run(app, body)


def test_the_memory_panel_refreshes_itself_and_no_timer_outlives_the_screen(make_app):
    """CI once failed on exit: an app-level timer queried the memory panel after Textual had
    already removed the screen. The panel now owns its timer, and the app's own timers do
    nothing once shutdown has begun."""
    from app.tui.widgets.memory_panel import MemoryPanel
    from inference.backends.base import MemoryInfo

    app = make_app(backend="scripted")
    calls: list[int] = []

    async def probe() -> None:
        calls.append(1)

    async def body(pilot) -> None:
        panel = app.query_one(MemoryPanel)
        app.scripted.memory = lambda: MemoryInfo(weight_bytes=3 << 30, kv_cache_bytes=0)
        await until(lambda: "weights 3.0 GiB" in str(panel.render()), 5, "the panel's own refresh")
        await app._while_running(probe)()
        assert calls == [1]

    run(app, body)
    asyncio.run(app._while_running(probe)())
    assert calls == [1], "a timer firing during shutdown must not run"
