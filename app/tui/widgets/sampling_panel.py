"""Sampling panel: the settings in force, editable while a reply streams.

Focus it (F2), pick a row with ↑/↓, nudge with ←/→ (or -/+), Enter or a digit to type a
value; Esc or F2 goes back to the message box, and any other printable key goes there
too, typed (nothing typed is lost). Every change replaces `engine.settings` as a whole —
an immutable value the engine reads once per token — so it applies from the next token.
Nudges are applied the moment the key is handled (not through a message queue), so three
quick presses are three steps. Ranges and steps come from `inference.sampler.KNOBS`, the
one table the CLI, the settings file and a server validate against.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rich.text import Text
from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.widget import Widget

from inference.sampler import KNOBS as RANGES
from inference.sampler import SamplingSettings, check_value


@dataclass(frozen=True)
class Knob:
    """One row of the panel: a sampling setting, its label and how its value reads."""

    field: str
    label: str
    fmt: Callable[[object], str]

    @property
    def range(self):
        return RANGES[self.field]

    @property
    def step(self) -> float:
        return self.range.step

    @property
    def integer(self) -> bool:
        return self.range.integer


def _f2(v: object) -> str:
    return f"{v:.2f}"


def _off_if(zero: float, fmt: Callable[[object], str]) -> Callable[[object], str]:
    return lambda v: "off" if v == zero else fmt(v)


KNOBS: tuple[Knob, ...] = (
    Knob("temperature", "temperature", lambda v: "0 greedy" if v == 0 else f"{v:.2f}"),
    Knob("top_p", "top-p", _off_if(1.0, _f2)),
    Knob("top_k", "top-k", _off_if(0, str)),
    Knob("min_p", "min-p", _off_if(0.0, _f2)),
    Knob("repeat_penalty", "repeat penalty", _off_if(1.0, _f2)),
    Knob("repeat_last_n", "repeat window", str),
    Knob("max_new_tokens", "max new tokens", str),
    Knob("seed", "seed", lambda v: "random" if v is None else str(v)),
)
KNOB_BY_FIELD = {k.field: k for k in KNOBS}


def nudged(settings: SamplingSettings, knob: Knob, direction: int) -> SamplingSettings:
    """`settings` with one knob moved one step, kept inside its range (seed: below 0
    means a fresh random seed each reply)."""
    value = getattr(settings, knob.field)
    if knob.field == "seed":
        new = (0 if direction > 0 else None) if value is None else value + direction
        return settings.with_(seed=None if new is not None and new < 0 else new)
    r = knob.range
    new = min(max(value + direction * r.step, r.lo), r.hi)
    new = int(round(new)) if r.integer else round(new, 4)
    return settings.with_(**{knob.field: new})


def parse_value(knob: Knob, text: str) -> object:
    """A typed value for `knob`, or ValueError with the valid range (from KNOBS)."""
    text = text.strip().lower()
    if knob.field == "seed" and text in ("", "random", "none"):
        return None
    try:
        value: float = int(text) if knob.integer else float(text)
    except ValueError:
        r = knob.range
        kind = "a whole number" if knob.integer else "a number"
        raise ValueError(f"{knob.label} must be {kind} from {r.span()}") from None
    try:
        return check_value(knob.field, value)
    except ValueError as e:
        raise ValueError(str(e).replace(knob.field.replace("_", "-"), knob.label, 1)) from None


class SamplingPanel(Widget, can_focus=True):
    """Shows `get_settings()`; `apply(settings)` is called at once on every nudge."""

    BINDINGS = [
        Binding("up,k", "move(-1)", "Prev", show=False),
        Binding("down,j", "move(1)", "Next", show=False),
        Binding("left,minus", "nudge(-1)", "−", show=False),
        Binding("right,plus,equals_sign", "nudge(1)", "+", show=False),
        Binding("enter", "edit", "Edit value", show=False),
        Binding("escape,f2", "leave", "Back to the message box", show=False),
    ]

    #: printable keys that are the panel's own bindings (j/k move, -/+ nudge)
    OWN_KEYS = frozenset({"j", "k", "minus", "plus", "equals_sign"})

    class EditRequested(Message):
        def __init__(self, knob: Knob, initial: str | None = None) -> None:
            super().__init__()
            self.knob = knob
            self.initial = initial

    class Leave(Message):
        """Back to the message box, with a key the user typed there (or None)."""

        def __init__(self, char: str | None = None) -> None:
            super().__init__()
            self.char = char

    def __init__(self, get_settings: Callable[[], SamplingSettings],
                 apply: Callable[[SamplingSettings], None], **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.get_settings = get_settings
        self.apply = apply
        self.row = 0
        self.border_title = "Sampling"
        self.preset = ""

    def render(self) -> Text:
        s = self.get_settings()
        out = Text(no_wrap=True, overflow="ellipsis")
        width = max(10, self.size.width or 28)
        for i, knob in enumerate(KNOBS):
            v = getattr(s, knob.field)
            value = knob.fmt(v)
            if v is not None and knob.field != "seed" and v >= knob.range.hi:
                value += " max"
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
        self.border_subtitle = "↑↓ ←→ Enter · Esc back"
        self.refresh()

    def on_blur(self) -> None:
        self.border_subtitle = self.preset or None
        self.refresh()

    def set_preset(self, name: str) -> None:
        self.preset = f"preset {name}" if name else ""
        if not self.has_focus:
            self.border_subtitle = self.preset or None

    def select(self, field: str) -> None:
        self.row = next(i for i, k in enumerate(KNOBS) if k.field == field)
        self.refresh()

    def action_move(self, delta: int) -> None:
        self.row = (self.row + delta) % len(KNOBS)
        self.refresh()

    def action_nudge(self, direction: int) -> None:
        self.apply(nudged(self.get_settings(), KNOBS[self.row], direction))
        self.refresh()

    def action_edit(self) -> None:
        self.post_message(self.EditRequested(KNOBS[self.row]))

    def action_leave(self) -> None:
        self.post_message(self.Leave())

    def on_key(self, event: events.Key) -> None:
        """Digits start typing a value; any other printable key belongs to the message box."""
        if not event.is_printable or event.character is None or event.key in self.OWN_KEYS:
            return
        event.stop()
        event.prevent_default()
        if event.character in "0123456789.":
            self.post_message(self.EditRequested(KNOBS[self.row], event.character))
        else:
            self.post_message(self.Leave(event.character))
