"""Issue 12's defects, one Pilot test each (numbered as in the issue), on the real default
model or a scripted reply through the real tokenizer, engine and UI (tests/tui_helpers.py).
"""
from __future__ import annotations

import threading

import pytest

from inference.errors import LlamaChatError

from .tui_helpers import (cpu_backend, key, make_app, paste, replies, run, screen_lines,  # noqa: F401
                          send_and_wait, type_and_send, until, wait_reply)

from app.tui.chat_app import CHAT_MIN_WIDTH  # noqa: E402
from app.tui.widgets.context_bar import ContextBar  # noqa: E402
from app.tui.widgets.conversation import ConversationView  # noqa: E402
from app.tui.widgets.history_sidebar import HistoryList  # noqa: E402
from app.tui.widgets.key_bar import KeyBar  # noqa: E402
from app.tui.widgets.message import NoticeView  # noqa: E402
from app.tui.widgets.sampling_panel import SamplingPanel  # noqa: E402
from app.tui.widgets.sampling_screen import SamplingScreen  # noqa: E402
from app.tui.widgets.speed_panel import SpeedPanel  # noqa: E402


def notices(app) -> list[str]:
    return [v.text for v in app.main.query(NoticeView)]


def script_text(app, default_model, text: str) -> None:
    """The next reply will be exactly `text` (its ids through the real tokenizer)."""
    app.scripted.queue(default_model.tokenizer.encode(text, bos=False))


# 1 -------------------------------------------------------------------------------------
def test_01_first_start_shows_what_is_compiling_then_opens_the_chat(make_app):
    """A warm-up that compiles (a real Numba compile on the warm-up thread) keeps a
    progress screen up that names the phase and counts compiled functions; the chat opens
    when it ends. The CLI's one-line note is written for such a start, not a warm one."""
    import numba

    from app.commands.chat import cold_start_note
    from app.tui.model_host import ModelJob
    from app.tui.warmup import warm_up
    from app.tui.widgets.loading_screen import LoadingScreen

    gate = threading.Event()

    def compiling_warm_up(engine) -> None:
        @numba.njit(cache=False)
        def fresh_kernel(x):  # never cached: compiled now, on this thread
            return x * 2 + 1

        fresh_kernel(3)
        gate.wait(10)
        warm_up(engine)

    app = make_app(max_new_tokens=8)
    job = ModelJob(host=app.host, run_warm_up=compiling_warm_up).start()
    app.startup = job

    async def body(pilot) -> None:
        await until(lambda: isinstance(app.screen, LoadingScreen), 5, "the progress screen")
        await until(lambda: job.warm is not None and job.warm.compiled, 20, "the compile")
        await until(lambda: "1 function compiled" in "\n".join(screen_lines(app.screen)), 5,
                    "the compile count on screen")
        shown = "\n".join(screen_lines(app.screen))
        assert "compiling the CPU kernels" in shown and "then cached on disk" in shown
        assert "Preparing stories260K" in shown
        note = cold_start_note(job, "cpu")
        assert note and note.startswith("llama-chat: warning: first start") and "\n" not in note
        gate.set()
        await until(lambda: not isinstance(app.screen, LoadingScreen), 20, "the chat to open")
        assert app.focused is app.prompt
        assert cold_start_note(job, "cpu") is None   # done: nothing to say
        await send_and_wait(pilot, "Once upon a time")

    run(app, body)
    warm = ModelJob(host=app.host).start()
    warm.wait(10)
    assert not warm.warm.compiling and cold_start_note(warm, "cpu") is None


# 2 -------------------------------------------------------------------------------------
def test_02_multi_line_paste_arrives_whole(make_app):
    app = make_app(max_new_tokens=8)
    text = "first line\nsecond line\n\n  indented fourth\tline"

    async def body(pilot) -> None:
        paste(app, text)
        await until(lambda: app.prompt.text == text, 5, "the paste")
        key(app, "ctrl+j")                       # a newline typed by hand
        key(app, "x", "x")
        await until(lambda: app.prompt.text == text + "\nx", 5, "Ctrl+J and a key")
        await until(lambda: app.prompt.size.height >= 5, 2, "the box to grow with its lines")
        n = app.replies_finished
        key(app, "enter", "\r")
        await wait_reply(app, n)
        assert app.session.turns[0].user.text == text + "\nx"
        stored = app.store.messages(app.session.conversation_id)
        assert stored[0].text == text + "\nx", "stored verbatim"
        user_view = app.session.turns[0].views[0]
        assert user_view.text == text + "\nx"

    run(app, body)


