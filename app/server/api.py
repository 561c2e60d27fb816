"""The HTTP API: Starlette routes in front of a `BatchScheduler`.

Routes: GET /health, GET /v1/models, GET /v1/models/{id}, POST /v1/chat/completions,
POST /v1/completions (each streaming as server-sent events ending in `data: [DONE]`, or
not). Every error, ours or Starlette's (unknown path, wrong method), is OpenAI's error
object. A request's events come from the scheduler thread through `handoff` (one loop
wake-up for a step's events); a client that goes away (mid-stream, or while waiting for a
whole reply) cancels its job, which leaves its slot at the next step.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import sys
import time
from dataclasses import dataclass
from typing import Any, AsyncIterator

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from inference.batch import BatchScheduler, Job, QueueFullError
from inference.chat.templates import ChatTemplate, ChatTemplateError, continuation_ids, prompt_ids
from inference.engine import Finished, TokenEvent
from inference.errors import ContextOverflowError, LlamaChatError
from inference.tokenizer import Tokenizer

from . import protocol as P
from .handoff import handoff_for
from .protocol import ApiError

#: Largest request body read (a full context of text is far smaller).
MAX_BODY = 8 << 20
#: How much of a body over MAX_BODY is still read (and dropped) before the 413 goes out:
#: a client that is still sending when the connection closes sees a reset, not the error.
DRAIN_BODY = 128 << 20


@dataclass
class ServedModel:
    """What the routes serve: one model behind one scheduler."""

    id: str
    tokenizer: Tokenizer
    template: ChatTemplate
    scheduler: BatchScheduler
    api_key: str | None = None
    log: bool = True
    created: int = 0

    def __post_init__(self) -> None:
        self.created = self.created or int(time.time())


def error_response(e: ApiError) -> JSONResponse:
    headers = {"WWW-Authenticate": "Bearer"} if e.status == 401 else None
    return JSONResponse(e.body(), status_code=e.status, headers=headers)


def create_app(served: ServedModel) -> Starlette:
    """The ASGI application for `served`."""
    sched = served.scheduler

    def authorize(request: Request) -> None:
        if served.api_key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), served.api_key.encode()):
            raise ApiError(401, "invalid or missing API key: send 'Authorization: Bearer KEY'",
                           "invalid_request_error", None, "invalid_api_key")

    async def health(request: Request) -> Response:
        st = sched.status()
        return JSONResponse({"status": "ok", "model": served.id, "slots": st.slots, "slots_busy": st.busy,
                             "queued": st.queued, "served": st.served, "context_per_slot": sched.n_ctx})

    async def models(request: Request) -> Response:
        authorize(request)
        return JSONResponse({"object": "list", "data": [P.model_object(served.id, served.created, sched.n_ctx)]})

    async def model(request: Request) -> Response:
        authorize(request)
        name = request.path_params["name"]
        if name != served.id:
            raise ApiError(404, f"the model {name!r} does not exist; this server has {served.id!r}",
                           "invalid_request_error", "model", "model_not_found")
        return JSONResponse(P.model_object(served.id, served.created, sched.n_ctx))

    async def chat(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        P.check_model(body, served.id)
        req = P.parse_chat(body)
        try:
            if req.continue_final:
                ids = await run_in_threadpool(continuation_ids, served.template, served.tokenizer, list(req.messages))
            else:
                ids = await run_in_threadpool(prompt_ids, served.template, served.tokenizer, list(req.messages), True)
        except ChatTemplateError as e:
            raise P.bad(str(e), "messages") from None
        return await complete(request, req, ids)

    async def text(request: Request) -> Response:
        authorize(request)
        body = await read_json(request)
        P.check_model(body, served.id)
        req = P.parse_text(body, sched.vocab_size)
        if isinstance(req.prompt, str):
            try:
                ids = await run_in_threadpool(served.tokenizer.encode, req.prompt)
            except LlamaChatError as e:
                raise P.bad(str(e), "prompt") from None
        else:
            ids = list(req.prompt)
        return await complete(request, req, ids)

    async def complete(request: Request, req: P.Completion, ids: list[int]) -> Response:
        room = sched.n_ctx - len(ids)
        settings = req.settings.with_(max_new_tokens=req.max_tokens or max(1, room))
        handoff = handoff_for(asyncio.get_running_loop())
        events: asyncio.Queue = asyncio.Queue()

        def emit(ev: object) -> None:
            handoff.post(events, ev)

        try:
            job = sched.submit(ids, settings, emit, req.stop)
        except ContextOverflowError:
            raise P.bad(f"this model's context holds {sched.n_ctx} tokens per request, but the "
                        f"{'messages' if req.kind == 'chat' else 'prompt'} came to {len(ids)} tokens, "
                        f"leaving no room for a reply", "messages" if req.kind == "chat" else "prompt",
                        "context_length_exceeded") from None
        except QueueFullError as e:
            raise ApiError(429, str(e), "rate_limit_error", None, "rate_limit_exceeded") from None
        except LlamaChatError as e:
            raise P.bad(str(e)) from None
        rid = P.new_id(req.kind)
        if req.stream:
            return StreamingResponse(stream(job, events, req, rid, request.url.path), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return await whole(request, job, events, req, rid)

    async def whole(request: Request, job: Job, events: asyncio.Queue, req: P.Completion, rid: str) -> Response:
        watcher = asyncio.create_task(cancel_on_disconnect(request, job))
        parts: list[str] = []
        try:
            while True:
                ev = await events.get()
                if isinstance(ev, TokenEvent):
                    parts.append(ev.text)
                elif isinstance(ev, Finished):
                    break
        finally:
            watcher.cancel()
            sched.cancel(job)   # a no-op once it has finished; ends it if we were cancelled
        log(request.url.path, ev)
        if ev.reason == "error":
            raise ApiError(500, _failed(ev), "server_error")
        use = P.usage(ev.stats.prompt_tokens, len(ev.new_tokens), ev.stats.prompt_tokens - ev.stats.prefilled_tokens)
        return JSONResponse(P.completion_object(req.kind, rid, served.id, "".join(parts), P.FINISH[ev.reason], use))

    async def cancel_on_disconnect(request: Request, job: Job) -> None:
        while True:
            message = await request.receive()
            if message["type"] == "http.disconnect":
                sched.cancel(job)
                return

    async def stream(job: Job, events: asyncio.Queue, req: P.Completion, rid: str, path: str) -> AsyncIterator[str]:
        ended = False
        sent = 0
        try:
            if req.kind == "chat":   # the role first, as OpenAI's stream does
                yield sse(P.chunk_object(req.kind, rid, served.id, "", None, first=True))
            while True:
                ev = await events.get()
                if isinstance(ev, TokenEvent):
                    if ev.text:
                        yield sse(P.chunk_object(req.kind, rid, served.id, ev.text, None))
                        sent += 1
                    continue
                if not isinstance(ev, Finished):
                    continue
                ended = True
                log(path, ev)
                if ev.reason == "error":
                    yield sse(ApiError(500, _failed(ev), "server_error").body())
                else:
                    yield sse(P.chunk_object(req.kind, rid, served.id, None, P.FINISH[ev.reason]))
                    if req.include_usage:
                        use = P.usage(ev.stats.prompt_tokens, len(ev.new_tokens),
                                      ev.stats.prompt_tokens - ev.stats.prefilled_tokens)
                        yield sse(P.chunk_object(req.kind, rid, served.id, None, None, use=use))
                yield "data: [DONE]\n\n"
                return
        finally:
            if not ended:
                sched.cancel(job)   # the client went away: its slot is freed at the next step
                if served.log:
                    print(f"llama-chat: {path}: the client went away after {sent} streamed chunks",
                          file=sys.stderr, flush=True)

    def log(path: str, ev: Finished) -> None:
        if not served.log:
            return
        s = ev.stats
        print(f"llama-chat: {path}: prompt {s.prompt_tokens} tok ({s.prompt_tokens - s.prefilled_tokens} cached), "
              f"{s.generated_tokens} new tok, ttft {s.ttft_s:.2f} s, {s.decode_tok_s:.1f} tok/s, {ev.reason}",
              file=sys.stderr, flush=True)

    async def on_api_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, ApiError)
        return error_response(e)

    async def on_http_error(request: Request, e: Exception) -> Response:
        assert isinstance(e, HTTPException)
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code)
        message = (f"no route {request.method} {request.url.path}" if e.status_code in (404, 405)
                   else str(e.detail))
        return error_response(ApiError(e.status_code, message, "invalid_request_error", None, code))

    async def on_crash(request: Request, e: Exception) -> Response:
        print(f"llama-chat: error serving {request.url.path}: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
        return error_response(ApiError(500, "internal server error", "server_error"))

    routes = [
        Route("/health", health, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{name:path}", model, methods=["GET"]),
        Route("/v1/chat/completions", chat, methods=["POST"]),
        Route("/v1/completions", text, methods=["POST"]),
    ]
    return Starlette(routes=routes, exception_handlers={ApiError: on_api_error, HTTPException: on_http_error,
                                                        Exception: on_crash})


async def read_json(request: Request) -> dict[str, Any]:
    """The body as a JSON object, at most MAX_BODY bytes (a larger one is read to its
    end, up to DRAIN_BODY, so that its sender gets the 413)."""
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > DRAIN_BODY:
            break
        if size <= MAX_BODY:
            chunks.append(chunk)
    if size > MAX_BODY:
        raise ApiError(413, f"the request body is larger than {MAX_BODY >> 20} MiB")
    try:
        body = json.loads(b"".join(chunks))
    except (ValueError, RecursionError) as e:   # JSONDecodeError, bad UTF-8, too deep
        raise P.bad(f"the request body is not valid JSON ({str(e).splitlines()[0][:120]})") from None
    if not isinstance(body, dict):
        raise P.bad("the request body must be a JSON object")
    return body


def _failed(ev: Finished) -> str:
    """The 500's message for a reply that ended in "error"."""
    return f"the model failed while generating this reply: {ev.error}" if ev.error else \
        "the model failed while generating this reply"


def sse(obj: dict[str, Any]) -> str:
    return f"data: {json.dumps(obj, ensure_ascii=False)}\n\n"
