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
        self._height: int | None = None      # streaming body: wrapped lines at last frame
        self._frames = 0
        self._wrap_width = 0
        self._done_lines = 0                 # lines of the paragraphs before the last newline
        self._done_at = 0                    # where the paragraph still growing starts

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

    #: Re-layout at least this often while streaming, whatever the line count says.
    FORCE_LAYOUT_EVERY = 15

    def append(self, chunk: str) -> None:
        """Add streamed text (called at most once per frame).

        A layout pass over the whole screen is the costliest part of a frame, so the
        body asks for one only when its wrapped line count changes (slow models add a
        line every few frames), and every FORCE_LAYOUT_EVERY frames as a safety net.
        """
        if not chunk:
            return
        self.text += chunk
        body = self.query(".message-body").first()
        if not isinstance(body, Static):
            return
        height = self._wrapped_height(body.content_size.width)
        self._frames += 1
        relayout = height is None or height != self._height or self._frames % self.FORCE_LAYOUT_EVERY == 0
        self._height = height
        body.update(Text(self.text), layout=relayout)

    def _wrapped_height(self, width: int) -> int | None:
        """Lines the streaming text takes at `width`. Finished paragraphs are counted
        once; only the paragraph still growing is wrapped again."""
        if width <= 0:
            return None
        if width != self._wrap_width:
            self._wrap_width, self._done_lines, self._done_at = width, 0, 0
        last_nl = self.text.rfind("\n")
        if last_nl >= self._done_at:
            for para in self.text[self._done_at:last_nl].split("\n"):
                self._done_lines += self._lines(para, width)
            self._done_at = last_nl + 1
        return self._done_lines + self._lines(self.text[self._done_at:], width)

    def _lines(self, para: str, width: int) -> int:
        return max(1, len(Text(para).wrap(self.app.console, width)))

    def set_meta(self, meta: str) -> None:
        self._meta = meta
        if self.is_mounted:
            self.query_one(".message-header", Static).update(self._header_text(), layout=False)

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
