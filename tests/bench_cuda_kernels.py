"""Per-kernel timings on the GPU, to see where a decode step goes (a tuning aid).

    PYTHONPATH=. python3 tests/bench_cuda_kernels.py [--blocks q4_k,q6_k] [--skip-variants] [--json OUT]

Times each 7B-shaped matrix-vector product for fp16 and int8 under a few tile
configurations of linear.cu (compiled here with -D overrides), the same for the block
types of linear_blocks.cu (`--blocks`), the split-key attention at a few positions, and a
whole decode step (graph replays, no host sync in between).
"""
from __future__ import annotations

import argparse
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

import numpy as np

from inference.backends.cuda import MODE_STORE, CudaBackend, LinearArgs, PartArgs
from inference.backends.cuda_layout import BLOCK_CODES, plane_bytes
from inference.config import SHAPES
from kernels import cuda_compile as cc, cuda_driver as cu


def time_launches(stream: cu.Stream, dev: cu.Device, fn, reps: int = 40) -> float:
    """Mean µs per call of fn(), replayed from a CUDA graph of `reps` calls (so Python's
    launch cost is not what is measured; the graph's kernel-to-kernel gaps are)."""
    g = cu.Graph(stream, lambda: [fn() for _ in range(reps)])
    g.launch()
    a, b = cu.Event(dev, timing=True), cu.Event(dev, timing=True)
    a.record(stream)
    for _ in range(5):
        g.launch()
    b.record(stream)
    b.synchronize()
    g.destroy()
    return b.elapsed_ms(a) * 1e3 / (5 * reps)


#: (warps per block, rows per warp, warps sharing rows, vectors in flight)
VARIANTS = [(4, 4, 1, 2), (4, 2, 1, 4), (4, 4, 2, 2), (4, 4, 4, 2), (4, 2, 2, 4), (4, 2, 4, 4),
            (8, 4, 4, 2), (8, 2, 4, 4), (8, 4, 8, 2), (4, 4, 4, 4)]


def _compile(job: tuple[str, str, tuple[str, ...]]) -> bytes:
    name, arch, defines = job
    src = (cc.SOURCE_DIR / f"{name}.cu").read_text()
    return cc.compile_source(src, name, arch, cc.OPTIONS + ("-DDECODE_ONLY",) + defines)


def compile_variants(arch: str, blocks: bool) -> dict[tuple[str, tuple[int, ...]], bytes]:
    """Every tile variant's decode-only cubin, compiled side by side (spawned processes)."""
    jobs = [("linear", v, (f"-DCFG1={','.join(map(str, v))}", f"-DCFG2={','.join(map(str, v))}")) for v in VARIANTS]
    if blocks:
        jobs += [("linear_blocks", v, (f"-DCFGB={','.join(map(str, v))}",)) for v in BLOCK_VARIANTS]
    with ProcessPoolExecutor(mp_context=multiprocessing.get_context("spawn")) as ex:
        cubins = list(ex.map(_compile, [(name, arch, d) for name, _, d in jobs]))
    return {(name, v): c for (name, v, _), c in zip(jobs, cubins)}


