"""Context bar: tokens in the model's context window / its length."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


class ContextBar(Static):
    """One line: `context ████░░░░ 312/512`; turns amber past 75 %, red past 95 %."""

    def __init__(self, length: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.length = max(1, length)
        self.used = 0
        self.dropped = 0

    def on_mount(self) -> None:
        self.set_used(0)

    def on_resize(self) -> None:
        self.set_used(self.used, self.dropped)

    def set_used(self, used: int, dropped: int = 0) -> None:
        self.used, self.dropped = used, dropped
        frac = min(1.0, used / self.length)
        tail = f" {used}/{self.length}" + (f" · {dropped} old turns out" if dropped else "")
        width = max(4, (self.size.width or 40) - len("context ") - len(tail) - 1)
        full = round(frac * width)
        colour = "red" if frac > 0.95 else "yellow" if frac > 0.75 else "green"
        t = Text("context ", style="dim")
        t.append("█" * full, style=colour)
        t.append("░" * (width - full), style="dim")
        t.append(tail)
        self.update(t, layout=False)  # always one line
