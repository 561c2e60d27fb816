"""`llama-chat serve`: an OpenAI-compatible HTTP server; concurrent requests decode together.

Loads the model onto a backend with `--parallel` KV-cache slots, warms the kernels, and
only then opens the port (bound to localhost unless `--host` says otherwise). The API is
in `app.server`, the batching in `inference.batch`. Starlette + uvicorn: the ASGI
toolkit and server FastAPI itself runs on, without FastAPI's pydantic layer, whose
request models and 422 errors this API does not want (requests are checked against the
sampler's KNOBS table and refused with OpenAI's 400 error objects).
"""
from __future__ import annotations

import argparse
import os
import socket
import sys

from inference.errors import LlamaChatError

from .common import ProgressBar, add_model_arguments, available_memory, backend_options, model_path, path_arg

#: Share of the memory available at start that the KV caches may take by default.
KV_MEMORY_SHARE = 0.5
#: Below this many positions per slot the default context is refused as too small.
MIN_CONTEXT = 256
#: Connections the kernel queues before the server accepts them.
BACKLOG = 2048


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to listen on (default 127.0.0.1: this machine only; 0.0.0.0 opens it to the network)")
    p.add_argument("--port", type=int, default=8080, help="TCP port (default 8080; 0 = any free port, printed at start)")
    p.add_argument("--parallel", "-np", type=int, default=4, metavar="N",
                   help="requests decoded together, each in its own KV-cache slot (default 4)")
    p.add_argument("--queue", type=int, default=16, metavar="N",
                   help="requests that may wait for a free slot; beyond them the answer is 429 (default 16)")
    p.add_argument("--ctx-per-slot", type=int, default=None, metavar="T",
                   help="positions each slot holds, prompt and reply together (default: the model's context, "
                        "capped so the caches take at most half the free memory; --ctx is the same)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="CPU threads for the forward (default: one for small models, else all cores)")
    p.add_argument("--api-key", default=os.environ.get("LLAMA_CHAT_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 requests (default: $LLAMA_CHAT_API_KEY; none)")
    p.add_argument("--model-id", default=None, metavar="NAME",
                   help="the model's id in /v1/models and requests (default: the model file's name)")
    p.add_argument("--template", default="auto", metavar="auto|NAME|FILE.jinja", type=path_arg,
                   help="chat format for /v1/chat/completions (default auto: the model's own template)")
    p.add_argument("--prompt-cache", metavar="FILE", default=None, type=path_arg,
                   help="keys and values of a primed prompt: loaded into every slot at start when FILE "
                        "exists, else written from the first request's prompt")
    p.add_argument("--quiet", "-q", action="store_true", help="no line on stderr per request")


def kv_bytes_per_position(config: object) -> int:
    c = config
    return 2 * c.n_layers * c.n_kv_heads * c.head_dim * 4  # type: ignore[attr-defined]


def default_context(config: object, slots: int) -> int:
    """The model's context, capped so `slots` caches fit in KV_MEMORY_SHARE of free memory."""
    ctx = int(config.seq_len)  # type: ignore[attr-defined]
    avail = available_memory()
    if avail is not None:
        fit = int(avail * KV_MEMORY_SHARE) // (kv_bytes_per_position(config) * slots)
        if fit < min(ctx, MIN_CONTEXT):
            raise LlamaChatError(f"{slots} slots of {min(ctx, MIN_CONTEXT)} positions do not fit in the free memory "
                                 f"({avail / 2**30:.1f} GiB): lower --parallel")
        ctx = min(ctx, fit)
    return ctx


def bind(host: str, port: int) -> socket.socket:
    """A socket bound to host:port (not yet listening: connections are refused until the
    server starts, after the warm-up)."""
    if not 0 <= port <= 65535:
        raise LlamaChatError(f"--port must be from 0 to 65535, got {port}")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except (socket.gaierror, UnicodeError) as e:
        raise LlamaChatError(f"cannot listen on {host!r}: {getattr(e, 'strerror', None) or e}") from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
    except OSError as e:
        sock.close()
        raise LlamaChatError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}"


def check_device(device: str) -> None:
    """Refuse --device cuda where its backend cannot even be imported, before the model
    loads (both backends decode a batch of sequences: `forward_batch`)."""
    if device != "cuda":
        return
    try:
        from inference.backends.cuda import CudaBackend  # noqa: F401
    except ImportError as e:
        raise LlamaChatError(f"the CUDA backend is unavailable ({e}); use --device cpu") from None


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from inference.batch import BatchScheduler
    from inference.chat import resolve_template, template_warning
    from inference.loader import create_backend, load_model

    from app.server.api import ServedModel, create_app

    if not 1 <= args.parallel <= 256:
        raise LlamaChatError(f"--parallel must be from 1 to 256, got {args.parallel}")
    if args.queue < 0:
        raise LlamaChatError(f"--queue must be at least 0, got {args.queue}")
    if args.threads is not None and args.threads < 1:
        raise LlamaChatError(f"--threads must be at least 1, got {args.threads}")
    if args.api_key is not None and (not args.api_key or not args.api_key.isprintable() or " " in args.api_key):
        raise LlamaChatError("--api-key must be non-empty printable text without spaces")
    check_device(args.device)
    ctx = args.ctx_per_slot if args.ctx_per_slot is not None else args.ctx
    if args.ctx_per_slot is not None and args.ctx is not None and args.ctx != args.ctx_per_slot:
        raise LlamaChatError("--ctx and --ctx-per-slot are the same setting: give one")
    if ctx is not None and ctx < 2:
        raise LlamaChatError(f"--ctx-per-slot must be at least 2, got {ctx}")
    if args.prompt_cache:
        from inference.prompt_cache import refuse_foreign
        refuse_foreign(args.prompt_cache)
    sock = bind(args.host, args.port)   # fail now, not after loading, when the port is taken
    try:
        bar = ProgressBar("quantizing (first load only; cached)")
        loaded = load_model(model_path(args), args.tokenizer, args.quant, progress=bar, group_size=args.group_size)
        bar.close()
        template = resolve_template(args.template, loaded.tokenizer, loaded.name, loaded.path)
        warning = template_warning(template, loaded.tokenizer)
        if warning:
            print(f"llama-chat: warning: {warning}", file=sys.stderr)
        opts = backend_options(argparse.Namespace(**{**vars(args), "ctx": None}))
        opts["context"] = ctx if ctx is not None else default_context(loaded.config, args.parallel)
        opts["slots"] = args.parallel
        if args.device == "cpu" and args.threads is not None:
            opts["threads"] = args.threads
        backend = create_backend(loaded, args.device, **opts)
        sched = BatchScheduler(backend, loaded.tokenizer, max_queue=args.queue)
        print(f"llama-chat: warming up {backend.describe()} ...", file=sys.stderr, flush=True)
        sched.warm_up()
        if sched.padding:
            print(f"llama-chat: decode steps of {', '.join(map(str, sorted(sched.padding)))} sequences run "
                  f"padded to {max(sched.padding.values())} rows (measured faster on this backend)", file=sys.stderr)
        if args.prompt_cache:
            setup_prompt_cache(args.prompt_cache, loaded, backend, sched)
        served = ServedModel(args.model_id or loaded.name, loaded.tokenizer, template, sched, args.api_key,
                             log=not args.quiet)
        app = create_app(served)
        config = uvicorn.Config(app, http="h11", ws="none", lifespan="off", log_level="warning",
                                access_log=False, timeout_graceful_shutdown=3, backlog=BACKLOG)
        server = uvicorn.Server(config)
        sched.start()
        sock.listen(BACKLOG)   # the port opens now: connections wait here until uvicorn accepts them
        print(f"llama-chat: serving {served.id} at {url_of(sock)}/v1 ({args.parallel} slots x {sched.n_ctx} "
              f"positions, template {template.name}{', API key required' if args.api_key else ''}); "
              f"Ctrl-C stops", file=sys.stderr, flush=True)
        try:
            server.run(sockets=[sock])
        finally:
            sched.close()
    finally:
        sock.close()
    return 0


def setup_prompt_cache(path: str, loaded: object, backend: object, sched: object) -> None:
    """Load FILE into every slot, or arrange for the first prompt to be written to it."""
    from inference import prompt_cache

    key = prompt_cache.model_key(loaded)
    state, why = prompt_cache.load_existing(path, backend, key)
    if why:
        print(f"llama-chat: warning: {why}", file=sys.stderr)
    if state is not None:
        for slot in range(sched.slots):  # type: ignore[attr-defined]
            prompt_cache.install(backend, slot, state)
            sched.set_slot_tokens(slot, state.tokens)  # type: ignore[attr-defined]
        print(f"llama-chat: prompt cache {path}: {len(state.tokens)} tokens in every slot", file=sys.stderr)
        return

    def save_first(slot: int, prompt: list[int]) -> None:
        sched.on_prefilled = None  # type: ignore[attr-defined]
        try:
            prompt_cache.save(path, backend, slot, prompt, key)
            print(f"llama-chat: prompt cache {path}: wrote {len(prompt)} tokens", file=sys.stderr)
        except LlamaChatError as e:
            print(f"llama-chat: warning: {e}", file=sys.stderr)

    sched.on_prefilled = save_first  # type: ignore[attr-defined]