# 3 -------------------------------------------------------------------------------------
def test_03_a_streamed_reply_keeps_its_line_breaks_and_code(make_app, default_model):
    """Streamed through MarkdownStream and left as it is when finished: single newlines
    stay line breaks, a code block keeps its lines."""
    app = make_app(backend="scripted", delay=0.004)
    reply = "Roses are red\nViolets are blue\n\n```py\nx = 1\ny = 2\n```\nThe end"

    async def body(pilot) -> None:
        script_text(app, default_model, reply)
        frames = []
        real = app._drain

        async def spy() -> None:
            await real()
            if app.streaming_view is not None:
                frames.append(app.streaming_view.text)

        app._drain = spy
        await send_and_wait(pilot, "A poem")
        view = replies(app)[-1]
        assert view.text.strip() == reply
        assert len({f for f in frames if f}) >= 3, "the text arrived over several frames"
        wanted = ("Roses are red", "Violets are blue", "x = 1", "y = 2", "The end")

        def drawn() -> bool:   # the last fragment is laid out at the next refresh
            lines = [line.strip() for line in screen_lines(app.main)]
            return all(any(want in line for line in lines) for want in wanted)

        await until(drawn, 3, "every line of the reply on a line of its own")
        lines = [line.strip() for line in screen_lines(app.main)]
        assert not any("Roses are red Violets" in line for line in lines)
        md = view.query_one(".message-body")
        assert md.source.strip() == reply, "the finished widget holds the text as streamed"

    run(app, body)


# 4 -------------------------------------------------------------------------------------
def test_04_the_view_follows_the_stream_until_the_user_scrolls_up(make_app, default_model):
    app = make_app(backend="scripted", delay=0.003, context=4096, max_new_tokens=2000)
    long_reply = "\n".join(f"line {i} of a long reply" for i in range(120))

    async def body(pilot) -> None:
        conv = app.main.query_one(ConversationView)
        for i in range(3):   # a screenful of history first
            script_text(app, default_model, "\n".join(f"old {i}.{j}" for j in range(15)))
            await send_and_wait(pilot, f"turn {i}")
        script_text(app, default_model, long_reply)
        await type_and_send(pilot, "go on")
        behind = []
        while app.generating:
            await pilot.pause(0.03)
            if app.generating and conv.max_scroll_y > 0:
                if conv.scroll_y < conv.max_scroll_y - 1:
                    behind.append((conv.scroll_y, conv.max_scroll_y))
            if len(app.streaming_view.text if app.streaming_view else "") > 600 and not behind:
                await conv.add_notice("a notice mid-stream")  # content grows by another path
                break
        await until(lambda: len(app.streaming_view.text if app.streaming_view else "") > 900 or
                    not app.generating, 10, "more text")
        await pilot.pause(0.1)
        assert not behind, f"the view fell behind the stream: {behind[:3]}"
        assert conv.scroll_y >= conv.max_scroll_y - 1
        key(app, "pageup")           # from the message box: the user scrolls up to read
        await until(lambda: not conv.following, 2, "the view to stay where the user put it")
        await pilot.pause(0.1)
        y, text_then = conv.scroll_y, len(app.streaming_view.text) if app.streaming_view else 0
        await pilot.pause(0.3)
        assert conv.scroll_y == y, "an unanchored view does not jump"
        assert not app.generating or len(app.streaming_view.text) > text_then, "while text kept coming"
        await app._stop_and_wait()

    run(app, body)


