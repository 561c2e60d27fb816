"""Chat templates: how a list of messages becomes the text, then the ids, a model continues.

Templates are Jinja, rendered the way Hugging Face's transformers renders
`chat_template` (a sandboxed, immutable environment with trim_blocks and lstrip_blocks,
`tojson` without HTML escaping, `raise_exception`, `strftime_now`, the variables
`messages`, `add_generation_prompt`, `bos_token`, `eos_token`, `tools`), so a GGUF's
`tokenizer.chat_template` or a tokenizer_config.json's `chat_template` gives the same text
it gives there. Built in: llama2, llama3, chatml, zephyr (files in builtin/) and
completion (base models: the messages form one running text, no markers).

`prompt_ids` turns the rendered text into ids. Only the control tokens the template itself
wrote become control ids: before rendering, every control-token spelling inside a message
is broken by an invisible sentinel character, which is removed again after the rendered
text has been split at the (now only genuine) control tokens. Between those, the text is
tokenized as llama.cpp tokenizes a rendered prompt, without cuts at message boundaries.
"""
from __future__ import annotations

import json
import os
import re
import stat
import threading
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any, Mapping, Sequence

from ..errors import LlamaChatError
from ..tokenizer import Tokenizer

BUILTIN_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "builtin")
JINJA_BUILTINS = ("llama2", "llama3", "chatml", "zephyr")
TEMPLATE_NAMES = (*JINJA_BUILTINS, "completion")
#: noncharacters: never in real text, never in a vocabulary's control-token spellings
_SENTINELS = [chr(c) for c in range(0xFDD0, 0xFDF0)] + \
    [chr(p << 16 | low) for p in range(1, 17) for low in (0xFFFE, 0xFFFF)]

Messages = Sequence[Mapping[str, Any]]


class ChatTemplateError(LlamaChatError):
    """A chat template is unknown, does not compile or fails to render."""


@dataclass(frozen=True)
class ChatTemplate:
    """A named chat format. `source` is Jinja text; None means completion (no markers)."""

    name: str
    source: str | None

    @property
    def is_completion(self) -> bool:
        return self.source is None

    @property
    def uses_system(self) -> bool:
        return self.source is not None

    @property
    def allows_empty(self) -> bool:
        """An empty message asks a base model to keep going; chat models need words."""
        return self.source is None

    def render(self, messages: Messages, *, bos_token: str = "", eos_token: str = "",
               add_generation_prompt: bool = True, tools: Any = None) -> str:
        """The text of `messages` (a list of {"role", "content"} dicts)."""
        if self.source is None:
            return completion_text(messages)
        template = _compile(self.name, self.source)
        _BUDGET.left = MAX_LOOP_STEPS
        out: list[str] = []
        size = 0
        try:
            for chunk in template.generate(messages=[dict(m) for m in messages],
                                           add_generation_prompt=add_generation_prompt,
                                           bos_token=bos_token, eos_token=eos_token, tools=tools):
                size += len(chunk)
                if size > MAX_RENDERED_CHARS:
                    raise ValueError(f"it renders more than {MAX_RENDERED_CHARS} characters")
                out.append(chunk)
        except Exception as e:  # a template may raise anything; the user gets one line
            raise ChatTemplateError(f"chat template {self.name!r} failed to render: {_one_line(e)}") from None
        return "".join(out)

    def compile(self) -> None:
        """Raise ChatTemplateError now if the template does not compile."""
        if self.source is not None:
            _compile(self.name, self.source)


def completion_text(messages: Messages) -> str:
    """Base models: the contents in order as one text (system messages ignored). The
    model's continuations follow verbatim; a space goes before your next words when they
    would otherwise run into the text (as the sentencepiece prefix of each message did)."""
    out = ""
    for m in messages:
        role = m.get("role")
        if role == "system":
            continue
        piece = str(m.get("content") or "")
        if role == "user" and out and piece and not out[-1].isspace() and not piece[0].isspace():
            out += " "
        out += piece
    return out


