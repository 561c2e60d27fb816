"""`llama-chat generate`: complete a prompt, streaming it to stdout like llama2.c's run.

`--chat MESSAGE` instead sends one chat message through the model's template and prints
only the reply (the end-of-turn token is not printed).
"""
from __future__ import annotations

import argparse
import sys

from inference.engine import Engine, Finished
from inference.errors import LlamaChatError
from inference.loader import create_backend, load_model

from .common import (ProgressBar, add_model_arguments, add_sampling_arguments, add_template_arguments,
                     backend_options, sampling_from_args)


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", "-p", default="", help="text to continue")
    src.add_argument("-f", "--file", metavar="FILE", help="read the prompt from a file")
    src.add_argument("--chat", metavar="MESSAGE", default=None,
                     help="send MESSAGE through the chat template and print only the reply")
    add_template_arguments(p)
    add_sampling_arguments(p)


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise LlamaChatError(f"cannot read prompt file {args.file}: {e}") from None
    if args.system and args.chat is None:
        raise LlamaChatError("--system goes with --chat MESSAGE")
    bar = ProgressBar("quantizing to int8 (first load only; cached)")
    loaded = load_model(args.model, args.tokenizer, args.quant, progress=bar, group_size=args.group_size)
    bar.close()
    backend = create_backend(loaded, args.device, **backend_options(args))
    engine = Engine(backend, loaded.tokenizer, sampling_from_args(args))
    ids = prompt if args.chat is None else chat_prompt_ids(args, loaded, engine)
    out = sys.stdout
    final: Finished | None = None
    try:
        for ev in engine.generate(ids, echo_prompt=args.chat is None):
            if isinstance(ev, Finished):
                final = ev
            else:
                out.write(ev.text)
                out.flush()
    except KeyboardInterrupt:
        out.write("\n")
        out.flush()
        print("llama-chat: interrupted", file=sys.stderr)
        return 130
    out.write("\n")
    out.flush()
    if final is not None:
        s = final.stats
        print(f"prompt {s.prompt_tokens} tok, {s.prefill_tok_s:.1f} tok/s | generated {s.generated_tokens} tok, "
              f"{s.decode_tok_s:.1f} tok/s | ttft {s.ttft_s * 1000:.1f} ms | stop: {final.reason} | "
              f"seed {final.seed} | {backend.describe()}", file=sys.stderr)
    return 0


def chat_prompt_ids(args: argparse.Namespace, loaded: object, engine: Engine) -> list[int]:
    """The ids the reply to `--chat` continues: the message (and `--system`) rendered by
    the chat template `--template` picks."""
    from inference.chat import Conversation

    from .chat import template_from_args

    template = template_from_args(args, loaded)
    conv = Conversation(engine.tokenizer, template, engine.context_length, args.system)
    conv.add_user(args.chat)
    return conv.plan_reply(args.max_new_tokens).ids
