"""The screen shown while a model is opened and its kernels are compiled or loaded.

A first start compiles the CPU kernels (Numba) for the model's weight type: tens of
seconds in which the terminal would otherwise stay blank. This screen says what is
happening and shows it moving: the phase, the functions compiled so far and the one
being compiled, and the time spent. The bar runs indeterminate — there is no honest
total to show a fraction of.
"""
from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import ProgressBar, Static

from ..model_host import ModelJob

COLD_START_HINT = "first start with this weight type: compiled once, then cached on disk (~20-40 s on 2 cores)"


def describe(job: ModelJob, device: str = "cpu") -> Text:
    """The lines of the screen for the job's current state."""
    t = Text()
    t.append(f"Preparing {job.label}", style="bold")
    if job.host is not None and job.host.weight_type:
        t.append(f" · {job.host.weight_type} weights · {device}", style="")
    t.append("\n\n")
    if job.phase == "loading":
        t.append(f"  ◌ opening the model file and checking it  {job.elapsed:.1f} s\n", style="bold")
        return t
    if job.phase == "failed" and job.host is None:
        t.append(f"  ✗ the model could not be opened: {job.error}\n", style="bold red")
        return t
    t.append(f"  ✓ model opened and checked{f' ({job.load_s:.1f} s)' if job.load_s else ''}\n")
    warm = job.warm
    if warm is None:
        return t
    if warm.compiling:
        done = "✓" if warm.done else "◌"
        t.append(f"  {done} compiling the {device.upper()} kernels\n", style="" if warm.done else "bold")
        t.append(f"    {COLD_START_HINT}\n", style="dim")
        names = warm.compiled
        now = warm.current
        line = f"    {len(names)} function{'s' if len(names) != 1 else ''} compiled"
        if now and not warm.done:
            line += f" · now {now}"
        t.append(line + f" · {warm.elapsed:.1f} s\n")
    else:
        done = "✓" if warm.done else "◌"
        t.append(f"  {done} loading the compiled kernels and running a first forward pass  "
                 f"{warm.elapsed:.1f} s\n")
    if job.phase == "failed":
        t.append(f"\n  ✗ {job.error}\n", style="bold red")
    return t


class LoadingScreen(Screen[bool]):
    """Polls a ModelJob; dismisses with True when the model is ready, False if it failed
    and the user pressed Esc (the app decides what that means)."""

    BINDINGS = [Binding("escape", "close", "Back", show=False)]
    POLL_S = 0.1

    def __init__(self, job: ModelJob, device: str = "cpu", on_ready: Callable[[], None] | None = None) -> None:
        super().__init__()
        self.job = job
        self.device = device
        self.on_ready = on_ready

    def compose(self) -> ComposeResult:
        with Vertical(id="loading"):
            yield Static(Text("llama-chat", style="bold"), id="loading-title")
            yield Static(id="loading-text")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="loading-bar")
            yield Static(Text("Ctrl+Q quits", style="dim"), id="loading-hint")

    def on_mount(self) -> None:
        self._tick()
        self.set_interval(self.POLL_S, self._tick)

    def _tick(self) -> None:
        job = self.job
        self.query_one("#loading-text", Static).update(describe(job, self.device))
        if job.phase == "failed":
            self.query_one("#loading-bar").display = False
            self.query_one("#loading-hint", Static).update(Text("Esc goes back · Ctrl+Q quits", style="dim"))
        if job.phase == "ready" and self.is_current:
            if self.on_ready is not None:
                self.on_ready()
            self.dismiss(True)

    def action_close(self) -> None:
        if self.job.phase == "failed":
            self.dismiss(False)
