"""kernels.numba_gil: a parallel region launched from nogil code never takes the GIL
(Numba's stock launcher took it twice per region, so a busy Python thread beside the
decode stalled every region); launched by a caller that holds the GIL it behaves as
stock Numba does (releases it around the run)."""
from __future__ import annotations

import threading

import numpy as np
from numba import njit, prange

from kernels import numba_setup  # noqa: F401  (installs the launcher before compiling)


@njit(parallel=True, nogil=True)
def _bump_nogil(a):
    for i in prange(a.shape[0]):
        a[i] += 1.0


@njit(parallel=True)
def _bump_holding_gil(a):
    for i in prange(a.shape[0]):
        a[i] += 2.0


def test_the_launcher_asks_before_it_touches_the_gil() -> None:
    a = np.zeros(1000)
    _bump_nogil(a)
    assert np.all(a == 1.0)
    ir_text = _bump_nogil.overloads[_bump_nogil.signatures[0]].library.get_llvm_str()
    assert "PyGILState_Check" in ir_text
    assert "PyGILState_Ensure" not in ir_text     # stock Numba: one per region launch


def test_regions_run_from_any_thread_with_or_without_the_gil() -> None:
    out: list[np.ndarray] = []

    def work() -> None:
        a = np.zeros(5000)
        for _ in range(20):
            _bump_nogil(a)
            _bump_holding_gil(a)
        out.append(a)

    threads = [threading.Thread(target=work) for _ in range(3)]
    for t in threads:
        t.start()
    work()
    for t in threads:
        t.join()
    assert len(out) == 4 and all(np.all(a == 60.0) for a in out)


def test_installing_twice_keeps_one_wrapper() -> None:
    """A second install (a second copy of the package) must not wrap the wrapper."""
    from numba.np.ufunc import parallel

    from kernels import numba_gil

    before = parallel.build_gufunc_kernel
    numba_gil.install()
    assert parallel.build_gufunc_kernel is before

    @njit(parallel=True, nogil=True)
    def triple(a):
        for i in prange(a.shape[0]):
            a[i] *= 3.0

    a = np.ones(300)
    triple(a)
    assert np.all(a == 3.0)
