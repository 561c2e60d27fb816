"""Sampling panel: the settings in force, editable while a reply streams.

Focus it (F2 or Tab), pick a row with ↑/↓, nudge with ←/→ (or -/+), Enter to type a value.
Every change replaces `engine.settings` as a whole — an immutable value the engine reads
once per token — so it applies from the next token, and the panel always shows what the
engine is actually using.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual.binding import Binding
from textual.message import Message
from textual.widget import Widget

from inference.sampler import SamplingSettings


@dataclass(frozen=True)
class Knob:
    field: str
    label: str
    step: float
    fmt: Callable[[object], str]
    lo: float = 0.0
    hi: float = float("inf")
    integer: bool = False


def _f2(v: object) -> str:
    return f"{v:.2f}"


def _off_if(zero: float, fmt: Callable[[object], str]) -> Callable[[object], str]:
    return lambda v: "off" if v == zero else fmt(v)


KNOBS: tuple[Knob, ...] = (
    Knob("temperature", "temperature", 0.1, lambda v: "0 greedy" if v == 0 else f"{v:.2f}", 0.0, 5.0),
    Knob("top_p", "top-p", 0.05, _off_if(1.0, _f2), 0.0, 1.0),
    Knob("top_k", "top-k", 5, _off_if(0, str), 0, 100_000, integer=True),
    Knob("min_p", "min-p", 0.01, _off_if(0.0, _f2), 0.0, 1.0),
    Knob("repeat_penalty", "repeat penalty", 0.05, _off_if(1.0, _f2), 0.5, 5.0),
    Knob("max_new_tokens", "max new tokens", 32, str, 1, 1_000_000, integer=True),
    Knob("seed", "seed", 1, lambda v: "random" if v is None else str(v), -1, 2**63 - 1, integer=True),
)


def nudged(settings: SamplingSettings, knob: Knob, direction: int) -> SamplingSettings:
    """`settings` with one knob moved one step (seed: below 0 means a fresh random seed)."""
    value = getattr(settings, knob.field)
    if knob.field == "seed":
        new = (0 if direction > 0 else None) if value is None else value + direction
        return settings.with_(seed=None if new is not None and new < 0 else new)
    new = value + direction * knob.step
    new = min(max(new, knob.lo), knob.hi)
    new = int(round(new)) if knob.integer else round(new, 4)
    return settings.with_(**{knob.field: new})


def parse_value(knob: Knob, text: str) -> object:
    """A typed value for `knob`, or ValueError with a message fit for the user."""
    text = text.strip().lower()
    if knob.field == "seed" and text in ("", "random", "none"):
        return None
    try:
        value: float = int(text) if knob.integer else float(text)
    except ValueError:
        raise ValueError(f"{knob.label} must be {'a whole number' if knob.integer else 'a number'}") from None
    if not knob.lo <= value <= knob.hi:
        raise ValueError(f"{knob.label} must be between {knob.lo:g} and {knob.hi:g}")
    return value


class SamplingPanel(Widget, can_focus=True):
    """Shows `get_settings()`; asks the app to apply changes via `SamplingPanel.Changed`."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "Prev", show=False),
        Binding("down,j", "move(1)", "Next", show=False),
        Binding("left,minus", "nudge(-1)", "−", show=False),
        Binding("right,plus,equals_sign", "nudge(1)", "+", show=False),
        Binding("enter", "edit", "Edit value", show=False),
    ]

    class Changed(Message):
        def __init__(self, settings: SamplingSettings) -> None:
            super().__init__()
            self.settings = settings

    class EditRequested(Message):
        def __init__(self, knob: Knob) -> None:
            super().__init__()
            self.knob = knob

    def __init__(self, get_settings: Callable[[], SamplingSettings], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.get_settings = get_settings
        self.row = 0
        self.border_title = "Sampling"

    def render(self) -> Text:
        s = self.get_settings()
        out = Text(no_wrap=True, overflow="ellipsis")
        width = max(10, self.size.width or 28)
        for i, knob in enumerate(KNOBS):
            value = knob.fmt(getattr(s, knob.field))
            pad = max(1, width - len(knob.label) - len(value) - 2)
            line = Text(f" {knob.label}{' ' * pad}{value} ")
            if i == self.row and self.has_focus:
                line.stylize("reverse")
            elif i == self.row:
                line.stylize("underline")
            out.append_text(line)
            if i < len(KNOBS) - 1:
                out.append("\n")
        return out

    def get_content_height(self, container, viewport, width: int) -> int:  # type: ignore[override]
        return len(KNOBS)

    def on_focus(self) -> None:
        self.refresh()

    def on_blur(self) -> None:
        self.refresh()

    def select(self, field: str) -> None:
        self.row = next(i for i, k in enumerate(KNOBS) if k.field == field)
        self.refresh()

    def action_move(self, delta: int) -> None:
        self.row = (self.row + delta) % len(KNOBS)
        self.refresh()

    def action_nudge(self, direction: int) -> None:
        self.post_message(self.Changed(nudged(self.get_settings(), KNOBS[self.row], direction)))

    def action_edit(self) -> None:
        self.post_message(self.EditRequested(KNOBS[self.row]))
