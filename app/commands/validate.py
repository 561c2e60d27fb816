"""`llama-chat validate`: run the CPU and CUDA backends side by side and compare.

Both backends get the *same* weights: for int8 the model is quantized once on the host
and handed to both; for fp16 the CPU gets the fp16-rounded values in fp32, which the GPU
then stores exactly; GGUF block types (a model file's own, or `--random SHAPE --quant
q4_k`, drawn in that type) run as stored on both. Decoding is teacher-forced with the
CPU's greedy token, so every step compares the two backends on the same sequence. A
greedy disagreement counts only when the CPU's logit gap between the two tokens exceeds
the logit tolerance (a near-tie may legitimately flip under a different summation order).
"""
from __future__ import annotations

import argparse
import json
import sys

import numpy as np

from inference.config import SHAPES
from inference.errors import LlamaChatError
from inference.weights import ModelWeights

#: --quant for --random: the float plans and every block type the CUDA kernels run.
BLOCK_QUANTS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl")
QUANTS = ("fp32", "fp16", "int8", *BLOCK_QUANTS)

from .common import model_path, parse_gpu_mem, path_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--model", "-m", metavar="PATH", type=path_arg, help="model file or directory (default: the bundled stories260K)")
    src.add_argument("--random", metavar="SHAPE", choices=sorted(SHAPES),
                     help=f"random weights of a named shape ({', '.join(sorted(SHAPES))})")
    p.add_argument("--tokenizer", "-t", metavar="PATH", type=path_arg, help="tokenizer (default: beside the model)")
    p.add_argument("--quant", choices=QUANTS, default="fp32", metavar="TYPE",
                   help="weight storage both backends use: fp32, fp16, int8, or with --random a block type the "
                        f"weights are drawn in ({', '.join(BLOCK_QUANTS)}); a model's own blocks always run as "
                        "stored (default fp32)")
    p.add_argument("--layers", type=int, default=None, metavar="N",
                   help="with --random: only the first N layers of the shape (its widths, heads and vocabulary)")
    p.add_argument("-n", "--steps", type=int, default=16, help="decode steps to compare (default 16)")
    p.add_argument("--prompt", "-p", default="Once upon a time", help="prompt to prefill")
    p.add_argument("--seed", type=int, default=0, help="seed of --random weights and prompt")
    p.add_argument("--atol", type=float, default=None,
                   help="max allowed |logit difference| (default 1e-3 x max(1, max|logit|), 4x that for fp16/int8)")
    p.add_argument("--gpu-mem", metavar="LIST", default=None,
                   help="split layers across GPUs in proportion, e.g. 24,24")
    p.add_argument("--json", action="store_true", help="print one JSON object (the verdict and figures) last")


def prepare_weights(weights: ModelWeights, quant: str) -> ModelWeights:
    """The weights both backends will run with (see the module docstring)."""
    from inference.quantize import quantize_weights
    from inference.quantize import floats, is_float

    if quant == "int8":
        return quantize_weights(weights)
    if quant == "fp16":
        out = ModelWeights(weights.config, dict(weights.tensors))
        for key, t in weights.matrices():
            if not is_float(t):
                raise LlamaChatError("this model is stored quantized: validate it with --quant int8")
            out.tensors[key] = floats(t).astype(np.float16).astype(np.float32)
        return out
    return weights


def _check_fits(name: str, cfg, wtype: str) -> None:
    """One line instead of a traceback when a shape's rows do not split into the blocks
    (after llama.cpp's fallback for K-quants)."""
    from inference.quant_types import QTYPES, fitting_type
    for what, cols in (("dim", cfg.dim), ("hidden_dim", cfg.hidden_dim), ("n_heads x head_dim", cfg.q_dim)):
        t = fitting_type(wtype, cols)
        if cols % QTYPES[t].block:
            raise LlamaChatError(f"{name}'s {what} {cols} is not a multiple of {t}'s {QTYPES[t].block}-value "
                                 f"blocks: pick another shape or type")


def _load(args: argparse.Namespace) -> tuple[ModelWeights, list[int], str]:
    if args.random:
        from inference.weights import random_weights
        cfg = SHAPES[args.random]
        if args.layers is not None:
            if not 1 <= args.layers <= cfg.n_layers:
                raise LlamaChatError(f"--layers must be from 1 to {cfg.n_layers} for {args.random}")
            cfg = cfg.with_(n_layers=args.layers)
        wtype = args.quant if args.quant in BLOCK_QUANTS else "fp32"
        if wtype != "fp32":
            _check_fits(args.random, cfg, wtype)
        w = random_weights(cfg, seed=args.seed, wtype=wtype)
        rng = np.random.default_rng(args.seed)
        prompt = [1] + [int(t) for t in rng.integers(3, cfg.vocab_size, size=6)]
        return w, prompt, f"random {args.random}"
    if args.quant in BLOCK_QUANTS:
        raise LlamaChatError(f"--quant {args.quant} draws random weights: use it with --random SHAPE "
                             "(a model file's blocks run as stored)")
    if args.layers is not None:
        raise LlamaChatError("--layers needs --random SHAPE")
    from inference.loader import load_model
    loaded = load_model(model_path(args), args.tokenizer, "none")
    ids = loaded.tokenizer.encode(args.prompt)   # BOS as the model wants it
    return loaded.weights, ids, loaded.name


