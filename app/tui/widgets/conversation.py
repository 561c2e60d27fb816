"""The scrolling conversation pane."""
from __future__ import annotations

from textual.containers import VerticalScroll

from .message import MessageView, NoticeView


class ConversationView(VerticalScroll):
    """Messages and notices, newest at the bottom. Follows the stream while the user is at
    the bottom; leaves the scroll position alone once they scroll up to read."""

    can_focus = True

    def at_bottom(self) -> bool:
        return self.scroll_offset.y >= self.max_scroll_y - 1

    async def add_message(self, role: str, text: str = "", label: str = "",
                          streaming: bool = False) -> MessageView:
        view = MessageView(role, text, label, streaming)
        await self.mount(view)
        self.scroll_end(animate=False)
        return view

    async def add_notice(self, text: str) -> None:
        follow = self.at_bottom()
        await self.mount(NoticeView(text))
        if follow:
            self.scroll_end(animate=False)

    def follow(self, was_at_bottom: bool) -> None:
        if was_at_bottom:
            self.scroll_end(animate=False)

    async def clear(self) -> None:
        await self.remove_children()
