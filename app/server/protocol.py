"""The OpenAI wire format: request bodies checked field by field, response objects built.

Nothing here touches the model or the network. A request body becomes a `Completion`
(the messages or prompt, the sampling settings, the stop strings, whether to stream) or
an `ApiError` that becomes a 4xx with OpenAI's error object. Sampling fields are checked
against `inference.sampler.KNOBS`, the ranges the CLI and the TUI use; fields this server
does not implement are refused when they ask for something (n > 1, logprobs, tools...)
and ignored when they carry their default, as OpenAI's own clients send some of them.
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from typing import Any, Mapping

from inference.sampler import SamplingSettings, check_value

#: Roles a chat message may have (developer is OpenAI's newer name for system).
ROLES = ("system", "developer", "user", "assistant")
#: OpenAI's limit on stop strings.
MAX_STOP = 4


class ApiError(Exception):
    """An error answered as {"error": {message, type, param, code}} with `status`."""

    def __init__(self, status: int, message: str, type_: str = "invalid_request_error",
                 param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.param, self.code = status, message, type_, param, code

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


def bad(message: str, param: str | None = None, code: str | None = None) -> ApiError:
    return ApiError(400, message, "invalid_request_error", param, code)


@dataclass(frozen=True)
class Completion:
    """A checked request: `messages` (chat) or `prompt` (text or ids), and how to reply."""

    kind: str                                  # "chat" | "text"
    settings: SamplingSettings
    max_tokens: int | None                     # None: until the reply or the context ends
    stop: tuple[str, ...]
    stream: bool
    include_usage: bool
    messages: tuple[dict[str, str], ...] = ()
    prompt: str | tuple[int, ...] = ""
    continue_final: bool = False               # chat: go on with the last (assistant) message


# -- fields ---------------------------------------------------------------------------
def _number(body: Mapping[str, Any], name: str, knob: str, api_name: str | None = None) -> float | int | None:
    value = body.get(name)
    if value is None:
        return None
    try:
        return check_value(knob, value)
    except ValueError as e:
        raise bad(str(e).replace(knob.replace("_", "-"), api_name or name, 1), name) from None


def _flag(body: Mapping[str, Any], name: str, default: bool = False) -> bool:
    value = body.get(name, default)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise bad(f"{name} must be true or false, got {value!r}", name)
    return value


def _refuse_unless(body: Mapping[str, Any], name: str, *allowed: Any) -> None:
    """A field this server does not implement: fine absent or at a value meaning 'off'."""
    if name in body and body[name] not in (None, *allowed):
        raise bad(f"{name} is not supported by this server", name)


def _stop(body: Mapping[str, Any]) -> tuple[str, ...]:
    value = body.get("stop")
    if value is None:
        return ()
    stops = [value] if isinstance(value, str) else value
    if not isinstance(stops, list) or not all(isinstance(s, str) for s in stops):
        raise bad("stop must be a string or a list of strings", "stop")
    if len(stops) > MAX_STOP:
        raise bad(f"stop takes at most {MAX_STOP} strings, got {len(stops)}", "stop")
    return tuple(s for s in stops if s)


def sampling(body: Mapping[str, Any]) -> SamplingSettings:
    """The sampling settings a body asks for (the defaults of `SamplingSettings` where it
    says nothing; max_new_tokens stays at its default: see `max_tokens`).

    `repeat_penalty` (llama.cpp's name) divides the logits of the recent tokens; without
    it, OpenAI's `frequency_penalty` and `presence_penalty` (0 = off) map onto it as
    repeat_penalty = 1 + frequency_penalty + presence_penalty.
    """
    d = SamplingSettings()
    vals: dict[str, Any] = {}
    for name in ("temperature", "top_p", "top_k", "min_p", "repeat_last_n", "seed"):
        v = _number(body, name, name)
        if v is not None:
            vals[name] = v
    penalty = _number(body, "repeat_penalty", "repeat_penalty")
    if penalty is None:
        extra = 0.0
        for name in ("frequency_penalty", "presence_penalty"):
            v = body.get(name)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not -2.0 <= v <= 2.0:
                raise bad(f"{name} must be a number from -2 to 2, got {v!r}", name)
            extra += float(v)
        if extra:
            try:
                penalty = check_value("repeat_penalty", 1.0 + extra)
            except ValueError:
                raise bad("frequency_penalty + presence_penalty must be from -0.5 to 4 (they map onto "
                          "repeat_penalty = 1 + their sum, from 0.5 to 5)", "frequency_penalty") from None
    if penalty is not None:
        vals["repeat_penalty"] = penalty
    return replace(d, **vals)


def max_tokens(body: Mapping[str, Any]) -> int | None:
    """`max_completion_tokens` (OpenAI's newer name) or `max_tokens`; None when absent."""
    for name in ("max_completion_tokens", "max_tokens"):
        v = _number(body, name, "max_new_tokens", name)
        if v is not None:
            return int(v)
    return None


def _common(body: Mapping[str, Any]) -> tuple[SamplingSettings, int | None, tuple[str, ...], bool, bool]:
    n = body.get("n")
    if n is not None and (isinstance(n, bool) or n != 1):
        raise bad(f"n must be 1 (one choice per request), got {n!r}", "n")
    _refuse_unless(body, "best_of", 1)
    stream = _flag(body, "stream")
    opts = body.get("stream_options")
    include_usage = False
    if opts is not None:
        if not isinstance(opts, dict):
            raise bad("stream_options must be an object", "stream_options")
        include_usage = _flag(opts, "include_usage")
    return sampling(body), max_tokens(body), _stop(body), stream, include_usage


def check_model(body: Mapping[str, Any], model_id: str) -> None:
    """The model asked for must be the one served (absent: that one)."""
    model = body.get("model")
    if model is None:
        return
    if not isinstance(model, str):
        raise bad("model must be a string", "model")
    if model != model_id:
        raise ApiError(404, f"the model {model!r} does not exist; this server has {model_id!r}",
                       "invalid_request_error", "model", "model_not_found")


def _content(m: Mapping[str, Any], i: int) -> str:
    """A message's text: a string, or a list of text parts (joined)."""
    c = m.get("content")
    if c is None:
        return ""
    if isinstance(c, str):
        return c
    if isinstance(c, list):
        parts = []
        for part in c:
            if not isinstance(part, dict) or part.get("type") != "text" or not isinstance(part.get("text"), str):
                raise bad(f"messages[{i}].content: only text parts are supported", f"messages[{i}].content")
            parts.append(part["text"])
        return "".join(parts)
    raise bad(f"messages[{i}].content must be a string or a list of text parts", f"messages[{i}].content")


def parse_chat(body: Mapping[str, Any]) -> Completion:
    """POST /v1/chat/completions."""
    settings, limit, stop, stream, include_usage = _common(body)
    _refuse_unless(body, "logprobs", False)
    _refuse_unless(body, "top_logprobs", 0)
    _refuse_unless(body, "tools", [])
    _refuse_unless(body, "functions", [])
    fmt = body.get("response_format")
    if fmt is not None and not (isinstance(fmt, dict) and fmt.get("type") == "text"):
        raise bad("response_format is not supported by this server (only {\"type\": \"text\"})", "response_format")
    raw = body.get("messages")
    if not isinstance(raw, list) or not raw:
        raise bad("messages must be a non-empty list", "messages")
    messages = []
    for i, m in enumerate(raw):
        if not isinstance(m, dict):
            raise bad(f"messages[{i}] must be an object", f"messages[{i}]")
        role = m.get("role")
        if role not in ROLES:
            raise bad(f"messages[{i}].role must be one of {', '.join(ROLES)}, got {role!r}", f"messages[{i}].role")
        messages.append({"role": "system" if role == "developer" else role, "content": _content(m, i)})
    # vLLM's spelling: continue the final assistant message instead of answering after it
    cont = _flag(body, "continue_final_message")
    if cont and messages[-1]["role"] != "assistant":
        raise bad("continue_final_message needs the last message to be the assistant's", "continue_final_message")
    if cont and _flag(body, "add_generation_prompt", False):
        raise bad("continue_final_message and add_generation_prompt cannot both be true", "add_generation_prompt")
    return Completion("chat", settings, limit, stop, stream, include_usage, messages=tuple(messages),
                      continue_final=cont)


def parse_text(body: Mapping[str, Any], vocab_size: int) -> Completion:
    """POST /v1/completions: `prompt` a string, a list of one string, or token ids."""
    settings, limit, stop, stream, include_usage = _common(body)
    _refuse_unless(body, "echo", False)
    _refuse_unless(body, "suffix", "")
    _refuse_unless(body, "logprobs", 0)
    p = body.get("prompt")
    if isinstance(p, list) and len(p) == 1 and isinstance(p[0], (str, list)):
        p = p[0]   # a batch of one
    if isinstance(p, str):
        prompt: str | tuple[int, ...] = p
    elif isinstance(p, list) and p and all(isinstance(t, int) and not isinstance(t, bool) for t in p):
        if not all(0 <= t < vocab_size for t in p):
            raise bad(f"prompt token ids must be from 0 to {vocab_size - 1}", "prompt")
        prompt = tuple(p)
    elif isinstance(p, list) and len(p) > 1:
        raise bad("prompt: one prompt per request (a list of several is not supported)", "prompt")
    else:
        raise bad("prompt must be a string or a list of token ids", "prompt")
    return Completion("text", settings, limit, stop, stream, include_usage, prompt=prompt)


# -- responses ------------------------------------------------------------------------
#: The engine's end reasons as OpenAI's finish_reason.
FINISH = {"eos": "stop", "stop": "stop", "stopped": "stop", "max_tokens": "length", "context_full": "length"}


def new_id(kind: str) -> str:
    return ("chatcmpl-" if kind == "chat" else "cmpl-") + uuid.uuid4().hex[:24]


def usage(prompt_tokens: int, completion_tokens: int, cached_tokens: int) -> dict[str, Any]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
            "prompt_tokens_details": {"cached_tokens": cached_tokens}}


def completion_object(kind: str, rid: str, model: str, text: str, finish: str,
                      use: dict[str, Any]) -> dict[str, Any]:
    created = int(time.time())
    if kind == "chat":
        choice = {"index": 0, "message": {"role": "assistant", "content": text}, "logprobs": None,
                  "finish_reason": finish}
        return {"id": rid, "object": "chat.completion", "created": created, "model": model,
                "choices": [choice], "usage": use}
    choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": finish}
    return {"id": rid, "object": "text_completion", "created": created, "model": model,
            "choices": [choice], "usage": use}


def chunk_object(kind: str, rid: str, model: str, text: str | None, finish: str | None,
                 first: bool = False, use: dict[str, Any] | None = None) -> dict[str, Any]:
    """One streamed event. `text` None with `use`: the usage-only chunk (no choices)."""
    created = int(time.time())
    obj = "chat.completion.chunk" if kind == "chat" else "text_completion"
    out: dict[str, Any] = {"id": rid, "object": obj, "created": created, "model": model}
    if text is None and use is not None:
        out["choices"] = []
        out["usage"] = use
        return out
    if kind == "chat":
        delta: dict[str, Any] = {"role": "assistant"} if first else {}
        if text is not None and (text or first):
            delta["content"] = text
        out["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]
    else:
        out["choices"] = [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}]
    return out


def model_object(model_id: str, created: int, context: int) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": "llama-chat",
            "context_length": context}
