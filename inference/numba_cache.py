"""A writable place for Numba's compiled-kernel cache, checked before the kernels import.

The kernels are compiled with `cache=True`. Numba stores that cache beside the source
(`kernels/__pycache__`) or, where that is not writable, in the user's cache directory; on
a read-only install with a read-only home neither works, and every kernel module then
fails to import ("cannot cache function ...: no locator available"). `ensure_writable()`
notices that first and points Numba at a private temporary directory (removed at exit),
so the kernels compile for this run only, with a one-line note.
"""
from __future__ import annotations

import atexit
import importlib.util
import os
import shutil
import sys
import tempfile

_checked = False


def _writable(folder: str) -> bool:
    """What Numba's locators try: create the folder, then a file in it."""
    try:
        os.makedirs(folder, exist_ok=True)
        tempfile.TemporaryFile(dir=folder).close()
        return True
    except OSError:
        return False


def _numba_user_cache() -> str:
    """Numba's user-wide cache folder (its appdirs rule on Linux and macOS)."""
    if sys.platform == "darwin":
        return os.path.expanduser("~/Library/Caches/numba")
    return os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "numba")


def ensure_writable() -> None:
    """Make sure Numba has somewhere to write its cache (see the module docstring)."""
    global _checked
    if _checked:
        return
    _checked = True
    if os.environ.get("NUMBA_CACHE_DIR") and _writable(os.environ["NUMBA_CACHE_DIR"]):
        return
    spec = importlib.util.find_spec("kernels")
    if spec is None or not spec.submodule_search_locations:
        return
    in_tree = os.path.join(list(spec.submodule_search_locations)[0], "__pycache__")
    if _writable(in_tree) or _writable(_numba_user_cache()):
        return
    try:
        private = tempfile.mkdtemp(prefix="llama-chat-numba-")
    except OSError:
        return  # nowhere at all: Numba's own error follows
    atexit.register(shutil.rmtree, private, True)
    os.environ["NUMBA_CACHE_DIR"] = private
    if "numba" in sys.modules:  # its config was read already
        from numba.core import config
        config.CACHE_DIR = private
    print(f"llama-chat: warning: no writable folder for Numba's kernel cache ({in_tree} and "
          f"{_numba_user_cache()} are read-only); kernels are compiled for this run only", file=sys.stderr)
