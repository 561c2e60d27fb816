"""Decode speed of the CUDA backend on random weights, as a fraction of the HBM roofline.

    PYTHONPATH=. python3 tests/bench_cuda_decode.py --shape llama2-7b --quant int8 fp16

Roofline: weight bytes streamed per token / measured device-to-device copy bandwidth
(bytes read + written). Not collected by pytest (no test_ prefix): it needs a big GPU.
"""
from __future__ import annotations

import argparse
import time

from inference.config import SHAPES


def bench(shape: str, quant: str, steps: int, prompt: int, bw: float, speculate: bool = True) -> None:
    from inference.backends.cuda import CudaBackend
    cfg = SHAPES[shape]
    t0 = time.perf_counter()
    be = CudaBackend.random(cfg, quant, seed=1, speculate=speculate)
    t_build = time.perf_counter() - t0
    try:
        toks = [1 + (i * 7919) % (cfg.vocab_size - 1) for i in range(prompt)]
        t0 = time.perf_counter()
        be.forward(toks, 0)
        first = be.argmax()
        ttft = time.perf_counter() - t0              # includes graph-free prefill launches
        pos = prompt
        be.forward([first], pos)                       # captures the decode graph
        be.argmax()
        pos += 1
        for _ in range(5):                             # warm-up
            be.forward([be.argmax()], pos)
            pos += 1
        be.synchronize()
        t0 = time.perf_counter()
        for _ in range(steps):                         # the real loop: one host sync per token
            tok = be.argmax()
            be.forward([tok], pos)
            pos += 1
        be.argmax()
        dt = time.perf_counter() - t0
        tps = steps / dt
        wb = be.weight_bytes_per_token()
        roof = bw / wb
        print(f"{shape} {quant}{'' if speculate else ' (no speculation)'}: decode {tps:.1f} tok/s ({1e3 / tps:.3f} ms/token), weights {wb / 1e9:.2f} GB/token, "
              f"roofline {roof:.1f} tok/s -> {100 * tps / roof:.1f}% | prefill {prompt} tok + first token "
              f"{ttft * 1e3:.1f} ms ({prompt / ttft:.0f} tok/s) | random init {t_build:.1f} s | {be.describe()}",
              flush=True)
    finally:
        be.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    p.add_argument("--quant", nargs="+", default=["int8", "fp16"])
    p.add_argument("--steps", type=int, default=200)
    p.add_argument("--prompt", type=int, default=128)
    p.add_argument("--also-no-speculate", action="store_true", help="also time without speculative launch")
    a = p.parse_args()
    from kernels import cuda_driver as cu
    dev = cu.Device(0)
    bw = cu.copy_bandwidth(dev)
    print(f"{dev.name}: device-to-device copy {bw / 1e12:.2f} TB/s (read + write)", flush=True)
    for q in a.quant:
        bench(a.shape, q, a.steps, a.prompt, bw)
        if a.also_no_speculate:
            bench(a.shape, q, a.steps, a.prompt, bw, speculate=False)


if __name__ == "__main__":
    main()
