"""`llama-chat generate`: complete a prompt, streaming it to stdout like llama2.c's run.

`--chat MESSAGE` sends one chat message through the model's template and prints only the
reply (the end-of-turn token is not printed). `--json` prints one JSON object on stdout
instead (prompt ids, new ids, text, why it stopped, timings) for scripts; `--prompt-ids
1,2,3` takes the prompt as token ids, used verbatim (no BOS added), so a model can be run
without a working text tokenizer.
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from inference.engine import Engine, Finished
from inference.errors import LlamaChatError
from inference.loader import create_backend, load_model
from inference.sampler import load_kernels

from .common import (ProgressBar, add_model_arguments, add_sampling_arguments, add_template_arguments,
                     backend_options, model_path, path_arg, sampling_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", "-p", default="", help="text to continue")
    src.add_argument("-f", "--file", metavar="FILE", type=path_arg, help="read the prompt from FILE (- : standard input)")
    src.add_argument("--prompt-ids", metavar="IDS", help="the prompt as comma-separated token ids, used verbatim")
    src.add_argument("--chat", metavar="MESSAGE", default=None,
                     help="send MESSAGE through the chat template and print only the reply")
    add_template_arguments(p)
    p.add_argument("--prompt-cache", metavar="FILE", default=None, type=path_arg,
                   help="keys and values of the prompt: the part FILE already holds is not computed again; "
                        "FILE is (re)written with this prompt")
    p.add_argument("--json", action="store_true",
                   help="print one JSON object on stdout: prompt_ids, ids, text, finish_reason, stats")
    add_sampling_arguments(p)


def parse_ids(text: str) -> list[int]:
    """'1, 2,3' -> [1, 2, 3]; anything else is a one-line error."""
    try:
        ids = [int(t) for t in text.replace(" ", "").split(",") if t]
    except ValueError:
        raise LlamaChatError(f"--prompt-ids wants integers separated by commas, got {text[:60]!r}") from None
    if not ids:
        raise LlamaChatError("--prompt-ids is empty")
    return ids


def read_prompt_file(path: str, limit: int = 16 << 20) -> str:
    """A prompt file's text (`-`: standard input, as in `cmd | llama-chat generate -f -`),
    refusing more than `limit` bytes (a device like /dev/zero would otherwise be read forever)."""
    name = "standard input" if path == "-" else f"file {path}"
    try:
        if path == "-":
            data = sys.stdin.buffer.read(limit + 1)
        else:
            with open(path, "rb") as f:
                data = f.read(limit + 1)
    except OSError as e:
        raise LlamaChatError(f"cannot read prompt {name}: {e.strerror or e}") from None
    if len(data) > limit:
        raise LlamaChatError(f"prompt {name} is larger than {limit >> 20} MiB")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise LlamaChatError(f"prompt {name} is not UTF-8 text ({e.reason} at byte {e.start})") from None


def run(args: argparse.Namespace) -> int:
    prompt: str | list[int] = args.prompt
    if args.file:
        prompt = read_prompt_file(args.file)
    if args.prompt_ids is not None:
        prompt = parse_ids(args.prompt_ids)
    if args.system and args.chat is None:
        raise LlamaChatError("--system goes with --chat MESSAGE")
    settings = sampling_from_args(args)
    options = backend_options(args)   # flags checked before the model is read
    if args.prompt_cache:
        from inference.prompt_cache import refuse_foreign
        refuse_foreign(args.prompt_cache)
    bar = ProgressBar("quantizing (first load only; cached)")
    loaded = load_model(model_path(args), args.tokenizer, args.quant, progress=bar, group_size=args.group_size,
                        tokenizer_optional=isinstance(prompt, list))
    bar.close()
    backend = create_backend(loaded, args.device, **options)
    engine = Engine(backend, loaded.tokenizer, settings)
    if args.chat is not None:
        prompt = chat_prompt_ids(args, loaded, engine)
        from inference.sampler import for_conversation
        chosen = {"temperature"} if args.temperature is not None else set()
        engine.settings = for_conversation(engine.settings, True, chosen)
    elif isinstance(prompt, str):
        prompt = engine.encode(prompt)
    # The first forward loads the compiled kernels (Numba's cache, CUDA modules): timed on
    # its own so the reply's prefill and first-token figures measure the model, not that.
    t0 = time.perf_counter()
    backend.forward([0], 0)   # token 0 exists in every vocabulary; the engine recomputes position 0
    load_kernels()
    kernel_load_s = time.perf_counter() - t0
    cache_key = load_prompt_cache(args.prompt_cache, loaded, engine) if args.prompt_cache else None
    out = sys.stdout
    final: Finished | None = None
    text: list[str] = []

    def reply() -> None:   # on the backend's own thread (Backend.run_loop): no hand-over per token
        nonlocal final
        for ev in engine.generate(prompt, echo_prompt=not args.json and args.chat is None):
            if isinstance(ev, Finished):
                final = ev
            elif args.json:
                if not ev.is_prompt:
                    text.append(ev.text)
            else:
                out.write(ev.text)
                out.flush()

    try:
        backend.run_loop(reply, on_interrupt=engine.stop)
    except KeyboardInterrupt:  # the CLI reports it (exit 130); end the streamed line first
        if not args.json:
            try:
                out.write("\n")
                out.flush()
            except OSError:
                pass
        raise
    assert final is not None
    s = final.stats
    if cache_key is not None and final.reason != "stopped" and s.prefilled_tokens > 1:
        save_prompt_cache(args.prompt_cache, backend, list(prompt), cache_key)
    if args.json:
        stats = {"prompt_tokens": s.prompt_tokens, "prefilled_tokens": s.prefilled_tokens,
                 "generated_tokens": s.generated_tokens, "prefill_tok_s": round(s.prefill_tok_s, 2),
                 "decode_tok_s": round(s.decode_tok_s, 2), "ttft_s": round(s.ttft_s, 4),
                 "kernel_load_s": round(kernel_load_s, 4), "seed": final.seed, "backend": backend.describe()}
        out.write(json.dumps({"prompt_ids": list(prompt), "ids": list(final.new_tokens), "text": "".join(text),
                              "finish_reason": final.reason, "stats": stats}, ensure_ascii=False) + "\n")
        out.flush()
        return 0
    out.write("\n")
    out.flush()
    cached = s.prompt_tokens - s.prefilled_tokens
    read = f"{cached} from the prompt cache, {s.prefilled_tokens} read at " if cached > 0 else ""
    print(f"prompt {s.prompt_tokens} tok, {read}{s.prefill_tok_s:.1f} tok/s | generated {s.generated_tokens} tok, "
          f"{s.decode_tok_s:.1f} tok/s | ttft {s.ttft_s * 1000:.1f} ms (kernels loaded before, in "
          f"{kernel_load_s * 1000:.0f} ms) | stop: {final.reason} | seed {final.seed} | {backend.describe()}",
          file=sys.stderr)
    return 0


def chat_prompt_ids(args: argparse.Namespace, loaded: object, engine: Engine) -> list[int]:
    """The ids the reply to `--chat` continues: the message (and `--system`) rendered by
    the chat template `--template` picks."""
    from inference.chat import Conversation

    from .chat import template_from_args

    template = template_from_args(args, loaded)
    engine.check_fits(args.chat + args.system)
    conv = Conversation(engine.tokenizer, template, engine.context_length, args.system)
    conv.add_user(args.chat)
    return conv.plan_reply(args.max_new_tokens).ids


def load_prompt_cache(path: str, loaded: object, engine: Engine) -> str:
    """Put FILE's prompt in the engine's cache (when FILE exists and fits this model);
    returns the model key it is saved under afterwards."""
    from inference import prompt_cache

    key = prompt_cache.model_key(loaded)
    prompt_cache.host_cache(engine.backend)  # refuse a backend without a host cache now
    state, why = prompt_cache.load_existing(path, engine.backend, key)
    if why:
        print(f"llama-chat: warning: {why}", file=sys.stderr)
    if state is not None:
        prompt_cache.install(engine.backend, 0, state)
        engine.tokens = list(state.tokens)
    return key


def save_prompt_cache(path: str, backend: object, prompt: list[int], key: str) -> None:
    """Write the prompt's positions (the reply after them is not saved)."""
    from inference import prompt_cache

    if len(prompt) >= backend.config.seq_len:  # type: ignore[attr-defined]
        prompt = prompt[:backend.config.seq_len - 1]  # type: ignore[attr-defined]
    prompt_cache.save(path, backend, 0, prompt, key)
