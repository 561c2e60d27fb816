"""The TUI holds a two-turn conversation with a real chat model: SmolLM2-135M-Instruct
(Q4_1 GGUF, byte-level BPE, its own ChatML template), greedy, on the CPU."""
from __future__ import annotations

import pytest

from .conftest import shared_model
from .tui_helpers import PacedBackend, replies, run, send_and_wait


@pytest.fixture(scope="module")
def smollm2():
    from inference.loader import create_backend, load_model

    from app.tui.warmup import warm_up
    from inference.engine import Engine

    loaded = load_model(shared_model("SmolLM2-135M-Instruct.Q4_1.gguf"))
    backend = create_backend(loaded, "cpu", context=1024)
    warm_up(Engine(PacedBackend(backend), loaded.tokenizer))   # kernels compiled/loaded here
    yield loaded, backend
    backend.close()


def test_a_two_turn_conversation_with_smollm2(smollm2, tmp_path):
    from inference.chat import resolve_template
    from inference.engine import Engine
    from inference.sampler import SamplingSettings

    from app.tui.chat_app import ChatApp
    from app.tui.model_host import Host
    from app.tui.store import HistoryStore

    loaded, backend = smollm2
    engine = Engine(PacedBackend(backend), loaded.tokenizer,
                    SamplingSettings(temperature=0.0, max_new_tokens=24))
    template = resolve_template("auto", loaded.tokenizer, loaded.name, loaded.path)
    assert template.uses_system and not template.is_completion   # the GGUF's own chat template
    store = HistoryStore.open(str(tmp_path / "h.db"))
    app = ChatApp(Host(engine, template, loaded.name, "cpu", "smollm2", loaded.path, backend.weight_type), store)

    async def body(pilot) -> None:
        await send_and_wait(pilot, "What is the capital of France?", timeout=180)  # a busy CI core
        first = app.session.turns[-1].reply
        assert "Paris" in first.text and first.status == "complete"   # ended at <|im_end|>
        await send_and_wait(pilot, "What is the capital of Germany?", timeout=180)
        second = app.session.turns[-1].reply
        assert "Berlin" in second.text
        # the second turn re-used the first one's KV cache
        assert app.query_one("#speed-panel").stats.prefilled_tokens < len(app.session.sequence()) // 2
        assert [v.text for v in replies(app)] == [first.text, second.text]
        assert "<|im_end|>" not in first.text + second.text
        msgs = app.store.messages(app.session.conversation_id)
        assert [m.role for m in msgs] == ["user", "assistant", "user", "assistant"]
        assert all(m.model == loaded.name for m in msgs if m.role == "assistant")

    run(app, body)
    store.close()
