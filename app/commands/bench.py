"""`llama-chat bench`: load time (cold and warm cache), time to first token, prefill and
decode speed, peak RSS and the memory bandwidth the decode loop achieves.

Decode at batch 1 streams every weight once per token, so `bandwidth_gb_s` (weight bytes
read per token x tokens per second) compared with what the machine can stream says how
close to the hardware limit the kernels are. On the CPU the streaming rate is measured
right after each decode run (`stream_gb_s`), because a shared machine's bandwidth drifts
by up to 2x within minutes; `bandwidth_fraction` is the median of the paired ratios.
Imports neither Textual nor the CUDA backend unless asked.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import numpy as np

from inference.config import SHAPES
from inference.errors import LlamaChatError
from inference.quant_types import QTYPES

#: What `--random --quant` can draw: the load plans plus every storage type.
RANDOM_TYPES = ("int8", "int4", "none", *sorted(set(QTYPES) - {"int8"}))

from .common import available_memory, model_path, path_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", "-m", metavar="MODEL", type=path_arg,
                     help="model file or directory, or a name from `llama-chat models`")
    src.add_argument("--random", metavar="SHAPE", choices=sorted(SHAPES),
                     help="random weights of a real shape, no download: " + ", ".join(SHAPES))
    p.add_argument("--tokenizer", "-t", metavar="PATH", type=path_arg, help="tokenizer (default: beside the model)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="compute backend (default cpu)")
    p.add_argument("--quant", choices=RANDOM_TYPES, default=None, metavar="TYPE",
                   help="with --model: the load plan (int8, int4, none); with --random: the storage type the "
                        "weights are drawn in (" + ", ".join(RANDOM_TYPES) + "); default: int8 for float "
                        "models over ~50M parameters")
    p.add_argument("--group-size", type=int, default=64, metavar="N",
                   help="int8: input columns per fp32 scale (default 64)")
    p.add_argument("--prompt-tokens", type=int, default=128, metavar="N", help="prefill length (default 128)")
    p.add_argument("--gen-tokens", type=int, default=256, metavar="N", help="greedy tokens to decode (default 256)")
    p.add_argument("--repeat", type=int, default=3, metavar="R", help="runs; speeds are medians (default 3)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads (default: all cores; one for models under 8 MB)")
    p.add_argument("--seed", type=int, default=0, help="seed of --random weights and the prompt")
    p.add_argument("--json", action="store_true", help="print one JSON object as the last line")


def run(args: argparse.Namespace) -> int:
    if args.model is not None and args.quant not in (None, "int8", "int4", "none", "fp16"):
        raise LlamaChatError(f"--quant {args.quant} draws random weights: use it with --random SHAPE "
                             f"(a model file's blocks run as stored)")
    if args.prompt_tokens < 1 or args.gen_tokens < 1 or args.repeat < 1:
        raise LlamaChatError("--prompt-tokens, --gen-tokens and --repeat must be at least 1")
    if args.threads is not None and args.threads < 1:
        raise LlamaChatError("--threads must be at least 1")
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    res: dict[str, Any] = {"device": args.device}
    backend = _load(args, res, log)
    try:
        _measure(backend, args, res, log)
    finally:
        backend.close()
    if args.json:
        print(json.dumps(res))
    return 0


# ---------------------------------------------------------------------------------- load

def _load(args: argparse.Namespace, res: dict[str, Any], log) -> Any:
    """Build the backend, recording load times; returns it."""
    from inference.loader import create_backend
    if args.random:
        cfg = SHAPES[args.random]
        res["model"] = f"random:{args.random}"
        res["params_m"] = round(cfg.n_params() / 1e6, 1)
        quant = args.quant or ("int8" if cfg.n_params() > 50_000_000 else "none")
        wtype = {"none": "fp32", "int4": "q4_0"}.get(quant, quant)
        t0 = time.perf_counter()
        if args.device == "cuda":  # drawn on the GPU (a 7B shape in seconds); it names the types it draws
            backend = _cuda_random(cfg, wtype, args.seed)
        else:
            # drawn in the target type: a 7B shape never exists as 27 GB of fp32
            from inference.quantize import choose_group_size
            from inference.weights import random_nbytes, random_weights
            gs = choose_group_size(cfg, args.group_size)
            need, avail = random_nbytes(cfg, wtype, gs), available_memory()
            if avail is not None and need > 0.9 * avail:
                raise LlamaChatError(f"--random {args.random} in {wtype} needs {need / 2**30:.1f} GiB for its weights, "
                                     f"more than the {avail / 2**30:.1f} GiB of memory available; draw a smaller "
                                     f"type (--quant int8, q4_k …) or shape")
            try:
                w = random_weights(cfg, seed=args.seed, wtype=wtype, group_size=gs)
            except ValueError as e:  # e.g. Q4_0 blocks of 32 on a model 172 values wide
                raise LlamaChatError(f"--random {args.random} --quant {args.quant}: {e}") from None
            backend = create_backend(w, "cpu", threads=args.threads)
        res.update(weight_type=backend.weight_type, load_s=round(time.perf_counter() - t0, 3), load_cold_s=None)
        log(f"model    random {args.random} ({res['params_m']}M params, {backend.weight_type}), "
            f"built in {res['load_s']:.2f} s")
        return backend

    from inference.loader import load_model
    path = model_path(args)
    res["model"] = path
    tmp = tempfile.mkdtemp(prefix="llama-chat-bench-")
    old = os.environ.get("XDG_CACHE_HOME")
    try:
        # cold: an empty cache dir, so an fp source is quantized and its cache written;
        # warm: the same again, now memory-mapping that cache. The user's cache is untouched
        # (the temporary one is deleted at once: Linux keeps a mapped file readable).
        os.environ["XDG_CACHE_HOME"] = tmp
        t0 = time.perf_counter()
        host_quant = None if args.quant == "fp16" else args.quant
        loaded = load_model(path, args.tokenizer, host_quant, group_size=args.group_size)
        cold = time.perf_counter() - t0
        del loaded
        t0 = time.perf_counter()
        loaded = load_model(path, args.tokenizer, host_quant, group_size=args.group_size)
        warm = time.perf_counter() - t0
    finally:
        if old is None:
            os.environ.pop("XDG_CACHE_HOME", None)
        else:
            os.environ["XDG_CACHE_HOME"] = old
        shutil.rmtree(tmp, ignore_errors=True)
    t0 = time.perf_counter()
    opts = {"quant": args.quant} if args.device == "cuda" and args.quant in ("int8", "fp16") else {}
    if args.device == "cpu":
        opts["threads"] = args.threads
    backend = create_backend(loaded, args.device, **opts)
    upload = time.perf_counter() - t0
    cfg = loaded.config
    res.update(params_m=round(cfg.n_params() / 1e6, 1), source_dtype=loaded.source_dtype,
               weight_type=backend.weight_type, load_cold_s=round(cold, 3),
               load_s=round(warm + upload, 3), backend_s=round(upload, 3))
    log(f"model    {res['model']} ({res['params_m']}M params, {loaded.source_dtype} -> {backend.weight_type})")
    log(f"load     cold {cold:.3f} s (empty quant cache), warm {warm:.3f} s, backend {upload:.3f} s")
    return backend


def _cuda_random(cfg, quant: str, seed: int) -> Any:
    try:
        from inference.backends.cuda import CudaBackend
    except ImportError as e:
        raise LlamaChatError(f"the CUDA backend is unavailable ({e}); use --device cpu") from None
    return CudaBackend.random(cfg, quant=quant, seed=seed)


# ------------------------------------------------------------------------------- measure

def _bytes_per_token(backend: Any) -> int:
    """Weight bytes one decode step reads: every matrix once (the embedding table only
    when it doubles as the classifier), i.e. the roofline numerator."""
    f = getattr(backend, "weight_bytes_per_token", None)
    if f is not None:
        return int(f())
    return int(backend.memory().weight_bytes)


def _measure(backend: Any, args: argparse.Namespace, res: dict[str, Any], log) -> None:
    c = backend.config
    P, G = args.prompt_tokens, args.gen_tokens
    if P + G > c.seq_len:
        raise LlamaChatError(f"--prompt-tokens + --gen-tokens = {P + G} exceeds the context of {c.seq_len}")
    rng = np.random.default_rng(args.seed)
    prompt = [1] + [int(t) for t in rng.integers(3, c.vocab_size, P - 1)]
    t0 = time.perf_counter()
    backend.forward([1], 0)
    backend.argmax()
    first = time.perf_counter() - t0   # includes kernel compilation or its cache load
    stream = None
    if args.device == "cpu":
        from inference.backends.cpu import stream_bandwidth as stream
    bpt = _bytes_per_token(backend)
    ttft, prefill, decode, streamed = [], [], [], []

    def runs() -> None:   # on the backend's own thread, as the app's replies run (Backend.run_loop)
        for _ in range(args.repeat):
            t0 = time.perf_counter()
            backend.forward(prompt, 0)
            tok = backend.argmax()
            t1 = time.perf_counter()
            for i in range(G):
                backend.forward([tok], P + i)
                tok = backend.argmax()
            t2 = time.perf_counter()
            ttft.append(t1 - t0)
            prefill.append(P / (t1 - t0))
            decode.append(G / (t2 - t1))
            if stream is not None and bpt >= IN_CACHE_BYTES:  # right after each run: bandwidth drifts 2x
                streamed.append(stream(bpt, repeats=2))

    backend.run_loop(runs)
    dec = statistics.median(decode)
    mem = backend.memory()
    res.update(
        describe=backend.describe(), prompt_tokens=P, gen_tokens=G, repeat=args.repeat,
        first_forward_s=round(first, 4), ttft_s=round(statistics.median(ttft), 4),
        prefill_tok_s=round(statistics.median(prefill), 2), decode_tok_s=round(dec, 2),
        decode_runs_tok_s=[round(d, 2) for d in decode],
        weight_bytes=int(mem.weight_bytes), bytes_per_token=bpt,
        bandwidth_gb_s=round(bpt * dec / 1e9, 2), peak_rss_mb=round(_peak_rss_mb(), 1),
        load_avg=round(os.getloadavg()[0], 2) if hasattr(os, "getloadavg") else None,
        cpu=cpu_model(),
    )
    if streamed:
        res["stream_gb_s"] = round(statistics.median(streamed) / 1e9, 2)
        res["bandwidth_fraction"] = round(statistics.median(
            bpt * d / bw for d, bw in zip(decode, streamed)), 3)
    log(f"device   {res['describe']} on {res['cpu']}")
    log(f"first    {first * 1000:.1f} ms (first forward: kernel compile or cache load)")
    log(f"prefill  {P} tok: {res['prefill_tok_s']:.1f} tok/s, time to first token {res['ttft_s'] * 1000:.1f} ms")
    log(f"decode   {G} tok: {dec:.1f} tok/s median of {args.repeat} ({', '.join(f'{d:.1f}' for d in decode)})")
    line = f"memory   {bpt / 1e6:.1f} MB weights/token -> {res['bandwidth_gb_s']:.1f} GB/s"
    if "stream_gb_s" in res:
        line += (f" of {res['stream_gb_s']:.1f} GB/s streaming read of as many bytes "
                 f"({100 * res['bandwidth_fraction']:.0f}%)")
    elif stream is not None:
        line += " (the weights fit in the CPU caches: no memory-bandwidth fraction)"
    log(line + f"; peak RSS {res['peak_rss_mb']:.0f} MB; load average {res['load_avg']}")


def _last_level_cache_bytes() -> int:
    """The CPU's largest cache (Linux sysfs), or 32 MiB where it cannot be read."""
    best = 0
    base = "/sys/devices/system/cpu/cpu0/cache"
    for entry in (os.listdir(base) if os.path.isdir(base) else []):
        try:
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20}.get(text[-1:], 1)
        digits = text.rstrip("KM")
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    return best or 32 << 20


#: Weights smaller than this may stay in the CPU caches between tokens, so decode is not
#: bounded by memory bandwidth and a fraction of a DRAM streaming rate would mislead.
IN_CACHE_BYTES = 3 * _last_level_cache_bytes() // 2


def cpu_model() -> str:
    """The processor's name, family and model, and its core count: figures from two
    machines are comparable only on the same kind of CPU (a shared VM's host can change
    between sessions, and kernels bound by vector throughput differ per generation)."""
    fields: dict[str, str] = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if not line.strip():
                    break                       # the first processor is enough
                key, _, value = line.partition(":")
                fields[key.strip()] = value.strip()
    except OSError:
        pass
    name = fields.get("model name") or platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        name += f" (family {fields['cpu family']} model {fields['model']})"
    return f"{name}, {os.cpu_count() or 1} logical CPUs"


def _peak_rss_mb() -> float:
    """Peak resident set size of this process (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1 << 20) if sys.platform == "darwin" else r / 1024