# 5 -------------------------------------------------------------------------------------
def test_05_the_context_bar_never_counts_past_the_window(make_app):
    app = make_app(context=64, max_new_tokens=200, seed=2)

    async def body(pilot) -> None:
        await send_and_wait(pilot, "Once upon a time")
        assert app.session.turns[-1].reply.status == "context_full"
        bar = app.main.query_one(ContextBar)
        text = str(bar.render())
        assert "64/64 full" in text and "65/64" not in text
        assert bar.used >= 64 and bar.shown == 64

    run(app, body)


# 6 -------------------------------------------------------------------------------------
def test_06_pgup_pgdn_scroll_the_conversation_from_the_message_box(make_app, default_model):
    app = make_app(backend="scripted", max_new_tokens=1000)

    async def body(pilot) -> None:
        script_text(app, default_model, "\n".join(f"row {i}" for i in range(100)))
        await send_and_wait(pilot, "many rows")
        conv = app.main.query_one(ConversationView)
        await until(lambda: conv.max_scroll_y > 40, 5, "a tall conversation")
        app.prompt.value = "draft"
        assert app.focused is app.prompt
        bottom = conv.scroll_y
        await pilot.press("pageup")
        assert conv.scroll_y < bottom and app.focused is app.prompt
        await pilot.press("pagedown")
        await until(lambda: conv.scroll_y >= bottom - 1, 2, "back at the bottom")
        assert app.prompt.text == "draft"

    run(app, body)


# 7 -------------------------------------------------------------------------------------
def test_07_f2_then_esc_or_f2_returns_to_the_input_and_keeps_the_text(make_app):
    app = make_app()

    async def body(pilot) -> None:
        app.prompt.value = "draft"
        panel = app.main.query_one(SamplingPanel)
        await pilot.press("f2")
        assert panel.has_focus
        await pilot.press("escape")
        assert app.focused is app.prompt and app.prompt.text == "draft"
        await pilot.press("f2")
        assert panel.has_focus
        await pilot.press("f2")
        assert app.focused is app.prompt
        await pilot.press("f2", "x")         # a letter in the panel is typed into the box
        assert app.focused is app.prompt and app.prompt.text == "draftx"
        assert not app.generating

    run(app, body)


# 8 -------------------------------------------------------------------------------------
def test_08_at_60_columns_f2_shows_what_the_arrows_change_and_tab_loses_nothing(make_app):
    app = make_app(temperature=0.5)

    async def body(pilot) -> None:
        assert not app.main.query_one("#panels").display
        await pilot.press("f2")
        assert isinstance(app.screen, SamplingScreen)
        await pilot.press("right")
        assert app.engine.settings.temperature == pytest.approx(0.6)
        await until(lambda: any("0.60" in line for line in screen_lines(app.screen)), 2, "the change on screen")
        await pilot.press("escape")
        assert not isinstance(app.screen, SamplingScreen) and app.focused is app.prompt
        await pilot.press("h", "i", "tab", "tab", "!", "tab", "?")
        assert app.prompt.text == "hi!?", "keys typed after Tab still reach the box"

    run(app, body, size=(60, 20))


# 9 -------------------------------------------------------------------------------------
def test_09_three_fast_nudges_are_three_steps(make_app):
    app = make_app(delay=0.004, temperature=0.5, max_new_tokens=300)

    async def body(pilot) -> None:
        await type_and_send(pilot, "Once upon a time")     # the event loop is busy streaming
        key(app, "f2")
        await until(lambda: app.main.query_one(SamplingPanel).has_focus, 2, "the sampling panel")
        for _ in range(3):
            key(app, "right")                               # no wait between presses
        await until(lambda: app.engine.settings.temperature == pytest.approx(0.8), 3, "three steps")
        for _ in range(2):
            key(app, "left")
        await until(lambda: app.engine.settings.temperature == pytest.approx(0.6), 3, "two back")
        assert app.engine.settings.temperature == pytest.approx(0.6)

    run(app, body)


