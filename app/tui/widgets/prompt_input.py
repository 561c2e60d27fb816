"""The message box at the bottom: multi-line, Enter sends.

Enter sends; Shift+Enter (terminals that report it) or Ctrl+J inserts a newline; a paste
keeps all its lines. The box grows with its text up to a few lines, then scrolls. Up in
an empty box asks to edit the last message; PgUp/PgDn scroll the conversation (the box
is rarely taller than a page, so paging it is of no use).
"""
from __future__ import annotations

from textual import events
from textual.binding import Binding
from textual.message import Message
from textual.strip import Strip
from textual.widgets import TextArea

PLACEHOLDER = "Type a message · Enter sends · Ctrl+J new line · F1 keys"


class PromptInput(TextArea):
    """The app handles `PromptInput.Submitted`, `EditLast` and `Scroll`."""

    BINDINGS = [
        Binding("pageup", "scroll_conversation(-1)", "Scroll up", show=False),
        Binding("pagedown", "scroll_conversation(1)", "Scroll down", show=False),
        # TextArea selects the line / all on F6 / F7; here they keep their app-wide meaning
        Binding("f6", "app.temperature(1)", "Temperature +", show=False),
        Binding("f7", "app.copy", "Copy", show=False),
    ]

    class _BoxMessage(Message):
        def __init__(self, box: "PromptInput") -> None:
            super().__init__()
            self.box = box

        @property
        def control(self) -> "PromptInput":  # lets @on(..., "#prompt") match
            return self.box

    class Submitted(_BoxMessage):
        def __init__(self, box: "PromptInput", text: str) -> None:
            super().__init__(box)
            self.text = text

    class EditLast(_BoxMessage):
        """Up in an empty box: load the last message to edit and resend it."""

    class Scroll(_BoxMessage):
        def __init__(self, box: "PromptInput", pages: int) -> None:
            super().__init__(box)
            self.pages = pages

    def __init__(self, **kwargs: object) -> None:
        super().__init__(soft_wrap=True, tab_behavior="focus", show_line_numbers=False,
                         highlight_cursor_line=False, placeholder=PLACEHOLDER, **kwargs)
        self.editing = False           # the text is an edit of the last message

    @property
    def value(self) -> str:
        return self.text

    @value.setter
    def value(self, text: str) -> None:
        self.load_text(text)
        self.move_cursor(self.document.end)

    def set_editing(self, editing: bool) -> None:
        self.editing = editing
        self.border_title = "editing your last message · Enter resends · Esc cancels" if editing else None
        self.set_class(editing, "-editing")

    async def _on_key(self, event: events.Key) -> None:
        if event.key == "enter":
            event.stop()
            event.prevent_default()
            self.post_message(self.Submitted(self, self.text))
            return
        if event.key in ("shift+enter", "ctrl+j"):
            event.stop()
            event.prevent_default()
            self.insert("\n")
            return
        await super()._on_key(event)

    def render_line(self, y: int) -> Strip:
        # TextArea wraps its placeholder to the content width, which is 0 for a moment
        # when the terminal is resized under a modal screen (and rich rejects width 0)
        if self.content_size.width <= 0:
            return Strip.blank(0)
        return super().render_line(y)

    def action_cursor_up(self, select: bool = False) -> None:
        if not self.text and not select:
            self.post_message(self.EditLast(self))
            return
        super().action_cursor_up(select)

    def action_scroll_conversation(self, pages: int) -> None:
        self.post_message(self.Scroll(self, pages))
