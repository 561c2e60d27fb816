"""The background thread that generates replies, and the buffer it streams into.

The conversation itself (turns, template, context window) is `inference.chat.Conversation`.
`GenerationThread` runs `Engine.generate` on the ids it planned; it never touches a widget.
It only appends to a `StreamBuffer`, which the UI drains on a ~30 fps timer, so however
fast the model is the UI does one update per frame, and tells the UI it ended through
`on_done`, which the app wires to `post_message` (thread-safe, never blocks the engine).
"""
from __future__ import annotations

import threading
from typing import Callable

from inference.engine import Engine, Finished, GenerationStats, TokenEvent
from inference.errors import LlamaChatError


class StreamBuffer:
    """Text and ids produced by the engine thread, waiting for the UI's next frame."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._text: list[str] = []
        self._ids: list[int] = []
        self.stats = GenerationStats()

    def push(self, ev: TokenEvent) -> None:
        with self._lock:
            if ev.text:
                self._text.append(ev.text)
            if ev.token_id >= 0:
                self._ids.append(ev.token_id)
            self.stats = ev.stats

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
            # the whole reply on the backend's own thread: no hand-over per token
            result = self.engine.backend.run_loop(self._reply)
        except LlamaChatError as e:  # the model's or the input's fault: its own words
            result = f"generation failed: {e}"
        except Exception as e:  # shown in the UI; the app keeps running
            result = f"generation failed: {type(e).__name__}: {e}"
        self.on_done(result)

    def _reply(self) -> Finished:
        result = Finished("stopped", GenerationStats())
        for ev in self.engine.generate(self.ids):
            if isinstance(ev, TokenEvent):
                self.buffer.push(ev)
                if self._stop_requested.is_set():
                    self.engine.stop()
            else:
                result = ev
        return result