# -- the Jinja environment, as transformers sets it up ------------------------------
def _one_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    text = msg[0] if msg else type(e).__name__
    line = getattr(e, "lineno", None)
    return f"{text} (line {line})" if line else text


def _tojson(value: Any, ensure_ascii: bool = False, indent: int | None = None,
            separators: tuple[str, str] | None = None, sort_keys: bool = False) -> str:
    """JSON without Jinja's HTML escaping (what chat templates expect)."""
    return json.dumps(value, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                      sort_keys=sort_keys)


def _raise_exception(message: str) -> None:
    from jinja2.exceptions import TemplateError
    raise TemplateError(message)


def _strftime_now(fmt: str) -> str:
    return datetime.now().strftime(fmt)


#: A template comes with the model file, so it is bounded like any other input: what it
#: renders, the loop steps its `range`s run, and what `*` / `**` may build.
MAX_RENDERED_CHARS = 4 << 20
MAX_TEMPLATE_BYTES = 1 << 20      # real templates are a few KB (~20 KB with tool calling)
MAX_LOOP_STEPS = 1 << 20
_MAX_PRODUCT_CHARS = 1 << 20


class _Budget(threading.local):
    left = MAX_LOOP_STEPS


_BUDGET = _Budget()


def _bounded_range(*args: int) -> range:
    r = range(*args)
    _BUDGET.left -= len(r)
    if _BUDGET.left < 0:
        raise ValueError(f"its loops run more than {MAX_LOOP_STEPS} steps")
    return r


@lru_cache(maxsize=1)
def _environment():
    import jinja2
    from jinja2 import nodes
    from jinja2.ext import Extension, loopcontrols
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    class GenerationBlock(Extension):
        """`{% generation %}...{% endgeneration %}` (marks assistant text for training
        masks in transformers): rendered as its body."""

        tags = {"generation"}

        def parse(self, parser):  # type: ignore[no-untyped-def]
            lineno = next(parser.stream).lineno
            body = parser.parse_statements(("name:endgeneration",), drop_needle=True)
            return nodes.CallBlock(self.call_method("_body"), [], [], body).set_lineno(lineno)

        def _body(self, caller):  # type: ignore[no-untyped-def]
            return caller()

    class BoundedSandbox(ImmutableSandboxedEnvironment):
        """The sandbox, with `"x" * 10**10` and `10 ** 10**10` refused before they run."""

        intercepted_binops = frozenset({"*", "**"})

        def call_binop(self, context, operator, left, right):  # type: ignore[no-untyped-def]
            if operator == "**" and isinstance(right, int) and abs(right) > 64 \
                    and isinstance(left, (int, float)) and abs(left) > 1:
                raise ValueError("an exponent that large is refused")
            if operator == "*":
                for seq, n in ((left, right), (right, left)):
                    if isinstance(seq, (str, list, tuple)) and isinstance(n, int) and len(seq) * n > _MAX_PRODUCT_CHARS:
                        raise ValueError("a repeated sequence that large is refused")
            return super().call_binop(context, operator, left, right)

    env = BoundedSandbox(trim_blocks=True, lstrip_blocks=True,
                         extensions=[GenerationBlock, loopcontrols], undefined=jinja2.Undefined)
    env.globals["range"] = _bounded_range
    env.filters["tojson"] = _tojson
    env.globals["raise_exception"] = _raise_exception
    env.globals["strftime_now"] = _strftime_now
    return env


@lru_cache(maxsize=16)
def _compile(name: str, source: str):
    try:
        return _environment().from_string(source)
    except Exception as e:  # TemplateSyntaxError and friends
        raise ChatTemplateError(f"chat template {name!r} does not compile: {_one_line(e)}") from None


