"""The scrolling conversation pane."""
from __future__ import annotations

from textual.containers import VerticalScroll

from .message import MessageView, NoticeView, SystemView


class ConversationView(VerticalScroll):
    """The system prompt, messages and notices, newest at the bottom.

    The pane is anchored to its bottom: Textual keeps an anchored view scrolled to the end
    at every layout, however the content grew (a frame's text, a notice, a new message),
    until the user scrolls up to read; scrolling back to the bottom anchors it again.
    Deciding "was it at the bottom?" before each frame instead lost the stream whenever a
    frame's layout landed after the check.
    """

    can_focus = True

    def compose(self):
        yield SystemView()

    def on_mount(self) -> None:
        self.anchor()

    @property
    def following(self) -> bool:
        """The view sticks to the newest text (not scrolled up by the user)."""
        return self.is_anchored and not self._anchor_released

    def follow(self) -> None:
        """Stick to the bottom again (the user sent a message: they want to see the reply)."""
        self.anchor()

    async def add_message(self, role: str, text: str = "", label: str = "",
                          streaming: bool = False) -> MessageView:
        view = MessageView(role, text, label, streaming)
        await self.mount(view)
        return view

    async def add_notice(self, text: str) -> NoticeView:
        notice = NoticeView(text)
        await self.mount(notice)
        return notice

    async def clear(self) -> None:
        """Remove every message and notice (the system prompt line stays)."""
        await self.query("MessageView, NoticeView").remove()
        self.anchor()

    def page(self, pages: int) -> None:
        if pages < 0:
            self.scroll_page_up(animate=False)
        else:
            self.scroll_page_down(animate=False)
