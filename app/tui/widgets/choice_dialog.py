"""A modal list to pick one entry from (a model, a preset, what to copy)."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Label, OptionList
from textual.widgets.option_list import Option


class ChoiceDialog(ModalScreen[str | None]):
    """Dismisses with the chosen entry's key (Enter) or None (Esc)."""

    BINDINGS = [Binding("escape", "cancel", "Cancel")]

    def __init__(self, title: str, choices: list[tuple[str, str | Text]], hint: str = "",
                 highlight: str | None = None) -> None:
        super().__init__()
        self.title_text = title
        self.choices = choices
        self.hint = hint or "↑↓ pick · Enter choose · Esc cancel"
        self.highlight = highlight

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="choice"):
            yield Label(self.title_text, id="dialog-title")
            options = [Option(label, id=key) for key, label in self.choices]
            yield OptionList(*options, id="choice-list")
            yield Label(self.hint, id="dialog-hint")

    def on_mount(self) -> None:
        lst = self.query_one(OptionList)
        keys = [k for k, _ in self.choices]
        if keys:
            lst.highlighted = keys.index(self.highlight) if self.highlight in keys else 0
        lst.focus()

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        self.dismiss(event.option.id)

    def action_cancel(self) -> None:
        self.dismiss(None)


class ConfirmDialog(ModalScreen[bool]):
    """A yes/no question: Enter or y confirms, Esc or n cancels."""

    BINDINGS = [Binding("enter,y", "answer(True)", "Yes"), Binding("escape,n", "answer(False)", "No")]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog"):
            yield Label(self.question, id="dialog-title")
            yield Label("Enter / y: yes · Esc / n: no", id="dialog-hint")

    def action_answer(self, yes: bool) -> None:
        self.dismiss(yes)
