"""Render the main screen to SVG for the README: `python -m app.tui.screenshot [OUT.svg]`.

Runs the real app headless on the default model with a throwaway history database,
sends one prompt with a fixed seed, and saves the screen once the reply is complete.
"""
from __future__ import annotations

import asyncio
import os
import sys
import tempfile


async def _shoot(out: str, size: tuple[int, int]) -> None:
    from inference.engine import Engine
    from inference.loader import create_backend, load_model
    from inference.sampler import SamplingSettings

    from .chat_app import ChatApp
    from .store import HistoryStore
    from inference.chat import resolve_template

    loaded = load_model()
    engine = Engine(create_backend(loaded, "cpu"), loaded.tokenizer,
                    SamplingSettings(seed=42, max_new_tokens=200))
    from app.commands.chat import warm_up
    warm_up(engine)
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore.open(os.path.join(tmp, "history.db"))
        app = ChatApp(engine, resolve_template("auto", loaded.tokenizer, loaded.name, loaded.path),
                      loaded.name, store, tokenizer_id="screenshot")
        async with app.run_test(size=size) as pilot:
            await app.send("Once upon a time")
            while app.generating:
                await asyncio.sleep(0.05)
            await pilot.pause(0.3)
            app.save_screenshot(os.path.basename(out), os.path.dirname(os.path.abspath(out)))
        store.close()


def main() -> int:
    out = sys.argv[1] if len(sys.argv) > 1 else os.path.join("docs", "screenshot.svg")
    os.environ.setdefault("NUMBA_NUM_THREADS", "1")
    asyncio.run(_shoot(out, (120, 36)))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
