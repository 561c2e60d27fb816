"""Throughput of `llama-chat serve` with 1, 2, 4, 8 concurrent streaming clients.

    PYTHONPATH=. python3 tests/bench_server.py                  # SmolLM2 and stories110M-int8
    PYTHONPATH=. python3 tests/bench_server.py --models smollm2 --streams 1 4 --tokens 24

Not collected by pytest (no test_ prefix): it measures and prints, it asserts nothing.

Two parts per model, both with 2 CPU threads:
1. `forward_batch` alone, in process: the time of one decode step with n sequences
   (n = 1, 2, 3, 4, 8), rounds interleaved (this machine's speed drifts), medians. If a
   step of n costs about what a step of 1 costs, the weights were read once for all.
2. The server over HTTP on 127.0.0.1: N clients stream a completion each (raw SSE over
   http.client, so the clients cost the 2 cores little). Aggregate decode tok/s: the
   tokens that arrived while all N streams were decoding, over that window (the first
   half of their tokens); the time to first token of each; then, while the N streams
   decode their second half, one more request arrives and its time to first token is
   measured (TTFT under load: its prefill shares the steps).
   The rounds (1, 2, 4, 8, 1, 2, ...) are interleaved and medians reported.

The stories110M-shaped model is random int8 weights (speed does not depend on values)
written once as a llama2.c v2 file into --workdir, run with the 32000-token tokenizer.
"""
from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHARED = os.path.join(os.path.dirname(ROOT), "shared", "models")
PROMPTS = ["Write a long story about a dragon who learns to bake bread.",
           "Explain in detail how a steam engine works.",
           "Tell me everything you know about the history of Rome.",
           "Describe a walk through a forest in autumn, at length.",
           "Write a long letter to a friend about your summer.",
           "Explain how computers store numbers, step by step.",
           "Write a story about a robot and a cat who become friends.",
           "Describe the ocean to someone who has never seen it."]
PROBE = ("You are a careful assistant. Answer the question below in full sentences, and explain "
         "your reasoning. Question: why is the sky blue during the day but red at sunset?")


def stories110m_int8(workdir: str) -> str:
    """A stories110M-shaped int8 llama2.c v2 file of random weights (written once)."""
    from inference.config import SHAPES
    from inference.formats.llama2c import write_v2
    from inference.quantize import floats, quantize_q8
    from inference.weights import random_weights

    path = os.path.join(workdir, "stories110M-random-int8.bin")
    if not os.path.exists(path):
        w = random_weights(SHAPES["stories110M"], seed=1, wtype="int8", group_size=64)
        with open(path + ".tmp", "wb") as f:
            write_v2(f, w, 64, quantize_q8, floats)
        os.replace(path + ".tmp", path)
    return path


def model_files(name: str, workdir: str) -> tuple[str, list[str]]:
    if name == "smollm2":
        return os.path.join(SHARED, "SmolLM2-135M-Instruct.Q4_1.gguf"), []
    return stories110m_int8(workdir), ["--tokenizer", os.path.join(SHARED, "tokenizer.bin")]


# -- part 1: forward_batch in process ---------------------------------------------------
def bench_forward_batch(path: str, tok_args: list[str], rounds: int) -> None:
    from inference.loader import create_backend, load_model

    loaded = load_model(path, tok_args[1] if tok_args else None)
    sizes = (1, 2, 3, 4, 8)
    b = create_backend(loaded, "cpu", threads=2, context=256, slots=max(sizes))
    pos = 64
    for s in range(max(sizes)):  # give every slot a real prefix to attend over
        b.forward([1 + (7 * s + i) % 1000 for i in range(pos)], 0, slot=s)
    times: dict[int, list[float]] = {n: [] for n in sizes}
    for _ in range(rounds):
        for n in sizes:
            t0 = time.perf_counter()
            b.forward_batch([100 + i for i in range(n)], [pos] * n, list(range(n)))
            times[n].append(time.perf_counter() - t0)
    wb = b.weight_bytes_per_token()
    one = statistics.median(times[1])
    print(f"  forward_batch, {b.describe()}, {wb / 1e6:.0f} MB of weights per step, position {pos}, "
          f"median of {rounds}:")
    print("    n   ms/step  x step(1)  tok/s   weight GB/s")
    for n in sizes:
        m = statistics.median(times[n])
        print(f"    {n:<3} {m * 1e3:8.1f}  {m / one:9.2f}  {n / m:6.1f}  {wb / m / 1e9:8.2f}")


# -- part 2: the server over HTTP ---------------------------------------------------------
class Stream:
    """One streamed completion: when it started, and when each of its tokens arrived."""

    def __init__(self, port: int, body: dict) -> None:
        self.port, self.body = port, body
        self.t0 = 0.0
        self.times: list[float] = []     # arrival of each token event
        self.tokens = 0                  # completion_tokens from the usage chunk
        self.error: str | None = None
        self.thread = threading.Thread(target=self.run, daemon=True)

    def run(self) -> None:
        c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=600)
        try:
            self.t0 = time.perf_counter()
            c.request("POST", "/v1/completions", json.dumps(self.body), {"Content-Type": "application/json"})
            r = c.getresponse()
            if r.status != 200:
                self.error = f"{r.status} {r.read()[:200]!r}"
                return
            for line in r:
                if not line.startswith(b"data: "):
                    continue
                if line.startswith(b"data: [DONE]"):
                    break
                if b'"usage"' in line:
                    self.tokens = json.loads(line[6:])["usage"]["completion_tokens"]
                elif b'"finish_reason": null' in line:
                    self.times.append(time.perf_counter())
        except OSError as e:
            self.error = str(e)
        finally:
            c.close()

    @property
    def first(self) -> float:
        return self.times[0] if self.times else float("inf")

    @property
    def end(self) -> float:
        return self.times[-1] if self.times else 0.0

    @property
    def ttft(self) -> float:
        return self.first - self.t0


