"""Context bar: positions of the model's context window the conversation in view fills."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


class ContextBar(Static):
    """One line: `context ████░░░░ 312/512`; amber past 75 %, red past 95 %.

    The count never exceeds the window: a reply that ran into the end of the context
    fills it (`512/512 full`) — re-rendered with its end-of-turn marker it would need a
    position more, which is why the next message moves the oldest turns out of view.
    """

    def __init__(self, length: int, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.length = max(1, length)
        self.used = 0
        self.dropped = 0

    def on_mount(self) -> None:
        self.set_used(0)

    def on_resize(self) -> None:
        self.set_used(self.used, self.dropped)

    def set_length(self, length: int) -> None:
        self.length = max(1, length)
        self.set_used(0)

    @property
    def shown(self) -> int:
        return min(self.used, self.length)

    def set_used(self, used: int, dropped: int = 0) -> None:
        self.used, self.dropped = max(0, used), dropped
        frac = self.shown / self.length
        tail = f" {self.shown}/{self.length}" + (" full" if self.used >= self.length else "")
        if dropped:
            tail += f" · {plural(dropped, 'old turn')} out of view"
        width = max(4, (self.size.width or 40) - len("context ") - len(tail) - 1)
        full = round(frac * width)
        colour = "red" if frac > 0.95 else "yellow" if frac > 0.75 else "green"
        t = Text("context ", style="dim")
        t.append("█" * full, style=colour)
        t.append("░" * (width - full), style="dim")
        t.append(tail)
        self.update(t, layout=False)  # always one line
