"""`llama-chat` entry point: dispatches to one module per sub-command.

With no sub-command it opens the chat TUI. Only the chosen sub-command's module is
imported (each imports what it needs, so `llama-chat tokenize` never pays for Textual or
CUDA). Every `LlamaChatError`, every argument error and Ctrl-C becomes one line on
stderr and a non-zero exit status, never a traceback or a usage dump.
"""
from __future__ import annotations

import argparse
import errno
import importlib
import os
import sys
from typing import NoReturn, Sequence

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("app.commands.chat", "open the chat TUI (the default)"),
    "generate": ("app.commands.generate", "complete a prompt and print it to stdout"),
    "tokenize": ("app.commands.tokenize", "print the token ids of a text"),
    "models": ("app.commands.models", "list the models found on this machine and the names --model takes"),
    "info": ("app.commands.info", "describe a model file or directory"),
    "bench": ("app.commands.bench", "measure load time, prefill and decode speed"),
    "quantize": ("app.commands.quantize", "write an int8 (llama2.c v2) or int4 (GGUF) copy of a model"),
    "validate": ("app.commands.validate", "run CPU and CUDA side by side and compare logits"),
    "export": ("app.commands.export", "write a saved conversation to Markdown or JSON"),
}


def version() -> str:
    from importlib.metadata import PackageNotFoundError, version as dist_version
    try:
        return dist_version("llama-chat")
    except PackageNotFoundError:
        return "unknown (not installed)"


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad argument is one line (with a pointer to --help), exit 2."""

    help_hint = "llama-chat --help"

    def error(self, message: str) -> NoReturn:
        sys.stderr.write(f"llama-chat: error: {message} (see {OneLineParser.help_hint})\n")
        raise SystemExit(2)


def build_parser(command: str) -> OneLineParser:
    """The top-level parser with the arguments of `command` only (its module imported)."""
    lines = [f"  {name:<10} {text}" for name, (_, text) in COMMANDS.items()]
    parser = OneLineParser(
        prog="llama-chat", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Chat with LLaMA-family models in the terminal (CPU via Numba, GPU via CUDA).\n\n"
                    "commands:\n" + "\n".join(lines) + "\n\nWithout a command, `llama-chat [options]` opens "
                    "the chat; its options are listed by `llama-chat --help` below and by "
                    "`llama-chat chat --help`.")
    parser.add_argument("--version", action="version", version=f"llama-chat {version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    for name, (module_name, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            module = importlib.import_module(module_name)
            module.add_arguments(p)
            p.set_defaults(_module=module)
    return parser


def _print_help() -> None:
    """Top-level help, then the chat's own options (the default command)."""
    build_parser("").print_help()
    print("\nchat options (llama-chat [options] = llama-chat chat [options]):")
    chat = build_parser("chat")
    for action in chat._subparsers._group_actions[0].choices["chat"]._actions:  # noqa: SLF001
        if action.option_strings and action.help != argparse.SUPPRESS:
            print(f"  {', '.join(action.option_strings):<30} {action.help or ''}")


def _check_argv(argv: list[str]) -> None:
    """Arguments that are not valid UTF-8 (Python keeps them as lone surrogates) would
    fail deep inside as an encoding traceback; refuse them here."""
    from inference.errors import LlamaChatError
    for i, a in enumerate(argv):
        try:
            a.encode("utf-8")
        except UnicodeEncodeError:
            raise LlamaChatError(f"argument {i + 1} is not valid UTF-8 text") from None


def _silence_stdout() -> None:
    """Point stdout at /dev/null so the interpreter's final flush cannot fail again."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


def main(argv: Sequence[str] | None = None) -> int:
    from inference.errors import LlamaChatError

    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or (argv[0].startswith("-") and argv[0] not in ("--version", "-h", "--help")):
        argv = ["chat", *argv]  # `llama-chat --model X` means `llama-chat chat --model X`
    command = argv[0] if argv[0] in COMMANDS else ""
    OneLineParser.help_hint = f"llama-chat {command} --help" if command else "llama-chat --help"
    if sys.stdout is None:  # started with stdout closed
        print("llama-chat: error: standard output is closed", file=sys.stderr)
        return 2
    try:
        if argv[0] in ("-h", "--help"):
            _print_help()
            sys.stdout.flush()
            return 0
        _check_argv(argv)
        args = build_parser(command).parse_args(argv)
        module = getattr(args, "_module", None)
        if module is None:
            build_parser("").error(f"unknown command {argv[0]!r}")
        code = int(module.run(args) or 0)
        sys.stdout.flush()
        return code
    except LlamaChatError as e:
        print(f"llama-chat: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("llama-chat: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (`| head`): not an error
        return 0
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EBADF, errno.EIO) and e.filename is None:
            _silence_stdout()
            print(f"llama-chat: error: cannot write the output ({e.strerror})", file=sys.stderr)
            return 2
        raise


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
