"""The chat TUI: conversation in the middle, live panels on the right, history on the left.

Threading: the event loop only ever does UI work and short SQLite writes. A reply is
generated on a `GenerationThread`; its tokens wait in a `StreamBuffer` that a ~30 fps
timer drains, so the screen is updated once per frame no matter how fast the model is.
The thread reports its end with `post_message` (thread-safe, non-blocking).
"""
from __future__ import annotations

import asyncio
from typing import Awaitable, Callable, Iterable

from textual import events, on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.message import Message as TMessage
from textual.screen import Screen
from textual.timer import Timer
from textual.widgets import Footer, Header, Input

from inference.chat import ChatTemplate, Conversation, Message, ReplyPlan, Turn
from inference.engine import Engine, Finished
from inference.errors import LlamaChatError
from inference.sampler import SamplingSettings

from .session import GenerationThread, StreamBuffer
from .store import HistoryStore
from .widgets.context_bar import ContextBar
from .widgets.conversation import ConversationView
from .widgets.help_screen import HelpScreen
from .widgets.history_sidebar import HistorySidebar
from .widgets.memory_panel import MemoryPanel
from .widgets.message import MessageView
from .widgets.model_panel import ModelPanel
from .widgets.prompt_input import PromptInput
from .widgets.sampling_panel import KNOBS, Knob, SamplingPanel, nudged, parse_value
from .widgets.speed_panel import SpeedPanel, fmt_rate
from .widgets.value_dialog import ValueDialog

FRAME_S = 1 / 30          # UI refresh while streaming
MEMORY_REFRESH_S = 1.0
FINISHED_STATUS = {"eos": "complete"}   # engine reason -> message status (else the same)


class GenerationDone(TMessage):
    """Posted by the engine thread when a reply ends (result: Finished, or an error text)."""

    def __init__(self, result: Finished | str) -> None:
        super().__init__()
        self.result = result


class MainScreen(Screen):
    """The chat screen. It reports terminal resizes to the app, which folds side panels on
    small terminals (the App itself does not see resizes in Textual)."""

    def on_resize(self, event: events.Resize) -> None:
        app = self.app
        if isinstance(app, ChatApp):
            app.apply_layout(event.size.width, event.size.height)


