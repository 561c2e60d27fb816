"""`llama-chat` / `llama-chat chat`: open the chat TUI on a model.

The model is loaded before Textual starts, so a bad path or a mismatched tokenizer is a
one-line error on the terminal rather than a crash inside the full-screen UI.
"""
from __future__ import annotations

import argparse
import os
import stat

from inference.errors import LlamaChatError

from .common import (ProgressBar, add_model_arguments, add_sampling_arguments, add_template_arguments,
                     backend_options, model_path, sampling_from_args)


#: Real chat templates are a few KB (the largest known, with tool calling, ~20 KB).
MAX_TEMPLATE_BYTES = 1 << 20


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_template_arguments(p)
    p.add_argument("--history-db", metavar="PATH",
                   help="SQLite history file (default: $XDG_DATA_HOME/llama-chat/history.db)")
    add_sampling_arguments(p)


def tokenizer_identity(tok: object) -> str:
    """Stored with each conversation: saved token ids are reused only with the same tokenizer."""
    path = getattr(tok, "path", "") or ""
    return f"{getattr(tok, 'kind', '?')}:{getattr(tok, 'vocab_size', 0)}:{os.path.basename(path)}"


def leave_a_core_for_the_ui() -> None:
    """Cap the CPU backend's thread pool at (cores - 1) unless the user chose a number.

    The UI thread needs a core to stay responsive while tokens stream; and when a pool
    thread of the CPU backend is descheduled, every parallel region waits for it at its
    barrier, so a pool as wide as the machine plus one busy UI thread can slow decoding
    a hundredfold on a small machine. Must run before Numba is imported.
    """
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, cores - 1))


def warm_up(engine: object) -> None:
    """Run a two-token prompt and two decode steps before the UI opens.

    The first forward calls of a backend load compiled kernels (Numba cache, CUDA
    modules): a few hundred ms that would otherwise land on the first reply's time to
    first token. What they leave in the KV cache is real, so nothing is thrown away.
    """
    from inference.sampler import GREEDY

    tok = engine.tokenizer  # type: ignore[attr-defined]
    ids = tok.encode("Hello", bos=False)[:2]
    if tok.bos_id is not None:
        ids = [tok.bos_id, *ids[:1]]
    for _ in engine.generate(ids, GREEDY.with_(max_new_tokens=2)):  # type: ignore[attr-defined]
        pass


def template_from_args(args: argparse.Namespace, loaded: object):
    """The chat template `--template` names for this model; `--system` needs a chat one."""
    from inference.chat import resolve_template
    from inference.chat.templates import TEMPLATE_NAMES

    choice = args.template
    if choice != "auto" and choice not in TEMPLATE_NAMES and os.path.exists(choice):
        st = os.stat(choice)  # a FIFO would block the read, a device never end it
        if not stat.S_ISREG(st.st_mode):
            raise LlamaChatError(f"chat template {choice} is not a regular file")
        if st.st_size > MAX_TEMPLATE_BYTES:
            raise LlamaChatError(f"chat template {choice} is {st.st_size} bytes: too large for a chat template")
    template = resolve_template(choice, loaded.tokenizer, loaded.name, loaded.path)  # type: ignore[attr-defined]
    if args.system and not template.uses_system:
        raise LlamaChatError("--system needs a chat template: add --template chatml (or llama2, "
                             "llama3, zephyr, a .jinja file)")
    return template


def run(args: argparse.Namespace) -> int:
    if args.device == "cpu":
        leave_a_core_for_the_ui()
    from inference.engine import Engine
    from inference.loader import create_backend, load_model

    from app.tui.store import HistoryStore

    settings = sampling_from_args(args)
    options = backend_options(args)   # flags checked before the model is read
    if args.max_new_tokens < 1:
        raise LlamaChatError("--max-new-tokens must be at least 1")
    bar = ProgressBar("quantizing to int8 (first load only; cached)")
    loaded = load_model(model_path(args), args.tokenizer, args.quant, progress=bar, group_size=args.group_size)
    bar.close()
    backend = create_backend(loaded, args.device, **options)
    engine = Engine(backend, loaded.tokenizer, settings)
    template = template_from_args(args, loaded)
    warm_up(engine)
    store = HistoryStore.open(args.history_db)

    from app.tui.chat_app import ChatApp  # Textual is imported only once the model loaded

    app = ChatApp(engine, template, loaded.name, store, system=args.system,
                  tokenizer_id=tokenizer_identity(loaded.tokenizer), device=args.device)
    try:
        code = app.run()
    finally:
        store.close()
        backend.close()
    return int(code or 0)
