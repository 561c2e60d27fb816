"""The conversation as token ids, and the background thread that generates replies.

`ChatSession` (UI thread only) knows the turns, which of them still fit in the model's
context, and builds the id sequence for the next reply. `GenerationThread` runs
`Engine.generate` on that sequence; it never touches a widget. It only appends to a
`StreamBuffer`, which the UI drains on a ~30 fps timer, so however fast the model is the
UI does one update per frame, and tells the UI it ended through `on_done`, which the app
wires to `post_message` (thread-safe, never blocks the engine).
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Callable

from inference.engine import Engine, Finished, GenerationStats, TokenEvent

from .templates import ChatTemplate, Turn, build_sequence


@dataclass
class Message:
    """One message on screen and in the database."""

    role: str                        # "user" | "assistant"
    text: str
    ids: list[int] | None = None     # assistant: the generated ids, exactly as sampled
    status: str = "complete"         # assistant: complete | stopped | max_tokens | context_full | error
    db_id: int | None = None
    stats: dict = field(default_factory=dict)


@dataclass
class ChatTurn:
    user: Message
    reply: Message | None = None
    views: list = field(default_factory=list)   # the widgets showing this turn (owned by the UI)


class ChatSession:
    """The turns of one conversation and the part of them the model still sees."""

    def __init__(self, engine: Engine, template: ChatTemplate, system: str = "") -> None:
        self.engine = engine
        self.template = template
        self.system = system
        self.turns: list[ChatTurn] = []
        self.first_in_context = 0     # turns before this were dropped to make room
        self.conversation_id: int | None = None

    @property
    def n_ctx(self) -> int:
        return self.engine.context_length

    def reset(self) -> None:
        self.turns = []
        self.first_in_context = 0
        self.conversation_id = None

    def _as_turns(self, turns: list[ChatTurn]) -> list[Turn]:
        return [Turn(t.user.text, t.reply.ids if t.reply else None) for t in turns]

    def sequence(self) -> list[int]:
        """The ids of the turns in context (what the KV cache should hold)."""
        return build_sequence(self.template, self.system,
                              self._as_turns(self.turns[self.first_in_context:]))

    def reserve(self) -> int:
        """Room kept free for a reply when deciding whether old turns must go."""
        return max(1, min(self.engine.settings.max_new_tokens, self.n_ctx // 4))

    def plan_reply(self) -> tuple[list[int], int]:
        """Ids the next reply continues, dropping the oldest turns (never the system prompt,
        which moves into the first turn kept) until a reply has room. Returns (ids, dropped).

        Raises ValueError when even the last message alone does not fit.
        """
        dropped = 0
        while True:
            ids = self.sequence()
            if len(ids) + self.reserve() <= self.n_ctx or self.first_in_context >= len(self.turns) - 1:
                break
            self.first_in_context += 1
            dropped += 1
        if len(ids) >= self.n_ctx:
            raise ValueError(f"this message needs {len(ids)} tokens but the model's context holds "
                             f"{self.n_ctx}; shorten it")
        return ids, dropped

    def add_user(self, text: str) -> ChatTurn:
        turn = ChatTurn(Message("user", text))
        self.turns.append(turn)
        return turn

    def context_used(self) -> int:
        return len(self.sequence())


class StreamBuffer:
    """Text and ids produced by the engine thread, waiting for the UI's next frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text: list[str] = []
        self._ids: list[int] = []
        self.stats = GenerationStats()
        self.first_token_at: float | None = None

    def push(self, ev: TokenEvent) -> None:
        with self._lock:
            if ev.text:
                self._text.append(ev.text)
            if ev.token_id >= 0:
                self._ids.append(ev.token_id)
            self.stats = ev.stats
            if self.first_token_at is None:
                self.first_token_at = time.perf_counter()

    def take(self) -> tuple[str, list[int], GenerationStats]:
        """Everything pushed since the last take, and the latest stats."""
        with self._lock:
            text, ids = "".join(self._text), self._ids
            self._text, self._ids = [], []
            return text, ids, self.stats


class GenerationThread(threading.Thread):
    """Runs one `engine.generate(ids)`; reports the end through `on_done(Finished | str)`
    (a string is an error message)."""

    def __init__(self, engine: Engine, ids: list[int], buffer: StreamBuffer,
                 on_done: Callable[[Finished | str], None]) -> None:
        super().__init__(name="llama-chat-engine", daemon=True)
        self.engine = engine
        self.ids = ids
        self.buffer = buffer
        self.on_done = on_done
        self._stop_requested = threading.Event()

    def request_stop(self) -> None:
        """Stop at the next token. Also covers a stop that comes before generate() starts
        (generate clears the engine's stop flag on entry)."""
        self._stop_requested.set()
        self.engine.stop()

    def run(self) -> None:
        result: Finished | str
        try:
            result = Finished("stopped", GenerationStats())
            for ev in self.engine.generate(self.ids):
                if isinstance(ev, TokenEvent):
                    self.buffer.push(ev)
                    if self._stop_requested.is_set():
                        self.engine.stop()
                else:
                    result = ev
        except Exception as e:  # shown in the UI; the app keeps running
            result = f"generation failed: {type(e).__name__}: {e}"
        self.on_done(result)
