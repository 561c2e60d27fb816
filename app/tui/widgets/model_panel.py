"""Model panel: name, shapes, parameter count, weight type, tokenizer, backend and device."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}" if n < 10 * div else f"{n / div:.1f}{unit}"
    return str(n)


class ModelPanel(Static):
    """Redrawn by `show()` when the model changes (Ctrl+O)."""

    def __init__(self, **kwargs: object) -> None:
        super().__init__("", **kwargs)
        self.border_title = "Model"

    def show(self, name: str, engine, template: str) -> None:
        c, backend = engine.config, engine.backend
        text = Text(name, style="bold")
        text.append(
            f"\n{human_count(c.n_params())} params · {backend.weight_type}\n"
            f"dim {c.dim} · {c.n_layers} layers\n"
            f"heads {c.n_heads} · kv {c.n_kv_heads}\n"
            f"ctx {engine.context_length} · {template} template\n")
        describe = getattr(engine.tokenizer, "describe", None)
        if describe is not None:
            text.append(describe().split(",")[0] + f", {c.vocab_size} tokens\n", style="dim")
        text.append(backend.describe(), style="dim")
        self.update(text)
