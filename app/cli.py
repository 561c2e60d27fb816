"""`llama-chat` entry point: dispatches to one module per sub-command.

With no sub-command it opens the chat TUI. Every `LlamaChatError` (and Ctrl-C) becomes one
line on stderr and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

#: sub-command -> (module, one-line help). Modules are imported lazily so `llama-chat
#: tokenize` never pays for Textual or CUDA imports.
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("app.commands.chat", "open the chat TUI (the default)"),
    "generate": ("app.commands.generate", "complete a prompt and print it to stdout"),
    "tokenize": ("app.commands.tokenize", "print the token ids of a text"),
    "models": ("app.commands.models", "list the models found on this machine and the names --model takes"),
    "info": ("app.commands.info", "describe a model file or directory"),
    "bench": ("app.commands.bench", "measure load time, prefill and decode speed"),
    "quantize": ("app.commands.quantize", "write an int8 (llama2.c v2) copy of a model"),
    "validate": ("app.commands.validate", "run CPU and CUDA side by side and compare logits"),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="llama-chat",
        description="Chat with LLaMA-architecture models in the terminal (CPU via Numba, GPU via CUDA).")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as e:
            if e.name != module_name:
                raise
            continue  # command not built in this checkout
        module.add_arguments(p)
        p.set_defaults(_module=module)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from inference.errors import LlamaChatError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("-h", "--help")):
        argv = ["chat", *argv]  # `llama-chat --model X` means `llama-chat chat --model X`
    parser = build_parser()
    args = parser.parse_args(argv)
    module = getattr(args, "_module", None)
    if module is None:
        parser.error(f"command {args.command!r} is not available in this build")
    try:
        return int(module.run(args) or 0)
    except LlamaChatError as e:
        print(f"llama-chat: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llama-chat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
