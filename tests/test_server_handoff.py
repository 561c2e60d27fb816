"""The scheduler-to-loop handoff: order kept per queue, one wake-up for a burst."""
from __future__ import annotations

import asyncio
import threading

from app.server.handoff import Handoff, handoff_for


class CountingLoop(asyncio.SelectorEventLoop):
    """Counts thread-safe wake-ups."""

    def __init__(self) -> None:
        super().__init__()
        self.wakeups = 0

    def call_soon_threadsafe(self, *args, **kwargs):  # type: ignore[override]
        self.wakeups += 1
        return super().call_soon_threadsafe(*args, **kwargs)


def test_a_burst_posted_while_the_loop_is_busy_costs_one_wakeup_and_keeps_each_queues_order() -> None:
    loop = CountingLoop()
    try:
        queues = [asyncio.Queue() for _ in range(4)]
        h = Handoff(loop)

        def step(s: int) -> None:        # one decode step: a token event for each sequence
            for i, q in enumerate(queues):
                h.post(q, (i, s))

        t = threading.Thread(target=lambda: [step(s) for s in range(25)])
        t.start()
        t.join()                          # the loop has not run: everything waits in one drain
        assert loop.wakeups == 1

        async def take() -> list[list[tuple[int, int]]]:
            await asyncio.sleep(0)
            return [[q.get_nowait() for _ in range(q.qsize())] for q in queues]

        got = loop.run_until_complete(take())
        assert got == [[(i, s) for s in range(25)] for i in range(4)]
        h.post(queues[0], "again")        # drained: the next post wakes the loop again
        assert loop.wakeups == 2
        loop.run_until_complete(asyncio.sleep(0))
        assert queues[0].get_nowait() == "again"
    finally:
        loop.close()


def test_posts_racing_the_drain_from_several_threads_lose_nothing() -> None:
    async def main() -> list[list[int]]:
        loop = asyncio.get_running_loop()
        h = handoff_for(loop)
        assert handoff_for(loop) is h
        queues = [asyncio.Queue() for _ in range(3)]
        threads = [threading.Thread(target=lambda q=q: [h.post(q, k) for k in range(2000)]) for q in queues]
        for t in threads:
            t.start()
        got: list[list[int]] = [[] for _ in queues]
        for i, q in enumerate(queues):
            while len(got[i]) < 2000:
                got[i].append(await asyncio.wait_for(q.get(), 10))
        for t in threads:
            t.join()
        return got

    assert asyncio.run(main()) == [list(range(2000))] * 3
