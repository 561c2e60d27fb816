"""Numba settings every kernel module needs before its first @njit (placeholder)."""
from __future__ import annotations

import os

import numba

CACHE = True


def _configure_numba() -> None:
    """Pick the OpenMP thread pool and full-width AVX-512 vectors; users' NUMBA_* win."""
    cfg = numba.config
    if os.environ.get("NUMBA_THREADING_LAYER") is None and cfg.THREADING_LAYER == "default":
        try:
            from numba.np.ufunc import omppool  # noqa: F401  (needs libgomp)
            cfg.THREADING_LAYER = "omp"
        except ImportError:
            pass
    if cfg.CPU_FEATURES is None and os.environ.get("NUMBA_CPU_FEATURES") is None:
        try:
            import llvmlite.binding as llvm
            feats = llvm.get_host_cpu_features().flatten()
        except Exception:  # noqa: BLE001  (no feature query on this platform: keep defaults)
            return
        if "+avx512f" in feats.split(","):
            cfg.CPU_FEATURES = feats + ",-prefer-256-bit"


_configure_numba()


def threading_layer() -> str:
    """The Numba thread pool in use ('omp', 'workqueue', ...), once a parallel kernel ran."""
    try:
        return numba.threading_layer()
    except ValueError:
        return str(numba.config.THREADING_LAYER)
