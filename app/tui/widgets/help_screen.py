"""F1: the keys, in one place."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "send the message (completion mode: empty Enter continues the text)"),
    ("Esc", "stop generating; the partial reply is kept, marked stopped"),
    ("Ctrl+R", "regenerate the last reply"),
    ("Ctrl+N", "new conversation"),
    ("Ctrl+Q", "quit (stops generation, everything is saved)"),
    ("F1", "this help"),
    ("F2", "sampling panel: ↑/↓ pick, ←/→ or -/+ nudge, Enter type a value"),
    ("F3", "edit the system prompt (llama2 template)"),
    ("F5 / F6", "temperature down / up by 0.1, from anywhere"),
    ("Ctrl+B", "show/hide the history sidebar; Enter on a chat reopens it"),
    ("Ctrl+P", "command palette: every action above, searchable"),
    ("Tab", "move focus: input, conversation, sampling, history"),
    ("PgUp / PgDn", "scroll the conversation"),
)


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,f1,q", "close", "Close")]

    def compose(self) -> ComposeResult:
        table = Table(box=None, show_header=False, padding=(0, 2, 0, 0))
        table.add_column(style="bold cyan", no_wrap=True)
        table.add_column()
        for key, what in KEYS:
            table.add_row(key, what)
        with VerticalScroll(id="help"):
            yield Static("[b]llama-chat keys[/b]\n")
            yield Static(table)
            yield Static("\n[dim]Settings changed while a reply streams apply from the next "
                         "token. Esc or F1 closes this.[/dim]")

    def action_close(self) -> None:
        self.dismiss(None)
