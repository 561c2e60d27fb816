"""A conversation as a file: Markdown (a heading per message, with role and model) or
JSON (a list of {role, content, model, created, ...}). Used by the TUI's export key and
by `llama-chat export`; no Textual here.
"""
from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Iterable

FORMATS = ("md", "json")


@dataclass(frozen=True)
class Entry:
    """One message as exported."""

    role: str                   # system | user | assistant
    content: str
    model: str | None = None    # assistant: the model that wrote it
    created: float | None = None
    status: str | None = None   # assistant: complete | stopped | max_tokens | context_full | error
    shown: bool = True          # False: an alternative reply (regenerated away, kept)


@dataclass(frozen=True)
class Header:
    """What the export says about the conversation as a whole."""

    id: int | None
    title: str
    template: str
    system: str
    created: float | None = None


def template_label(name: str) -> str:
    """How a template is named to people: the one a model file carries is 'model' inside."""
    return "the model's own" if name == "model" else name


def from_store(store, conversation_id: int) -> tuple[Header, list[Entry]] | None:
    """The conversation as stored (every shown message and alternative reply)."""
    info = store.conversation(conversation_id)
    if info is None:
        return None
    entries = [Entry(r.role, r.text, (r.model or info.model) if r.role == "assistant" else None,
                     r.created or None, r.status if r.role == "assistant" else None,
                     r.state == "shown")
               for r in store.messages(conversation_id)
               if not (r.role == "user" and not r.text)]
    return Header(info.id, info.title, info.template, info.system, info.created or None), entries


def from_turns(title: str, template: str, system: str, turns: Iterable, model: str) -> tuple[Header, list[Entry]]:
    """The conversation as the UI holds it (history off): no timestamps."""
    out: list[Entry] = []
    for turn in turns:
        if turn.user.text:
            out.append(Entry("user", turn.user.text))
        for reply in turn.alternatives():
            out.append(Entry("assistant", reply.text, reply.model or model, None, reply.status,
                             reply is turn.reply))
    return Header(None, title, template, system), out


def _iso(ts: float | None) -> str | None:
    """ISO 8601 with the local offset, e.g. 2025-05-01T12:00:00+02:00."""
    if not ts:
        return None
    from datetime import datetime
    return datetime.fromtimestamp(ts).astimezone().isoformat(timespec="seconds")


def _when(ts: float | None) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(ts)) if ts else ""


def to_json(header: Header, entries: list[Entry]) -> str:
    """A JSON list of messages, the system prompt first when there is one."""
    out: list[dict] = []
    if header.system:
        out.append({"role": "system", "content": header.system, "model": None,
                    "created": _iso(header.created), "conversation": header.id, "title": header.title})
    for e in entries:
        item = {"role": e.role, "content": e.content, "model": e.model, "created": _iso(e.created),
                "conversation": header.id}
        if e.role == "assistant":
            item["status"] = e.status
            item["shown"] = e.shown
        out.append(item)
    return json.dumps(out, ensure_ascii=False, indent=2) + "\n"


def to_markdown(header: Header, entries: list[Entry]) -> str:
    """A heading per message (role, model, time), the text verbatim below it."""
    lines = [f"# {header.title or 'llama-chat conversation'}", ""]
    about = [f"conversation {header.id}" if header.id is not None else "", f"{template_label(header.template)} template",
             f"started {_when(header.created)}" if header.created else ""]
    lines += ["*" + " · ".join(a for a in about if a) + "*", ""]
    if header.system:
        lines += ["## System", "", header.system, ""]
    for e in entries:
        if e.role == "user":
            head = "## User"
        else:
            head = f"## Assistant ({e.model})" if e.model else "## Assistant"
            if e.status and e.status not in ("complete", "eos"):
                head += f" · {e.status.replace('_', ' ')}"
            if not e.shown:
                head += " · earlier alternative"
        when = _when(e.created)
        lines += [head + (f" · {when}" if when else ""), "", e.content, ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def render(header: Header, entries: list[Entry], fmt: str) -> str:
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r} (md or json)")
    return to_json(header, entries) if fmt == "json" else to_markdown(header, entries)


def format_for(path: str, default: str = "md") -> str:
    """md or json from a file name's extension (anything else: `default`)."""
    low = path.lower()
    if low.endswith(".json"):
        return "json"
    if low.endswith((".md", ".markdown")):
        return "md"
    return default


def default_filename(header: Header, fmt: str = "md") -> str:
    slug = re.sub(r"[^A-Za-z0-9]+", "-", header.title).strip("-").lower()[:40] or "chat"
    ident = header.id if header.id is not None else time.strftime("%Y%m%d-%H%M%S")
    return f"llama-chat-{ident}-{slug}.{fmt}"


def code_blocks(text: str) -> list[tuple[str, str]]:
    """(language, code) of each fenced or indented code block in Markdown `text`."""
    from markdown_it import MarkdownIt

    out = []
    for token in MarkdownIt("gfm-like").parse(text):
        if token.type in ("fence", "code_block"):
            out.append(((token.info or "").strip().split(" ")[0], token.content))
    return out
