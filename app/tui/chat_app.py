"""The chat TUI: conversation in the middle, live panels on the right, history on the left.

Threading: the event loop only ever does UI work and short SQLite writes. A reply is
generated on a `GenerationThread`; its tokens wait in a `StreamBuffer` that a ~30 fps
timer drains into the reply's MarkdownStream, so the screen is updated once per frame
however fast the model is. The thread reports its end with `post_message` (thread-safe,
non-blocking). Opening a model and warming its kernels run on a thread too, behind a
progress screen (`LoadingScreen`).

Focus: Esc always leads back to the message box (from the sampling panel, the history,
the conversation), and a printable key pressed anywhere on the chat screen is typed into
the message box — nothing typed is lost. Only dialogs and the sampling editor keep keys.
"""
from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Awaitable, Callable, Iterable

from rich.text import Text
from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Header, Input, TextArea

from inference.chat import Conversation, Message, ReplyPlan, Turn
from inference.engine import Finished
from inference.errors import LlamaChatError
from inference.sampler import SamplingSettings

from . import transcript
from .model_host import Host, ModelJob, ModelOpener
from .session import GenerationThread, StreamBuffer
from .store import ALTERNATIVE, CLOSE_WAIT_S, EDITED, SHOWN, HistoryStore
from .widgets.choice_dialog import ChoiceDialog, ConfirmDialog
from .widgets.context_bar import ContextBar, plural
from .widgets.conversation import ConversationView
from .widgets.help_screen import HelpScreen
from .widgets.history_sidebar import HistoryList, HistorySidebar
from .widgets.key_bar import KeyBar
from .widgets.loading_screen import LoadingScreen
from .widgets.memory_panel import MemoryPanel
from .widgets.message import MessageView, SystemView
from .widgets.model_panel import ModelPanel
from .widgets.prompt_input import PromptInput
from .widgets.sampling_panel import KNOB_BY_FIELD, Knob, SamplingPanel, nudged, parse_value
from .widgets.sampling_screen import SamplingScreen
from .widgets.speed_panel import SpeedPanel, fmt_rate
from .widgets.value_dialog import ValueDialog

FRAME_S = 1 / 30          # UI refresh while streaming
STORE_RETRY_S = 1.0       # queued history writes (another process held a lock) are retried this often
FINISHED_STATUS = {"eos": "complete"}   # engine reason -> message status (else the same)
SIGNAL_EXIT = {signal.SIGINT: 130, signal.SIGTERM: 143, signal.SIGHUP: 129}
SHUTDOWN_GRACE_S = 3.0    # after a signal: how long Textual's shutdown may take before the process just ends
CHAT_MIN_WIDTH = 48       # the conversation column never gets narrower than this beside panels
PLACEHOLDER_TITLE = "(continuation)"


class GenerationDone(TMessage):
    """Posted by the engine thread when a reply ends (result: Finished, or an error text)."""

    def __init__(self, result: Finished | str) -> None:
        super().__init__()
        self.result = result


class MainScreen(Screen):
    """The chat screen. It reports terminal resizes to the app (which folds side panels on
    small terminals) and sends printable keys that no widget used to the message box."""

    def on_resize(self, event: events.Resize) -> None:
        app = self.app
        if isinstance(app, ChatApp):
            app.apply_layout(event.size.width, event.size.height)

    def on_key(self, event: events.Key) -> None:
        if not event.is_printable or not event.character:
            return
        if isinstance(self.focused, (Input, TextArea, SamplingPanel)):
            return
        prompt = self.query_one(PromptInput)
        prompt.focus()
        prompt.insert(event.character)
        event.stop()
        event.prevent_default()

    def on_descendant_focus(self, event: events.DescendantFocus) -> None:
        app = self.app
        if isinstance(app, ChatApp):
            app.update_keys()


