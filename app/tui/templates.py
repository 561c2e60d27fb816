"""Chat formats: how a conversation becomes the token sequence the model continues.

A conversation is built turn by turn as token ids. Replies are kept as the ids the model
generated, never re-tokenized, so the KV cache prefix stays identical from one turn to the
next and a new user message prefills only its own tokens.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Protocol, Sequence

from inference.tokenizer import Tokenizer

B_INST, E_INST = "[INST]", "[/INST]"
B_SYS, E_SYS = "<<SYS>>\n", "\n<</SYS>>\n\n"

TEMPLATE_NAMES = ("llama2", "completion")


@dataclass(frozen=True)
class Turn:
    """One user message and the reply that followed it (None while none exists yet)."""

    user_text: str
    reply_ids: Sequence[int] | None = None


class ChatTemplate(Protocol):
    name: str
    uses_system: bool
    allows_empty: bool

    def user_ids(self, text: str, system: str, first: bool) -> list[int]: ...
    def after_reply(self) -> list[int]: ...


class Llama2Template:
    """Meta's Llama-2-chat format: `<s>[INST] <<SYS>>…<</SYS>>\\n\\nuser [/INST] reply </s>`.

    Each turn starts with BOS and a finished reply ends with EOS, as Meta's reference code
    encodes dialogs; the system block goes inside the first [INST] still in context.
    """

    name = "llama2"
    uses_system = True
    allows_empty = False

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer
        self._cache: dict[tuple[str, str, bool], list[int]] = {}

    def user_ids(self, text: str, system: str, first: bool) -> list[int]:
        key = (text, system if first else "", first)
        ids = self._cache.get(key)
        if ids is None:
            content = text.strip()
            if first and system.strip():
                content = f"{B_SYS}{system.strip()}{E_SYS}{content}"
            ids = self.tok.encode(f"{B_INST} {content} {E_INST}", bos=True)
            self._cache[key] = ids
        return ids

    def after_reply(self) -> list[int]:
        return [self.tok.eos_id]


class CompletionTemplate:
    """Base models: the conversation is one running text — your words, then its continuation.

    Only the first piece of text in context carries BOS. An empty message is allowed and
    simply asks the model to keep going.
    """

    name = "completion"
    uses_system = False
    allows_empty = True

    def __init__(self, tokenizer: Tokenizer) -> None:
        self.tok = tokenizer

    def user_ids(self, text: str, system: str, first: bool) -> list[int]:
        ids = self.tok.encode(text, bos=False) if text else []
        return [self.tok.bos_id, *ids] if first else ids

    def after_reply(self) -> list[int]:
        return []


def build_sequence(template: ChatTemplate, system: str, turns: Sequence[Turn]) -> list[int]:
    """The ids of `turns` (the last may lack a reply: the model continues from there)."""
    out: list[int] = []
    for i, turn in enumerate(turns):
        out.extend(template.user_ids(turn.user_text, system, first=(i == 0)))
        if turn.reply_ids is not None:
            out.extend(turn.reply_ids)
            out.extend(template.after_reply())
    return out


def looks_like_chat_model(name: str, path: str, tokenizer: Tokenizer) -> bool:
    """Heuristic for `--template auto`: chat/instruct in the model's name, or a vocabulary
    with [INST] as one piece (fine-tunes that added it)."""
    hay = f"{name} {os.path.basename(os.path.normpath(path))}".lower()
    if any(word in hay for word in ("chat", "instruct", "-it")):
        return True
    return any(p in (b"[INST]", b"[/INST]") for p in tokenizer.pieces)


def make_template(choice: str, tokenizer: Tokenizer, name: str = "", path: str = "") -> ChatTemplate:
    """`choice` is "llama2", "completion" or "auto" (picked from the model)."""
    if choice == "auto":
        choice = "llama2" if looks_like_chat_model(name, path, tokenizer) else "completion"
    if choice == "llama2":
        return Llama2Template(tokenizer)
    if choice == "completion":
        return CompletionTemplate(tokenizer)
    raise ValueError(f"unknown chat template {choice!r} (choose from {', '.join(TEMPLATE_NAMES)})")
