"""The steps of tests/gpu/check.sh, one sub-command each; every step writes one JSON file.

    python3 tests/gpu/steps.py STEP --work DIR [--dry-run] [options]

A step's JSON is `{"status": "ok" | "failed" | "skipped", "reason": ..., ...figures}`.
`--dry-run` (no GPU) runs whatever of a step needs no GPU — argument handling, the
plans, the model-file generation and cold load at a tiny shape, the CPU half of the
commands — and marks the GPU parts skipped, so the script can be tested in CI. `assemble`
merges every step's JSON into the one file the check reports.

Not collected by pytest (no test_ prefix); tests/test_gpu_check_script.py runs the dry run.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
import xml.etree.ElementTree as ET
from typing import Any, Callable

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

PY = sys.executable
#: The issue's targets: decode speed as a fraction of the measured copy bandwidth.
TARGETS = {"int8": 0.75, "fp16": 0.80, "q4_k": 0.70}
TTFT_TARGET_S = 1.0
BENCH_SHAPE, BENCH_DRY_SHAPE = "llama2-7b", "stories15M"
TTFT_SHAPE, TTFT_DRY_SHAPE = "llama2-7b", "stories260K"
GPU_TEST_FILES = ("tests/test_cuda_backend.py", "tests/test_formats_gpu.py", "tests/test_cuda_compile.py",
                  "tests/test_cuda_emulated.py")
BLOCKS = ("q4_0", "q4_1", "q5_0", "q5_1", "q8_0", "q4_k", "q5_k", "q6_k", "iq4_nl")
ALL_TYPES = ("fp32", "fp16", "int8", *BLOCKS)
#: validate on random shapes: (shape, layers or None, weight types). GQA and not, shared
#: and separate classifiers, NEOX + biases (qwen2), K-quant rows that fit (tinyllama,
#: llama3) and rows where they fall back (stories15M, smollm2).
VALIDATE_RANDOM = (
    ("stories260K", None, ("fp32", "fp16", "int8")),
    ("stories15M", None, ALL_TYPES),
    ("smollm2-135m", 4, ("fp32", "int8", "q4_k", "q6_k", "q8_0")),
    ("qwen2-0.5b", 2, ("fp32", "fp16", "int8", "q4_k", "q5_0", "q6_k")),
    ("tinyllama-1.1b", 2, ALL_TYPES),
    ("llama3-8b", 1, ("int8", "q4_k")),
)
BUNDLED = os.path.join(ROOT, "assets", "stories260K.bin")


# ----------------------------------------------------------------------------- helpers
def write(path: str, data: dict) -> None:
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f, indent=1, sort_keys=True, default=str)
    os.replace(tmp, path)


def read(path: str) -> dict:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return {}


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def last_json(text: str) -> dict | None:
    """The last line of `text` that parses as a JSON object."""
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                continue
    return None


def run_cli(argv: list[str], timeout: float, env: dict | None = None) -> tuple[int, str, str, float]:
    """Run `python -m app.cli ...`: (rc, stdout, stderr, seconds)."""
    t0 = time.perf_counter()
    try:
        p = subprocess.run([PY, "-m", "app.cli", *argv], cwd=ROOT, capture_output=True, text=True,
                           timeout=timeout, env=env)
        return p.returncode, p.stdout, p.stderr, time.perf_counter() - t0
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        return 124, out, f"timed out after {timeout:.0f} s", time.perf_counter() - t0


def gpu_present() -> tuple[bool, str]:
    try:
        from kernels import cuda_driver
        cuda_driver.init()
        return True, ""
    except Exception as e:   # BackendError or a missing binding: both mean no GPU here
        return False, str(e)


def copy_bandwidth(work: str) -> float | None:
    bw = read(os.path.join(work, "env.json")).get("copy_bandwidth_gb_s")
    return float(bw) * 1e9 if bw else None


# ----------------------------------------------------------------------------- steps
def step_env(a: argparse.Namespace) -> dict:
    """Versions, the device, and the device-to-device copy bandwidth (the roofline)."""
    import importlib.metadata as md

    import numpy as np
    res: dict[str, Any] = {"python": platform.python_version(), "numpy": np.__version__,
                           "platform": platform.platform(), "cpus": os.cpu_count()}
    for pkg in ("numba", "cuda-bindings", "cuda-python", "nvidia-cuda-nvrtc", "textual", "pytest", "pytest-xdist"):
        try:
            res[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            res[pkg] = None
    try:
        from kernels import cuda_compile
        res["nvrtc"] = cuda_compile.nvrtc_version()
    except Exception as e:
        res["nvrtc"] = f"unavailable: {e}"
    try:
        git = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10)
        res["commit"] = git.stdout.strip() or None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10)
        res["dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        res["commit"] = None
    if shutil.which("nvidia-smi"):
        q = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,clocks.max.sm,clocks.max.mem",
                            "--format=csv,noheader"], capture_output=True, text=True, timeout=30)
        res["nvidia_smi"] = q.stdout.strip()
    ok, why = gpu_present()
    if a.dry_run or not ok:
        res.update(status="skipped" if a.dry_run else "failed", gpu=None,
                   reason="dry run: no device queried" if a.dry_run else f"no GPU: {why}")
        return res
    from kernels import cuda_driver as cu
    dev = cu.Device(0)
    free, total = dev.mem_info()
    bws = [cu.copy_bandwidth(dev, 1 << 30, 10) for _ in range(3)]
    # the pitched upload the backend interleaves w1/w3 with (it falls back to a host copy)
    import numpy as np
    src = np.arange(6 * 40, dtype=np.uint8).reshape(6, 40)
    buf = cu.Buffer(dev, 2 * src.nbytes)
    try:
        buf.upload(np.zeros(2 * src.nbytes, np.uint8))
        buf.upload_rows(src, 40, 80)
        back = np.zeros((6, 80), np.uint8)
        buf.download(back)
        res["pitched_upload"] = bool(np.array_equal(back[:, 40:], src) and not back[:, :40].any())
    except Exception as e:
        res["pitched_upload"] = f"failed: {e}"
    finally:
        buf.free()
    res.update(status="ok", gpu=dev.name, arch=dev.arch, sm_count=dev.sm_count, mem_total_gib=round(total / 2**30, 1),
               mem_free_gib=round(free / 2**30, 1), copy_bandwidth_gb_s=round(statistics.median(bws) / 1e9, 1),
               copy_bandwidth_runs_gb_s=[round(b / 1e9, 1) for b in bws])
    log(f"{dev.name} ({dev.arch}, {dev.sm_count} SMs): copy {res['copy_bandwidth_gb_s']} GB/s (read + write)")
    return res


def _compile_one(name: str, arch: str) -> tuple[str, float]:
    from inference.backends.cuda import KERNEL_DEFINES
    from kernels import cuda_compile
    t0 = time.perf_counter()
    cuda_compile.get_cubin(name, arch, defines=KERNEL_DEFINES.get(name, ()))
    return name, time.perf_counter() - t0


def _numba_warm() -> float:
    """Compile (or load from Numba's cache) the CPU forward the comparisons use."""
    from inference.backends.cpu import CpuBackend
    from inference.config import ModelConfig
    from inference.weights import random_weights
    t0 = time.perf_counter()
    cfg = ModelConfig(dim=256, hidden_dim=512, n_layers=1, n_heads=4, n_kv_heads=2, vocab_size=64, seq_len=16)
    for wtype in ("fp32", "q4_k"):
        b = CpuBackend(random_weights(cfg, wtype=wtype))
        b.forward([1, 2], 0)
        b.forward([3], 2)
    return time.perf_counter() - t0


def step_warm(a: argparse.Namespace) -> dict:
    """Fill the cubin cache (every source for this GPU, in parallel) and Numba's cache, so
    the tests and commands after this compile nothing."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    from kernels import cuda_compile
    names = cuda_compile.source_names()
    if a.dry_run:   # the same pool on the two quick sources, for sm_90, no Numba
        arch, names = "sm_90", [n for n in names if n in ("attention", "sample")]
        try:
            cuda_compile.nvrtc_version()
        except Exception as e:
            return {"status": "skipped", "reason": f"dry run: NVRTC unavailable ({e})"}
    else:
        from kernels import cuda_driver as cu
        arch = cu.Device(0).arch
    t0 = time.perf_counter()
    # spawned, not forked: this process holds a CUDA context
    with ProcessPoolExecutor(max_workers=len(names) + 1, mp_context=multiprocessing.get_context("spawn")) as ex:
        numba_f = None if a.dry_run else ex.submit(_numba_warm)
        times = dict(ex.map(_compile_one, names, [arch] * len(names)))
        numba_s = numba_f.result() if numba_f else None
    if a.dry_run:
        return {"status": "skipped", "reason": "dry run: only the quick sources compiled, for sm_90",
                "compile_s": {k: round(v, 1) for k, v in times.items()}}
    return {"status": "ok", "arch": arch, "compile_s": {k: round(v, 1) for k, v in times.items()},
            "numba_s": round(numba_s, 1) if numba_s else None, "seconds": round(time.perf_counter() - t0, 1)}


def _junit(path: str) -> dict:
    out = {"passed": 0, "failed": 0, "errors": 0, "skipped": 0, "failures": [], "skip_reasons": {}}
    try:
        root = ET.parse(path).getroot()
    except (OSError, ET.ParseError):
        return out
    for case in root.iter("testcase"):
        name = f"{case.get('classname', '')}::{case.get('name', '')}"
        kids = {c.tag for c in case}
        if "failure" in kids or "error" in kids:
            out["failed" if "failure" in kids else "errors"] += 1
            node = case.find("failure") if "failure" in kids else case.find("error")
            out["failures"].append({"test": name, "message": (node.get("message") or "")[:400]})
        elif "skipped" in kids:
            out["skipped"] += 1
            msg = (case.find("skipped").get("message") or "")[:200]
            out["skip_reasons"][msg] = out["skip_reasons"].get(msg, 0) + 1
        else:
            out["passed"] += 1
    return out


def step_gpu_tests(a: argparse.Namespace) -> dict:
    """The GPU tests (and the NVRTC and emulator tests, on this machine's NVRTC)."""
    try:
        import xdist  # noqa: F401
        par = ["-n", str(a.jobs)] if a.jobs > 1 else []
    except ImportError:
        par = []
    xml = os.path.join(a.work, "junit.xml")
    cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-rfE", *GPU_TEST_FILES, f"--junitxml={xml}"]
    if a.dry_run:
        cmd = [PY, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--collect-only", *GPU_TEST_FILES]
    t0 = time.perf_counter()
    p = subprocess.run(cmd + ([] if a.dry_run else par), cwd=ROOT, capture_output=True, text=True,
                       timeout=a.timeout)
    secs = round(time.perf_counter() - t0, 1)
    sys.stdout.write(p.stdout[-20000:])
    sys.stderr.write(p.stderr[-5000:])
    if a.dry_run:
        n = sum(1 for line in p.stdout.splitlines() if "::" in line)
        return {"status": "skipped" if p.returncode == 0 else "failed", "reason": "dry run: collected only",
                "collected": n, "rc": p.returncode, "seconds": secs}
    res = _junit(xml)
    ok = p.returncode == 0 and res["failed"] == 0 and res["errors"] == 0 and res["passed"] > 0
    gpu_skips = sum(v for k, v in res["skip_reasons"].items() if "no usable CUDA GPU" in k)
    if gpu_skips:
        ok = False
        res["reason"] = f"{gpu_skips} GPU tests skipped: no usable GPU"
    res.update(status="ok" if ok else "failed", rc=p.returncode, seconds=secs, command=" ".join(cmd[1:] + par))
    return res


def validate_cases(dry_run: bool) -> list[list[str]]:
    """Arguments of every `llama-chat validate` run: the bundled model, then random shapes."""
    cases = [["--model", BUNDLED, "--quant", q] for q in ("fp32", "fp16", "int8")]
    for shape, layers, types in VALIDATE_RANDOM:
        for q in types:
            cases.append(["--random", shape, "--quant", q] + (["--layers", str(layers)] if layers else []))
    return cases


def step_validate(a: argparse.Namespace) -> dict:
    """`llama-chat validate --json` on every case, `jobs` at a time (each its own process)."""
    from concurrent.futures import ThreadPoolExecutor
    cases = validate_cases(a.dry_run)
    env = dict(os.environ)
    run = cases[:2] if a.dry_run else cases

    def one(args: list[str]) -> dict:
        rc, out, err, secs = run_cli(["validate", *args, "-n", str(a.steps), "--json"], a.timeout, env)
        rec = {"args": " ".join(args), "rc": rc, "seconds": round(secs, 1)}
        got = last_json(out)
        if got:
            rec.update({k: got[k] for k in ("agree", "max_dlogit", "tol", "steps", "tokens_differ", "near_ties",
                                            "weight_type") if k in got})
        if rc not in (0, 1) or not got:
            rec["error"] = (err.strip().splitlines() or ["(no output)"])[-1][:300]
        return rec

    t0 = time.perf_counter()
    with ThreadPoolExecutor(max_workers=max(1, a.jobs)) as ex:
        results = list(ex.map(one, run))
    for r in results:
        log(f"validate {r['args']}: " + (f"max |dlogit| {r['max_dlogit']:.2e} (tol {r['tol']:.1e}), "
                                          f"{'agree' if r['agree'] else 'DISAGREE'}" if "agree" in r
                                          else f"rc {r['rc']}: {r.get('error')}"))
    res: dict[str, Any] = {"cases": results, "seconds": round(time.perf_counter() - t0, 1)}
    if a.dry_run:
        # without a GPU each run must end in validate's one-line "no GPU" error, exit 2
        clean = all(r["rc"] == 2 and "\n" not in r.get("error", "") for r in results)
        res.update(status="skipped" if clean else "failed", reason="dry run: no GPU, "
                   f"{len(run)} of {len(cases)} runs made to check their one-line error", planned=len(cases))
        return res
    agree = [r for r in results if r.get("agree")]
    res.update(status="ok" if len(agree) == len(results) else "failed", agree=len(agree), total=len(results),
               worst_dlogit=max((r.get("max_dlogit", 0.0) for r in results), default=None))
    return res


def step_bench(a: argparse.Namespace) -> dict:
    """`llama-chat bench --random llama2-7b --device cuda --quant Q --json`, and the decode
    speed as a fraction of the measured copy bandwidth (weight bytes per token x tok/s)."""
    shape, device = (BENCH_DRY_SHAPE, "cpu") if a.dry_run else (BENCH_SHAPE, "cuda")
    gen, prompt, rep = (4, 4, 1) if a.dry_run else (a.gen_tokens, 128, 3)
    argv = ["bench", "--random", shape, "--device", device, "--quant", a.quant, "--json",
            "--gen-tokens", str(gen), "--prompt-tokens", str(prompt), "--repeat", str(rep)]
    rc, out, err, secs = run_cli(argv, a.timeout)
    sys.stderr.write(err[-4000:])
    got = last_json(out) or {}
    res: dict[str, Any] = {"command": "llama-chat " + " ".join(argv), "rc": rc, "seconds": round(secs, 1)}
    keep = ("decode_tok_s", "decode_runs_tok_s", "prefill_tok_s", "ttft_s", "first_forward_s", "bytes_per_token",
            "bandwidth_gb_s", "weight_type", "describe", "load_s", "params_m")
    res.update({k: got[k] for k in keep if k in got})
    if rc != 0 or not got:
        res.update(status="failed", error=(err.strip().splitlines() or ["(no output)"])[-1][:300])
        return res
    if a.dry_run:
        res.update(status="skipped", reason=f"dry run: the same command on the CPU ({shape})")
        return res
    bw = copy_bandwidth(a.work)
    if bw:
        frac = got["bytes_per_token"] * got["decode_tok_s"] / bw
        res.update(copy_bandwidth_gb_s=round(bw / 1e9, 1), fraction_of_copy_bandwidth=round(frac, 3),
                   target=TARGETS.get(a.quant), meets_target=frac >= TARGETS.get(a.quant, 0))
    res["status"] = "ok"
    log(f"bench {a.quant}: {got['decode_tok_s']:.1f} tok/s, " + (f"{100 * res['fraction_of_copy_bandwidth']:.1f}% "
        f"of copy bandwidth (target {100 * TARGETS.get(a.quant, 0):.0f}%)" if bw else "no copy bandwidth"))
    return res


def _decode_rate(be, tokens: int, pos0: int) -> tuple[float, list[int]]:
    """Greedy decode `tokens` steps (one host sync each); (tok/s, the tokens)."""
    out = []
    tok = be.argmax()
    be.synchronize()
    t0 = time.perf_counter()
    for i in range(tokens):
        be.forward([tok], pos0 + i)
        tok = be.argmax()
        out.append(tok)
    return tokens / (time.perf_counter() - t0), out


def step_speculate(a: argparse.Namespace) -> dict:
    """The speculative decode step, on and off, interleaved on one 7B int8 model pair:
    on by default only if its tokens are identical, the GPU test passes and it is faster."""
    if a.dry_run:
        return {"status": "skipped", "reason": "dry run: needs the GPU", "plan": f"{BENCH_SHAPE} int8, "
                f"{a.rounds} rounds x {a.gen_tokens} tokens, speculate off/on interleaved"}
    from inference.backends.cuda import CudaBackend
    from inference.config import SHAPES
    cfg = SHAPES[BENCH_SHAPE]
    off = CudaBackend.random(cfg, "int8", seed=1, speculate=False)
    on = CudaBackend.random(cfg, "int8", seed=1, speculate=True)
    rates: dict[str, list[float]] = {"off": [], "on": []}
    same = True
    try:
        prompt = [1 + (i * 7919) % (cfg.vocab_size - 1) for i in range(32)]
        for be in (off, on):
            be.forward(prompt, 0)
            _decode_rate(be, 4, len(prompt))   # captures the graph
        for r in range(a.rounds):
            toks = {}
            for name, be in (("off", off), ("on", on)):
                be.forward(prompt, 0)
                rate, toks[name] = _decode_rate(be, a.gen_tokens, len(prompt))
                rates[name].append(rate)
            same = same and toks["off"] == toks["on"]
    finally:
        off.close()
        on.close()
    m_off, m_on = statistics.median(rates["off"]), statistics.median(rates["on"])
    tests = read(os.path.join(a.work, "gpu_tests.json"))
    test_ok = not any("speculat" in f["test"] for f in tests.get("failures", [])) and tests.get("status") == "ok"
    speedup = m_on / m_off
    decision = "on" if same and test_ok and speedup > 1.01 else "off"
    log(f"speculation: off {m_off:.1f} tok/s, on {m_on:.1f} tok/s (x{speedup:.3f}), tokens identical {same}, "
        f"GPU tests {'pass' if test_ok else 'FAIL or missing'} -> default {decision}")
    return {"status": "ok" if same else "failed", "off_tok_s": round(m_off, 2), "on_tok_s": round(m_on, 2),
            "runs": {k: [round(v, 2) for v in vs] for k, vs in rates.items()}, "speedup": round(speedup, 4),
            "tokens_identical": same, "gpu_tests_pass": test_ok, "decision": decision}


# -- warm time to first token ----------------------------------------------------------
def _ttft_paths(work: str) -> tuple[str, str]:
    folder = os.path.join(work, "ttft")
    return folder, os.path.join(folder, "model-f16.gguf")


def write_random_gguf(path: str, shape: str, seed: int = 0) -> dict:
    """A float16 GGUF of a SHAPES entry with random weights, written one tensor at a time
    from one random pool (its values do not matter to a load-time measurement)."""
    import numpy as np

    from inference.architecture import spec, tensor_keys
    from inference.config import SHAPES
    from inference.formats.gguf_writer import TensorOut, write_gguf
    c = SHAPES[shape]
    a = c.arch
    meta = {"general.architecture": a, "general.name": f"random-{shape}", "general.file_type": 1,
            f"{a}.context_length": c.seq_len, f"{a}.embedding_length": c.dim, f"{a}.block_count": c.n_layers,
            f"{a}.feed_forward_length": c.hidden_dim, f"{a}.attention.head_count": c.n_heads,
            f"{a}.attention.head_count_kv": c.n_kv_heads, f"{a}.rope.dimension_count": c.head_dim,
            f"{a}.attention.layer_norm_rms_epsilon": c.norm_eps, f"{a}.rope.freq_base": c.rope_theta}
    rng = np.random.default_rng(seed)
    # fp16 bit patterns: random sign and mantissa, exponent 8 (|w| in [2^-7, 2^-6))
    pool = (rng.integers(0, 1 << 16, 1 << 25, dtype=np.uint16) & 0x83FF) | 0x2000
    outs = []
    for i, (name, layer) in enumerate(tensor_keys(c)):
        s = spec(name, c)
        shp = tuple(s.shape(c))
        n = int(np.prod(shp))

        def data(n=n, shp=shp, i=i, matrix=s.matrix):
            if not matrix:
                return np.ones(shp, np.float32)
            reps = -(-n // pool.size)
            flat = np.tile(pool, reps)[:n] if reps > 1 else pool[:n]
            return (flat ^ np.uint16(i & 0x7F)).view(np.float16).reshape(shp)

        outs.append(TensorOut(s.key("gguf", layer), 1 if s.matrix else 0, shp, data))
    t0 = time.perf_counter()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        write_gguf(f, meta, outs)
    return {"shape": shape, "file_gb": round(os.path.getsize(path) / 1e9, 2), "write_s": round(time.perf_counter() - t0, 1)}


def step_ttft_prepare(a: argparse.Namespace) -> dict:
    """Generate the model file and load it once (the cold start quantizes it into the
    int8 cache), in a fresh process as a user's first run would. CPU and disk only."""
    shape = TTFT_DRY_SHAPE if a.dry_run else TTFT_SHAPE
    folder, path = _ttft_paths(a.work)
    from inference.config import SHAPES
    vocab = SHAPES[shape].vocab_size
    tok = {512: "tok512.model", 32000: "tokenizer.model"}[vocab]
    res = write_random_gguf(path, shape)
    shutil.copy(os.path.join(ROOT, "tests", "data", tok), os.path.join(folder, "tokenizer.model"))
    code = ("import time, json; t0 = time.perf_counter(); from inference.loader import load_model; "
            f"m = load_model({path!r}, {os.path.join(folder, 'tokenizer.model')!r}, quant='int8'); "
            "print(json.dumps({'cold_load_s': time.perf_counter() - t0, 'weight_type': m.weights.weight_type}))")
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(a.work, "cache"))
    t0 = time.perf_counter()
    p = subprocess.run([PY, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=a.timeout, env=env)
    got = last_json(p.stdout)
    res.update(process_s=round(time.perf_counter() - t0, 1), rc=p.returncode)
    if p.returncode or not got:
        res.update(status="failed", error=(p.stderr.strip().splitlines() or ["(no output)"])[-1][:300])
        return res
    cache = glob.glob(os.path.join(a.work, "cache", "llama-chat", "quant", "*"))
    res.update(status="ok", cold_load_s=round(got["cold_load_s"], 2), weight_type=got["weight_type"],
               cache_gb=round(sum(os.path.getsize(f) for f in cache) / 1e9, 2))
    log(f"ttft prepare: {shape} fp16 {res['file_gb']} GB written in {res['write_s']} s; cold load (quantize into "
        f"the cache) {res['cold_load_s']} s")
    return res


_TTFT_CODE = """
import json, sys, time
t0 = time.perf_counter()
from inference.loader import create_backend, load_model
t1 = time.perf_counter()
m = load_model(sys.argv[1], sys.argv[2], quant="int8")
t2 = time.perf_counter()
be = create_backend(m, sys.argv[3])
t3 = time.perf_counter()
ids = m.tokenizer.encode("Once upon a time")
be.forward(ids, 0)
tok = be.argmax()
t4 = time.perf_counter()
print(json.dumps({"imports_s": t1 - t0, "load_s": t2 - t1, "backend_s": t3 - t2, "first_token_s": t4 - t3,
                  "ttft_s": t4 - t1, "prompt_tokens": len(ids), "token": tok, "weight_type": be.weight_type,
                  "describe": be.describe(), "upload": getattr(be, "upload_mode", None)}))
"""


def step_ttft(a: argparse.Namespace) -> dict:
    """Warm time to first token: fresh processes that map the int8 cache, upload it, and
    run a prompt (median of `repeat`). `ttft_s` counts from the start of load_model."""
    folder, path = _ttft_paths(a.work)
    prep = read(os.path.join(a.work, "ttft_prepare.json"))
    if prep.get("status") != "ok":
        return {"status": "failed", "reason": "ttft_prepare did not finish"}
    device = "cpu" if a.dry_run else "cuda"
    runs: dict[str, list[dict]] = {"staged": [], "plain": []}
    order = ["staged"] if a.dry_run else ["staged", "plain"] * a.repeat   # interleaved A/B
    for mode in order:
        env = dict(os.environ, XDG_CACHE_HOME=os.path.join(a.work, "cache"),
                   LLAMA_CHAT_CUDA_STAGED="1" if mode == "staged" else "0")
        t0 = time.perf_counter()
        p = subprocess.run([PY, "-c", _TTFT_CODE, path, os.path.join(folder, "tokenizer.model"), device], cwd=ROOT,
                           capture_output=True, text=True, timeout=a.timeout, env=env)
        got = last_json(p.stdout)
        if p.returncode or not got:
            return {"status": "failed", "error": (p.stderr.strip().splitlines() or ["(no output)"])[-1][:300]}
        got["process_s"] = time.perf_counter() - t0
        runs[mode].append(got)
    keys = ("imports_s", "load_s", "backend_s", "first_token_s", "ttft_s", "process_s")
    med = {m: {k: round(statistics.median(r[k] for r in rs), 3) for k in keys} for m, rs in runs.items() if rs}
    best = min(med, key=lambda m: med[m]["ttft_s"])
    first = runs["staged"][0]
    res = {"shape": prep.get("shape"), "device": device, "runs": runs, "by_upload": med, **med["staged"],
           "weight_type": first["weight_type"], "describe": first["describe"], "upload": first.get("upload"),
           "faster_upload": best}
    if a.dry_run:
        res.update(status="skipped", reason=f"dry run: the same measurement on the CPU ({prep.get('shape')})")
        return res
    res.update(status="ok", target_s=TTFT_TARGET_S, meets_target=med["staged"]["ttft_s"] < TTFT_TARGET_S)
    for m, f in med.items():
        log(f"warm ttft {prep.get('shape')} int8, {m} upload: {f['ttft_s']:.3f} s (load {f['load_s']:.3f}, "
            f"upload {f['backend_s']:.3f}, first token {f['first_token_s']:.3f}; process {f['process_s']:.2f} s)")
    return res


def step_tui(a: argparse.Namespace) -> dict:
    """The TUI on the GPU: its memory panel shows the driver's used/total, saved as SVG."""
    if a.dry_run:
        return {"status": "skipped", "reason": "dry run: needs the GPU"}
    try:
        import textual  # noqa: F401
    except ImportError:
        return {"status": "skipped", "reason": "textual is not installed here (carry its wheels in .whl/)"}
    import asyncio

    async def shoot() -> str:
        import tempfile

        from app.tui.chat_app import ChatApp
        from app.tui.store import HistoryStore
        from app.tui.widgets.memory_panel import MemoryPanel
        from inference.chat import resolve_template
        from inference.engine import Engine
        from inference.loader import create_backend, load_model
        from inference.sampler import SamplingSettings
        loaded = load_model(BUNDLED)
        engine = Engine(create_backend(loaded, "cuda"), loaded.tokenizer, SamplingSettings(seed=42, max_new_tokens=40))
        with tempfile.TemporaryDirectory() as tmp:
            store = HistoryStore.open(os.path.join(tmp, "history.db"))
            app = ChatApp(engine, resolve_template("auto", loaded.tokenizer, loaded.name, loaded.path),
                          loaded.name, store, tokenizer_id="gpu-check")
            async with app.run_test(size=(120, 36)) as pilot:
                await app.send("Once upon a time")
                while app.generating:
                    await asyncio.sleep(0.05)
                panel = app.query_one(MemoryPanel)
                panel.refresh_figures()
                await pilot.pause(0.3)
                text = str(panel.render())
                if a.out_dir:
                    app.save_screenshot("tui_gpu.svg", a.out_dir)
            store.close()
        return text

    text = asyncio.run(shoot())
    gpu_line = next((ln for ln in text.splitlines() if ln.startswith("GPU ")), None)
    return {"status": "ok" if gpu_line else "failed", "memory_panel": text, "gpu_line": gpu_line}


def step_tiles(a: argparse.Namespace) -> dict:
    """Every tile variant of the decode kernels on 7B-shaped matrices (tests/
    bench_cuda_kernels.py): data to choose LINEAR_CFG / BLOCK_CFG from, next to the
    tiles in use."""
    from inference.backends.cuda import BLOCK_CFG, LINEAR_CFG
    current = {**{k: list(v) for k, v in LINEAR_CFG.items()}, "blocks": list(BLOCK_CFG[1])}
    if a.dry_run:
        return {"status": "skipped", "reason": "dry run: needs the GPU", "current": current}
    raw = os.path.join(a.work, "tiles_raw.json")
    cmd = [PY, "tests/bench_cuda_kernels.py", "--shape", BENCH_SHAPE, "--blocks", "q4_k,q6_k,q8_0,q5_0",
           "--skip-steps", "--json", raw]
    p = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=a.timeout)
    sys.stdout.write(p.stdout[-20000:])
    sys.stderr.write(p.stderr[-5000:])
    got = read(raw)
    if p.returncode or not got:
        return {"status": "failed", "rc": p.returncode, "error": (p.stderr.strip().splitlines() or ["?"])[-1][:300]}
    best = {}
    for rec in got["linear"] + got["blocks"]:
        b = best.get(rec["type"])
        if b is None or rec["ms_per_token"] < b["ms_per_token"]:
            best[rec["type"]] = rec
    return {"status": "ok", "current": current, "best": best, "variants": got}


# -- the one JSON -------------------------------------------------------------------------
STEP_ORDER = ("env", "warm", "ttft_prepare", "gpu_tests", "validate", "bench_int8", "bench_fp16", "bench_q4_k",
              "speculate", "ttft", "tui", "tiles")


def step_assemble(a: argparse.Namespace) -> dict:
    """Every step's figures and status in one object, with the checks the issue names."""
    steps = {}
    for name in STEP_ORDER:
        got = read(os.path.join(a.work, f"{name}.json"))
        run = read(os.path.join(a.work, f"{name}.run.json"))
        if run and not got:
            got = {"status": "failed", "reason": f"the step ended with exit {run.get('rc')} and wrote nothing"}
        if run.get("skipped"):
            got = {"status": "skipped", "reason": run["skipped"]}
        if got:
            got.setdefault("wall_s", run.get("seconds"))
            steps[name] = got
    def g(name: str, key: str):
        """A figure of a step that ran for real (not skipped, not a dry run's CPU stand-in)."""
        st = steps.get(name, {})
        return st.get(key) if st.get("status") in ("ok", "failed") else None

    def check(name: str, value) -> bool | None:
        """True/False for a step that ran; None (not checked) for one skipped or missing."""
        return None if steps.get(name, {}).get("status") in (None, "skipped") else bool(value)

    checks = {
        "gpu_tests_pass": check("gpu_tests", g("gpu_tests", "status") == "ok"),
        "validate_all_agree": check("validate", g("validate", "status") == "ok"),
        **{f"bench_{q}_meets_target": check(f"bench_{q}", g(f"bench_{q}", "meets_target")) for q in TARGETS},
        "ttft_warm_under_1s": check("ttft", g("ttft", "meets_target")),
        "speculate_tokens_identical": check("speculate", g("speculate", "tokens_identical")),
        "tui_shows_gpu_memory": check("tui", g("tui", "status") == "ok"),
    }
    figures = {
        "gpu": g("env", "gpu"), "copy_bandwidth_gb_s": g("env", "copy_bandwidth_gb_s"),
        "gpu_tests": {k: g("gpu_tests", k) for k in ("passed", "failed", "errors", "skipped")},
        "validate": {"agree": g("validate", "agree"), "total": g("validate", "total"),
                     "worst_dlogit": g("validate", "worst_dlogit")},
        **{f"decode_{q}": {"tok_s": g(f"bench_{q}", "decode_tok_s"),
                           "fraction_of_copy_bandwidth": g(f"bench_{q}", "fraction_of_copy_bandwidth"),
                           "target": TARGETS[q]} for q in TARGETS},
        "ttft_warm_s": g("ttft", "ttft_s"), "ttft_by_upload": g("ttft", "by_upload"),
        "speculate": {k: g("speculate", k) for k in ("decision", "speedup", "off_tok_s", "on_tok_s")},
    }
    env = steps.get("env", {})
    return {"status": "ok", "dry_run": a.dry_run, "commit": env.get("commit"), "dirty": env.get("dirty"),
            "total_s": a.total_s, "checks": checks, "figures": figures, "steps": steps}


STEPS: dict[str, Callable[[argparse.Namespace], dict]] = {
    "env": step_env, "warm": step_warm, "gpu_tests": step_gpu_tests, "validate": step_validate,
    "bench": step_bench, "speculate": step_speculate, "ttft_prepare": step_ttft_prepare, "ttft": step_ttft,
    "tui": step_tui, "tiles": step_tiles, "assemble": step_assemble,
}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="steps.py", description=__doc__.splitlines()[0])
    p.add_argument("step", choices=sorted(STEPS))
    p.add_argument("--work", required=True, help="the run's folder: every step reads and writes its JSON there")
    p.add_argument("--dry-run", action="store_true", help="no GPU: run the parts that need none")
    p.add_argument("--out", help="where to write this step's JSON (default WORK/STEP.json)")
    p.add_argument("--out-dir", help="folder for extra files (the TUI screenshot)")
    p.add_argument("--quant", default="int8", help="bench: weight type")
    p.add_argument("--jobs", type=int, default=4, help="parallel processes (validate, gpu_tests)")
    p.add_argument("--steps", type=int, default=8, help="validate: decode steps per case")
    p.add_argument("--gen-tokens", type=int, default=128, help="bench/speculate: tokens decoded per run")
    p.add_argument("--rounds", type=int, default=4, help="speculate: interleaved rounds")
    p.add_argument("--repeat", type=int, default=2, help="ttft: fresh processes per upload mode")
    p.add_argument("--timeout", type=float, default=300, help="seconds a sub-process may take")
    p.add_argument("--total-s", type=float, default=None, help="assemble: the whole run's seconds")
    a = p.parse_args(argv)
    os.makedirs(a.work, exist_ok=True)
    name = a.step if a.step != "bench" else f"bench_{a.quant}"
    out = a.out or os.path.join(a.work, "gpu_check.json" if a.step == "assemble" else f"{name}.json")
    try:
        res = STEPS[a.step](a)
    except Exception as e:  # a step that breaks is a failed step, with its reason in the JSON
        import traceback
        traceback.print_exc()
        res = {"status": "failed", "error": f"{type(e).__name__}: {e}"[:500]}
    write(out, res)
    return 0 if res.get("status") in ("ok", "skipped") else 1


if __name__ == "__main__":
    sys.exit(main())