def steady_rate(streams: list[Stream], until: float) -> tuple[float, float]:
    """(aggregate, mean per-stream) tok/s over the window in which every stream was
    decoding and nothing else ran: from the last first token to the first last token or
    `until` (when the probe arrived), whichever is sooner."""
    lo, hi = max(s.first for s in streams), min(min(s.end for s in streams), until)
    if hi <= lo:
        return 0.0, 0.0
    counts = [sum(lo < t <= hi for t in s.times) for s in streams]
    return sum(counts) / (hi - lo), statistics.mean(counts) / (hi - lo)


def start_server(path: str, tok_args: list[str], parallel: int, ctx: int) -> tuple[subprocess.Popen, int, str]:
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen([sys.executable, "-m", "app.cli", "serve", "--model", path, *tok_args, "--host", "127.0.0.1",
                             "--port", "0", "--parallel", str(parallel), "--threads", "2", "--ctx-per-slot", str(ctx),
                             "--quiet"], cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT},
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.time() + 600
    while time.time() < deadline:
        text = open(log.name).read()
        m = re.search(r"at http://127\.0\.0\.1:(\d+)/v1", text)
        if m:
            return proc, int(m.group(1)), log.name
        if proc.poll() is not None:
            break
        time.sleep(0.2)
    proc.kill()
    raise SystemExit(f"the server did not start:\n{open(log.name).read()}")


def body(prompt: str, tokens: int) -> dict:
    return {"prompt": prompt, "max_tokens": tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}


def bench_server(path: str, tok_args: list[str], streams: list[int], tokens: int, repeats: int) -> None:
    parallel = max(streams) + 1   # room for the probe beside the largest round
    proc, port, log = start_server(path, tok_args, parallel, ctx=512)
    try:
        padded = re.search(r"decode steps of ([0-9, ]+) sequences run padded", open(log).read())
        print(f"  server: {parallel} slots x 512 positions, 2 threads; {tokens} tokens per stream, greedy; "
              f"rounds interleaved x{repeats}, medians"
              + (f"; steps of {padded.group(1)} padded to 4 rows" if padded else "; no padding"))
        results: dict[int, list[tuple[float, float, float, float, float]]] = {n: [] for n in streams}
        idle: list[float] = []
        for rep in range(repeats):
            probe = Stream(port, body(PROBE + f" <{rep}>", 4))
            probe.run()
            idle.append(probe.ttft)
            for n in streams:
                round_ = [Stream(port, body(PROMPTS[i % len(PROMPTS)] + f" ({rep}.{n}.{i})", tokens)) for i in range(n)]
                for s in round_:
                    s.thread.start()
                # every stream decodes half its tokens undisturbed (the aggregate's window), then
                # the probe arrives and its prefill shares the steps of the second half
                while not all(len(s.times) >= tokens // 2 or s.error or s.end and s.tokens for s in round_):
                    time.sleep(0.005)
                probe = Stream(port, body(PROBE + f" [{rep}.{n}]", 4))
                probe.thread.start()
                for s in round_ + [probe]:
                    s.thread.join()
                bad = [s.error for s in round_ + [probe] if s.error]
                if bad:
                    print(f"    {n}: errors {bad[:2]}")
                    continue
                agg, per = steady_rate(round_, until=probe.t0)
                ttfts = [s.ttft for s in round_]
                results[n].append((agg, per, statistics.mean(ttfts), max(ttfts), probe.ttft))
        print("    streams  agg tok/s  x 1 stream  per-stream tok/s  ttft mean / max s  probe ttft s")
        med = {n: [statistics.median(col) for col in zip(*rows)] for n, rows in results.items() if rows}
        base = med[streams[0]][0] if streams[0] in med else 0.0
        for n, (agg, per, ttft, ttft_max, probe_ttft) in med.items():
            print(f"    {n:<7}  {agg:9.1f}  {agg / base if base else 0:10.2f}  {per:16.1f}  {ttft:8.2f} / {ttft_max:5.2f}"
                  f"  {probe_ttft:11.2f}")
        print(f"    probe ({len(PROBE.split())} words) ttft on an idle server: {statistics.median(idle):.2f} s; "
              f"the probe arrives while the N streams decode")
    finally:
        proc.terminate()
        proc.wait(30)
        os.unlink(log)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", nargs="+", default=["smollm2", "stories110m"], choices=["smollm2", "stories110m"])
    ap.add_argument("--streams", nargs="+", type=int, default=[1, 2, 4, 8])
    ap.add_argument("--tokens", type=int, default=48, help="tokens per stream (default 48)")
    ap.add_argument("--rounds", type=int, default=7, help="forward_batch timing rounds")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repeats of the server rounds")
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "llama-chat-bench"))
    ap.add_argument("--skip-forward", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.workdir, exist_ok=True)
    from app.commands.bench import cpu_model
    print(f"load average at start: {os.getloadavg()[0]:.2f} on {cpu_model()}")
    for name in args.models:
        path, tok_args = model_files(name, args.workdir)
        print(f"{name}: {path}")
        if not args.skip_forward:
            bench_forward_batch(path, tok_args, args.rounds)
        bench_server(path, tok_args, args.streams, args.tokens or 48, args.repeats)
    print(f"load average at end: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