# 10 ------------------------------------------------------------------------------------
def test_10_history_opens_on_a_highlighted_row_and_enter_never_sends(make_app, tmp_path):
    db = str(tmp_path / "h.db")
    first = make_app(db=db, max_new_tokens=10)

    async def make_two(pilot) -> None:
        await send_and_wait(pilot, "Once upon a time")
        await pilot.press("ctrl+n")
        await until(lambda: not first.session.turns, 5, "a new chat")
        await send_and_wait(pilot, "The cat")

    run(first, make_two)
    app = make_app(db=db, max_new_tokens=10, template="completion")

    async def body(pilot) -> None:
        lst = app.main.query_one(HistoryList)
        await pilot.press("ctrl+b")
        assert lst.has_focus and lst.highlighted == 0, "a row is highlighted at once"
        await pilot.press("enter")                          # opens the newest chat
        await until(lambda: app.session.conversation_id is not None, 5, "the chat to open")
        opened = app.session.conversation_id
        turns = len(app.session.turns)
        await pilot.press("ctrl+b")
        assert lst.highlighted_id == opened, "the open chat is the one highlighted"
        await pilot.press("enter")                          # Enter on the open chat: back to typing
        assert app.focused is app.prompt and not app.generating
        await pilot.press("ctrl+b", "down", "down", "down", "enter")
        await until(lambda: app.session.conversation_id != opened, 5, "the other chat")
        await pilot.pause(0.2)
        assert not app.generating and app.replies_finished == 0, "no continuation was started"
        assert len(app.session.turns) == 1 and turns == 1

    run(app, body)


# 11 ------------------------------------------------------------------------------------
@pytest.mark.parametrize("width", [60, 80, 120])
def test_11_the_key_bar_shows_whole_hints_that_fit(make_app, width):
    app = make_app()

    async def body(pilot) -> None:
        bar = app.main.query_one(KeyBar)
        await until(lambda: screen_lines(app.main)[-1].strip() == bar.plain, 2, "the key bar drawn")
        row = screen_lines(app.main)[-1].rstrip()
        assert len(row) <= width
        assert row.strip() == bar.plain, "exactly the hints chosen, nothing cut"
        assert all(label in row for _, label in bar.shown)
        assert bar.shown[0] == ("Enter", "send") and ("^Q", "quit") in bar.shown
        await pilot.press("f2")
        if width > 60:
            await until(lambda: "nudge" in screen_lines(app.main)[-1], 2, "the sampling keys")
            row = screen_lines(app.main)[-1].rstrip()
            assert "Esc back" in row and len(row) <= width
        else:   # the sampling overlay says its keys on its own border
            await until(lambda: any("Esc back" in line for line in screen_lines(app.screen)), 2, "the keys")

    run(app, body, size=(width, 24))


# 12 ------------------------------------------------------------------------------------
def test_12_history_beside_the_panels_never_squeezes_the_chat(make_app):
    app = make_app()

    async def body(pilot) -> None:
        chat = app.main.query_one("#chat")
        panels = app.main.query_one("#panels")
        assert chat.size.width >= CHAT_MIN_WIDTH and panels.display
        await pilot.press("ctrl+b")
        await pilot.pause(0.05)
        assert app.main.query_one("#history").display
        assert chat.size.width >= CHAT_MIN_WIDTH, chat.size
        assert not panels.display
        await pilot.press("ctrl+b")   # out of the history: it hides, the panels come back
        await pilot.pause(0.05)
        assert panels.display and chat.size.width >= CHAT_MIN_WIDTH

    run(app, body, size=(80, 24))


# 13 ------------------------------------------------------------------------------------
def test_13_context_full_is_said_once_in_words_that_fit_the_mode(make_app):
    app = make_app(context=96, max_new_tokens=30, seed=4)   # completion mode: no system prompt

    async def body(pilot) -> None:
        for i in range(8):
            await send_and_wait(pilot, f"The dog number {i}")
        s = app.session
        assert s.first_in_context >= 2, "several turns left the view"
        said = [t for t in notices(app) if "context" in t]
        assert len(said) == 1, said
        assert "system prompt" not in said[0]
        bar = str(app.main.query_one(ContextBar).render())
        n = s.first_in_context
        assert f"{n} old turns out of view" in bar
        assert "old turns out" not in bar.replace(f"{n} old turns", "") and "1 old turns" not in bar

    run(app, body)


def test_13_one_turn_out_is_singular():
    from app.tui.widgets.context_bar import plural
    assert plural(1, "old turn") == "1 old turn" and plural(2, "old turn") == "2 old turns"


