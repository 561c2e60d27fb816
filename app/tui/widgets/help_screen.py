"""F1: the keys, in one place."""
from __future__ import annotations

from rich.table import Table
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Static

KEYS: tuple[tuple[str, str], ...] = (
    ("Enter", "send the message; in an empty box: continue a reply cut short (length limit, "
              "Esc); completion mode: continue the text"),
    ("Ctrl+J / Shift+Enter", "new line in the message (a paste keeps its lines)"),
    ("↑ (empty box)", "edit your last message; Enter resends it, replacing the last turn"),
    ("Esc", "stop generating (the partial reply is kept, marked stopped); cancel an edit; "
            "anywhere else: back to the message box"),
    ("Ctrl+R", "regenerate the last reply; the old one is kept"),
    ("Alt+← / Alt+→", "flip between the replies to the last message"),
    ("F7", "copy the last reply or one of its code blocks (OSC 52)"),
    ("Ctrl+S", "export the conversation to Markdown (.md) or JSON (.json)"),
    ("Ctrl+N", "new conversation"),
    ("Ctrl+O", "switch model; the conversation continues on it"),
    ("F2", "sampling panel: ↑/↓ pick, ←/→ or -/+ nudge, Enter or a digit type a value, "
           "Esc or F2 back"),
    ("F3", "edit the system prompt (chat templates)"),
    ("F4", "switch sampling preset (settings file)"),
    ("F5 / F6", "temperature down / up by 0.1, from anywhere"),
    ("Ctrl+B", "show/hide the history; Enter reopens a chat, Del deletes it"),
    ("Ctrl+F / Ctrl+T", "search the history / rename a chat"),
    ("PgUp / PgDn", "scroll the conversation (also from the message box)"),
    ("Ctrl+P", "command palette: every action above, searchable"),
    ("Tab", "move focus: message box, conversation, history"),
    ("Ctrl+Q", "quit (stops generation, everything is saved)"),
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
            yield Static("\n[dim]Typing goes to the message box whatever has focus (dialogs and "
                         "the sampling panel excepted). Settings changed while a reply streams "
                         "apply from the next token. Esc or F1 closes this.[/dim]")

    def action_close(self) -> None:
        self.dismiss(None)