# -- choosing a template ---------------------------------------------------------------
def builtin_template(name: str) -> ChatTemplate:
    if name == "completion":
        return ChatTemplate("completion", None)
    if name not in JINJA_BUILTINS:
        raise ChatTemplateError(f"unknown chat template {name!r} (built in: {', '.join(TEMPLATE_NAMES)})")
    with open(os.path.join(BUILTIN_DIR, f"{name}.jinja"), encoding="utf-8") as f:
        return ChatTemplate(name, f.read())


def guess_template(tokenizer: Tokenizer, model_name: str = "", path: str = "") -> str:
    """A built-in name for a model that ships no template: from its control tokens, else
    chat/instruct in its name (Llama-2-chat), else completion."""
    has = set(tokenizer.special_tokens)
    if {"<|im_start|>", "<|im_end|>"} <= has:
        return "chatml"
    if {"<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"} <= has:
        return "llama3"
    if tokenizer.token_id("<|user|>") is not None and tokenizer.token_id("<|assistant|>") is not None:
        return "zephyr"
    if tokenizer.token_id("[INST]") is not None or tokenizer.token_id("[/INST]") is not None:
        return "llama2"
    hay = f"{model_name} {os.path.basename(os.path.normpath(path)) if path else ''}".lower()
    if any(word in hay for word in ("chat", "instruct", "-it")):
        return "llama2"
    return "completion"


def resolve_template(choice: str, tokenizer: Tokenizer, model_name: str = "",
                     path: str = "") -> ChatTemplate:
    """`--template`: "auto" (the model's own template, else a guess, else completion), a
    built-in name, or a .jinja file."""
    if choice == "auto":
        if tokenizer.chat_template:
            t = ChatTemplate("model", tokenizer.chat_template)
            t.compile()
            return t
        return builtin_template(guess_template(tokenizer, model_name, path))
    if choice in TEMPLATE_NAMES:
        return builtin_template(choice)
    if choice.endswith(".jinja") or os.path.isfile(choice):
        try:
            st = os.stat(choice)
        except OSError as e:
            raise ChatTemplateError(f"cannot read chat template {choice}: {e.strerror}") from None
        if not stat.S_ISREG(st.st_mode):  # a FIFO would block the read, a device never end it
            raise ChatTemplateError(f"chat template {choice} is not a regular file")
        if st.st_size > MAX_TEMPLATE_BYTES:
            raise ChatTemplateError(f"chat template {choice} is {st.st_size} bytes: too large for a chat template")
        try:
            with open(choice, encoding="utf-8") as f:
                t = ChatTemplate(os.path.basename(choice), f.read())
        except (OSError, UnicodeDecodeError) as e:
            raise ChatTemplateError(f"cannot read chat template {choice}: {getattr(e, 'strerror', None) or e}") from None
        t.compile()
        return t
    raise ChatTemplateError(f"unknown chat template {choice!r}: use auto, {', '.join(TEMPLATE_NAMES)} "
                            f"or a .jinja file")


# -- rendered text -> ids ----------------------------------------------------------------
def _protect(text: str, spellings: Sequence[str], sentinel: str, stand_in: dict[str, str]) -> str:
    """Break every control-token spelling in `text`: the sentinel after its first character
    (a one-character spelling is replaced by its stand-in, swapped back later)."""
    for s in spellings:
        if s in text:
            text = text.replace(s, stand_in[s] if len(s) == 1 else s[0] + sentinel + s[1:])
    return text


def _restore(fragment: str, sentinel: str, stand_in: dict[str, str]) -> str:
    fragment = fragment.replace(sentinel, "")
    for original, placeholder in stand_in.items():
        fragment = fragment.replace(placeholder, original)
    return fragment


