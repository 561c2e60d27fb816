"""Speed panel: what each figure measures is written next to it.

- decode tok/s: new tokens after the first, over the time since the first ("now": the
  last 16 tokens, with a sparkline of the stream; "last": the whole finished reply);
- prompt: the tokens the reply continues, how many were already in the KV cache, and the
  rate at which the rest was read (prefill);
- first token: from the request to the first new token (prefill + one step). Kernels are
  loaded before the chat opens, so no one-time cost hides in it.
"""
from __future__ import annotations

from collections import deque

from rich.text import Text
from textual.app import ComposeResult
from textual.containers import Vertical
from textual.widgets import Sparkline, Static

from inference.engine import GenerationStats


def fmt_rate(x: float) -> str:
    return f"{x:,.0f}" if x >= 100 else f"{x:.1f}"


def fmt_seconds(s: float) -> str:
    return f"{s * 1000:.0f} ms" if s < 1 else f"{s:.2f} s" if s < 10 else f"{s:.1f} s"


class SpeedPanel(Vertical):
    """Fed by the app once per frame while a reply streams, and once when it ends."""

    HISTORY = 48  # sparkline samples (~1.6 s of frames at 30 fps)

    def __init__(self, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.border_title = "Speed"
        self.samples: deque[float] = deque(maxlen=self.HISTORY)
        self.stats = GenerationStats()
        self.streaming = False

    def compose(self) -> ComposeResult:
        yield Static(id="speed-now")
        yield Sparkline(list(self.samples), id="speed-spark")
        yield Static(id="speed-detail")

    def on_mount(self) -> None:
        self._render_text()

    def start(self) -> None:
        self.streaming = True
        self.stats = GenerationStats()
        self._render_text()

    def update_stats(self, stats: GenerationStats, finished: bool = False) -> None:
        self.stats = stats
        if finished:
            self.streaming = False
        elif stats.generated_tokens > 1:
            self.samples.append(stats.recent_tok_s)
            self.query_one(Sparkline).data = list(self.samples)
        self._render_text()

    def current_rate(self) -> float:
        s = self.stats
        return s.recent_tok_s if self.streaming else s.decode_tok_s

    def _render_text(self) -> None:
        s = self.stats
        now = Text()
        empty = not self.streaming and s.generated_tokens == 0 and s.prompt_tokens == 0
        relayout, self._empty = empty != getattr(self, "_empty", None), empty   # the height changes
        if empty:
            now.append("no reply yet", style="dim")
            self.query_one("#speed-now", Static).update(now, layout=relayout)
            self.query_one("#speed-detail", Static).update(Text(""), layout=relayout)
            return
        now.append(fmt_rate(self.current_rate()), style="bold")
        now.append(" tok/s decode ")
        now.append("now" if self.streaming else "(last)", style="dim")
        self.query_one("#speed-now", Static).update(now, layout=relayout)
        cached = s.prompt_tokens - s.prefilled_tokens
        detail = Text()
        detail.append(f"reply {s.generated_tokens} tok, {fmt_seconds(s.ttft_s + s.decode_s)}\n")
        detail.append(f"prompt {s.prompt_tokens}, {cached} cached\n")
        detail.append(f"read {s.prefilled_tokens} at {fmt_rate(s.prefill_tok_s)} tok/s\n")
        detail.append(f"first token {fmt_seconds(s.ttft_s)}")
        self.query_one("#speed-detail", Static).update(detail, layout=relayout)
