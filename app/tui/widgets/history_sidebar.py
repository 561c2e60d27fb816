"""History sidebar: a search box over past conversations, newest first.

Enter on a chat reopens it (on the chat already open: back to the message box), Del asks
to delete it, Ctrl+T renames it. Opening the sidebar highlights the chat that is open
(or the newest), so ↓/↑ always start from a visible row.
"""
from __future__ import annotations

import time

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.message import Message
from textual.widgets import Input, OptionList
from textual.widgets.option_list import Option

from ..store import ConversationInfo


def _when(ts: float) -> str:
    age = time.time() - ts
    if age < 86400:
        return time.strftime("%H:%M", time.localtime(ts))
    return time.strftime("%d %b", time.localtime(ts))


class HistoryList(OptionList):
    """The list itself; its keys act on the highlighted chat."""

    BINDINGS = [
        Binding("delete", "delete", "Delete chat", show=False),
    ]

    class Open(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    class Delete(Message):
        def __init__(self, conversation_id: int) -> None:
            super().__init__()
            self.conversation_id = conversation_id

    @property
    def highlighted_id(self) -> int | None:
        if self.highlighted is None:
            return None
        option = self.get_option_at_index(self.highlighted)
        return int(option.id) if option.id is not None else None

    def action_delete(self) -> None:
        cid = self.highlighted_id
        if cid is not None:
            self.post_message(self.Delete(cid))

    def on_option_list_option_selected(self, event: OptionList.OptionSelected) -> None:
        event.stop()
        if event.option.id is not None:
            self.post_message(self.Open(int(event.option.id)))


class HistorySidebar(Vertical):
    """The search box and the list; the app fills it with `show()`."""

    class Search(Message):
        def __init__(self, query: str) -> None:
            super().__init__()
            self.query = query

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.border_title = "History"
        self.current: int | None = None

    def compose(self) -> ComposeResult:
        yield Input(placeholder="search (Ctrl+F)", id="history-search")
        yield HistoryList(id="history-list")

    @property
    def list(self) -> HistoryList:
        return self.query_one(HistoryList)

    @property
    def search_box(self) -> Input:
        return self.query_one("#history-search", Input)

    @property
    def option_count(self) -> int:
        return self.list.option_count

    def show(self, conversations: list[ConversationInfo], current: int | None,
             model: str = "") -> None:
        """List `conversations`; the model is named only for chats made with another one.
        The highlight stays on the same chat, else goes to the open one, else the first."""
        lst = self.list
        keep = lst.highlighted_id
        self.current = current
        self._shown = (conversations, current, model)
        lst.clear_options()
        if not conversations:
            empty = "no chat matches" if self.search_box.value.strip() else "no saved chats yet"
            lst.add_option(Option(Text(empty, style="dim"), disabled=True))
            return
        room = max(8, (lst.scrollable_content_region.width or 22) - 1)
        for c in conversations:
            title = ("▶ " if c.id == current else "") + " ".join((c.title or "(untitled)").split())
            label = Text(title if len(title) <= room else title[:room - 1] + "…")
            detail = f"{_when(c.updated)} · {c.n_messages} msg"
            if c.model != model:
                detail += f" · {c.model}"
            label.append("\n" + detail[:24], style="dim")
            lst.add_option(Option(label, id=str(c.id)))
        ids = [c.id for c in conversations]
        for want in (keep, current, ids[0]):
            if want in ids:
                lst.highlighted = ids.index(want)
                break

    def on_resize(self) -> None:
        shown = getattr(self, "_shown", None)
        if shown is not None:
            self.show(*shown)   # titles are cut to the width

    def focus_list(self) -> None:
        lst = self.list
        if lst.highlighted is None and lst.option_count and not lst.get_option_at_index(0).disabled:
            lst.highlighted = 0
        lst.focus()

    def on_input_changed(self, event: Input.Changed) -> None:
        event.stop()
        self.post_message(self.Search(event.value))

    def on_input_submitted(self, event: Input.Submitted) -> None:
        event.stop()
        self.focus_list()
