"""Numba configuration every kernel module imports before its first `@njit`.

Decisions that have to be made before any function is compiled or even decorated:

- the thread pool and vector width (`configure()`, run on import);
- whether Numba's on-disk cache can be used at all, and where (`CACHE`, and possibly
  `numba.config.CACHE_DIR`): Numba caches next to the source file, in `__pycache__`;
  in a read-only install that fails, and Numba raises "cannot cache function ...: no
  locator available" on every call when no other cache directory is writable either.
  Kernel modules pass `cache=CACHE` to every `@njit`.
- which instruction sets hand-written vector code may use (`HAS_AVX512`);
- parallel regions that leave the GIL alone (`numba_gil`).

Users' own NUMBA_* settings always win.
"""
from __future__ import annotations

import os
import sys
import tempfile

import numba

from . import numba_gil

_NOTE = "llama-chat: warning:"


def configure() -> None:
    """Pick the thread pool and let LLVM use 512-bit vectors; must run before compiling.

    OpenMP's pool forks/joins a parallel region in a few microseconds (the forward has
    ~60 per token), faster than the default workqueue. On AVX-512 CPUs LLVM defaults to
    256-bit vectors ("prefer-256-bit"); the int8 matvec is limited by widen+convert
    instructions, so full-width vectors are measurably faster.
    """
    cfg = numba.config
    if os.environ.get("NUMBA_THREADING_LAYER") is None and cfg.THREADING_LAYER == "default":
        try:
            from numba.np.ufunc import omppool  # noqa: F401  (needs libgomp)
            cfg.THREADING_LAYER = "omp"
        except ImportError:
            pass
    if cfg.CPU_FEATURES is None and os.environ.get("NUMBA_CPU_FEATURES") is None:
        feats = _host_features()
        if "+avx512f" in feats.split(","):
            cfg.CPU_FEATURES = feats + ",-prefer-256-bit"


def _host_features() -> str:
    try:
        import llvmlite.binding as llvm
        return llvm.get_host_cpu_features().flatten()
    except Exception:  # noqa: BLE001  (no feature query on this platform: assume none)
        return ""


def target_features() -> set[str]:
    """The CPU features Numba compiles for ("avx512f", ...): the user's NUMBA_CPU_FEATURES
    if set (an empty string means a generic CPU), else the host's."""
    feats = numba.config.CPU_FEATURES
    if feats is None:
        feats = _host_features()
    return {f[1:] for f in feats.split(",") if f.startswith("+")}


def _writable_dir(path: str) -> bool:
    """True when `path` exists as a directory (created if needed) that accepts a new
    file: the same test Numba applies to a cache directory."""
    try:
        os.makedirs(path, exist_ok=True)
        tempfile.TemporaryFile(dir=path).close()
        return True
    except OSError:
        return False


def user_cache_dir() -> str:
    """$XDG_CACHE_HOME/llama-chat/numba (default ~/.cache/llama-chat/numba)."""
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "llama-chat", "numba")


def decide_cache() -> bool:
    """Whether kernels may use `cache=True`; points Numba at a writable directory first.

    Order: the user's NUMBA_CACHE_DIR, then the kernels' own `__pycache__` (Numba's
    default), then our per-user directory. When none accepts a file, caching is off
    (every run compiles again) and one warning says so.
    """
    cfg = numba.config
    if cfg.DISABLE_JIT:
        return False
    if cfg.CACHE_DIR and _writable_dir(cfg.CACHE_DIR):
        return True
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "__pycache__")
    if _writable_dir(here):
        return True
    user = user_cache_dir()
    if _writable_dir(user):
        cfg.CACHE_DIR = user
        return True
    print(f"{_NOTE} no writable directory for compiled kernels ({here}, {user}); "
          "they are compiled again on every run", file=sys.stderr)
    return False


configure()
numba_gil.install()   # before any parallel function is compiled

#: `cache=` for every kernel's @njit (decided once, on import, before any decorator runs).
CACHE: bool = decide_cache()

#: Hand-written vector code may use AVX-512 (F/BW) instructions.
HAS_AVX512: bool = {"avx512f", "avx512bw"} <= target_features()


def threading_layer() -> str:
    """The Numba thread pool in use ('omp', 'workqueue', ...), once a parallel kernel ran."""
    try:
        return numba.threading_layer()
    except ValueError:
        return str(numba.config.THREADING_LAYER)
