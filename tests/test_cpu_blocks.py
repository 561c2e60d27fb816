"""kernels.cpu_blocks against gguf-py's own dequantization (an independent implementation).

dequant_row must equal `gguf.quants.dequantize` bit for bit; row_dot must equal a float64
dot of those values with x up to fp32 rounding: within gamma_k * sum|w_i x_i|, where
k bounds the additions any one product passes through (a lane's chain over the row, the
tree of accumulators and the final 16-lane reduction).
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

gguf = pytest.importorskip("gguf")
from gguf import GGMLQuantizationType as T  # noqa: E402

from kernels import cpu_blocks as cb  # noqa: E402
from numba import njit  # noqa: E402


@njit(cache=False)
def row_dot_xs(code, w, s, gs, x, xs):
    return cb.row_dot_xs(code, w, s, gs, x, xs)


@njit(cache=False)
def block_sums(x, xs):
    cb.block_sums(x, xs)


@njit(cache=False)
def row_dot_multi(code, w, s, gs, x, xs, t0, t1, t2, t3):
    out = np.full(cb.MULTI, np.nan, np.float32)
    cb.row_dot_multi(code, w, s, gs, x, xs, (t0, t1, t2, t3), out)
    return out


@njit(cache=False)
def row_dot_pair(code, w, s, gs, x, xs, t0, t1):
    out = np.full(2, np.nan, np.float32)
    cb.row_dot_pair(code, w, s, gs, x, xs, t0, t1, out)
    return out


@njit(cache=False)
def rows_dot_multi(code, wa, sa, wb, sb, gs, x, xs, t0, t1, t2, t3):
    out = np.full(2 * cb.MULTI, np.nan, np.float32)
    cb.rows_dot_multi(code, wa, sa, wb, sb, gs, x, xs, (t0, t1, t2, t3), out)
    return out


@njit(cache=False)
def rows_dot_pair(code, wa, sa, wb, sb, gs, x, xs, t0, t1):
    out = np.full(4, np.nan, np.float32)
    cb.rows_dot_pair(code, wa, sa, wb, sb, gs, x, xs, t0, t1, out)
    return out

GGUF_TYPE = {
    cb.F32: T.F32, cb.F16: T.F16, cb.BF16: T.BF16,
    cb.Q4_0: T.Q4_0, cb.Q4_1: T.Q4_1, cb.Q5_0: T.Q5_0, cb.Q5_1: T.Q5_1, cb.Q8_0: T.Q8_0,
    cb.Q2_K: T.Q2_K, cb.Q3_K: T.Q3_K, cb.Q4_K: T.Q4_K, cb.Q5_K: T.Q5_K, cb.Q6_K: T.Q6_K,
    cb.IQ4_NL: T.IQ4_NL, cb.IQ4_XS: T.IQ4_XS,
}
BLOCK_TYPES = [c for c in GGUF_TYPE if cb.BLOCK[c][0] > 1]

#: byte offsets of each block type's fp16 scale fields (d, and dmin where it has one)
HALF_FIELDS = {cb.Q4_0: [0], cb.Q4_1: [0, 2], cb.Q5_0: [0], cb.Q5_1: [0, 2], cb.Q8_0: [0],
               cb.Q2_K: [80, 82], cb.Q3_K: [108], cb.Q4_K: [0, 2], cb.Q5_K: [0, 2],
               cb.Q6_K: [208], cb.IQ4_NL: [0], cb.IQ4_XS: [0]}

#: fp16 scales beyond the ordinary: smallest subnormal and normal, zero, -0, the
#: largest finite values, and negatives
EXTREME_HALVES = np.array([2.0 ** -24, -(2.0 ** -24), 2.0 ** -14, 0.0, -0.0, 65504.0, -65504.0,
                           -1.0, 1.0, -0.0123, 3.5, 1000.0], dtype=np.float16)

DUMMY = np.zeros(1, dtype=np.float32)
EPS32 = 2.0 ** -24


def gguf_values(code: int, w: np.ndarray) -> np.ndarray:
    return np.asarray(gguf.quants.dequantize(w, GGUF_TYPE[code]), dtype=np.float32).ravel()


def with_halves(code: int, blocks: np.ndarray, halves: np.ndarray) -> np.ndarray:
    """blocks (n, bytes) with every fp16 scale field set from `halves` (cycled)."""
    blocks = blocks.copy()
    k = 0
    for off in HALF_FIELDS[code]:
        vals = np.resize(np.roll(halves, k), len(blocks)).astype(np.float16)
        blocks[:, off:off + 2] = vals.view(np.uint8).reshape(-1, 2)
        k += 3
    return blocks


def dot_bound(n: int, w: np.ndarray, x: np.ndarray) -> float:
    """gamma_k * sum|w_i x_i| with k = a lane's additions (n / 64 with four 16-lane
    accumulators) + a generous 32 for the trees, the products and the reduction."""
    k = n // 64 + 32
    return k * EPS32 / (1 - k * EPS32) * float(np.abs(w.astype(np.float64) * x).sum())


def check_row(code: int, w: np.ndarray, rng: np.random.Generator, s: np.ndarray = DUMMY, gs: int = 0,
              expect: np.ndarray | None = None) -> None:
    ref = gguf_values(code, w) if expect is None else expect
    n = ref.size
    out = np.full(n, np.nan, dtype=np.float32)
    cb.dequant_row(code, w, s, gs, out)
    np.testing.assert_array_equal(out, ref, err_msg=f"{cb.NAMES[code]} dequant_row, n={n}")
    x = rng.standard_normal(n).astype(np.float32)
    got = float(cb.row_dot(code, w, s, gs, x))
    exact = float(np.dot(ref.astype(np.float64), x.astype(np.float64)))
    assert abs(got - exact) <= dot_bound(n, ref, x), (cb.NAMES[code], n, got, exact)


@pytest.mark.parametrize("code", BLOCK_TYPES, ids=lambda c: cb.NAMES[c])
def test_block_types_random(code: int) -> None:
    """Random quant bytes under random and extreme fp16 scales, rows of 1 and several
    blocks (odd block counts, so rows start at odd addresses inside the buffer)."""
    rng = np.random.default_rng(code)
    per, nbytes = cb.BLOCK[code]
    for n_blocks in (1, 3, 8, 13):
        raw = rng.integers(0, 256, (n_blocks, nbytes), dtype=np.uint8)
        normal = rng.standard_normal(n_blocks * 2).astype(np.float16)
        for halves in (normal, EXTREME_HALVES):
            blocks = with_halves(code, raw, rng.permutation(halves))
            # an odd offset into a bigger buffer: the row is as unaligned as in a file
            buf = np.zeros(blocks.size + 7, dtype=np.uint8)
            w = buf[3:3 + blocks.size]
            w[:] = blocks.ravel()
            check_row(code, w, rng)


@pytest.mark.parametrize("code", BLOCK_TYPES, ids=lambda c: cb.NAMES[c])
def test_block_types_every_bit(code: int) -> None:
    """One block per bit of the block (outside the fp16 fields): all-zero bytes with
    that bit set, and all-one bytes with it cleared. Catches any quant, high-bit or
    packed-scale bit read from the wrong place."""
    rng = np.random.default_rng(100 + code)
    per, nbytes = cb.BLOCK[code]
    halves = set()
    for off in HALF_FIELDS[code]:
        halves.update((off, off + 1))
    bits = [(i, b) for i in range(nbytes) if i not in halves for b in range(8)]
    for base in (0x00, 0xFF):
        blocks = np.full((len(bits), nbytes), base, dtype=np.uint8)
        for k, (i, b) in enumerate(bits):
            blocks[k, i] ^= np.uint8(1 << b)
        blocks = with_halves(code, blocks, np.array([1.0, -0.5, 0.25, 3.0], dtype=np.float16))
        ref = gguf_values(code, blocks.ravel()).reshape(len(bits), per)
        check_row(code, blocks.ravel(), rng, expect=ref.ravel())   # every block in one row
        for k in range(0, len(bits), max(1, len(bits) // 64)):     # and single blocks
            check_row(code, blocks[k].copy(), rng, expect=ref[k])


@pytest.mark.parametrize("code", [cb.F32, cb.F16, cb.BF16], ids=lambda c: cb.NAMES[c])
def test_float_types(code: int) -> None:
    rng = np.random.default_rng(200 + code)
    for n in (1, 15, 16, 17, 63, 64, 65, 172, 768):
        vals = rng.standard_normal(n).astype(np.float32) * np.float32(rng.choice([1e-3, 1.0, 300.0]))
        if code == cb.F32:
            w = vals.view(np.uint8)
        elif code == cb.F16:
            h = vals.astype(np.float16)
            h[::7] = np.resize(EXTREME_HALVES, h[::7].size)
            w = h.view(np.uint8)
        else:
            bits = vals.view(np.uint32) >> 16
            w = bits.astype(np.uint16).view(np.uint8)
        buf = np.zeros(w.size + 3, dtype=np.uint8)   # odd address
        wu = buf[1:1 + w.size]
        wu[:] = w
        check_row(code, wu, rng)


@pytest.mark.parametrize("n,gs", [(768, 32), (768, 64), (2048, 128), (96, 48), (172, 4), (172, 43), (32, 32)])
def test_int8_groups(n: int, gs: int) -> None:
    """I8 rows (int8 values, one float32 scale per gs values) against numpy."""
    rng = np.random.default_rng(n + gs)
    q = rng.integers(-128, 128, n, dtype=np.int8)
    q[:4] = [-128, 127, 0, -1]
    s = (rng.standard_normal(n // gs) * 0.01).astype(np.float32)
    s[0] = 0.0
    ref = q.astype(np.float32) * np.repeat(s, gs)
    check_row(cb.I8, q.view(np.uint8), rng, s=s, gs=gs, expect=ref)


def test_q4_k_with_block_sums() -> None:
    """row_dot_xs: Q4_K with its mins factored out through the block sums of x, within
    fp32 rounding of sum (|d sc q| + |dmin m|) |x| (the two sums it subtracts); other
    types give exactly row_dot's result."""
    rng = np.random.default_rng(11)
    for n_blocks in (1, 3, 5):
        raw = rng.integers(0, 256, (n_blocks, 144), dtype=np.uint8)
        for halves in (rng.standard_normal(8).astype(np.float16), EXTREME_HALVES):
            blocks = with_halves(cb.Q4_K, raw, rng.permutation(halves))
            w = blocks.ravel()
            ref = gguf_values(cb.Q4_K, w)
            x = rng.standard_normal(ref.size).astype(np.float32)
            xs = np.empty(ref.size // 32, dtype=np.float32)
            block_sums(x, xs)
            np.testing.assert_allclose(xs, x.reshape(-1, 32).sum(axis=1), rtol=1e-5, atol=1e-5)
            _, mins = gguf.quants.Q4_K.get_scale_min(blocks[:, 4:16])
            dmin = blocks[:, 2:4].copy().view(np.float16).astype(np.float64)
            m = np.repeat((dmin * mins).ravel(), 32)            # |dmin * m| per value
            k = ref.size // 64 + 32
            bound = k * EPS32 * float(((np.abs(ref) + 2 * np.abs(m)) * np.abs(x)).sum())
            exact = float(np.dot(ref.astype(np.float64), x))
            got = float(row_dot_xs(cb.Q4_K, w, DUMMY, 0, x, xs))
            assert abs(got - exact) <= bound, (got, exact, bound)
    w = rng.integers(0, 256, 3 * 18, dtype=np.uint8)
    x = rng.standard_normal(96).astype(np.float32)
    xs = x.reshape(-1, 32).sum(axis=1).astype(np.float32)
    assert row_dot_xs(cb.Q4_0, w, DUMMY, 0, x, xs) == cb.row_dot(cb.Q4_0, w, DUMMY, 0, x)


@pytest.mark.parametrize("code", BLOCK_TYPES + [cb.I8, cb.F16, cb.F32, cb.BF16], ids=lambda c: cb.NAMES[c])
def test_multi_token_dot_is_the_single_token_dot(code: int) -> None:
    """row_dot_multi and row_dot_pair (a row's blocks decoded once for MULTI or 2 tokens,
    the batched decode path), and their two-row forms, give each token exactly
    row_dot_xs's float32 result, bit for bit, also with tokens repeated as padding: a
    sequence's output cannot depend on its batch."""
    rng = np.random.default_rng(300 + code)
    per, nbytes = cb.BLOCK[code]
    n = 512 if per > 1 else 172
    if code == cb.I8:
        n = 768

    def one_row(gs):
        if per > 1:
            raw = rng.integers(0, 256, (n // per, nbytes), dtype=np.uint8)
            w = with_halves(code, raw, rng.standard_normal(8).astype(np.float16)).ravel()
        elif code == cb.I8:
            w = rng.integers(0, 256, n, dtype=np.uint8)
        else:
            vals = rng.standard_normal(n).astype(np.float32)
            w = {cb.F32: vals.view(np.uint8), cb.F16: vals.astype(np.float16).view(np.uint8),
                 cb.BF16: (vals.view(np.uint32) >> 16).astype(np.uint16).view(np.uint8)}[code]
        s = (rng.random(n // gs) + 0.5).astype(np.float32) if gs else DUMMY
        return w, s

    for trial in range(3):
        gs = (32, 64, 128)[trial] if code == cb.I8 else 0
        (w, s), (wb, sb) = one_row(gs), one_row(gs)
        x = rng.standard_normal((6, n)).astype(np.float32)
        xs = np.zeros((6, n // 32), np.float32)         # block sums (Q4_K uses them)
        for t in range(6):
            block_sums(x[t], xs[t])
        solo = np.array([row_dot_xs(code, w, s, gs, x[t], xs[t]) for t in range(6)], dtype=np.float32)
        solo_b = np.array([row_dot_xs(code, wb, sb, gs, x[t], xs[t]) for t in range(6)], dtype=np.float32)
        for ts in ((0, 1, 2, 3), (5, 4, 3, 2), (1, 1, 1, 1), (4, 0, 4, 0)):
            got = row_dot_multi(code, w, s, gs, x, xs, *ts)
            np.testing.assert_array_equal(got, solo[list(ts)], err_msg=f"{cb.NAMES[code]} tokens {ts}")
            got = row_dot_pair(code, w, s, gs, x, xs, *ts[:2])
            np.testing.assert_array_equal(got, solo[list(ts[:2])], err_msg=f"{cb.NAMES[code]} pair {ts[:2]}")
            # two rows at once (the forward's batched path), also one row run as both
            got = rows_dot_multi(code, w, s, wb, sb, gs, x, xs, *ts)
            np.testing.assert_array_equal(got, np.concatenate([solo[list(ts)], solo_b[list(ts)]]),
                                          err_msg=f"{cb.NAMES[code]} two rows, tokens {ts}")
            got = rows_dot_multi(code, w, s, w, s, gs, x, xs, *ts)
            np.testing.assert_array_equal(got, np.concatenate([solo[list(ts)]] * 2))
            got = rows_dot_pair(code, w, s, wb, sb, gs, x, xs, *ts[:2])
            np.testing.assert_array_equal(got, np.concatenate([solo[list(ts[:2])], solo_b[list(ts[:2])]]),
                                          err_msg=f"{cb.NAMES[code]} two rows, pair {ts[:2]}")


def test_unknown_code_raises() -> None:
    w = np.zeros(64, dtype=np.uint8)
    x = np.zeros(32, dtype=np.float32)
    with pytest.raises(ValueError):
        cb.row_dot(99, w, DUMMY, 0, x)
    with pytest.raises(ValueError):
        cb.dequant_row(99, w, DUMMY, 0, x)


def test_layout_table() -> None:
    """BLOCK matches ggml's sizes (as gguf-py records them); row_nbytes follows it."""
    for code, t in GGUF_TYPE.items():
        assert cb.BLOCK[code] == gguf.constants.GGML_QUANT_SIZES[t], cb.NAMES[code]
    assert cb.BLOCK[cb.I8] == (1, 1)
    assert cb.row_nbytes(cb.Q4_0, 576) == 324
    assert cb.row_nbytes(cb.Q6_K, 768) == 630
    with pytest.raises(ValueError):
        cb.row_nbytes(cb.Q4_K, 576)


def test_rows_from_addresses_in_a_parallel_loop() -> None:
    """The way the forward calls it: rows made by row_at from raw addresses inside a
    prange body of a parallel function in another module."""
    from numba import njit, prange

    @njit(parallel=True, cache=False)
    def matvec(code, addr, rows, rb, x, out):
        for i in prange(rows):
            out[i] = cb.row_dot(code, cb.row_at(addr + i * rb, rb), x[:1], 0, x)

    rng = np.random.default_rng(7)
    rows, n = 37, 576   # 576 = 18 Q4_0 blocks: 324-byte rows, every other one at an odd address
    blocks = with_halves(cb.Q4_0, rng.integers(0, 256, (rows * n // 32, 18), dtype=np.uint8),
                         rng.standard_normal(64).astype(np.float16))
    w = blocks.ravel()
    x = rng.standard_normal(n).astype(np.float32)
    out = np.empty(rows, dtype=np.float32)
    matvec(cb.Q4_0, w.ctypes.data, rows, 324, x, out)
    ref = gguf_values(cb.Q4_0, w).reshape(rows, n).astype(np.float64) @ x
    for i in range(rows):
        assert abs(out[i] - ref[i]) <= dot_bound(n, gguf_values(cb.Q4_0, w[i * 324:(i + 1) * 324]), x)


PORTABLE = '''
import sys
import numpy as np
import gguf
from kernels import cpu_blocks as cb
from kernels.numba_setup import HAS_AVX512
assert not HAS_AVX512
sys.path.insert(0, sys.argv[1])
import test_cpu_blocks as t
rng = np.random.default_rng(5)
for code in t.BLOCK_TYPES:
    per, nbytes = cb.BLOCK[code]
    blocks = t.with_halves(code, rng.integers(0, 256, (3, nbytes), dtype=np.uint8),
                           rng.standard_normal(8).astype(np.float16))
    t.check_row(code, blocks.ravel(), rng)
print("ok")
'''


def test_without_avx512(tmp_path) -> None:
    """The portable code paths (what replaces vpermps and vpternlogd on CPUs without
    AVX-512) give the same results: compiled in a subprocess told the CPU has none."""
    import llvmlite.binding as llvm
    feats = ",".join(("-" + f[1:]) if f[1:].startswith("avx512") else f
                     for f in llvm.get_host_cpu_features().flatten().split(","))
    if "+avx2" not in feats:
        pytest.skip("host has no AVX2")
    env = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_")}
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env.update(NUMBA_CPU_FEATURES=feats, NUMBA_CACHE_DIR=str(tmp_path), PYTHONPATH=root)
    run = subprocess.run([sys.executable, "-c", PORTABLE, os.path.dirname(os.path.abspath(__file__))],
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0 and run.stdout.strip() == "ok", run.stderr[-2000:]


# ---- numba_setup: where the compiled kernels are cached --------------------------------
PROBE = '''
import sys
from kernels import cpu_blocks  # noqa: F401  (decorates every kernel: fails without a locator)
from kernels.numba_setup import CACHE
import numba
from numba import njit

@njit(cache=CACHE)
def probe(a):
    return a + 1

assert probe(41) == 42
print(CACHE, numba.config.CACHE_DIR or "", sum(probe.stats.cache_hits.values()), sep="|")
'''


def _copy_kernels(tmp_path) -> str:
    """A copy of the kernels package whose own __pycache__ cannot be created (a plain
    file sits where it would go: unwritable even for root, like a read-only install)."""
    root = tmp_path / "install"
    pkg = root / "kernels"
    pkg.mkdir(parents=True)
    src = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "kernels")
    for name in ("__init__.py", "numba_setup.py", "numba_gil.py", "cpu_blocks.py"):
        shutil.copy(os.path.join(src, name), pkg / name)
    (pkg / "__pycache__").write_text("not a directory")
    (root / "probe.py").write_text(PROBE)
    return str(root)


def _run_probe(root: str, env: dict) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if not k.startswith("NUMBA_") and k not in ("XDG_CACHE_HOME",)}
    full.update(env, PYTHONPATH=root, PYTHONDONTWRITEBYTECODE="1")
    return subprocess.run([sys.executable, os.path.join(root, "probe.py")], cwd=root, env=full,
                          capture_output=True, text=True, timeout=120)


def test_cache_moves_to_user_dir_when_install_is_read_only(tmp_path) -> None:
    root = _copy_kernels(tmp_path)
    xdg = tmp_path / "xdg"
    env = {"XDG_CACHE_HOME": str(xdg), "HOME": str(tmp_path / "home")}
    first = _run_probe(root, env)
    assert first.returncode == 0, first.stderr
    assert "warning" not in first.stderr
    cache, cache_dir, hits = first.stdout.strip().split("|")
    assert (cache, hits) == ("True", "0")
    assert cache_dir == str(xdg / "llama-chat" / "numba")
    assert any(f.endswith(".nbi") for _, _, fs in os.walk(cache_dir) for f in fs)
    second = _run_probe(root, env)   # the next run loads the compiled probe
    assert second.returncode == 0, second.stderr
    assert second.stdout.strip().split("|")[2] == "1"


def test_cache_off_with_one_warning_when_nothing_is_writable(tmp_path) -> None:
    root = _copy_kernels(tmp_path)
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    env = {"XDG_CACHE_HOME": str(blocker / "xdg"), "HOME": str(blocker / "home")}
    run = _run_probe(root, env)
    assert run.returncode == 0, run.stderr
    notes = [ln for ln in run.stderr.splitlines() if ln.strip()]
    assert len(notes) == 1 and notes[0].startswith("llama-chat: warning:"), run.stderr
    assert run.stdout.strip().split("|")[0] == "False"
