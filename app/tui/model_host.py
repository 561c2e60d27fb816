"""The model the chat runs on, and opening another one without restarting.

`ModelOpener` holds what the command line decided once (device, quant, group size,
backend options, the template spec); `open(path)` loads a model with it and returns a
`Host`: loaded model + backend + engine + chat template. The CLI opens the first model
itself, so a bad one is a one-line error before the full-screen UI starts; the TUI's
model picker runs `open` in a `ModelJob` on a thread and swaps the host when it is ready
(the conversation continues on the new model). No Textual here.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field
from typing import Any, Callable

from inference.errors import LlamaChatError

from .warmup import BackgroundTask, WarmUp, warm_up


def tokenizer_identity(tok: object) -> str:
    """Stored with each conversation: saved token ids are reused only with the same tokenizer."""
    path = getattr(tok, "path", "") or ""
    return f"{getattr(tok, 'kind', '?')}:{getattr(tok, 'vocab_size', 0)}:{os.path.basename(path)}"


@dataclass
class Host:
    """A loaded model ready to chat: what the app needs of it, in one place."""

    engine: Any                   # inference.engine.Engine
    template: Any                 # inference.chat.ChatTemplate
    name: str
    device: str = "cpu"
    tokenizer_id: str = ""
    path: str = ""
    weight_type: str = ""
    loaded: Any = None            # inference.loader.LoadedModel, when known
    warning: str = ""             # said once the chat shows this model (a template that does not fit)

    @property
    def backend(self) -> Any:
        return self.engine.backend

    def close(self) -> None:
        close = getattr(self.engine.backend, "close", None)
        if close is not None:
            close()


@dataclass
class ModelOpener:
    """Opens models the way the command line asked for."""

    device: str = "cpu"
    quant: str | None = None
    group_size: int = 64
    template_spec: str = "auto"
    backend_options: dict[str, Any] = field(default_factory=dict)
    tokenizer: str | None = None      # --tokenizer: the first model only

    def open(self, path: str, settings: Any = None, tokenizer: str | None = None,
             progress: Callable[[int, int], None] | None = None) -> Host:
        """Load `path` (LlamaChatError on any problem) and wrap it in a Host."""
        from inference.chat import resolve_template, template_warning
        from inference.engine import Engine
        from inference.loader import create_backend, load_model

        loaded = load_model(path, tokenizer, self.quant, progress=progress, group_size=self.group_size)
        template = resolve_template(self.template_spec, loaded.tokenizer, loaded.name, loaded.path)
        backend = create_backend(loaded, self.device, **self.backend_options)
        engine = Engine(backend, loaded.tokenizer, settings)
        return Host(engine, template, loaded.name, self.device, tokenizer_identity(loaded.tokenizer),
                    loaded.path, getattr(backend, "weight_type", loaded.source_dtype), loaded,
                    template_warning(template, loaded.tokenizer) or "")


class ModelJob(BackgroundTask):
    """Get a Host ready on a background thread — open a model (optional), then warm it
    up — and report the phase to a progress screen polling from the UI thread."""

    thread_name = "llama-chat-open"

    def __init__(self, host: Host | None = None, open_host: Callable[[], Host] | None = None,
                 label: str = "", run_warm_up: Callable[[Any], None] = warm_up) -> None:
        assert host is not None or open_host is not None
        super().__init__()
        self.host = host
        self.label = label or (host.name if host else "model")
        self._open = open_host
        self._run_warm_up = run_warm_up
        self.phase = "loading" if host is None else "warming"
        self.error: str | None = None
        self.load_s = 0.0
        self.warm: WarmUp | None = None

    def _body(self) -> None:
        try:
            if self.host is None:
                t0 = time.perf_counter()
                assert self._open is not None
                self.host = self._open()
                self.load_s = time.perf_counter() - t0
                self.label = self.host.name
            self.phase = "warming"
            self.warm = WarmUp(self.host.engine, self._run_warm_up).start()
            self.warm.wait()
            if self.warm.error:
                raise LlamaChatError(f"the first forward pass failed: {self.warm.error}")
            self.phase = "ready"
        except LlamaChatError as e:
            self.error, self.phase = str(e), "failed"
        except Exception as e:  # noqa: BLE001  (a model that fails to open is a message, not a crash)
            self.error, self.phase = f"{type(e).__name__}: {e}", "failed"
