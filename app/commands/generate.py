"""`llama-chat generate`: complete a prompt, streaming it to stdout like llama2.c's run."""
from __future__ import annotations

import argparse
import sys

from inference.engine import Engine, Finished
from inference.errors import LlamaChatError
from inference.loader import create_backend, load_model

from .common import ProgressBar, backend_options, add_model_arguments, add_sampling_arguments, model_path, sampling_from_args


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    src = p.add_mutually_exclusive_group()
    src.add_argument("--prompt", "-p", default="", help="text to continue")
    src.add_argument("-f", "--file", metavar="FILE", help="read the prompt from a file")
    add_sampling_arguments(p)


def run(args: argparse.Namespace) -> int:
    prompt = args.prompt
    if args.file:
        try:
            with open(args.file, encoding="utf-8") as f:
                prompt = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise LlamaChatError(f"cannot read prompt file {args.file}: {e}") from None
    bar = ProgressBar("quantizing to int8 (first load only; cached)")
    loaded = load_model(model_path(args), args.tokenizer, args.quant, progress=bar, group_size=args.group_size)
    bar.close()
    backend = create_backend(loaded, args.device, **backend_options(args))
    engine = Engine(backend, loaded.tokenizer, sampling_from_args(args))
    out = sys.stdout
    final: Finished | None = None
    try:
        for ev in engine.generate(prompt, echo_prompt=True):
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
