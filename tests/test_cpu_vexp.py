"""The vector exponentials of the CPU forward (softmax, SwiGLU) against float64 numpy,
and a value's result independent of where it sits in the vector loop."""
from __future__ import annotations

import numpy as np
from numba import njit

from kernels.cpu_vexp import exp_sum, silu_mul


@njit
def _exp_sum(a, mx):
    return exp_sum(a, a.shape[0], mx)


@njit
def _silu_mul(h, g, start, stop):
    silu_mul(h, g, start, stop)


def _values(rng) -> np.ndarray:
    return np.concatenate([rng.uniform(-87.3, 0, 20000), -np.logspace(-9, 1.9, 500),
                           [0.0, -1e-30, -0.5 * np.log(2), 0.5 * np.log(2) - 1]]).astype(np.float32)


def test_exp_sum_is_exp_to_fp32_rounding_with_every_tail_length():
    rng = np.random.default_rng(1)
    x = _values(rng)
    mx = np.float32(1.5)
    for n in list(range(0, 40)) + [x.size]:
        a = x[:n] + mx
        got_sum = _exp_sum(a, mx)
        want = np.exp(x[:n].astype(np.float64))
        np.testing.assert_allclose(a, want, rtol=1.5e-7, atol=0)
        assert abs(got_sum - want.sum()) <= 1e-6 * max(want.sum(), 1e-30)


def test_exp_clamps_far_below_instead_of_underflowing_to_garbage():
    a = np.array([0.0, -87.3, -100.0, -1e30, -np.inf], np.float32)
    _exp_sum(a, np.float32(0.0))
    assert a[0] == 1.0
    assert np.all((a[1:] > 0) & (a[1:] < 1.3e-38))


def test_silu_mul_matches_float64_and_is_position_independent():
    rng = np.random.default_rng(2)
    h = np.concatenate([rng.standard_normal(300) * 6, [0.0, -90.0, 90.0, -1e-8, 40.0, -40.0]]).astype(np.float32)
    g = rng.standard_normal(h.size).astype(np.float32)
    out = h.copy()
    _silu_mul(out, g, 0, h.size)
    h64 = h.astype(np.float64)
    want = h64 / (1.0 + np.exp(-h64)) * g
    np.testing.assert_allclose(out, want, rtol=4e-7, atol=1e-30)  # h = -90: ~1e-37 for 3e-38
    for start, stop in ((5, 9), (16, 33), (1, h.size), (h.size - 3, h.size)):
        part = h.copy()
        _silu_mul(part, g, start, stop)
        assert np.array_equal(part[start:stop], out[start:stop])
        assert np.array_equal(part[:start], h[:start]) and np.array_equal(part[stop:], h[stop:])
