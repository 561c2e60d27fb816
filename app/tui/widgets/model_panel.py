"""Model panel: name, shapes, parameter count, weight type, backend and device."""
from __future__ import annotations

from rich.text import Text
from textual.widgets import Static

from inference.backends.base import Backend
from inference.config import ModelConfig


def human_count(n: int) -> str:
    for div, unit in ((1e9, "B"), (1e6, "M"), (1e3, "K")):
        if n >= div:
            return f"{n / div:.2f}{unit}" if n < 10 * div else f"{n / div:.1f}{unit}"
    return str(n)


class ModelPanel(Static):
    def __init__(self, name: str, config: ModelConfig, backend: Backend, template: str,
                 **kwargs: object) -> None:
        c = config
        text = Text(name, style="bold")
        text.append(
            f"  {human_count(c.n_params())} params\n"
            f"dim {c.dim} · {c.n_layers} layers\n"
            f"heads {c.n_heads} · kv {c.n_kv_heads} · vocab {c.vocab_size}\n"
            f"ctx {c.seq_len} · {backend.weight_type} · {template}\n"
            f"{backend.describe()}")
        super().__init__(text, **kwargs)
        self.border_title = "Model"