def compare(cpu, gpu, prompt: list[int], steps: int, atol: float | None = None,
            rel: float = 1e-3, out=print, stats: dict | None = None) -> bool:
    """Prefill `prompt` on both, then `steps` teacher-forced decode steps; True if all agree.

    The logit tolerance is `atol`, or else `rel` x max(1, max|CPU logit|) at each step.
    `stats`, when given, receives the figures (steps, max |dlogit|, worst tolerance, greedy
    tokens that differ, near-ties)."""
    cfg = cpu.config
    steps = max(0, min(steps, cfg.seq_len - len(prompt)))
    ok = True
    worst = 0.0
    differ = ties = 0
    tol_max = 0.0
    seq = list(prompt)
    out(f"{'step':>4} {'pos':>5} {'max|dlogit|':>12} {'tol':>9} {'cpu':>6} {'cuda':>6}  verdict")
    for step in range(steps + 1):
        if step == 0:
            cpu.forward(seq, 0)
            gpu.forward(seq, 0)
        else:
            cpu.forward(seq[-1:], len(seq) - 1)
            gpu.forward(seq[-1:], len(seq) - 1)
        a, b = cpu.logits(), gpu.logits()
        diff = float(np.max(np.abs(a - b))) if np.all(np.isfinite(b)) else float("inf")
        tol = atol if atol is not None else rel * max(1.0, float(np.max(np.abs(a))))
        ta, tb, tg = int(np.argmax(a)), gpu.argmax(), int(np.argmax(b))
        verdict = "ok"
        if diff > tol:
            verdict, ok = "LOGITS DIFFER", False
        elif ta != tb or tg != tb:
            gap = float(a[ta] - a[tb])
            if gap > 2 * tol or tg != tb:
                verdict, ok = "TOKENS DIFFER", False
                differ += 1
            else:
                verdict = f"near-tie (gap {gap:.2e})"
                ties += 1
        worst = max(worst, diff)
        tol_max = max(tol_max, tol)
        out(f"{step:>4} {len(seq) - 1:>5} {diff:>12.3e} {tol:>9.2e} {ta:>6} {tb:>6}  {verdict}")
        seq.append(ta)
    out(f"validate: {steps + 1} steps, max |dlogit| = {worst:.3e}: "
        + ("CPU and CUDA agree" if ok else "CPU and CUDA DISAGREE"))
    if stats is not None:
        stats.update(steps=steps + 1, max_dlogit=worst, tol=tol_max, tokens_differ=differ, near_ties=ties,
                     agree=ok)
    return ok


def run(args: argparse.Namespace) -> int:
    from inference.backends.cpu import CpuBackend
    from inference.backends.cuda import CudaBackend

    if args.steps < 0:
        raise LlamaChatError("-n must be >= 0")
    weights, prompt, label = _load(args)
    block = args.quant in BLOCK_QUANTS
    if not block:
        weights = prepare_weights(weights, args.quant)
    gpu = CudaBackend(weights, quant=None if block else args.quant, gpu_mem=parse_gpu_mem(args.gpu_mem))
    log = (lambda s: print(s, file=sys.stderr)) if args.json else print
    stats: dict = {}
    try:
        cpu = CpuBackend(weights)
        log(f"validate {label} ({gpu.weight_type}): CPU vs {gpu.describe()}, prompt {len(prompt)} tokens")
        # block types: both backends read the very same values, so only summation order differs
        rel = 1e-4 if block else (1e-3 if args.quant == "fp32" else 4e-3)
        ok = compare(cpu, gpu, prompt, args.steps, args.atol, rel, out=log, stats=stats)
        stats.update(model=label, quant=args.quant, weight_type=gpu.weight_type, device=gpu.describe(),
                     prompt_tokens=len(prompt))
    finally:
        gpu.close()
    if args.json:
        print(json.dumps(stats))
    return 0 if ok else 1


def main() -> int:
    """`python -m app.commands.validate ...` (no Textual import, for GPU boxes)."""
    p = argparse.ArgumentParser(prog="llama-chat validate")
    add_arguments(p)
    args = p.parse_args()
    try:
        return run(args)
    except LlamaChatError as e:
        print(f"llama-chat: error: {e}", file=sys.stderr)
        return e.exit_code


if __name__ == "__main__":
    raise SystemExit(main())
