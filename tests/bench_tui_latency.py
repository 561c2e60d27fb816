"""Keypress-to-screen latency of the chat TUI while a reply streams (a benchmark, not a test).

    PYTHONPATH=. python tests/bench_tui_latency.py [--model PATH] [--keys 40] [--delay 0]

Runs the real app headless (Textual's test driver, 120x40) on the model's CPU backend,
starts a long reply, then presses a key every ~50 ms and measures, for each key, the time
from handing the key to the driver until the first screen update composed after the
message box holds the new character: what a user waits for between pressing a key and
seeing it. Prints median, 95th percentile and maximum (goal: under 100 ms). `--delay`
adds seconds per forward call (slow a tiny model down to a mid-size model's pace).
"""
from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)


async def measure(app, n_keys: int) -> tuple[list[float], float]:
    from textual import events

    from app.tui.widgets.prompt_input import PromptInput

    displays: list[float] = []
    lat: list[float] = []
    async with app.run_test(size=(120, 40)):
        real_display = app._display

        def spy(screen, renderable) -> None:
            if renderable is not None:
                displays.append(time.perf_counter())
            real_display(screen, renderable)

        app._display = spy  # type: ignore[method-assign]
        box = app.query_one(PromptInput)
        box.value = "Write a long story about a cat and a dog who go on a trip"
        app._driver.send_message(events.Key("enter", "\r"))
        deadline = time.perf_counter() + 60
        while not (app.streaming_view is not None and app.streaming_view.text):
            if time.perf_counter() > deadline:
                raise SystemExit("the reply did not start")
            await asyncio.sleep(0.005)
        t_stream = time.perf_counter()
        n_tok0 = app.buffer.stats.generated_tokens if app.buffer else 0
        rate = 0.0
        for _ in range(n_keys):
            if not app.generating:
                break
            want = box.text + "x"
            t0 = time.perf_counter()
            app._driver.send_message(events.Key("x", "x"))
            while box.text != want:
                await asyncio.sleep(0.001)
            t_value = time.perf_counter()
            while not (displays and displays[-1] >= t_value):
                await asyncio.sleep(0.001)
            lat.append(displays[-1] - t0)
            buffer = app.buffer
            if buffer is not None:
                rate = (buffer.stats.generated_tokens - n_tok0) / (time.perf_counter() - t_stream)
            await asyncio.sleep(0.05)
        await app._stop_and_wait()
    return lat, rate


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path (default: the bundled stories260K)")
    ap.add_argument("--keys", type=int, default=40)
    ap.add_argument("--delay", type=float, default=0.0, help="seconds added to each forward call")
    args = ap.parse_args()
    os.environ.setdefault("NUMBA_NUM_THREADS", str(max(1, (os.cpu_count() or 2) - 1)))

    from inference.chat import resolve_template
    from inference.engine import Engine
    from inference.loader import create_backend, load_model
    from inference.sampler import SamplingSettings

    from app.tui.chat_app import ChatApp
    from app.tui.model_host import Host
    from app.tui.store import HistoryStore
    from app.tui.warmup import warm_up

    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from tui_helpers import PacedBackend

    loaded = load_model(args.model)
    backend = create_backend(loaded, "cpu")
    if args.delay:
        backend = PacedBackend(backend, args.delay)
    engine = Engine(backend, loaded.tokenizer, SamplingSettings(max_new_tokens=100_000, seed=1))
    warm_up(engine)
    template = resolve_template("auto", loaded.tokenizer, loaded.name, loaded.path)
    with tempfile.TemporaryDirectory() as tmp:
        store = HistoryStore.open(os.path.join(tmp, "h.db"))
        host = Host(engine, template, loaded.name, "cpu", "bench", loaded.path, backend.weight_type)
        lat, rate = asyncio.run(measure(ChatApp(host, store), args.keys))
        store.close()
    if not lat:
        print("no key was measured (the reply ended at once)")
        return 1
    ms = sorted(x * 1000 for x in lat)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    print(f"{loaded.name}: keypress -> on screen while streaming at {rate:.0f} tok/s: "
          f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms "
          f"over {len(ms)} keys (goal < 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
