"""The bottom line: the keys that matter now, as many as fit the width, never cut.

Textual's Footer lays every binding side by side and lets the overflow garble the line
on a narrow terminal; this bar ranks the hints and drops the least useful whole ones.
"""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

Hint = tuple[str, str]   # (key, what it does)


class KeyBar(Static):
    """`set_hints([(key, label), ...])` in order of importance; shown in that order."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)
        self.hints: list[Hint] = []
        self.shown: list[Hint] = []

    def set_hints(self, hints: list[Hint]) -> None:
        if hints != self.hints:
            self.hints = hints
            self._fit()

    def on_resize(self) -> None:
        self._fit()

    def _fit(self) -> None:
        width = self.size.width or 80
        shown: list[Hint] = []
        used = 0
        for key, label in self.hints:
            cost = len(key) + 1 + len(label) + (2 if shown else 0)
            if used + cost > width - 1:
                continue  # a shorter hint further down may still fit
            shown.append((key, label))
            used += cost
        self.shown = shown
        text = Text(no_wrap=True, overflow="crop")
        for i, (key, label) in enumerate(shown):
            if i:
                text.append("  ")
            text.append(key, style="bold reverse")
            text.append(" " + label)
        self.update(text)

    @property
    def plain(self) -> str:
        return "  ".join(f"{k} {v}" for k, v in self.shown)
