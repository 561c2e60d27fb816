"""The message box at the bottom: Enter sends."""
from __future__ import annotations

from textual.binding import Binding
from textual.widgets import Input


class PromptInput(Input):
    """A single-line input; the app handles `Input.Submitted`. Up recalls the last message."""

    BINDINGS = [Binding("up", "recall", "Recall last message", show=False)]

    def __init__(self, **kwargs: object) -> None:
        super().__init__(placeholder="Type a message, Enter to send · F1 help", **kwargs)
        self.last_sent = ""

    def action_recall(self) -> None:
        if not self.value and self.last_sent:
            self.value = self.last_sent
            self.cursor_position = len(self.value)
