"""Events from the scheduler thread to the event loop, one wake-up for a burst of them.

Each `call_soon_threadsafe` writes to the loop's self-pipe to wake it. A decode step of
N sequences emits N token events back to back; handed over one by one they cost N
wake-ups, which take CPU time from the forward's threads. `Handoff.post` queues an event
and schedules one drain for everything posted until the loop runs it. Each request's
events still arrive in the order they were posted.
"""
from __future__ import annotations

import asyncio
import threading
import weakref
from typing import Any


class Handoff:
    """Posts (queue, event) pairs from any thread into asyncio queues on one loop."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._pending: list[tuple[asyncio.Queue, Any]] = []
        self._scheduled = False

    def post(self, queue: asyncio.Queue, event: Any) -> None:
        with self._lock:
            self._pending.append((queue, event))
            if self._scheduled:
                return
            self._scheduled = True
        self._loop.call_soon_threadsafe(self._drain)

    def _drain(self) -> None:
        with self._lock:
            items, self._pending, self._scheduled = self._pending, [], False
        for queue, event in items:
            queue.put_nowait(event)


_handoffs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Handoff]" = weakref.WeakKeyDictionary()
_handoffs_lock = threading.Lock()


def handoff_for(loop: asyncio.AbstractEventLoop) -> Handoff:
    """The one Handoff of `loop` (a server runs one loop; tests may start several)."""
    with _handoffs_lock:
        h = _handoffs.get(loop)
        if h is None:
            h = _handoffs[loop] = Handoff(loop)
        return h
