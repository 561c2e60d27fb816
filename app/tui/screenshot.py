"""Render the chat screen to SVG for the README:
`python -m app.tui.screenshot [OUT.svg] [--model PATH] [--size 120x36]`.

Runs the real app headless (greedy, a throwaway history database) on the model given,
else the default one, asks two questions and saves the screen once the replies are done.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import tempfile

QUESTIONS = ("What is the capital of France?", "Name three rivers in Europe, one per line.")


async def _shoot(out: str, model: str | None, size: tuple[int, int]) -> None:
    from inference.discovery import default_model
    from inference.sampler import SamplingSettings

    from .chat_app import ChatApp
    from .model_host import ModelOpener
    from .store import HistoryStore
    from .warmup import warm_up

    opener = ModelOpener("cpu", backend_options={"context": 2048})
    host = opener.open(model or default_model(), SamplingSettings(temperature=0.0, max_new_tokens=120))
    warm_up(host.engine)
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore.open(os.path.join(tmp, "history.db"))
        app = ChatApp(host, store)
        async with app.run_test(size=size) as pilot:
            for q in QUESTIONS:
                n = app.replies_finished
                await app.send(q)
                while app.replies_finished == n or app.generating:
                    await asyncio.sleep(0.05)
            app.prompt.value = "And which is the longest?"
            await pilot.pause(0.5)
            app.save_screenshot(os.path.basename(out), os.path.dirname(os.path.abspath(out)))
        store.close()
    host.close()


def main() -> int:
    ap = argparse.ArgumentParser(description="render the chat screen to SVG")
    ap.add_argument("out", nargs="?", default=os.path.join("docs", "screenshot.svg"))
    ap.add_argument("--model", default=None)
    ap.add_argument("--size", default="120x36")
    args = ap.parse_args()
    w, h = (int(x) for x in args.size.split("x"))
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    asyncio.run(_shoot(args.out, args.model, (w, h)))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