def linear_variants(dev: cu.Device, cfg, cubins: dict, results: list) -> None:
    s = cu.Stream(dev)
    sample = cu.Module(dev, cc.get_cubin("sample", dev.arch), "sample")
    fill8 = sample.kernel("fill_i8", "pqq")
    shapes = {"wqkv": (cfg.dim + 2 * cfg.kv_dim, cfg.dim), "wo": (cfg.dim, cfg.dim),
              "w13": (2 * cfg.hidden_dim, cfg.dim), "w2": (cfg.dim, cfg.hidden_dim),
              "cls": (cfg.vocab_size, cfg.dim)}
    big = max(r * c for r, c in shapes.values()) * 2
    W = cu.Buffer(dev, big)
    S = cu.Buffer(dev, big // 16)
    fill8.launch(s, (4096,), 256, 0, W.ptr, big, 1)
    s.memset32(S.ptr, int(np.float32(1e-3).view(np.uint32)), big // 64)
    X = cu.Buffer(dev, 4 * cfg.hidden_dim)
    s.memset32(X.ptr, int(np.float32(0.5).view(np.uint32)), cfg.hidden_dim)
    Y = cu.Buffer(dev, 4 * 2 * cfg.vocab_size)
    for warps, r, ks, u in VARIANTS:
        mod = cu.Module(dev, cubins[("linear", (warps, r, ks, u))], "linear")
        line = []
        for wt, code, vec, nbytes in (("fp16", 1, 8, 2), ("int8", 2, 16, 1)):
            k = mod.kernel(f"linear_w{code}_v{vec}_t1", "s")
            tot_us = tot_b = 0.0
            for name, (rows, ind) in shapes.items():
                a = _args(rows, ind, X.ptr, Y.ptr, cfg, PartArgs(W=W.ptr, S=S.ptr if code == 2 else 0, rows=rows))
                grid = (-(-rows // (warps // ks * r)), 1)
                us = time_launches(s, dev, lambda: k.launch(s, grid, warps * 32, 0, a))
                b = rows * ind * nbytes + (rows * ind // 64 * 4 if code == 2 else 0)
                tot_us += us * (cfg.n_layers if name != "cls" else 1)
                tot_b += b * (cfg.n_layers if name != "cls" else 1)
                line.append(f"{wt}:{name} {us:.1f}us {b / us / 1e3:.0f}GB/s")
            line.append(f"{wt} all-matrices {tot_us / 1e3:.3f} ms/token ({tot_b / tot_us / 1e3:.0f} GB/s)")
            results.append({"type": wt, "tile": [warps, r, ks, u], "ms_per_token": round(tot_us / 1e3, 4),
                            "gb_s": round(tot_b / tot_us / 1e3, 1)})
        print(f"NW={warps} R={r} KS={ks} U={u}: " + " | ".join(line), flush=True)
        mod.unload()
    s.synchronize()
    for b in (W, S, X, Y):
        b.free()


def _args(rows: int, ind: int, x: int, y: int, cfg, part: PartArgs) -> LinearArgs:
    """A plain y = W x launch (MODE_STORE) of one part."""
    a = LinearArgs(nparts=1, rows=rows, in_dim=ind, gsize=64, x=x, ntok=1, eps=1e-5, mode=MODE_STORE, out=y,
                   q_dim=cfg.q_dim, kv_dim=cfg.kv_dim, head_dim=cfg.head_dim, ctx=1)
    a.part[0] = part
    return a


#: linear_blocks.cu decode tiles to try (warps per block, rows per warp, warps sharing rows, units in flight)
BLOCK_VARIANTS = [(4, 4, 2, 2), (4, 4, 1, 2), (4, 2, 2, 2), (4, 2, 1, 4), (4, 4, 4, 1), (8, 4, 4, 2), (4, 2, 4, 2)]


def block_variants(dev: cu.Device, cfg, types: list[str], cubins: dict, results: list) -> None:
    """Each block type's 7B-shaped matrices under each decode tile, in GB/s of weight bytes."""
    s = cu.Stream(dev)
    sample = cu.Module(dev, cc.get_cubin("sample", dev.arch), "sample")
    fill = sample.kernel("fill_u32", "pqq")
    setu16 = sample.kernel("set_u16", "pqqi")
    shapes = {"wqkv": (cfg.dim + 2 * cfg.kv_dim, cfg.dim), "wo": (cfg.dim, cfg.dim),
              "w13": (2 * cfg.hidden_dim, cfg.dim), "w2": (cfg.dim, cfg.hidden_dim), "cls": (cfg.vocab_size, cfg.dim)}
    X = cu.Buffer(dev, 4 * cfg.hidden_dim)
    s.memset32(X.ptr, int(np.float32(0.5).view(np.uint32)), cfg.hidden_dim)
    Y = cu.Buffer(dev, 4 * 2 * cfg.vocab_size)
    for wt in types:
        planes = {}
        for name, (rows, ind) in shapes.items():
            bufs = [cu.Buffer(dev, n) for n in plane_bytes(wt, rows, ind)]
            for b in bufs:
                fill.launch(s, (4096,), 256, 0, b.ptr, b.nbytes // 4, 7)
            # finite fp16 scales: every u16 of the side planes set to a small value is enough here
            for b in bufs[1:]:
                setu16.launch(s, (4096,), 256, 0, b.ptr, b.nbytes // 2, 1, int(np.float16(1e-3).view(np.uint16)))
            planes[name] = bufs
        for warps, r, ks, u in BLOCK_VARIANTS:
            mod = cu.Module(dev, cubins[("linear_blocks", (warps, r, ks, u))], "linear_blocks")
            k = mod.kernel("linear_blocks_t1", "s")
            line, tot_us, tot_b = [], 0.0, 0.0
            for name, (rows, ind) in shapes.items():
                bufs = planes[name]
                part = PartArgs(W=bufs[0].ptr, S=bufs[1].ptr if len(bufs) > 1 else 0,
                                S2=bufs[2].ptr if len(bufs) > 2 else 0, type=BLOCK_CODES[wt], rows=rows)
                a = _args(rows, ind, X.ptr, Y.ptr, cfg, part)
                grid = (-(-rows // (warps // ks * r)), 1)
                us = time_launches(s, dev, lambda: k.launch(s, grid, warps * 32, 0, a))
                b = sum(x.nbytes for x in bufs)
                n = cfg.n_layers if name != "cls" else 1
                tot_us, tot_b = tot_us + us * n, tot_b + b * n
                line.append(f"{name} {us:.1f}us {b / us / 1e3:.0f}GB/s")
            print(f"{wt} NW={warps} R={r} KS={ks} U={u}: " + " | ".join(line)
                  + f" | all-matrices {tot_us / 1e3:.3f} ms/token ({tot_b / tot_us / 1e3:.0f} GB/s)", flush=True)
            results.append({"type": wt, "tile": [warps, r, ks, u], "ms_per_token": round(tot_us / 1e3, 4),
                            "gb_s": round(tot_b / tot_us / 1e3, 1)})
            mod.unload()
        for bufs in planes.values():
            for b in bufs:
                b.free()
    s.synchronize()
    X.free()
    Y.free()


def step_timing(cfg, quant: str) -> None:
    be = CudaBackend.random(cfg, quant, seed=2)
    try:
        for pos_start in (16, 1024):
            be.forward([3] * 8, pos_start - 8)
            be.forward([5], pos_start)
            be.synchronize()
            n = 50
            t0 = time.perf_counter()
            for i in range(n):
                be.forward([7], pos_start + 1 + i)
            be.synchronize()
            dt = (time.perf_counter() - t0) / n
            print(f"{quant} graph replay at pos ~{pos_start}: {dt * 1e3:.3f} ms/step (no host sync between steps)",
                  flush=True)
        # attention alone, from the graph's own launch parameters
        sh = be._shards[0]
        B = sh.bufs
        kc = B["kcache"].ptr
        for pos in (16, 256, 2048):
            be._host[0] = (5, pos, 0)
            sh.stream.upload_async(B["seq"], be._host[:1])
            c = be.config
            us = time_launches(sh.stream, sh.device, lambda: sh.kernels["attention"].launch(
                sh.stream, (c.n_heads, be._nsplit, 1), 128, be._attn_smem(), B["q"].ptr, kc, B["vcache"].ptr,
                B["att"].ptr, B["seq"].ptr, c.q_dim, c.kv_dim, c.head_dim, c.kv_mul, 0.088, c.seq_len,
                B["attn_part"].ptr, B["attn_count"].ptr))
            print(f"attention (one layer) at pos {pos}: {us:.1f} us, nsplit {be._nsplit}", flush=True)
    finally:
        be.close()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--shape", default="llama2-7b", choices=sorted(SHAPES))
    p.add_argument("--skip-variants", action="store_true")
    p.add_argument("--blocks", default="", help="block types to time under each tile, e.g. q4_k,q6_k")
    p.add_argument("--skip-steps", action="store_true", help="only the tile variants, not whole decode steps")
    p.add_argument("--json", metavar="OUT", help="also write every variant's figures to OUT")
    a = p.parse_args()
    dev = cu.Device(0)
    cfg = SHAPES[a.shape]
    types = [t for t in a.blocks.split(",") if t]
    out: dict = {"shape": a.shape, "gpu": dev.name, "linear": [], "blocks": []}
    if not a.skip_variants:
        t0 = time.perf_counter()
        cubins = compile_variants(dev.arch, bool(types))
        print(f"compiled {len(cubins)} tile variants in {time.perf_counter() - t0:.1f} s", flush=True)
        linear_variants(dev, cfg, cubins, out["linear"])
        if types:
            block_variants(dev, cfg, types, cubins, out["blocks"])
    if not a.skip_steps:
        for q in ("int8", "fp16", *types):
            step_timing(cfg, q)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)


if __name__ == "__main__":
    main()
