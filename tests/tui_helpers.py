"""Shared pieces of the TUI's Pilot tests: backends that pace or script a reply, the app
fixture, and waits that poll for UI state (never a fixed pause).

The default model makes thousands of tokens a second, so a whole reply can finish between
two checks. Tests that must act *while* a reply streams wrap the backend so each token
takes a few milliseconds (a `time.sleep`, which releases the GIL like the real kernels
do): the speed of a mid-size model, not a change to what is computed. Tests that need a
reply with given text (line breaks, code blocks, a context-filling length) script the
ids the sampler picks: `ScriptedBackend`, the real tokenizer and engine around it.
"""
from __future__ import annotations

import asyncio
import threading
import time
from typing import Awaitable, Callable, Sequence

import numpy as np
import pytest

from inference.backends.base import Backend, MemoryInfo
from inference.chat import resolve_template
from inference.engine import Engine
from inference.sampler import SamplingSettings

pytest.importorskip("textual")

from textual import events  # noqa: E402

from app.tui.chat_app import ChatApp  # noqa: E402
from app.tui.model_host import Host  # noqa: E402
from app.tui.store import HistoryStore  # noqa: E402
from app.tui.widgets.message import MessageView  # noqa: E402
from app.tui.widgets.prompt_input import PromptInput  # noqa: E402

SIZE = (120, 40)


class PacedBackend(Backend):
    """The real CPU backend, optionally with `delay` seconds added to every forward call.

    The engine thread runs the kernels on one Numba thread, as `llama-chat` itself does on
    a 2-core machine (it leaves a core to the UI): these tests are about the UI, and a
    thread pool as wide as a busy CI machine stalls at every parallel region's barrier.
    """

    _pinned = threading.local()

    def __init__(self, inner: Backend, delay: float = 0.0) -> None:
        self.inner, self.delay = inner, delay
        self.config, self.name, self.weight_type = inner.config, inner.name, inner.weight_type

    def forward(self, tokens: Sequence[int], start_pos: int) -> None:
        if not getattr(self._pinned, "done", False):
            import numba
            numba.set_num_threads(1)  # per calling thread
            self._pinned.done = True
        self.inner.forward(tokens, start_pos)
        if self.delay:
            time.sleep(self.delay)

    def logits(self) -> np.ndarray:
        return self.inner.logits()

    def argmax(self) -> int:
        return self.inner.argmax()

    def topk(self, k: int):
        return self.inner.topk(k)

    def memory(self) -> MemoryInfo:
        return self.inner.memory()

    def describe(self) -> str:
        return self.inner.describe() + " (slowed for tests)"


class ScriptedBackend(Backend):
    """A backend whose next token is the next id of a script (then the end of text):
    `queue(ids)` before a reply. The engine, tokenizer, stream decoder and UI are real;
    only the choice of token is fixed, so a test gets exactly the reply text it needs."""

    name = "scripted"
    weight_type = "fp32"

    def __init__(self, config, end_id: int, delay: float = 0.0) -> None:
        self.config, self.end_id, self.delay = config, end_id, delay
        self.script: list[int] = []
        self.at = 0

    def queue(self, ids: Sequence[int]) -> None:
        self.script, self.at = list(ids), 0

    def forward(self, tokens: Sequence[int], start_pos: int) -> None:
        if self.delay:
            time.sleep(self.delay)

    def logits(self) -> np.ndarray:
        nxt = self.script[self.at] if self.at < len(self.script) else self.end_id
        self.at += 1
        out = np.zeros(self.config.vocab_size, np.float32)
        out[nxt] = 1.0
        return out

    def memory(self) -> MemoryInfo:
        return MemoryInfo(0, 0)

    def describe(self) -> str:
        return "scripted (tests)"


@pytest.fixture(scope="module")
def cpu_backend(default_model):
    """One CPU backend for the module, its kernels compiled/loaded here (this can take
    seconds on a fresh Numba cache) rather than inside a test's UI timeouts."""
    from app.tui.warmup import warm_up
    from inference.loader import create_backend
    backend = create_backend(default_model, "cpu")
    warm_up(Engine(backend, default_model.tokenizer))
    return backend


@pytest.fixture()
def make_app(default_model, cpu_backend, tmp_path):
    """Build a ChatApp on the default model; the history DB lives in tmp_path.

    `backend`: "cpu" (the real one, paced by `delay`), or "scripted" (`ScriptedBackend`
    with `context` positions); `app.scripted` is that backend.
    """

    def build(delay: float = 0.0, template: str = "auto", system: str = "",
              db: str | None = None, backend: str = "cpu", context: int | None = None,
              presets: dict | None = None, opener=None, startup=None, **settings: object) -> ChatApp:
        scripted = None
        if backend == "scripted":
            config = default_model.config.with_(seq_len=context or default_model.config.seq_len)
            scripted = be = ScriptedBackend(config, default_model.tokenizer.eos_id, delay)
            settings.setdefault("temperature", 0.0)
        else:
            inner = cpu_backend
            if context is not None:
                from inference.loader import create_backend
                inner = create_backend(default_model, "cpu", context=context)
            be = PacedBackend(inner, delay)
        engine = Engine(be, default_model.tokenizer, SamplingSettings(**settings))
        tmpl = resolve_template(template, default_model.tokenizer, default_model.name, default_model.path)
        store = HistoryStore.open(db or str(tmp_path / "history.db"))
        host = Host(engine, tmpl, default_model.name, "cpu", "tok512", default_model.path, be.weight_type)
        app = ChatApp(host, store, system=system, presets=presets, opener=opener, startup=startup)
        app.scripted = scripted  # type: ignore[attr-defined]
        return app

    return build


def run(app: ChatApp, body: Callable[[object], Awaitable[None]], size: tuple[int, int] = SIZE) -> None:
    async def main() -> None:
        async with app.run_test(size=size) as pilot:
            await body(pilot)
            await app._stop_and_wait()
    asyncio.run(main())


async def until(cond: Callable[[], bool], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.perf_counter() + timeout
    while not cond():
        if time.perf_counter() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


def key(app: ChatApp, name: str, char: str | None = None) -> None:
    """Send a key through the driver's queue, like a terminal would. (`Pilot.press` then
    waits for the process to look idle, which it never does while a reply streams.)"""
    app._driver.send_message(events.Key(name, char))


def paste(app: ChatApp, text: str) -> None:
    """A bracketed paste, as a terminal delivers it."""
    app._driver.send_message(events.Paste(text))


async def type_and_send(pilot, text: str) -> None:
    app = pilot.app
    n = app.replies_finished
    app.query_one(PromptInput).value = text
    key(app, "enter", "\r")
    await until(lambda: app.generating or app.replies_finished > n, what="the reply to start")


async def wait_reply(app: ChatApp, n_before: int, timeout: float = 20) -> None:
    await until(lambda: app.replies_finished > n_before and not app.generating, timeout, "the reply to finish")


async def send_and_wait(pilot, text: str, timeout: float = 20) -> None:
    n = pilot.app.replies_finished
    await type_and_send(pilot, text)
    await wait_reply(pilot.app, n, timeout)


def replies(app: ChatApp) -> list[MessageView]:
    return [v for v in app.main.query(MessageView) if v.role == "assistant"]


def screen_lines(screen) -> list[str]:
    """The text a terminal would show for `screen` (one string per row)."""
    return [strip.text for strip in screen._compositor.render_strips()]