class ChatApp(App[int]):
    CSS_PATH = "chat.tcss"
    TITLE = "llama-chat"
    BINDINGS = [
        Binding("escape", "escape", "Stop / back"),
        Binding("ctrl+r", "regenerate", "Regenerate"),
        Binding("ctrl+n", "new_chat", "New chat"),
        Binding("f1", "help", "Keys"),
        Binding("f2", "focus_sampling", "Sampling"),
        Binding("f3", "edit_system", "System prompt"),
        Binding("f4", "choose_preset", "Presets"),
        Binding("f5", "temperature(-1)", "Temperature −"),
        Binding("f6", "temperature(1)", "Temperature +"),
        Binding("f7", "copy", "Copy"),
        Binding("ctrl+s", "export", "Export"),
        Binding("ctrl+o", "choose_model", "Model"),
        Binding("ctrl+b", "toggle_history", "History"),
        Binding("ctrl+f", "search_history", "Search history"),
        Binding("ctrl+t", "rename", "Rename chat"),
        Binding("alt+left", "flip(-1)", "Previous reply"),
        Binding("alt+right", "flip(1)", "Next reply"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
    ]

    def __init__(self, host: Host, store: HistoryStore, system: str = "",
                 opener: ModelOpener | None = None, presets: dict[str, dict] | None = None,
                 preset: str | None = None, base_settings: SamplingSettings | None = None,
                 startup: ModelJob | None = None) -> None:
        super().__init__()
        self.host = host
        self.store = store
        self.opener = opener
        self.presets = dict(presets or {})
        self.preset = preset or ""
        self.base_settings = base_settings or host.engine.settings
        self.startup = startup
        e = host.engine
        self.session = Conversation(e.tokenizer, host.template, e.context_length, system)
        self.thread: GenerationThread | None = None
        self.buffer: StreamBuffer | None = None
        self.streaming_turn: Turn | None = None
        self.streaming_view: MessageView | None = None
        self._continued: Message | None = None   # the reply the streaming one continues
        self._frame_timer: Timer | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._show_history: bool | None = None   # None: decided by the terminal width
        self._context_noticed = False            # the context-full notice, once per conversation
        self._quitting = False
        self._signals_installed = False
        self._history_query = ""
        self._typed_ahead = False                # Enter was pressed on a loading screen
        self.replies_finished = 0                # for tests and scripts: completed replies
        self._set_sub_title()

    # -- small accessors -----------------------------------------------------------------
    @property
    def engine(self):
        return self.host.engine

    @property
    def model_name(self) -> str:
        return self.host.name

    @property
    def main(self) -> Screen:
        """The chat screen, also while a modal (help, a dialog, the palette) is on top."""
        return self.screen_stack[0]

    def _q(self, kind):
        return self.main.query_one(kind)

    def _while_running(self, tick: Callable[[], Awaitable[None]]) -> Callable[[], Awaitable[None]]:
        """An app timer's callback that does nothing once shutdown has begun: Textual stops
        the app's timers only after it has removed the screens the callback would query."""
        async def guarded() -> None:
            if self.is_running:
                await tick()
        return guarded

    @property
    def prompt(self) -> PromptInput:
        return self._q(PromptInput)

    @property
    def conversation(self) -> ConversationView:
        return self._q(ConversationView)

    def _set_sub_title(self) -> None:
        self.sub_title = (f"{self.host.name} · {transcript.template_label(self.session.template.name)} "
                          f"template · {self.host.device}")

    # -- layout ----------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        yield Header()
        with Horizontal(id="main"):
            yield HistorySidebar(id="history")
            with Vertical(id="chat"):
                yield ConversationView(id="conversation")
                yield ContextBar(self.engine.context_length, id="context")
                yield PromptInput(id="prompt")
            with VerticalScroll(id="panels"):
                yield ModelPanel(id="model-panel", classes="panel")
                yield SpeedPanel(id="speed-panel", classes="panel")
                yield MemoryPanel(self.engine.backend, id="memory-panel", classes="panel")
                yield SamplingPanel(lambda: self.engine.settings, self.apply_settings,
                                    id="sampling-panel", classes="panel")
        yield KeyBar(id="keys")

    async def on_mount(self) -> None:
        self.prompt.focus()
        self.set_interval(STORE_RETRY_S, self._while_running(self._retry_store))
        self._show_model()
        self._refresh_history()
        self._apply_size_classes()
        self._q(SamplingPanel).set_preset(self.preset)
        self._install_signal_handlers()
        await self._show_store_notices()
        self.update_keys()
        if self.startup is not None and not self.startup.done:
            self.push_screen(LoadingScreen(self.startup, self.host.device, on_typed=self._typed_while_loading),
                             self._startup_ready)
        elif self.startup is not None and self.startup.phase == "failed":
            self.notify(self.startup.error or "the warm-up failed", severity="error", timeout=15)

    def _startup_ready(self, ok: bool | None) -> None:
        if not ok and self.startup is not None and self.startup.error:
            self.notify(self.startup.error, severity="error", timeout=15)
        self.prompt.focus()
        self._send_typed_ahead(bool(ok))

    def _typed_while_loading(self, text: str, send: bool) -> None:
        """What the user typed on a loading screen goes into the message box; if they
        pressed Enter it is sent once the model is ready (`_send_typed_ahead`)."""
        self.prompt.value = self.prompt.value + text
        self._typed_ahead = send

    def _send_typed_ahead(self, ready: bool) -> None:
        send, self._typed_ahead = self._typed_ahead and ready, False
        if send and self.prompt.value.strip():
            self.prompt.post_message(PromptInput.Submitted(self.prompt, self.prompt.value))

    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    def _show_model(self) -> None:
        self._q(ModelPanel).show(self.host.name, self.engine,
                                 transcript.template_label(self.session.template.name))
        self._show_system()
        if self.host.warning:
            self.notify(self.host.warning, severity="warning", timeout=15)

    def _show_system(self) -> None:
        s = self.session
        self._q(SystemView).show(s.system, s.template.uses_system, transcript.template_label(s.template.name))

    def _apply_size_classes(self) -> None:
        self.apply_layout(*self.size)

    def apply_layout(self, w: int, h: int) -> None:
        """Fold the side panels to fit the terminal: slimmer under 100 columns, the model
        panel off under 32 rows, the right panels off under 70 columns or whenever the
        history beside them would squeeze the conversation under CHAT_MIN_WIDTH."""
        main = self.main
        narrow, tiny = w < 100, w < 70
        show_history = self._show_history if self._show_history is not None else w >= 110
        hist_w, panels_w = (24, 28) if narrow else (28, 34)
        no_panels = tiny or (show_history and w - hist_w - panels_w < CHAT_MIN_WIDTH)
        main.set_class(narrow, "-narrow")
        main.set_class(h < 32, "-short")
        main.set_class(tiny, "-tiny")
        main.set_class(no_panels, "-no-panels")
        main.query_one(HistorySidebar).display = show_history
        if isinstance(self.screen, SamplingScreen) and not no_panels:
            self.screen.dismiss()      # the panel is back on the main screen
        self.update_keys()

    @property
    def panels_visible(self) -> bool:
        return not self.main.has_class("-no-panels")

    def update_keys(self) -> None:
        """The key bar: the keys that matter for what has focus and what is running."""
        try:
            bar = self.main.query_one(KeyBar)
            focused = self.main.focused
        except Exception:  # noqa: BLE001  (during start-up / shutdown)
            return
        if isinstance(focused, SamplingPanel):
            hints = [("↑↓", "pick"), ("←→", "nudge"), ("Enter", "type a value"), ("Esc", "back"),
                     ("F4", "presets")]
        elif isinstance(focused, HistoryList) or isinstance(focused, Input):
            hints = [("Enter", "open"), ("Esc", "back"), ("Del", "delete"), ("^T", "rename"),
                     ("^F", "search"), ("^B", "hide")]
        elif self.generating:
            hints = [("Esc", "stop"), ("F1", "keys"), ("^Q", "quit"), ("F2", "sampling"),
                     ("F5/F6", "temperature"), ("^P", "commands")]
        elif self.main.query_one(PromptInput).editing:
            hints = [("Enter", "resend"), ("Esc", "cancel edit"), ("^J", "new line"), ("F1", "keys")]
        else:
            enter = "send · empty: continue" if self.session.can_continue() else "send"
            hints = [("Enter", enter), ("F1", "keys"), ("^Q", "quit"), ("^J", "new line"),
                     ("^P", "commands"), ("^R", "regenerate"), ("↑", "edit last"), ("F2", "sampling"),
                     ("^B", "history"), ("^N", "new"), ("F7", "copy"), ("^S", "export"), ("^O", "model")]
        bar.set_hints(hints)

    # -- signals -----------------------------------------------------------------------
    def _install_signal_handlers(self) -> None:
        """SIGINT / SIGTERM / SIGHUP end the app as Ctrl+Q does — the streaming reply is
        saved, marked stopped — with the shell's exit status for the signal (128 + n)."""
        try:
            loop = asyncio.get_running_loop()
            for sig in SIGNAL_EXIT:
                loop.add_signal_handler(sig, self._on_signal, sig)
        except (NotImplementedError, RuntimeError, ValueError):  # not the main thread / no signals
            return
        self._signals_installed = True

    def _remove_signal_handlers(self) -> None:
        if self._signals_installed:
            loop = asyncio.get_running_loop()
            for sig in SIGNAL_EXIT:
                loop.remove_signal_handler(sig)
            self._signals_installed = False

    def _on_signal(self, sig: int) -> None:
        self.quit_with(SIGNAL_EXIT.get(sig, 128 + int(sig)), signalled=True)

    async def on_unmount(self) -> None:
        self._remove_signal_handlers()

    # -- sending and streaming ---------------------------------------------------------
    @on(PromptInput.Submitted, "#prompt")
    async def _on_prompt(self, event: PromptInput.Submitted) -> None:
        event.stop()
        await self.send(event.text)

    @on(PromptInput.Scroll, "#prompt")
    def _on_prompt_scroll(self, event: PromptInput.Scroll) -> None:
        event.stop()
        self.conversation.page(event.pages)

    @on(PromptInput.EditLast, "#prompt")
    def _on_edit_last(self, event: PromptInput.EditLast) -> None:
        event.stop()
        self.action_edit_last()

    async def send(self, text: str) -> bool:
        """Add a user message (or resend an edited one) and start the reply. False if
        nothing was started."""
        prompt = self.prompt
        template = self.session.template
        if self.generating:
            self.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return False
        if prompt.editing:
            return await self._resend_edited(text)
        if not text.strip():
            if self.session.can_continue():
                return await self._continue_reply()
            if not template.allows_empty:
                return False
            if not self.session.turns:
                self.notify("type the start of a story: an empty Enter continues one that has begun")
                return False
            text = ""
        turn = self.session.add_user(text)
        try:
            plan = self.session.plan_reply(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:
            self.session.turns.pop()
            self.notify(str(e), severity="error")
            return False
        prompt.value = ""
        self.conversation.follow()
        if text:
            turn.views.append(await self.conversation.add_message("user", text))
        self._save_user(turn)
        self._refresh_history()
        await self._start_reply(turn, plan)
        return True

    async def _continue_reply(self) -> bool:
        """An empty Enter after a reply cut short (length limit, Esc, full context): the
        model goes on from its last token, into the same message."""
        s = self.session
        turn = s.turns[-1]
        try:
            plan = s.plan_continuation(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:
            self.notify(str(e), severity="error")
            return False
        old = turn.reply
        self.prompt.value = ""
        self.conversation.follow()
        for view in [v for v in turn.views if v.role == "assistant"]:
            turn.views.remove(view)
            await view.remove()
        self._continued = old
        await self._start_reply(turn, plan, text=old.text if old is not None else "")
        return True

    @property
    def generating(self) -> bool:
        return not self._idle.is_set()

    async def _start_reply(self, turn: Turn, plan: ReplyPlan, text: str = "") -> None:
        """Stream a reply to `turn` from `plan`; `text`: what the message shows already
        (a continued reply)."""
        if self.generating:  # one engine, one generation: never two threads on the KV cache
            self.notify("A reply is already streaming: Esc stops it.", severity="warning")
            return
        conv = self.conversation
        self._idle.clear()
        ids, dropped = plan.ids, plan.dropped
        if dropped:
            self._mark_dropped()
            if not self._context_noticed:
                self._context_noticed = True
                await conv.add_notice(self._context_full_text(dropped, plan.kept))
        self.streaming_turn = turn
        self.streaming_view = await conv.add_message("assistant", text, label=self.host.name, streaming=True)
        turn.views.append(self.streaming_view)
        self.streaming_view.set_meta("reading the prompt…")
        self.buffer = StreamBuffer()
        self._q(SpeedPanel).start()
        self._q(ContextBar).set_used(len(ids), self.session.first_in_context)
        self.thread = GenerationThread(self.engine, ids, self.buffer,
                                       on_done=lambda r: self.post_message(GenerationDone(r)))
        self._frame_timer = self.set_interval(FRAME_S, self._while_running(self._drain))
        self.update_keys()
        self.thread.start()

    def _context_full_text(self, dropped: int, kept: int) -> str:
        s = self.session
        kept_what = "; your system prompt stays" if s.template.uses_system and s.system.strip() else ""
        return (f"the context is full: the {plural(dropped, 'oldest turn')} left the model's view "
                f"(still shown here, dimmed){kept_what}. From now on the oldest turns leave as "
                f"needed; the bar below counts them ({plural(kept, 'turn')} in view now)")

    async def _drain(self) -> None:
        """One frame: move whatever the engine produced since the last frame to the screen."""
        if self.buffer is None or self.streaming_view is None:
            return
        text, _ids, stats = self.buffer.take()
        if not text and stats.generated_tokens == self._q(SpeedPanel).stats.generated_tokens:
            return
        view = self.streaming_view
        await view.append(text)
        self._q(SpeedPanel).update_stats(stats)
        self._q(ContextBar).set_used(stats.prompt_tokens + stats.generated_tokens,
                                     self.session.first_in_context)
        view.set_meta(f"{stats.generated_tokens} tok · {fmt_rate(stats.recent_tok_s)} tok/s")

    async def on_generation_done(self, message: GenerationDone) -> None:
        if self._frame_timer is not None:
            self._frame_timer.stop()
            self._frame_timer = None
        await self._drain()
        turn, view = self.streaming_turn, self.streaming_view
        continued, self._continued = self._continued, None
        self.thread = self.buffer = None
        self.streaming_turn = self.streaming_view = None
        if turn is None or view is None:
            self._idle.set()
            return
        result = message.result
        before = (continued.stats.get("tokens") if continued is not None else 0) or 0
        if isinstance(result, str):
            new_ids, status, stats, meta = [], "error", {"error": result}, ""
            self.notify(result, severity="error", timeout=10)
        else:
            s = result.stats
            new_ids, status = list(result.new_tokens), FINISHED_STATUS.get(result.reason, result.reason)
            # a continuation that ended at once decoded nothing: the reply keeps its own rate
            rate = s.decode_tok_s if s.generated_tokens or continued is None \
                else continued.stats.get("decode_tok_s") or 0.0
            stats = {"tokens": before + s.generated_tokens, "decode_tok_s": round(rate, 1),
                     "prefill_tok_s": round(s.prefill_tok_s, 1), "ttft_ms": round(s.ttft_s * 1000, 1),
                     "seed": result.seed, "reason": result.reason}
            meta = f"{before + s.generated_tokens} tok · {fmt_rate(rate)} tok/s"
            if result.reason == "eos" and self.session.template.is_completion:
                meta += " · end of text"
            self._q(SpeedPanel).update_stats(s, finished=True)
        cid = self.session.conversation_id
        if continued is not None:   # the same message, grown
            reply = continued
            reply.text, reply.ids, reply.status = view.text, list(reply.ids or []) + new_ids, status
            reply.stats, reply.model = stats, self.host.name
        else:
            reply = Message("assistant", view.text, new_ids, status, stats=stats, model=self.host.name)
            self.session.set_reply(turn, reply)
        if reply.db_id is not None:   # a continued reply already saved: its one row, updated
            self.store.update_reply(reply.db_id, reply.text, reply.ids, reply.status, reply.stats)
        elif cid is not None:
            reply.db_id = self.store.add_message(cid, "assistant", reply.text, reply.ids, reply.status,
                                                 reply.stats, model=self.host.name)
        await view.finish(reply.status, meta)
        view.set_position(*turn.position())
        self._q(ContextBar).set_used(self.session.context_used(), self.session.first_in_context)
        if isinstance(result, Finished) and result.reason == "eos" and not reply.ids \
                and self.session.template.is_completion:
            await self.conversation.add_notice(
                "the model considers this text finished: type a few words to lead it on, "
                "or Ctrl+N for a new one")
        if reply.status == "context_full" and not self._context_noticed:
            self._context_noticed = True
            await self.conversation.add_notice(
                "the context window is full: the next message moves the oldest turns out of the "
                "model's view (they stay here)")
        self._refresh_history()
        await self._show_store_notices()
        self._idle.set()
        self.update_keys()
        self.replies_finished += 1  # last: whoever watches this may send the next message

    def _mark_dropped(self) -> None:
        """Dim the turns the model no longer sees (they stay readable and saved)."""
        for turn in self.session.turns[:self.session.first_in_context]:
            for view in turn.views:
                view.add_class("-dropped")

    async def _stop_and_wait(self, timeout: float = 10.0) -> bool:
        """Stop a running reply and wait until it is saved. Never await this in a message
        handler: the reply is saved by a message (GenerationDone) that the handler would
        hold up. Handlers use `_after_stop`. Returns False on timeout."""
        while self.generating:
            if self.thread is not None:
                self.thread.request_stop()
            try:
                await asyncio.wait_for(self._idle.wait(), timeout)
            except asyncio.TimeoutError:
                self.notify("the engine did not stop in time", severity="error")
                return False
        return True

    def _after_stop(self, then: Callable[[], Awaitable[None]], always: bool = False) -> None:
        """Stop any running reply, then run `then` once the partial reply is saved — in a
        worker, so the event loop keeps handling messages meanwhile. `always`: run `then`
        even if the engine does not stop in time (quitting)."""

        async def go() -> None:
            if await self._stop_and_wait(timeout=5.0 if always else 10.0) or always:
                await then()

        self.run_worker(go(), group="control")

    # -- edit and resend, regenerate, alternatives --------------------------------------
    def action_edit_last(self) -> None:
        """Up in an empty message box: put the last message there to edit; Enter resends
        it, replacing the last turn (its replies are kept in the history, hidden)."""
        s = self.session
        if not s.turns or not s.turns[-1].user.text:
            self.notify("no message of yours to edit yet" if not s.turns
                        else "the last turn is a continuation: there is no message to edit")
            return
        if self.generating:
            self.notify("A reply is still streaming: Esc stops it, then ↑ edits.", severity="warning")
            return
        prompt = self.prompt
        prompt.value = s.turns[-1].user.text
        prompt.set_editing(True)
        prompt.focus()
        self.update_keys()

    def cancel_edit(self) -> None:
        prompt = self.prompt
        prompt.set_editing(False)
        prompt.value = ""
        self.update_keys()

    async def _resend_edited(self, text: str) -> bool:
        s = self.session
        prompt = self.prompt
        if not text.strip():
            self.notify("the edited message is empty: Esc cancels the edit")
            return False
        if not s.turns:
            self.cancel_edit()
            return False
        old, turn = s.edit_last(text)
        try:
            plan = s.plan_reply(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:
            s.turns[-1] = old
            self.notify(str(e), severity="error")
            return False
        for view in old.views:
            await view.remove()
        for msg in [old.user, *old.alternatives()]:
            if msg.db_id is not None:
                self.store.set_state(msg.db_id, EDITED)
        prompt.set_editing(False)
        prompt.value = ""
        self.conversation.follow()
        turn.views.append(await self.conversation.add_message("user", text))
        self._save_user(turn)
        self._refresh_history()
        await self._start_reply(turn, plan)
        return True

    def action_regenerate(self) -> None:
        """Ctrl+R: a new reply to the last message; the old one is kept as an alternative
        (Alt+←/→ flips between them). Only the reply is recomputed: the conversation
        before it is still in the KV cache."""
        self._after_stop(self._regenerate)

    async def _regenerate(self) -> None:
        s = self.session
        if not s.turns:
            self.notify("nothing to regenerate yet")
            return
        turn = s.turns[-1]
        old = s.drop_last_reply()
        if old is not None:
            if old.db_id is not None:
                self.store.set_state(old.db_id, ALTERNATIVE)
            for view in [v for v in turn.views if v.role == "assistant"]:
                turn.views.remove(view)
                await view.remove()
        try:
            plan = s.plan_reply(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:
            self.notify(str(e), severity="error")
            return
        self.conversation.follow()
        await self._start_reply(turn, plan)

    async def action_flip(self, step: int) -> None:
        """Alt+← / Alt+→: show the previous / next reply to the last message; the
        conversation continues from the one shown."""
        if self.generating:
            self.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return
        s = self.session
        before = s.turns[-1].reply if s.turns else None
        reply = s.flip_reply(step)
        if reply is None:
            n = len(s.turns[-1].alternatives()) if s.turns else 0
            self.notify("only one reply to this message: Ctrl+R makes another" if n < 2
                        else "no more replies that way")
            return
        turn = s.turns[-1]
        if before is not None and before.db_id is not None:
            self.store.set_state(before.db_id, ALTERNATIVE)
        if reply.db_id is not None:
            self.store.set_state(reply.db_id, SHOWN)
        view = next((v for v in turn.views if v.role == "assistant"), None)
        if view is None:
            view = await self.conversation.add_message("assistant", label=reply.model or self.host.name)
            turn.views.append(view)
        await view.show_text(reply.text)
        view.label = reply.model or self.host.name
        await view.finish(reply.status, _stored_meta(reply.stats))
        view.set_position(*turn.position())
        self._q(ContextBar).set_used(s.context_used(), s.first_in_context)

    # -- history -----------------------------------------------------------------------
    def _save_user(self, turn: Turn) -> None:
        s = self.session
        if not self.store.writable:
            return
        if s.conversation_id is None:
            title = turn.user.text.strip().splitlines()[0][:60] if turn.user.text.strip() else PLACEHOLDER_TITLE
            s.conversation_id = self.store.new_conversation(
                title, self.model_name, s.template.name, s.system, self.host.tokenizer_id)
            self._context_noticed = False
        if s.conversation_id is not None:
            # an empty continuation is stored too: it marks where a new turn begins
            turn.user.db_id = self.store.add_message(s.conversation_id, "user", turn.user.text, None)

    def _refresh_history(self) -> None:
        current = self.store.resolve("conversations", self.session.conversation_id)
        self._q(HistorySidebar).show(self.store.conversations(query=self._history_query), current,
                                     self.model_name)

    async def _show_store_notices(self) -> None:
        for notice in self.store.take_notices():
            self.notify(notice, severity="warning", timeout=12)
            await self.conversation.add_notice(notice)

    async def _retry_store(self) -> None:
        if self.store.pending:
            self.store.retry(wait_ms=0)
            if not self.store.pending:
                self._refresh_history()
        await self._show_store_notices()

    @on(HistoryList.Open)
    def _on_open(self, event: HistoryList.Open) -> None:
        event.stop()
        cid = event.conversation_id
        if cid == self.store.resolve("conversations", self.session.conversation_id):
            self.prompt.focus()   # the chat already open: just go back to typing
            return
        self._after_stop(lambda: self.open_conversation(cid))

    @on(HistoryList.Delete)
    def _on_delete(self, event: HistoryList.Delete) -> None:
        event.stop()
        self.ask_delete(event.conversation_id)

    @on(HistorySidebar.Search)
    def _on_search(self, event: HistorySidebar.Search) -> None:
        event.stop()
        self._history_query = event.query
        self._refresh_history()

    def ask_delete(self, cid: int) -> None:
        info = self.store.conversation(cid)
        if info is None:
            return

        async def answer(yes: bool | None) -> None:
            if not yes:
                return
            if cid == self.store.resolve("conversations", self.session.conversation_id):
                await self._stop_and_wait()
                await self._new_chat(notice=f"deleted “{info.title}”")
            self.store.delete_conversation(cid)
            self._refresh_history()
            self.notify(f"deleted “{info.title}”")
            await self._show_store_notices()

        self.push_screen(ConfirmDialog(f"Delete “{info.title}” ({plural(info.n_messages, 'message')})?"),
                         answer)

    async def open_conversation(self, conversation_id: int) -> None:
        """Reopen a saved chat (when idle); the next message continues it. Alternatives
        come back with their replies; a row that cannot be used as stored (odd ids,
        stats that are not an object) is read as well as it can be."""
        info = self.store.conversation(conversation_id)
        if info is None:
            self.notify("that conversation is no longer in the history", severity="error")
            return
        s = self.session
        s.reset()
        s.conversation_id = info.id
        s.system = info.system
        self._context_noticed = False
        self.prompt.set_editing(False)
        same_tokenizer = info.tokenizer == self.host.tokenizer_id
        conv = self.conversation
        await conv.clear()
        self._show_system()
        await conv.add_notice(f"reopened “{info.title}” ({info.model}, {info.template})")
        if info.template != s.template.name:
            await conv.add_notice(f"saved with the {info.template} template; continuing with "
                                  f"{s.template.name}")
        tok = self.engine.tokenizer
        for rec in self.store.messages(info.id):
            if rec.role == "user":
                s.add_user(rec.text).user.db_id = rec.id
                continue
            if not s.turns or (s.turns[-1].reply is not None and rec.state == SHOWN):
                s.add_user("")   # an old file's continuation without its empty user row
            ids = list(rec.token_ids) if same_tokenizer and rec.token_ids is not None \
                else tok.encode(rec.text, bos=False)
            msg = Message("assistant", rec.text, ids, rec.status, rec.id, rec.stats, model=rec.model or info.model)
            turn = s.turns[-1]
            if rec.state == SHOWN:
                s.set_reply(turn, msg)
            else:
                turn.replies.append(msg)
        for turn in s.turns:
            if turn.reply is None and turn.replies and turn is not s.turns[-1]:
                turn.reply = turn.replies[-1]   # died while regenerating: show the newest
            if turn.user.text:
                turn.views.append(await conv.add_message("user", turn.user.text))
            if turn.reply is not None:
                view = await conv.add_message("assistant", turn.reply.text, label=turn.reply.model)
                turn.views.append(view)
                await view.finish(turn.reply.status, _stored_meta(turn.reply.stats))
                view.set_position(*turn.position())
        last = s.turns[-1] if s.turns else None
        if last is not None and last.reply is None and last.replies:
            s.set_reply(last, last.replies[-1])
            view = await conv.add_message("assistant", last.reply.text, label=last.reply.model)
            last.views.append(view)
            await view.finish(last.reply.status, _stored_meta(last.reply.stats))
            view.set_position(*last.position())
        elif last is not None and last.reply is None and last.user.text:
            await conv.add_notice("the last message has no reply (the app was closed while it "
                                  "streamed): Ctrl+R generates one")
        elif last is not None and last.reply is None:
            s.turns.pop()  # an empty "continue" that never got its continuation
        try:
            s.fit(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:  # e.g. a template that refuses this history
            self.notify(str(e), severity="error", timeout=10)
        if s.first_in_context:
            self._mark_dropped()
            self._context_noticed = True
            await conv.add_notice(f"the {plural(s.first_in_context, 'oldest turn')} do not fit in the "
                                  "context and are out of the model's view (dimmed)")
        self._q(ContextBar).set_used(s.context_used(), s.first_in_context)
        conv.follow()
        self._refresh_history()
        self.prompt.focus()
        await self._show_store_notices()

    # -- actions (keys, command palette) -------------------------------------------------
    def action_escape(self) -> None:
        """Esc: in the message box, stop the reply (the partial reply is kept, marked
        stopped) or cancel an edit; anywhere else, back to the message box."""
        focused = self.main.focused
        if isinstance(self.screen, SamplingScreen):
            self.screen.dismiss()
            self.prompt.focus()
            return
        if focused is not None and not isinstance(focused, PromptInput):
            self.prompt.focus()
            return
        if self.generating:
            self.action_stop()
        elif self.prompt.editing:
            self.cancel_edit()

    def action_stop(self) -> None:
        if self.thread is not None:
            self.thread.request_stop()

    def action_new_chat(self) -> None:
        """Ctrl+N: start an empty conversation (the old one stays in the history)."""
        self._after_stop(self._new_chat)

    async def _new_chat(self, notice: str = "new conversation") -> None:
        self.session.reset()
        self._context_noticed = False
        self.prompt.set_editing(False)
        conv = self.conversation
        await conv.clear()
        self._show_system()
        await conv.add_notice(notice)
        self._q(ContextBar).set_used(0)
        self._refresh_history()
        self.prompt.focus()

    def action_quit(self) -> None:
        """Ctrl+Q: stop generation, save the partial reply, exit 0."""
        self.quit_with(0)

    def quit_with(self, code: int, signalled: bool = False) -> None:
        """Stop generation, save the partial reply (marked stopped), exit with `code`.

        After a signal the terminal may be gone (SIGHUP when its window closes): Textual's
        shutdown then blocks for ever on writes nobody reads. Everything is saved by the
        time it starts, so a watchdog ends the process if the shutdown hangs.
        """
        if self._quitting:
            return
        self._quitting = True

        async def quit_now() -> None:
            if signalled and not self.is_headless:
                self.store.retry(wait_ms=1000)
                _exit_later(code, SHUTDOWN_GRACE_S + (CLOSE_WAIT_S if self.store.pending else 0))
            self.exit(code)

        self._after_stop(quit_now, always=True)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_focus_sampling(self) -> None:
        """F2: into the sampling panel (an overlay when the panels are folded away); F2
        or Esc there goes back to the message box."""
        if isinstance(self.screen, SamplingScreen):
            self.screen.dismiss()
            self.prompt.focus()
            return
        panel = self._q(SamplingPanel)
        if panel.has_focus:
            self.prompt.focus()
            return
        if not self.panels_visible:
            self.push_screen(SamplingScreen(lambda: self.engine.settings, self.apply_settings, panel.row,
                                            self.preset))
            return
        panel.focus()

    @on(SamplingPanel.Leave)
    def _on_sampling_leave(self, event: SamplingPanel.Leave) -> None:
        event.stop()
        if isinstance(self.screen, SamplingScreen):
            self._q(SamplingPanel).row = self.screen.panel.row
            self.screen.dismiss()
        prompt = self.prompt
        prompt.focus()
        if event.char:
            prompt.insert(event.char)

    def action_toggle_history(self) -> None:
        """Ctrl+B: into the history (shown if hidden), with the open chat highlighted;
        from inside it, hide it again and go back to the message box."""
        sidebar = self._q(HistorySidebar)
        inside = sidebar.display and self.main.focused is not None and sidebar in self.main.focused.ancestors_with_self
        self._show_history = not inside
        self._apply_size_classes()
        if self._show_history:
            self._refresh_history()
            sidebar.focus_list()
        else:
            self.prompt.focus()

    def action_search_history(self) -> None:
        sidebar = self._q(HistorySidebar)
        if not sidebar.display:
            self._show_history = True
            self._apply_size_classes()
        sidebar.search_box.focus()

    def action_rename(self) -> None:
        """Ctrl+T: rename the highlighted chat in the history, else the one open."""
        focused = self.main.focused
        cid = focused.highlighted_id if isinstance(focused, HistoryList) else \
            self.store.resolve("conversations", self.session.conversation_id)
        info = self.store.conversation(cid) if cid is not None else None
        if info is None:
            self.notify("nothing to rename: this chat is not saved yet")
            return

        def done(title: str | None) -> None:
            if title is None or not title.strip():
                return
            self.store.rename(info.id, title.strip()[:200])
            self._refresh_history()
            self.notify(f"renamed to “{title.strip()[:200]}”")

        self.push_screen(ValueDialog("Rename the conversation", info.title), done)

    def action_temperature(self, direction: int) -> None:
        self.apply_settings(nudged(self.engine.settings, KNOB_BY_FIELD["temperature"], direction))
        self._q(SamplingPanel).select("temperature")

    def apply_settings(self, settings: SamplingSettings) -> None:
        """Swap the engine's settings object (read once per token by the engine thread)."""
        self.engine.settings = settings
        self._q(SamplingPanel).refresh()
        if isinstance(self.screen, SamplingScreen):
            self.screen.panel.refresh()

    @on(SamplingPanel.EditRequested)
    def _on_sampling_edit(self, event: SamplingPanel.EditRequested) -> None:
        event.stop()
        knob: Knob = event.knob
        current = getattr(self.engine.settings, knob.field)

        def check(text: str) -> str | None:
            try:
                parse_value(knob, text)
            except ValueError as e:
                return str(e)
            return None

        def done(text: str | None) -> None:
            if text is not None:
                self.apply_settings(self.engine.settings.with_(**{knob.field: parse_value(knob, text)}))

        r = knob.range
        hint = " (empty = random)" if knob.field == "seed" else f" ({r.span()})"
        value = event.initial if event.initial is not None else ("" if current is None else str(current))
        self.push_screen(ValueDialog(f"{knob.label}{hint}", value, check), done)

    def action_choose_preset(self) -> None:
        """F4: switch to a named preset from the settings file (or back to the start)."""
        if not self.presets:
            self.notify("no presets: add [presets.NAME] tables to the settings file "
                        "(~/.config/llama-chat/config.toml)")
            return
        choices = [("", Text("start-up settings (settings file and flags)"))]
        for name, values in self.presets.items():
            label = Text(name, style="bold")
            label.append("  " + ", ".join(f"{k}={v}" for k, v in values.items()), style="dim")
            choices.append((name, label))

        def done(key: str | None) -> None:
            if key is not None:
                self.use_preset(key)

        self.push_screen(ChoiceDialog("Sampling preset", choices, highlight=self.preset), done)

    def use_preset(self, name: str) -> None:
        from dataclasses import replace
        values = self.presets.get(name, {}) if name else {}
        self.apply_settings(replace(self.base_settings, **values))
        self.preset = name
        self._q(SamplingPanel).set_preset(name)
        self.notify(f"preset {name}" if name else "start-up settings")

    def action_edit_system(self) -> None:
        if not self.session.template.uses_system:
            self.notify("the completion template has no system prompt (start with a chat --template, e.g. chatml)")
            return

        def done(text: str | None) -> None:
            if text is None:
                return
            self.session.system = text
            cid = self.session.conversation_id
            if cid is not None:
                self.store.set_system(cid, text)
            self._show_system()
            self.notify("system prompt set: it applies from the next reply")

        self.push_screen(ValueDialog("System prompt", self.session.system, multiline=True), done)

    # -- copy and export -------------------------------------------------------------------
    def _last_reply(self) -> Message | None:
        for turn in reversed(self.session.turns):
            if turn.reply is not None:
                return turn.reply
        return None

    def action_copy(self) -> None:
        """F7: copy the last reply, or one of its code blocks, to the clipboard (OSC 52)."""
        reply = self._last_reply()
        if reply is None or not reply.text:
            self.notify("no reply to copy yet")
            return
        blocks = transcript.code_blocks(reply.text)
        if not blocks:
            self.copy_text(reply.text, "the last reply")
            return
        choices = [("all", Text(f"the whole reply ({len(reply.text)} characters)"))]
        for i, (lang, code) in enumerate(blocks):
            first = code.strip().splitlines()[0][:40] if code.strip() else ""
            choices.append((str(i), Text(f"code block {i + 1}{' · ' + lang if lang else ''} · "
                                         f"{plural(code.count(chr(10)) or 1, 'line')}  {first}")))

        def done(key: str | None) -> None:
            if key == "all":
                self.copy_text(reply.text, "the last reply")
            elif key is not None:
                self.copy_text(blocks[int(key)][1], f"code block {int(key) + 1}")

        self.push_screen(ChoiceDialog("Copy to the clipboard", choices), done)

    def copy_text(self, text: str, what: str) -> None:
        self.copy_to_clipboard(text)
        self.notify(f"copied {what} ({len(text)} characters) — through the terminal (OSC 52), "
                    "which must allow clipboard access")

    def export_data(self) -> tuple[transcript.Header, list[transcript.Entry]]:
        s = self.session
        cid = self.store.resolve("conversations", s.conversation_id)
        if cid is not None and self.store.enabled:
            self.store.retry()
            got = transcript.from_store(self.store, cid)
            if got is not None and not self.store.pending:
                return got
        title = next((t.user.text.strip().splitlines()[0][:60] for t in s.turns if t.user.text.strip()),
                     "llama-chat conversation")
        return transcript.from_turns(title, s.template.name, s.system, s.turns, self.host.name)

    def action_export(self) -> None:
        """Ctrl+S: write the conversation to a Markdown (.md) or JSON (.json) file."""
        if not self.session.turns:
            self.notify("nothing to export yet")
            return
        header, _ = self.export_data()
        self._ask_export(os.path.join(os.getcwd(), transcript.default_filename(header)))

    def _ask_export(self, path: str, exists: str | None = None) -> None:
        """The export dialog. A file that is there already is overwritten only when Enter
        confirms that same path a second time: a typed path never replaces a file unasked."""
        def done(answer: str | None) -> None:
            if not answer:
                return
            full = os.path.expanduser(answer.strip())
            if os.path.exists(full) and full != exists:
                self._ask_export(answer, exists=full)
            else:
                self.export_to(answer)

        title = f"{exists} exists: overwrite it?" if exists else "Export the conversation to (.md or .json)"
        hint = "Enter overwrites it · Esc cancels" if exists \
            else "Enter writes the file · Esc cancels"
        self.push_screen(ValueDialog(title, path, hint=hint), done)

    def export_to(self, path: str) -> str | None:
        path = os.path.expanduser(path.strip())
        fmt = transcript.format_for(path)
        header, entries = self.export_data()
        try:
            with open(path, "w", encoding="utf-8") as f:
                f.write(transcript.render(header, entries, fmt))
        except OSError as e:
            self.notify(f"cannot write {path}: {e.strerror}", severity="error", timeout=10)
            return None
        self.notify(f"exported {plural(len(entries), 'message')} to {path} ({fmt})")
        return path

    # -- switching models ------------------------------------------------------------------
    def action_choose_model(self) -> None:
        """Ctrl+O: pick another model; the conversation continues on it (no restart)."""
        if self.opener is None:
            self.notify("switching models is not available here")
            return
        self.notify("looking for models…", timeout=3)
        self.run_worker(self._list_models, thread=True, group="models", exclusive=True)

    def _list_models(self) -> None:
        from inference.discovery import list_models
        try:
            entries = [e for e in list_models() if not e.problem]
        except Exception as e:  # noqa: BLE001  (a scan problem is a message)
            self.call_from_thread(self.notify, f"cannot list the models: {e}", severity="error")
            return
        self.call_from_thread(self._offer_models, entries)

    def _offer_models(self, entries: list) -> None:
        from .widgets.memory_panel import human_bytes
        if not entries:
            self.notify("no models found (`llama-chat models` says where it looks)")
            return
        here = os.path.realpath(self.host.path) if self.host.path else ""
        choices = []
        current = None
        for i, e in enumerate(entries):
            label = Text(e.name, style="bold")
            label.append(f"  {e.quant or e.format} · {human_bytes(e.size)} · {e.source}", style="dim")
            if os.path.realpath(e.path) == here:
                label.append("  (in use)", style="italic")
                current = str(i)
            choices.append((str(i), label))

        def done(key: str | None) -> None:
            if key is not None:
                self.switch_model(entries[int(key)].path)

        self.push_screen(ChoiceDialog("Switch model (the conversation continues)", choices,
                                      highlight=current), done)

    def switch_model(self, path: str) -> None:
        """Open `path` behind a progress screen, then continue the chat on it."""
        if self.opener is None:
            return
        opener, settings = self.opener, self.engine.settings

        async def go() -> None:
            job = ModelJob(open_host=lambda: opener.open(path, settings=settings),
                           label=os.path.basename(path)).start()
            self.push_screen(LoadingScreen(job, opener.device, on_typed=self._typed_while_loading),
                             lambda ok: self._switched(job, ok))

        self._after_stop(go)

    def _switched(self, job: ModelJob, ok: bool | None) -> None:
        if not ok or job.host is None:
            self.notify(f"the model was not switched: {job.error}", severity="error", timeout=15)
            if job.host is not None:
                job.host.close()
            self.prompt.focus()
            self._send_typed_ahead(False)
            return
        old, self.host = self.host, job.host
        self.host.engine.settings = old.engine.settings
        s = self.session
        s.rebind(self.engine.tokenizer, self.host.template, self.engine.context_length)
        self._context_noticed = False
        self._q(ContextBar).set_length(self.engine.context_length)
        self._q(MemoryPanel).backend = self.engine.backend
        self._show_model()
        self._set_sub_title()
        old.close()
        try:
            s.fit(self.engine.settings.max_new_tokens)
            self._q(ContextBar).set_used(s.context_used(), s.first_in_context)
        except LlamaChatError as e:
            self.notify(str(e), severity="error", timeout=10)
        self.run_worker(self.conversation.add_notice(
            f"now chatting with {self.host.name} ({transcript.template_label(self.host.template.name)} "
            "template); "
            "the conversation so far is re-read by it at the next message"))
        self.prompt.focus()
        self._send_typed_ahead(True)

    # -- the command palette ---------------------------------------------------------------
    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Stop generation", "Esc: keep the partial reply", self.action_stop)
        yield SystemCommand("Continue the reply", "Enter in an empty box, after a reply cut short",
                            lambda: self.run_worker(self.send("")))
        yield SystemCommand("Regenerate last reply", "Ctrl+R: the old one stays as an alternative",
                            self.action_regenerate)
        yield SystemCommand("Previous reply alternative", "Alt+←", lambda: self.run_worker(self.action_flip(-1)))
        yield SystemCommand("Next reply alternative", "Alt+→", lambda: self.run_worker(self.action_flip(1)))
        yield SystemCommand("Edit last message", "↑ in an empty box: edit and resend", self.action_edit_last)
        yield SystemCommand("New conversation", "Ctrl+N", self.action_new_chat)
        yield SystemCommand("Copy last reply or a code block", "F7 (OSC 52)", self.action_copy)
        yield SystemCommand("Export conversation", "Ctrl+S: Markdown or JSON", self.action_export)
        yield SystemCommand("Switch model", "Ctrl+O: the conversation continues", self.action_choose_model)
        yield SystemCommand("Sampling preset", "F4", self.action_choose_preset)
        yield SystemCommand("Keys / help", "F1", self.action_help)
        yield SystemCommand("Sampling settings", "F2: edit temperature, top-p, …", self.action_focus_sampling)
        yield SystemCommand("System prompt", "F3 (chat templates)", self.action_edit_system)
        yield SystemCommand("Toggle history sidebar", "Ctrl+B", self.action_toggle_history)
        yield SystemCommand("Search history", "Ctrl+F", self.action_search_history)
        yield SystemCommand("Rename conversation", "Ctrl+T", self.action_rename)
        yield SystemCommand("Delete this conversation", "Del in the history list",
                            lambda: self.ask_delete(self.session.conversation_id)
                            if self.session.conversation_id is not None else self.notify("not saved yet"))
        yield SystemCommand("Temperature up", "F6", lambda: self.action_temperature(1))
        yield SystemCommand("Temperature down", "F5", lambda: self.action_temperature(-1))


def _exit_later(code: int, seconds: float) -> None:
    """End the process with `code` in `seconds` unless it has ended by then."""
    import threading

    def watchdog() -> None:
        time.sleep(seconds)
        os._exit(code)

    threading.Thread(target=watchdog, name="llama-chat-exit-watchdog", daemon=True).start()


def _stored_meta(stats: dict) -> str:
    """The header figures of a stored reply (stats may come from an old or odd row)."""
    tokens = stats.get("tokens") if isinstance(stats, dict) else None
    return f"{tokens} tok" if isinstance(tokens, int) and not isinstance(tokens, bool) else ""