# 14 ------------------------------------------------------------------------------------
def test_14_out_of_range_values_are_refused_with_the_range_not_clamped(make_app):
    import argparse

    from app.commands.chat import sampling_settings
    from app.settings import Settings
    from app.tui.widgets.value_dialog import ValueDialog

    for flag, value in (("temperature", 9.0), ("top_p", 2.0), ("top_k", -1), ("min_p", 1.5),
                        ("repeat_penalty", 0.1)):
        args = argparse.Namespace(**{n: None for n in ("temperature", "top_p", "top_k", "min_p",
                                                       "repeat_penalty", "repeat_last_n",
                                                       "max_new_tokens", "seed")})
        setattr(args, flag, value)
        with pytest.raises(LlamaChatError, match=r"must be .*from .* to "):
            sampling_settings(args, Settings(), None)

    app = make_app(temperature=4.95)

    async def body(pilot) -> None:
        await pilot.press("f2", "right", "right")
        assert app.engine.settings.temperature == 5.0
        assert "5.00 max" in str(app.main.query_one(SamplingPanel).render())
        await pilot.press("9")                        # a digit starts typing a value
        await until(lambda: isinstance(app.screen, ValueDialog), 2, "the value dialog")
        await pilot.press("enter")
        hint = str(app.screen.query_one("#dialog-hint").render())
        assert isinstance(app.screen, ValueDialog) and "from 0 to 5" in hint
        await pilot.press("escape")
        assert app.engine.settings.temperature == 5.0

    run(app, body)


# 15 ------------------------------------------------------------------------------------
def test_15_an_empty_enter_stores_nothing_empty_and_counts_match_the_screen(make_app):
    app = make_app(max_new_tokens=20, seed=5)   # completion mode: an empty Enter continues

    async def body(pilot) -> None:
        await pilot.press("enter")                  # a new chat: nothing to continue
        await pilot.pause(0.1)
        assert not app.generating and not app.session.turns
        assert app.store.conversations() == []
        await send_and_wait(pilot, "Once upon a time")
        n = app.replies_finished
        await pilot.press("enter")                  # continue the story
        await wait_reply(app, n)
        info = app.store.conversations()[0]
        on_screen = len(app.main.query("MessageView"))
        assert info.title == "Once upon a time"
        assert info.n_messages == on_screen == 3, (info.n_messages, on_screen)

    run(app, body)


# 16 ------------------------------------------------------------------------------------
def test_16_speed_figures_say_what_they_measure(make_app):
    app = make_app(max_new_tokens=40, seed=6)

    async def body(pilot) -> None:
        panel_text = lambda: "\n".join(screen_lines(app.main))  # noqa: E731
        assert "no reply yet" in panel_text()
        await send_and_wait(pilot, "Once upon a time")
        await send_and_wait(pilot, "The cat")
        s = app.main.query_one(SpeedPanel).stats
        wanted = ("tok/s decode (last)", "cached", "first token", "read ",
                  f"prompt {s.prompt_tokens}, {s.prompt_tokens - s.prefilled_tokens} cached")
        await until(lambda: all(w in panel_text() for w in wanted), 3, "the finished figures on screen")
        shown = panel_text()
        assert f"prompt {s.prompt_tokens}, {s.prompt_tokens - s.prefilled_tokens} cached" in shown
        assert s.prompt_tokens - s.prefilled_tokens > 0, "the second turn reuses the KV cache"
        # the kernels were loaded before the first reply: its first token took a
        # model's time, not a kernel load's (this model: well under a second)
        assert s.ttft_s < 1.0

    run(app, body)


# 17 ------------------------------------------------------------------------------------
def test_17_version_help_and_sampling_flag_help(capsys):
    from app.cli import main

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("llama-chat ")
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    assert "chat options" in out and "--temperature" in out and "--history-db" in out
    for flag, default in (("--top-p", "0.95"), ("--min-p", "0.0"), ("--repeat-penalty", "1.0")):
        line = next(line for line in out.splitlines() if line.strip().startswith(flag))
        assert f"default {default}" in line and "range" in line, line
