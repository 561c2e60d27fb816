"""A small modal that asks for one value (a sampling setting, the system prompt, a path)."""
from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, TextArea


class ValueDialog(ModalScreen[str | None]):
    """Dismisses with the text entered (Enter) or None (Esc). `validate` returns an error
    message for bad input, which is shown instead of closing. `multiline`: a text box in
    which Ctrl+J starts a new line (the system prompt)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, value: str,
                 validate: Callable[[str], str | None] | None = None,
                 multiline: bool = False, hint: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.value = value
        self.validate = validate
        self.multiline = multiline
        self.hint = hint or ("Enter to apply · Ctrl+J new line · Esc to cancel" if multiline
                             else "Enter to apply · Esc to cancel")

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.title_text, id="dialog-title")
            if self.multiline:
                from .prompt_input import PromptInput
                box = PromptInput(id="dialog-input")
                box.placeholder = ""
                yield box
            else:
                yield Input(self.value, id="dialog-input")
            yield Label(self.hint, id="dialog-hint")

    def on_mount(self) -> None:
        box = self.query_one("#dialog-input")
        if isinstance(box, TextArea):
            box.load_text(self.value)
            box.move_cursor(box.document.end)
        box.focus()

    def on_key(self, event) -> None:
        """Keys typed before the box took focus (the dialog had only just opened) go into
        it rather than nowhere."""
        box = self.query_one("#dialog-input")
        if box.has_focus:
            return
        if event.key == "enter":
            event.stop()
            self._submit(box.text if isinstance(box, TextArea) else box.value)
        elif event.is_printable and event.character:
            event.stop()
            box.focus()
            if isinstance(box, TextArea):
                box.insert(event.character)
            else:
                box.insert_text_at_cursor(event.character)

    def _submit(self, text: str) -> None:
        error = self.validate(text) if self.validate else None
        if error:
            self.query_one("#dialog-hint", Label).update(f"[red]{error}[/red]")
            return
        self.dismiss(text)

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self._submit(event.value)

    def on_prompt_input_submitted(self, event) -> None:
        event.stop()
        self._submit(event.text)

    def on_prompt_input_edit_last(self, event) -> None:
        event.stop()

    def on_prompt_input_scroll(self, event) -> None:
        event.stop()

    def action_cancel(self) -> None:
        self.dismiss(None)
