"""Warming a backend up before the first reply, and telling the user what that costs.

The first forward calls of a backend load compiled kernels — or, on the first start on
a machine (or after the kernels change), compile them: Numba builds the row kernels and
the fused CPU forward, once for every weight type (the types are data in its tables),
about a minute on two cores, cached on disk after. `WarmUp`
runs that on a thread and keeps a live account a progress screen can poll: the phase, the
functions compiled so far and the one being compiled (from Numba's compile events, which
fire only on a cache miss: a warm start reports none), and the time spent. No Textual.
"""
from __future__ import annotations

import threading
import time
from typing import Any, Callable, TypeVar

from inference.errors import LlamaChatError

_T = TypeVar("_T", bound="BackgroundTask")


def warm_up(engine: Any) -> None:
    """Run a two-token prompt and two decode steps.

    What they leave in the KV cache is real (the engine keeps it as a cached prefix), so
    nothing is thrown away; the point is that the kernels are loaded before the first
    reply, so its time to first token is the model's, not the kernel loader's.
    """
    from inference.sampler import GREEDY, load_kernels

    tok = engine.tokenizer
    ids = tok.encode("Hello", bos=False)[:2]
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids[:1]]
    if not ids:
        ids = [0]
    for _ in engine.generate(ids, GREEDY.with_(max_new_tokens=2)):
        pass
    load_kernels()


class _CompileWatch:
    """Numba compile events while a warm-up runs: functions finished and the ones in
    progress. Events of every thread count: the warm-up thread compiles little itself,
    as the backend runs its kernels on a thread of its own (one OS thread for every
    parallel region), and nothing else compiles while the progress screen is up."""

    def __init__(self) -> None:
        self.finished: list[str] = []
        self.stacks: dict[int, list[str]] = {}   # per compiling thread, innermost last
        self.first_at: float | None = None
        self._installed: tuple[Any, Any] | None = None

    def install(self) -> None:
        try:
            import numba.core.event as ev
        except ImportError:  # no Numba: a CUDA-only install
            return
        watch = self

        class Listener(ev.Listener):  # type: ignore[misc, name-defined]
            def on_start(self, event: Any) -> None:
                if watch.first_at is None:
                    watch.first_at = time.perf_counter()
                watch.stacks.setdefault(threading.get_ident(), []).append(_name(event))

            def on_end(self, event: Any) -> None:
                stack = watch.stacks.get(threading.get_ident())
                name = stack.pop() if stack else _name(event)
                if name is not None:
                    watch.finished.append(name)

        listener = Listener()
        ev.register("numba:compile", listener)
        self._installed = (ev, listener)

    def remove(self) -> None:
        if self._installed is not None:
            ev, listener = self._installed
            ev.unregister("numba:compile", listener)
            self._installed = None


def _name(event: Any) -> str | None:
    """`module.function` of the function compiled; None for Numba's own helpers."""
    try:
        fn = event.data["dispatcher"].py_func
        if fn.__module__.startswith("numba"):
            return None
        return f"{fn.__module__.rsplit('.', 1)[-1]}.{fn.__qualname__.split('.<locals>')[0]}"
    except Exception:  # noqa: BLE001  (names are for display only)
        return "?"


class BackgroundTask:
    """A body run once on a daemon thread and watched from the UI thread, which polls
    `done` and `elapsed` (frozen when the body ends) or blocks in `wait`."""

    thread_name = "llama-chat-task"

    def __init__(self) -> None:
        self.started_at = 0.0
        self.ended_at: float | None = None
        self._done = threading.Event()

    def start(self: _T) -> _T:
        self.started_at = time.perf_counter()
        threading.Thread(target=self._run, name=self.thread_name, daemon=True).start()
        return self

    def _run(self) -> None:
        try:
            self._body()
        finally:
            self.ended_at = time.perf_counter()
            self._done.set()

    def _body(self) -> None:
        raise NotImplementedError

    # -- observed from other threads --------------------------------------------------
    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    @property
    def elapsed(self) -> float:
        return (self.ended_at or time.perf_counter()) - self.started_at if self.started_at else 0.0


class WarmUp(BackgroundTask):
    """`warm_up(engine)` on a background thread, observable from the UI thread."""

    thread_name = "llama-chat-warmup"

    def __init__(self, engine: Any, run: Callable[[Any], None] = warm_up) -> None:
        super().__init__()
        self.engine = engine
        self._run_warm_up = run
        self.error: str | None = None
        self._watch: _CompileWatch | None = None

    def _body(self) -> None:
        self._watch = _CompileWatch()
        self._watch.install()
        try:
            self._run_warm_up(self.engine)
        except LlamaChatError as e:   # the model's own fault, in its own words
            self.error = str(e)
        except Exception as e:  # noqa: BLE001  (shown to the user, never a traceback)
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self._watch.remove()

    @property
    def compiling(self) -> bool:
        """Numba compiled something (a cold start) — known once the first event fired."""
        return self._watch is not None and self._watch.first_at is not None

    @property
    def compiled(self) -> list[str]:
        return list(self._watch.finished) if self._watch else []

    @property
    def current(self) -> str | None:
        """The innermost of our functions being compiled now (None between compiles)."""
        stacks = list(self._watch.stacks.values()) if self._watch else []
        names = [n for stack in stacks for n in list(stack) if n is not None]
        return names[-1] if names else None