class ChatApp(App[int]):
    CSS_PATH = "chat.tcss"
    TITLE = "llama-chat"
    BINDINGS = [
        Binding("escape", "stop", "Stop"),
        Binding("ctrl+r", "regenerate", "Regen"),
        Binding("ctrl+n", "new_chat", "New"),
        Binding("f1", "help", "Help"),
        Binding("f2", "focus_sampling", "Sampling"),
        Binding("ctrl+b", "toggle_history", "History"),
        Binding("ctrl+q", "quit", "Quit", priority=True),
        Binding("f3", "edit_system", "System prompt", show=False),
        Binding("f5", "temperature(-1)", "Temperature −", show=False),
        Binding("f6", "temperature(1)", "Temperature +", show=False),
    ]

    def __init__(self, engine: Engine, template: ChatTemplate, model_name: str,
                 store: HistoryStore, system: str = "", tokenizer_id: str = "",
                 device: str = "cpu") -> None:
        super().__init__()
        self.engine = engine
        self.session = Conversation(engine.tokenizer, template, engine.context_length, system)
        self.model_name = model_name
        self.store = store
        self.tokenizer_id = tokenizer_id
        self.device = device
        self.sub_title = f"{model_name} · {template.name} · {device}"
        self.thread: GenerationThread | None = None
        self.buffer: StreamBuffer | None = None
        self.streaming_turn: Turn | None = None
        self.streaming_view: MessageView | None = None
        self._frame_timer: Timer | None = None
        self._idle = asyncio.Event()
        self._idle.set()
        self._show_history: bool | None = None   # None: decided by the terminal width
        self.replies_finished = 0                # for tests and scripts: completed replies

    # -- layout ----------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        e = self.engine
        yield Header()
        with Horizontal(id="main"):
            yield HistorySidebar(id="history")
            with Vertical(id="chat"):
                yield ConversationView(id="conversation")
                yield ContextBar(e.context_length, id="context")
                yield PromptInput(id="prompt")
            with VerticalScroll(id="panels"):
                yield ModelPanel(self.model_name, e.config, e.backend, self.session.template.name,
                                 id="model-panel", classes="panel")
                yield SpeedPanel(id="speed-panel", classes="panel")
                yield MemoryPanel(e.backend, id="memory-panel", classes="panel")
                yield SamplingPanel(lambda: self.engine.settings, id="sampling-panel", classes="panel")
        yield Footer()

    async def on_mount(self) -> None:
        self.main.query_one(PromptInput).focus()
        self.set_interval(MEMORY_REFRESH_S, self.main.query_one(MemoryPanel).refresh_figures)
        self._refresh_history()
        self._apply_size_classes()
        await self._show_store_notices()
        conv = self.main.query_one(ConversationView)
        template = self.session.template
        tip = ("completion mode: your text and the model's continuation form one story; "
               "an empty Enter continues it" if template.is_completion
               else f"{template.name} chat template · F3 edits the system prompt")
        await conv.add_notice(tip)

    def get_default_screen(self) -> Screen:
        return MainScreen(id="_default")

    @property
    def main(self) -> Screen:
        """The chat screen, also while a modal (help, a dialog, the palette) is on top."""
        return self.screen_stack[0]

    def _apply_size_classes(self) -> None:
        self.apply_layout(*self.size)

    def apply_layout(self, w: int, h: int) -> None:
        """Fold the side panels to fit the terminal (see the -narrow/-short/-tiny rules)."""
        main = self.main
        main.set_class(w < 100, "-narrow")
        main.set_class(h < 32, "-short")
        main.set_class(w < 70, "-tiny")
        self.main.query_one(Footer).compact = w < 100
        show = self._show_history if self._show_history is not None else w >= 110
        self.main.query_one(HistorySidebar).display = show

    # -- sending and streaming ---------------------------------------------------------
    @on(Input.Submitted, "#prompt")
    async def _on_prompt(self, event: Input.Submitted) -> None:
        event.stop()
        await self.send(event.value)

    async def send(self, text: str) -> bool:
        """Add a user message and start the reply. False if nothing was started."""
        prompt = self.main.query_one(PromptInput)
        template = self.session.template
        if self.generating:
            self.notify("A reply is still streaming: Esc stops it.", severity="warning")
            return False
        if not text.strip() and not template.allows_empty:
            return False
        if not text.strip():
            text = ""
        turn = self.session.add_user(text)
        try:
            plan = self.session.plan_reply(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:
            self.session.turns.pop()
            self.notify(str(e), severity="error")
            return False
        prompt.value = ""
        if text:
            prompt.last_sent = text
            turn.views.append(await self.main.query_one(ConversationView).add_message("user", text))
        self._save_user(turn)
        self._refresh_history()
        await self._start_reply(turn, plan)
        return True

    @property
    def generating(self) -> bool:
        return not self._idle.is_set()

    async def _start_reply(self, turn: Turn, plan: ReplyPlan) -> None:
        if self.generating:  # one engine, one generation: never two threads on the KV cache
            self.notify("A reply is already streaming: Esc stops it.", severity="warning")
            return
        conv = self.main.query_one(ConversationView)
        self._idle.clear()
        ids, dropped = plan.ids, plan.dropped
        if dropped:
            self._mark_dropped()
            await conv.add_notice(
                f"context full: the {dropped} oldest turn{'s' if dropped > 1 else ''} left the model's "
                f"view (still shown here; the system prompt is kept); {plan.kept} "
                f"turn{'s' if plan.kept != 1 else ''} in view, re-reading {len(ids)} tokens")
        self.streaming_turn = turn
        self.streaming_view = await conv.add_message("assistant", streaming=True)
        turn.views.append(self.streaming_view)
        self.streaming_view.set_meta("reading the prompt…")
        self.buffer = StreamBuffer()
        self.main.query_one(SpeedPanel).start()
        self.main.query_one(ContextBar).set_used(len(ids), self.session.first_in_context)
        self.thread = GenerationThread(self.engine, ids, self.buffer,
                                       on_done=lambda r: self.post_message(GenerationDone(r)))
        self._frame_timer = self.set_interval(FRAME_S, self._drain)
        self.thread.start()

    def _drain(self) -> None:
        """One frame: move whatever the engine produced since the last frame to the screen."""
        if self.buffer is None or self.streaming_view is None:
            return
        text, _ids, stats = self.buffer.take()
        if not text and stats.generated_tokens == self.main.query_one(SpeedPanel).stats.generated_tokens:
            return
        conv = self.main.query_one(ConversationView)
        follow = conv.at_bottom()
        self.streaming_view.append(text)
        self.main.query_one(SpeedPanel).update_stats(stats)
        self.main.query_one(ContextBar).set_used(stats.prompt_tokens + stats.generated_tokens,
                                             self.session.first_in_context)
        self.streaming_view.set_meta(f"{stats.generated_tokens} tok · {fmt_rate(stats.recent_tok_s)} tok/s")
        conv.follow(follow)

    async def on_generation_done(self, message: GenerationDone) -> None:
        if self._frame_timer is not None:
            self._frame_timer.stop()
            self._frame_timer = None
        self._drain()
        turn, view = self.streaming_turn, self.streaming_view
        self.thread = self.buffer = None
        self.streaming_turn = self.streaming_view = None
        if turn is None or view is None:
            self._idle.set()
            return
        result = message.result
        if isinstance(result, str):
            reply = Message("assistant", view.text, [], "error", stats={"error": result})
            meta = ""
            self.notify(result, severity="error", timeout=10)
        else:
            s = result.stats
            status = FINISHED_STATUS.get(result.reason, result.reason)
            reply = Message("assistant", view.text, list(result.new_tokens), status, stats={
                "tokens": s.generated_tokens, "decode_tok_s": round(s.decode_tok_s, 1),
                "prefill_tok_s": round(s.prefill_tok_s, 1), "ttft_ms": round(s.ttft_s * 1000, 1),
                "seed": result.seed, "reason": result.reason})
            meta = f"{s.generated_tokens} tok · {fmt_rate(s.decode_tok_s)} tok/s"
            if result.reason == "eos" and self.session.template.is_completion:
                meta += " · end of text"
            self.main.query_one(SpeedPanel).update_stats(s, finished=True)
        turn.reply = reply
        if self.session.conversation_id is not None:
            reply.db_id = self.store.add_message(self.session.conversation_id, "assistant", reply.text,
                                                 reply.ids, reply.status, reply.stats)
        await view.finish(reply.status, meta)
        self.main.query_one(ContextBar).set_used(self.session.context_used(), self.session.first_in_context)
        if isinstance(result, Finished) and result.reason == "eos" and not reply.ids \
                and self.session.template.is_completion:
            await self.main.query_one(ConversationView).add_notice(
                "the model considers this text finished: type a few words to lead it on, "
                "or Ctrl+N for a new one")
        if reply.status == "context_full":
            await self.main.query_one(ConversationView).add_notice(
                "the context window is full: the next message drops the oldest turns")
        self._refresh_history()
        await self._show_store_notices()
        self._idle.set()
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

    # -- history -----------------------------------------------------------------------
    def _save_user(self, turn: Turn) -> None:
        s = self.session
        if not self.store.enabled:
            return
        if s.conversation_id is None:
            title = turn.user.text.strip().splitlines()[0][:60] if turn.user.text.strip() else "(continuation)"
            s.conversation_id = self.store.new_conversation(
                title, self.model_name, s.template.name, s.system, self.tokenizer_id)
        if s.conversation_id is not None:
            turn.user.db_id = self.store.add_message(s.conversation_id, "user", turn.user.text, None)

    def _refresh_history(self) -> None:
        self.main.query_one(HistorySidebar).show(self.store.conversations(), self.session.conversation_id,
                                            self.model_name)

    async def _show_store_notices(self) -> None:
        for notice in self.store.take_notices():
            self.notify(notice, severity="warning", timeout=12)
            await self.main.query_one(ConversationView).add_notice(notice)

    @on(HistorySidebar.Open)
    def _on_open(self, event: HistorySidebar.Open) -> None:
        conversation_id = event.conversation_id
        self._after_stop(lambda: self.open_conversation(conversation_id))

    async def open_conversation(self, conversation_id: int) -> None:
        """Reopen a saved chat (when idle); the next message continues it, replies keep
        their token ids."""
        info = self.store.conversation(conversation_id)
        if info is None:
            self.notify("that conversation is no longer in the history", severity="error")
            return
        s = self.session
        s.reset()
        s.conversation_id = conversation_id
        s.system = info.system
        same_tokenizer = info.tokenizer == self.tokenizer_id
        conv = self.main.query_one(ConversationView)
        await conv.clear()
        await conv.add_notice(f"reopened “{info.title}” ({info.model}, {info.template})")
        if info.template != s.template.name:
            await conv.add_notice(f"saved with the {info.template} template; continuing with "
                                  f"{s.template.name}")
        tok = self.engine.tokenizer
        for rec in self.store.messages(conversation_id):
            if rec.role == "user":
                turn = s.add_user(rec.text)
                turn.user.db_id = rec.id
                if rec.text:
                    turn.views.append(await conv.add_message("user", rec.text))
                continue
            if not s.turns or s.turns[-1].reply is not None:
                s.add_user("")
            ids = list(rec.token_ids) if same_tokenizer and rec.token_ids is not None \
                else tok.encode(rec.text, bos=False)
            s.turns[-1].reply = Message("assistant", rec.text, ids, rec.status, rec.id, rec.stats)
            view = await conv.add_message("assistant", rec.text, streaming=True)
            s.turns[-1].views.append(view)
            meta = f"{rec.stats['tokens']} tok" if "tokens" in rec.stats else ""
            await view.finish(rec.status, meta)
        if s.turns and s.turns[-1].reply is None and s.turns[-1].user.text:
            await conv.add_notice("the last message has no reply (the app was closed while it "
                                  "streamed): Ctrl+R generates one")
        elif s.turns and s.turns[-1].reply is None:
            s.turns.pop()  # an empty "continue" that never got its continuation
        try:
            s.fit(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:  # e.g. a template that refuses this history
            self.notify(str(e), severity="error", timeout=10)
        if s.first_in_context:
            self._mark_dropped()
            await conv.add_notice(f"the {s.first_in_context} oldest turns do not fit in the context "
                                  "and are out of the model's view")
        self.main.query_one(ContextBar).set_used(s.context_used(), s.first_in_context)
        conv.scroll_end(animate=False)
        self._refresh_history()
        self.main.query_one(PromptInput).focus()

    # -- actions (keys, command palette) -------------------------------------------------
    async def action_stop(self) -> None:
        """Esc: stop the reply; what was generated so far is kept and marked stopped."""
        if self.thread is not None:
            self.thread.request_stop()

    def action_regenerate(self) -> None:
        """Ctrl+R: replace the last reply by a new one. Only the reply is recomputed: the
        conversation before it is still in the KV cache."""
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
                self.store.set_status(old.db_id, "replaced")
            for view in [v for v in turn.views if v.role == "assistant"]:
                turn.views.remove(view)
                await view.remove()
        try:
            plan = s.plan_reply(self.engine.settings.max_new_tokens)
        except LlamaChatError as e:
            self.notify(str(e), severity="error")
            return
        await self._start_reply(turn, plan)

    def action_new_chat(self) -> None:
        """Ctrl+N: start an empty conversation (the old one stays in the history)."""
        self._after_stop(self._new_chat)

    async def _new_chat(self) -> None:
        self.session.reset()
        conv = self.main.query_one(ConversationView)
        await conv.clear()
        await conv.add_notice("new conversation")
        self.main.query_one(ContextBar).set_used(0)
        self._refresh_history()
        self.main.query_one(PromptInput).focus()

    def action_quit(self) -> None:
        """Ctrl+Q: stop generation, save the partial reply, close the database, exit 0."""

        async def quit_now() -> None:
            self.store.close()
            self.exit(0)

        self._after_stop(quit_now, always=True)

    def action_help(self) -> None:
        if not isinstance(self.screen, HelpScreen):
            self.push_screen(HelpScreen())

    def action_focus_sampling(self) -> None:
        self.main.query_one(SamplingPanel).focus()

    def action_toggle_history(self) -> None:
        sidebar = self.main.query_one(HistorySidebar)
        self._show_history = not sidebar.display
        self._apply_size_classes()
        if self._show_history:
            sidebar.focus()
        else:
            self.main.query_one(PromptInput).focus()

    def action_temperature(self, direction: int) -> None:
        knob = KNOBS[0]
        self.apply_settings(nudged(self.engine.settings, knob, direction))
        self.main.query_one(SamplingPanel).select("temperature")

    def apply_settings(self, settings: SamplingSettings) -> None:
        """Swap the engine's settings object (read once per token by the engine thread)."""
        self.engine.settings = settings
        self.main.query_one(SamplingPanel).refresh()

    @on(SamplingPanel.Changed)
    def _on_sampling_changed(self, event: SamplingPanel.Changed) -> None:
        self.apply_settings(event.settings)

    @on(SamplingPanel.EditRequested)
    def _on_sampling_edit(self, event: SamplingPanel.EditRequested) -> None:
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

        hint = " (empty = random)" if knob.field == "seed" else ""
        self.push_screen(ValueDialog(f"{knob.label}{hint}", "" if current is None else str(current),
                                     check), done)

    def action_edit_system(self) -> None:
        if not self.session.template.uses_system:
            self.notify("the completion template has no system prompt (start with a chat --template, e.g. chatml)")
            return

        def done(text: str | None) -> None:
            if text is None:
                return
            self.session.system = text
            if self.session.conversation_id is not None:
                self.store.set_system(self.session.conversation_id, text)
            self.notify("system prompt set: it applies from the next reply")

        self.push_screen(ValueDialog("System prompt", self.session.system), done)

    def get_system_commands(self, screen: Screen) -> Iterable[SystemCommand]:
        yield from super().get_system_commands(screen)
        yield SystemCommand("Stop generation", "Esc: keep the partial reply", self.action_stop)
        yield SystemCommand("Regenerate last reply", "Ctrl+R", self.action_regenerate)
        yield SystemCommand("New conversation", "Ctrl+N", self.action_new_chat)
        yield SystemCommand("Keys / help", "F1", self.action_help)
        yield SystemCommand("Sampling settings", "F2: edit temperature, top-p, …", self.action_focus_sampling)
        yield SystemCommand("System prompt", "F3 (chat templates)", self.action_edit_system)
        yield SystemCommand("Toggle history sidebar", "Ctrl+B", self.action_toggle_history)
        yield SystemCommand("Temperature up", "F6", lambda: self.action_temperature(1))
        yield SystemCommand("Temperature down", "F5", lambda: self.action_temperature(-1))
