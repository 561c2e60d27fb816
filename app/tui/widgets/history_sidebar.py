"""History sidebar: past conversations, newest first; selecting one reopens it."""
from __future__ import annotations

import time

from rich.text import Text
from textual.message import Message
from textual.widgets import OptionList
from textual.widgets.option_list import Option

from ..store import ConversationInfo


def _when(ts: float) -> str:
    age = time.time() - ts
    if age < 86400:
        return time.strftime("%H:%M", time.localtime(ts))
    return time.strftime("%d %b", time.localtime(ts))


class HistorySidebar(OptionList):
    class Open(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.border_title = "History"
        self.current: int | None = None

    def show(self, conversations: list[ConversationInfo], current: int | None,
             model: str = "") -> None:
        """List `conversations`; the model is named only for chats made with another one."""
        self.current = current
        self.clear_options()
        if not conversations:
            self.add_option(Option(Text("no saved chats yet", style="dim"), disabled=True))
            return
        for c in conversations:
            label = Text(("▶ " if c.id == current else "") + (c.title or "(untitled)"),
                         no_wrap=True, overflow="ellipsis")
            detail = f"{_when(c.updated)} · {c.n_messages} msg"
            if c.model != model:
                detail += f" · {c.model}"
            label.append("\n" + detail[:20], style="dim")
            self.add_option(Option(label, id=str(c.id)))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Open(int(event.option.id)))
