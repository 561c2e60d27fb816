"""Memory panel: GPU used/total on CUDA; process RSS, weights and KV cache bytes."""
from __future__ import annotations

import os
import resource

from textual.widgets import Static

from inference.backends.base import Backend


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def process_rss_bytes() -> tuple[int, bool]:
    """(bytes, is_current). Linux /proc gives the current RSS; elsewhere only the peak."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE"), True
    except (OSError, ValueError, IndexError):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, False


REFRESH_S = 1.0   # backend.memory() may ask the driver: keep it slow


class MemoryPanel(Static):
    """Refreshes itself on its own timer, which dies with the panel (an app-level timer
    could fire while Textual is already tearing the screen down on exit)."""

    def __init__(self, backend: Backend, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.backend = backend
        self.border_title = "Memory"

    def on_mount(self) -> None:
        self.refresh_figures()
        self.set_interval(REFRESH_S, self.refresh_figures)

    def refresh_figures(self) -> None:
        lines = []
        try:
            mem = self.backend.memory()
        except Exception as e:  # a driver hiccup must not take the UI down
            mem = None
            lines.append(f"backend: {type(e).__name__}")
        if mem is not None and mem.device_total:
            used = mem.device_used or 0
            pct = 100 * used / mem.device_total
            lines.append(f"GPU {human_bytes(used)} / {human_bytes(mem.device_total)} ({pct:.0f}%)")
        rss, current = process_rss_bytes()
        lines.append(f"RSS {human_bytes(rss)}" + ("" if current else " (peak)"))
        if mem is not None:
            lines.append(f"weights {human_bytes(mem.weight_bytes)}")
            lines.append(f"KV cache {human_bytes(mem.kv_cache_bytes)}")
        self.update("\n".join(lines))
