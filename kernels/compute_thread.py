"""One OS thread runs every parallel Numba region of the process.

Why: libgomp (Numba's "omp" threading layer) gives each thread that starts a parallel
region its own team of worker threads, kept for that thread's lifetime. Once the
process holds more such workers than it has CPUs, libgomp stops spin-waiting at the
end of a region (its "throttled" spin count) and puts the workers to sleep instead.
The forward runs several parallel regions per layer, and waking a sleeping worker
costs more than a region's work, so a second thread that had ever run a region (the
server's main thread that warmed the kernels up, beside its scheduler thread) made
every token about 4x slower. Routing every call through one thread keeps one team.

`call(fn, *args)` runs fn on that thread (directly when already on it) and returns its
result or raises its exception in the caller. The thread is a daemon started on first
use; an interrupted caller (Ctrl-C) stops waiting while the call finishes there.
`call_interruptible` runs a whole loop of calls there (a reply's decode loop), which
spares every call in it the hand-over: two thread wake-ups (DEVELOPERS.md has the
figures).
"""
from __future__ import annotations

import os
import queue
import threading
from typing import Any, Callable, TypeVar

T = TypeVar("T")

_lock = threading.Lock()
_jobs: "queue.SimpleQueue[_Job]" = queue.SimpleQueue()
_thread: threading.Thread | None = None


class _Job:
    __slots__ = ("fn", "args", "done", "result", "error")

    def __init__(self, fn: Callable[..., Any], args: tuple) -> None:
        self.fn, self.args = fn, args
        self.done = threading.Event()
        self.result: Any = None
        self.error: BaseException | None = None


def _serve() -> None:
    while True:
        job = _jobs.get()
        try:
            job.result = job.fn(*job.args)
        except BaseException as e:  # noqa: BLE001  (re-raised in the caller's thread)
            job.error = e
        finally:
            job.done.set()
            del job


def _worker() -> threading.Thread:
    global _thread
    with _lock:
        if _thread is None:
            _thread = threading.Thread(target=_serve, name="llama-chat-compute", daemon=True)
            _thread.start()
        return _thread


def call(fn: Callable[..., T], *args: Any) -> T:
    """fn(*args), run on the compute thread."""
    return call_interruptible(fn, args, None)


def call_interruptible(fn: Callable[..., T], args: tuple, on_interrupt: Callable[[], None] | None) -> T:
    """fn(*args) on the compute thread, for a long call (a loop of many kernel calls, which
    then run directly: one hand-over for the loop instead of one per call). If the caller
    is interrupted (Ctrl-C) while waiting, `on_interrupt()` runs (it should make fn
    return soon) and the caller waits for fn before the interrupt propagates, so
    nothing fn writes lands after the caller's own handling of it; without
    `on_interrupt` the caller stops waiting at once."""
    if threading.current_thread() is _thread:
        return fn(*args)
    _worker()
    job = _Job(fn, args)
    _jobs.put(job)
    try:
        job.done.wait()
    except BaseException:
        if on_interrupt is None:
            raise
        on_interrupt()
        job.done.wait()
        raise
    if job.error is not None:
        error, job.error = job.error, None
        raise error
    return job.result


def _forget_after_fork() -> None:
    """A forked child has no compute thread (only the forking thread survives a fork):
    the next call starts one, instead of waiting on a queue nobody serves."""
    global _thread, _jobs, _lock
    _thread, _jobs, _lock = None, queue.SimpleQueue(), threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_after_fork)


def on_compute_thread() -> bool:
    """Whether the caller is the compute thread (for tests and assertions)."""
    return threading.current_thread() is _thread
