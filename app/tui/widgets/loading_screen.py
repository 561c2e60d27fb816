"""The screen shown while a model is opened and its kernels are compiled or loaded.

A first start on a machine compiles the CPU kernels (Numba), once for every weight type:
about a minute in which the terminal would otherwise stay blank. This screen says what is
happening and shows it moving: the phase, the functions compiled so far and the one
being compiled, and the time spent. The bar runs indeterminate — there is no honest
total to show a fraction of.

What the user types meanwhile is kept, not lost: the screen shows it, and hands it
to `on_typed(text, send)` when the model is ready (send: Enter was pressed), so a
question typed during a cold start lands in the message box, or is sent.
"""
from __future__ import annotations

from typing import Callable

from rich.text import Text
from textual import events
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import Screen
from textual.widgets import ProgressBar, Static

from ..model_host import ModelJob

#: two short lines: one long line wraps without the indent on a narrow screen
COLD_START_HINT = ("first start on this machine: compiled once (~1 min on 2 cores),",
                   "then cached on disk")


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
        for hint in COLD_START_HINT:
            t.append(f"    {hint}\n", style="dim")
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

    def __init__(self, job: ModelJob, device: str = "cpu", on_ready: Callable[[], None] | None = None,
                 on_typed: Callable[[str, bool], None] | None = None) -> None:
        super().__init__()
        self.job = job
        self.device = device
        self.on_ready = on_ready
        self.on_typed = on_typed
        self.typed = ""             # typed while waiting
        self.send_when_ready = False

    def compose(self) -> ComposeResult:
        with Vertical(id="loading"):
            yield Static(Text("llama-chat", style="bold"), id="loading-title")
            yield Static(id="loading-text")
            yield ProgressBar(total=None, show_eta=False, show_percentage=False, id="loading-bar")
            yield Static(id="loading-typed")
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
        if job.phase in ("ready", "failed") and self.typed and self.on_typed is not None:
            typed, send = self.typed, self.send_when_ready and job.phase == "ready"
            self.typed, self.send_when_ready = "", False
            self.on_typed(typed, send)
        if job.phase == "ready" and self.is_current:
            if self.on_ready is not None:
                self.on_ready()
            self.dismiss(True)

    # -- typing ahead -----------------------------------------------------------------------
    @property
    def _typing_ahead(self) -> bool:
        """Keys are kept while the model is still being prepared, for a taker."""
        return self.on_typed is not None and self.job.phase in ("loading", "warming")

    def on_key(self, event: events.Key) -> None:
        if not self._typing_ahead:
            return
        if event.key == "enter":
            self.send_when_ready = bool(self.typed.strip())
        elif event.key in ("ctrl+j", "shift+enter"):
            self.typed += "\n"
        elif event.key == "backspace":
            self.typed, self.send_when_ready = self.typed[:-1], False
        elif event.is_printable and event.character:
            self.typed += event.character
        else:
            return
        event.stop()
        event.prevent_default()
        self._show_typed()

    def on_paste(self, event: events.Paste) -> None:
        if not self._typing_ahead:
            return
        event.stop()
        self.typed += event.text
        self._show_typed()

    def _show_typed(self) -> None:
        line = self.typed.replace("\n", " ⏎ ")
        if len(line) > 60:
            line = "…" + line[-59:]
        t = Text()
        if self.typed:
            t.append("  your message: ", style="dim")
            t.append(line)
            t.append("  (sent when ready)" if self.send_when_ready else "  (Enter: send when ready)", style="dim")
        self.query_one("#loading-typed", Static).update(t)

    def action_close(self) -> None:
        if self.job.phase == "failed":
            self.dismiss(False)
