"""One message in the conversation.

A reply is Markdown from its first token: fragments go through Textual's MarkdownStream,
which batches them when they come faster than the widget can re-render, and the finished
reply is the same widget (never re-rendered differently at the end). The model's line
breaks are kept: a single newline is a line break here, not a space as in strict
Markdown, because that is what the model meant (lists and poems without blank lines).
A user message is shown verbatim, as plain text.
"""
from __future__ import annotations

from markdown_it import MarkdownIt
from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Markdown, Static
from textual.widgets.markdown import MarkdownStream

#: Assistant statuses and how the message header shows them.
STATUS_LABELS = {
    "complete": "",
    "eos": "",
    "max_tokens": "length limit",
    "stopped": "stopped",
    "context_full": "context full",
    "error": "error",
}


def _keep_line_breaks(state) -> None:  # a markdown-it core rule
    for token in state.tokens:
        for child in token.children or ():
            if child.type == "softbreak":
                child.type = "hardbreak"


def chat_markdown_parser() -> MarkdownIt:
    """GitHub-flavoured Markdown in which a single newline is a line break."""
    md = MarkdownIt("gfm-like")
    md.core.ruler.push("keep_line_breaks", _keep_line_breaks)
    return md


class MessageView(Vertical):
    """A user or assistant message: a header line (who, figures, status) and the body."""

    DEFAULT_CLASSES = "message"

    def __init__(self, role: str, text: str = "", label: str = "", streaming: bool = False) -> None:
        super().__init__(classes=f"message -{role}")
        self.role = role
        self.text = text
        self.label = label or ("You" if role == "user" else "Model")
        self.streaming = streaming
        self._meta = ""
        self._position = ""
        self._stream: MarkdownStream | None = None

    def compose(self) -> ComposeResult:
        yield Static(self._header_text(), classes="message-header")
        if self.role == "user":
            yield Static(Text(self.text), classes="message-body")
        else:
            yield Markdown(self.text, classes="message-body", parser_factory=chat_markdown_parser)

    def on_mount(self) -> None:
        if self.streaming and self.role != "user":
            self._stream = Markdown.get_stream(self.query_one(Markdown))

    def _header_text(self) -> Text:
        t = Text(self.label, style="bold")
        if self._position:
            t.append(f"  {self._position}", style="bold cyan")
        if self._meta:
            t.append("  " + self._meta, style="dim")
        return t

    def _refresh_header(self) -> None:
        if self.is_mounted:
            self.query_one(".message-header", Static).update(self._header_text(), layout=False)

    async def append(self, chunk: str) -> None:
        """Add streamed text (called at most once per frame)."""
        if not chunk:
            return
        self.text += chunk
        if self._stream is not None:
            await self._stream.write(chunk)

    def set_meta(self, meta: str) -> None:
        self._meta = meta
        self._refresh_header()

    def set_position(self, index: int, count: int) -> None:
        """Which of several alternative replies this is ('‹2/3›'); nothing for one."""
        self._position = f"‹{index}/{count}› Alt+←/→" if count > 1 and index else ""
        self._refresh_header()

    async def finish(self, status: str = "complete", meta: str = "") -> None:
        """The reply is done: flush the stream and show how it ended."""
        self.streaming = False
        if self._stream is not None:
            await self._stream.stop()
            self._stream = None
        label = STATUS_LABELS.get(status, status)
        self.set_classes(f"message -{self.role}" + (f" -{status}" if label else ""))
        self.set_meta(" · ".join(x for x in (label, meta) if x))   # how it ended first: never cut
        if not self.text and self.role != "user":
            await self.query_one(Markdown).update("_(no text)_")

    async def show_text(self, text: str) -> None:
        """Replace a finished reply's text (flipping between alternatives)."""
        self.text = text
        await self.query_one(Markdown).update(text or "_(no text)_")


class NoticeView(Static):
    """A one-line event in the conversation (turns dropped, history moved aside, …)."""

    def __init__(self, text: str) -> None:
        super().__init__(Text("— " + text, style="italic"), classes="notice")
        self.text = text


class SystemView(Static):
    """The system prompt, at the top of a chat (F3 edits it)."""

    def __init__(self) -> None:
        super().__init__("", classes="system-prompt")

    def show(self, text: str, uses_system: bool, template: str) -> None:
        if not uses_system:
            body = Text("completion mode (no system prompt): your text and the model's "
                        "continuation form one story; an empty Enter continues it", style="dim italic")
        elif text.strip():
            body = Text("System  ", style="bold")
            body.append(text)
            body.append("  (F3 edits)", style="dim")
        else:
            body = Text("System  ", style="bold")
            body.append(f"none set: the default of {template} template, if it has one", style="italic")
            body.append("  (F3 sets one)", style="dim")
        self.update(body)
