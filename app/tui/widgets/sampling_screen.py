"""F2 on a terminal too narrow for the side panels: the sampling panel as an overlay, so
what the arrows change is always on screen."""
from __future__ import annotations

from typing import Callable

from textual.app import ComposeResult
from textual.screen import ModalScreen

from inference.sampler import SamplingSettings

from .sampling_panel import SamplingPanel


class SamplingScreen(ModalScreen[None]):
    """Holds a SamplingPanel; the app closes it on the panel's Leave message."""

    def __init__(self, get_settings: Callable[[], SamplingSettings],
                 apply: Callable[[SamplingSettings], None], row: int = 0, preset: str = "") -> None:
        super().__init__()
        self.get_settings, self.apply, self.row, self.preset = get_settings, apply, row, preset

    def compose(self) -> ComposeResult:
        panel = SamplingPanel(self.get_settings, self.apply, id="sampling-overlay", classes="panel")
        panel.row = self.row
        panel.set_preset(self.preset)
        yield panel

    def on_mount(self) -> None:
        self.query_one(SamplingPanel).focus()

    @property
    def panel(self) -> SamplingPanel:
        return self.query_one(SamplingPanel)
