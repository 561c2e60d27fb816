"""Parallel regions that do not take the GIL when their caller does not hold it.

Why: Numba's launcher for a `prange` region (`numba.np.ufunc.parallel`'s
build_gufunc_kernel) acquires the GIL (PyGILState_Ensure), releases it around the thread
pool's run (PyEval_SaveThread / RestoreThread) and gives it back: two GIL acquisitions
per region, even inside a `nogil=True` function. A decode token runs ~5 regions a layer;
whenever another Python thread is busy (the TUI drawing a reply, a server encoding
events), each acquisition waits for that thread's switch interval (5 ms), which cut a
decode beside a busy Python thread to a small fraction of its speed (DEVELOPERS.md). The
pool's own run never needs the GIL (the stock launcher runs it with the GIL released),
so the launcher built here asks PyGILState_Check first: a caller that holds the GIL gets
the stock behaviour (release around the run, reacquire after), a caller that does not
(every `nogil` kernel of this package) touches the GIL not at all.

`install()` wraps Numba's builder once, before anything is compiled; functions already
in Numba's on-disk cache keep the launcher they were compiled with (still correct, only
slower), so a change here must come with a change to the cached modules' sources.
"""
from __future__ import annotations

from typing import Any

from llvmlite import ir
from numba.core import cgutils


class _GilAwareApi:
    """A PythonAPI whose GIL calls are guarded by PyGILState_Check (see module doc);
    everything else is the wrapped API's. Used only while Numba builds a region launcher,
    which calls gil_ensure, save_thread, restore_thread, gil_release in that order."""

    def __init__(self, api: Any) -> None:
        self._api = api
        self._held: ir.Value | None = None

    def __getattr__(self, name: str) -> Any:
        return getattr(self._api, name)

    def gil_ensure(self) -> ir.Value:
        b = self._api.builder
        check = self._api._get_function(ir.FunctionType(ir.IntType(32), []), name="PyGILState_Check")
        self._held = b.icmp_signed("!=", b.call(check, []), ir.Constant(ir.IntType(32), 0))
        return self._held

    def save_thread(self) -> ir.Value:
        if self._held is None:          # not the order this was written for: stock code
            return self._api.save_thread()
        b = self._api.builder
        slot = cgutils.alloca_once_value(b, ir.Constant(self._api.voidptr, None))
        with b.if_then(self._held):
            b.store(self._api.save_thread(), slot)
        return slot

    def restore_thread(self, slot: ir.Value) -> None:
        if self._held is None:
            self._api.restore_thread(slot)
            return
        b = self._api.builder
        with b.if_then(self._held):
            self._api.restore_thread(b.load(slot))

    def gil_release(self, state: ir.Value) -> None:
        """Nothing: the GIL was never ensured."""


def install() -> None:
    """Route Numba's region launchers through `_GilAwareApi`, once per process (a second
    copy of this package, as tests load one, finds it done: wrapping the wrapper would
    make the inner one remove the outer one's attribute)."""
    from numba.np.ufunc import parallel

    stock = parallel.build_gufunc_kernel
    if getattr(stock, "gil_aware", False):
        return

    def build_gufunc_kernel(library, ctx, info, sig, inner_ndim):  # type: ignore[no-untyped-def]
        real = ctx.get_python_api
        ctx.get_python_api = lambda builder: _GilAwareApi(real(builder))  # instance attribute, removed below
        try:
            return stock(library, ctx, info, sig, inner_ndim)
        finally:
            del ctx.get_python_api

    build_gufunc_kernel.gil_aware = True  # type: ignore[attr-defined]
    parallel.build_gufunc_kernel = build_gufunc_kernel
