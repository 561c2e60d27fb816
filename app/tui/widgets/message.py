"""One message in the conversation: plain text while it streams, Markdown once complete."""
from __future__ import annotations

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static

#: Assistant statuses and how the message header shows them.
STATUS_LABELS = {
    "complete": "",
    "eos": "",
    "max_tokens": "length limit",
    "stopped": "stopped",
    "context_full": "context full",
    "error": "error",
}


class MessageView(Vertical):
    """A user or assistant message. Streaming text goes into a Static (cheap to update once
    per frame); `finish()` swaps it for a Markdown render."""

    DEFAULT_CLASSES = "message"

    def __init__(self, role: str, text: str = "", label: str = "", streaming: bool = False) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.text = text
        self.label = label or ("You" if role == "user" else "Model")
        self.streaming = streaming
        self._meta = ""

    def compose(self) -> ComposeResult:
        yield Static(self._header_text(), classes="message-header")
        if self.streaming or self.role == "user":
            yield Static(Text(self.text), classes="message-body")
        else:
            yield Markdown(self.text, classes="message-body")

    def _header_text(self) -> Text:
        t = Text(self.label, style="bold")
        if self._meta:
            t.append("  " + self._meta, style="dim")
        return t

    def append(self, chunk: str) -> None:
        """Add streamed text (called at most once per frame)."""
        if not chunk:
            return
        self.text += chunk
        body = self.query(".message-body").first()
        if isinstance(body, Static):
            body.update(Text(self.text))

    def set_meta(self, meta: str) -> None:
        self._meta = meta
        if self.is_mounted:
            self.query_one(".message-header", Static).update(self._header_text())

    async def finish(self, status: str = "complete", meta: str = "") -> None:
        """The reply is done: render it as Markdown and show how it ended."""
        self.streaming = False
        label = STATUS_LABELS.get(status, status)
        self.set_classes(f"message -{self.role}" + (f" -{status}" if label else ""))
        self.set_meta(" · ".join(x for x in (meta, label) if x))
        old = self.query(".message-body").first()
        await old.remove()
        await self.mount(Markdown(self.text or "_(no text)_", classes="message-body"))


class NoticeView(Static):
    """A one-line event in the conversation (turns dropped, history moved aside, …)."""

    def __init__(self, text: str) -> None:
        super().__init__(Text("— " + text, style="italic"), classes="notice")