def prompt_ids(template: ChatTemplate, tokenizer: Tokenizer, messages: Messages,
               add_generation_prompt: bool = True) -> list[int]:
    """The ids a model continues for `messages` rendered by `template`: the template's
    control tokens as ids, message contents as plain text, BOS per the tokenizer's add_bos
    unless the rendered text starts with it."""
    if template.is_completion:
        return tokenizer.encode(template.render(messages), special=False)
    spellings = sorted(tokenizer.special_tokens, key=len, reverse=True)
    contents = [str(m.get("content") or "") for m in messages]
    free = iter([s for s in _SENTINELS if not any(s in c for c in contents)])
    sentinel = next(free)
    stand_in = {s: next(free) for s in spellings if len(s) == 1}
    safe = [{**m, "content": _protect(c, spellings, sentinel, stand_in)} for m, c in zip(messages, contents)]
    text = template.render(safe, bos_token=tokenizer.bos_text, eos_token=tokenizer.eos_text,
                           add_generation_prompt=add_generation_prompt)
    fragments = [_restore(f, sentinel, stand_in) if isinstance(f, str) else f
                 for f in tokenizer.split_special(text, special=True)]
    ids = tokenizer.encode_fragments(fragments)
    if tokenizer.add_bos and tokenizer.bos_id is not None and (not ids or ids[0] != tokenizer.bos_id):
        ids.insert(0, tokenizer.bos_id)
    return ids


def continuation_ids(template: ChatTemplate, tokenizer: Tokenizer, messages: Messages,
                     reply_ids: Sequence[int] | None = None) -> list[int]:
    """The ids that continue the last message, an assistant's, mid-text: the messages
    before it rendered with the generation prompt (the prompt that reply answered), then
    the reply itself with no end-of-turn marker: `reply_ids` (as sampled) when given,
    else its text encoded as plain text (never as control tokens)."""
    head = prompt_ids(template, tokenizer, messages[:-1], add_generation_prompt=True)
    if reply_ids is None:
        reply_ids = tokenizer.encode(str(messages[-1].get("content") or ""), bos=False)
    return head + list(reply_ids)


def rendered_text(template: ChatTemplate, tokenizer: Tokenizer, messages: Messages,
                  add_generation_prompt: bool = True) -> str:
    """The rendered prompt as text (what `prompt_ids` tokenizes)."""
    return template.render(messages, bos_token=tokenizer.bos_text, eos_token=tokenizer.eos_text,
                           add_generation_prompt=add_generation_prompt)


# -- a template that does not fit the vocabulary ------------------------------------------
#: how chat markers are spelled (ChatML, Llama 3, Zephyr, Phi, ...): <|name|>
_MARKER = re.compile(r"<\|[A-Za-z0-9_]{1,40}\|>")
_PROBE = [{"role": "system", "content": "s"}, {"role": "user", "content": "u"},
          {"role": "assistant", "content": "a"}, {"role": "user", "content": "v"}]


def missing_markers(template: ChatTemplate, tokenizer: Tokenizer) -> list[str]:
    """The <|marker|> spellings `template` writes that are no control token of a vocabulary
    that has markers of its own: the model would read them as plain text (Llama 3's
    template on a ChatML model) and answer badly. A vocabulary without such control
    tokens says nothing (TinyLlama's chat format spells <|user|> in plain text), nor does
    a template that fails to render."""
    known = tokenizer.special_tokens
    if template.is_completion or not any(_MARKER.fullmatch(t) for t in known):
        return []
    text = None
    for probe in (_PROBE, _PROBE[1:]):   # some templates refuse a system message
        try:
            text = template.render(probe, bos_token=tokenizer.bos_text, eos_token=tokenizer.eos_text)
            break
        except ChatTemplateError:
            continue
    if text is None:
        return []
    return sorted({m for m in _MARKER.findall(text) if m not in known})


def template_warning(template: ChatTemplate, tokenizer: Tokenizer) -> str | None:
    """One line for a template whose markers the vocabulary lacks, else None."""
    miss = missing_markers(template, tokenizer)
    if not miss:
        return None
    return (f"the {template.name} template writes {', '.join(miss[:3])}{' ...' if len(miss) > 3 else ''}, "
            "which this model has no token for: it reads them as text and will likely answer badly "
            "(--template auto uses the model's own format)")
