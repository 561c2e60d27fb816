"""A small modal that asks for one value (a sampling setting, the system prompt)."""
from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label


class ValueDialog(ModalScreen[str | None]):
    """Dismisses with the text entered (Enter) or None (Esc). `validate` returns an error
    message for bad input, which is shown instead of closing."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str,
                 validate: Callable[[str], str | None] | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.validate = validate

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            yield Input(self.value, id="dialog-input")
            yield Label("Enter to apply · Esc to cancel", id="dialog-hint")

    def on_mount(self) -> None:
        self.query_one(Input).focus()

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        error = self.validate(event.value) if self.validate else None
        if error:
            self.query_one("#dialog-hint", Label).update(f"[red]{error}[/red]")
            return
        self.dismiss(event.value)

    def action_cancel(self) -> None:
        self.dismiss(None)
