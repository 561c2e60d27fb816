"""Keypress-to-screen latency of the chat TUI while a reply streams (a benchmark, not a test).

    PYTHONPATH=. python tests/bench_tui_latency.py [--model PATH] [--keys 40] [--size 120x40]

Runs `llama-chat` itself on a pseudo-terminal, as a user's terminal would, starts a long
reply, and then types one key every ~80 ms while the reply streams: for each key, the time
from writing it to the terminal until the app has written a screen update that draws it
(each key is a different Greek letter, which no reply of these models contains, so its
first appearance in the output is its echo). Then the same with the reply stopped (idle).
Prints median, 95th percentile and maximum for both (goal: under 100 ms).

The CPU backend runs on cores - 1 threads (the chat leaves one core to the UI); on a
machine shared with other work the UI thread competes for its core, which shows here.
"""
from __future__ import annotations

import argparse
import os
import pty
import select
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GREEK = "αβγδεζηθικλμνξοπρστυφχψωΑΒΓΔΕΖΗΘΙΚΛΜΝΞΟΠΡΣΤΥΦΧΨΩ"


class Pty:
    def __init__(self, argv: list[str], cols: int, rows: int) -> None:
        import fcntl
        import struct
        import termios

        self.master, slave = pty.openpty()
        fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))
        env = {**os.environ, "PYTHONPATH": ROOT, "TERM": "xterm-256color"}
        self.proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=slave, stdout=slave, stderr=slave,
                                     start_new_session=True)
        os.close(slave)
        self.out = bytearray()

    def pump(self, seconds: float) -> None:
        end = time.perf_counter() + seconds
        while True:
            left = end - time.perf_counter()
            if left <= 0:
                return
            ready, _, _ = select.select([self.master], [], [], min(left, 0.01))
            if ready:
                try:
                    self.out += os.read(self.master, 1 << 16)
                except OSError:
                    return

    def wait_for(self, needle: bytes, start: int = 0, timeout: float = 120.0) -> float:
        """Seconds until `needle` appears in the output after byte `start`."""
        t0 = time.perf_counter()
        while needle not in self.out[start:]:
            if time.perf_counter() - t0 > timeout or self.proc.poll() is not None:
                raise SystemExit(f"{needle!r} never appeared (last output {bytes(self.out[-300:])!r})")
            self.pump(0.002)
        return time.perf_counter() - t0

    def write(self, data: bytes) -> None:
        os.write(self.master, data)


def type_keys(term: Pty, chars: str, gap: float) -> list[float]:
    lat = []
    for ch in chars:
        mark = len(term.out)
        t0 = time.perf_counter()
        term.write(ch.encode())
        term.wait_for(ch.encode(), mark, timeout=10)
        lat.append(time.perf_counter() - t0)
        term.pump(gap)
    return lat


def summary(lat: list[float]) -> str:
    ms = sorted(x * 1000 for x in lat)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * (len(ms) - 1))))]
    return f"median {statistics.median(ms):.1f} ms, p95 {p95:.1f} ms, max {ms[-1]:.1f} ms over {len(ms)} keys"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None, help="model path or name (default: llama-chat's default)")
    ap.add_argument("--keys", type=int, default=30, help=f"keys per phase (at most {len(GREEK) // 2})")
    ap.add_argument("--size", default="120x40")
    ap.add_argument("--gap", type=float, default=0.08, help="seconds between keys")
    args = ap.parse_args()
    cols, rows = (int(x) for x in args.size.split("x"))
    n = min(args.keys, len(GREEK) // 2)
    with tempfile.TemporaryDirectory() as tmp:
        argv = [sys.executable, "-m", "app.cli", "--history-db", os.path.join(tmp, "h.db"), "-n", "4000"]
        if args.model:
            argv += ["--model", args.model]
        term = Pty(argv, cols, rows)
        term.wait_for(b"send", timeout=300)            # the key bar: the chat is up
        term.pump(0.5)
        term.write(b"Write a very long story about a dragon and a knight.\r")
        mark = len(term.out)
        term.wait_for(b"tok/s", mark, timeout=120)     # the reply's header: it streams
        term.pump(0.5)
        streaming = type_keys(term, GREEK[:n], args.gap)
        alive = term.proc.poll() is None
        term.write(b"\x1b")                            # Esc: stop the reply
        term.pump(1.0)
        idle = type_keys(term, GREEK[n:2 * n], args.gap)
        term.write(b"\x11")                            # Ctrl+Q
        try:
            term.proc.wait(20)
        except subprocess.TimeoutExpired:
            term.proc.kill()
    name = args.model or "the default model"
    print(f"{name}, {cols}x{rows}: keypress -> drawn on the terminal")
    print(f"  while a reply streams: {summary(streaming)}{'' if alive else ' (the app had exited)'}")
    print(f"  idle:                  {summary(idle)}")
    print("  (goal: under 100 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
