"""`llama-chat` entry point: dispatches to one module per sub-command.

With no sub-command it opens the chat TUI. Only the chosen sub-command's module is
imported (each imports what it needs, so `llama-chat tokenize` never pays for Textual or
CUDA). Every `LlamaChatError`, every argument error, Ctrl-C, SIGTERM and SIGHUP becomes
one line on stderr and a non-zero exit status, never a traceback or a usage dump.
"""
from __future__ import annotations

import os
import signal



def _interrupted_early(signum: int, frame: object) -> None:
    """Ctrl-C before `entry_point` runs: nothing to clean up yet."""
    os.write(2, b"llama-chat: interrupted\n")
    os._exit(130)


if __name__ == "__main__":  # `python -m app.cli`: a Ctrl-C while still starting up is one line too
    signal.signal(signal.SIGINT, _interrupted_early)

import argparse  # noqa: E402
import errno  # noqa: E402
import importlib  # noqa: E402
import sys  # noqa: E402
from typing import Callable, NoReturn, Sequence  # noqa: E402

#: sub-command -> (module, one-line help)
COMMANDS: dict[str, tuple[str, str]] = {
    "chat": ("app.commands.chat", "open the chat TUI (the default)"),
    "generate": ("app.commands.generate", "complete a prompt and print it to stdout"),
    "serve": ("app.commands.serve", "serve an OpenAI-compatible API; concurrent requests decode together"),
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
    except KeyboardInterrupt:
        return interrupted()
    except LlamaChatError as e:
        if _Interrupt.requested:  # a consequence of the interrupt (a compile cut short, ...)
            return interrupted()
        print(f"llama-chat: error: {e}", file=sys.stderr)
        return e.exit_code
    except BrokenPipeError:
        _silence_stdout()  # the reader went away (`| head`): not an error
        return 0
    except OSError as e:
        if _Interrupt.requested:
            return interrupted()
        if e.errno in (errno.ENOSPC, errno.EBADF, errno.EIO) and e.filename is None:
            _silence_stdout()
            print(f"llama-chat: error: cannot write the output ({e.strerror})", file=sys.stderr)
            return 2
        raise


class _Interrupt:
    """Ctrl-C (or SIGTERM, SIGHUP) bookkeeping of one run (see `entry_point`)."""

    requested = False   # one of those arrived
    reported = False    # its line was printed
    word = "interrupted"
    status = 130        # 128 + the signal's number, as a shell reports a death by it


#: Signals that end a command as the first Ctrl-C does, and the word that reports them.
TERMINATING = {signal.SIGTERM: "terminated", signal.SIGHUP: "hung up"}


def _handle(sig: int, handler: Callable[[int, object], None]) -> None:
    """Install `handler` unless the signal was ignored when we started: `nohup llama-chat
    serve` must keep ignoring SIGHUP."""
    if signal.getsignal(sig) is not signal.SIG_IGN:
        signal.signal(sig, handler)


def _on_interrupt(signum: int, frame: object) -> None:
    """The first Ctrl-C unwinds as KeyboardInterrupt (partial output flushed, temp files
    removed, one line printed, exit 130). Python code called back from C (a ctypes
    callback inside Numba's compiler) swallows exceptions, so until `main` has seen the
    interrupt it is raised again every 0.2 s; a second Ctrl-C exits at once."""
    _Interrupt.requested = True
    for sig in (signal.SIGINT, *TERMINATING):
        _handle(sig, _on_second_interrupt)
    signal.signal(signal.SIGALRM, _redeliver)
    signal.setitimer(signal.ITIMER_REAL, 0.2, 0.2)
    raise KeyboardInterrupt


def _on_terminate(signum: int, frame: object) -> None:
    """SIGTERM (`kill`, a service manager, a job runner's timeout) or SIGHUP (the terminal
    closed) ends a command as the first Ctrl-C does — partial output flushed, temporary
    files removed, one line — but reports the signal and exits 128 + its number."""
    _Interrupt.word, _Interrupt.status = TERMINATING[signum], 128 + signum
    _on_interrupt(signum, frame)


def _redeliver(signum: int, frame: object) -> None:
    raise KeyboardInterrupt


def _on_second_interrupt(signum: int, frame: object) -> None:
    if not _Interrupt.reported:
        try:
            os.write(2, f"llama-chat: {_Interrupt.word}\n".encode())
        except OSError:   # the terminal is gone
            pass
    os._exit(_Interrupt.status)


def _stop_redelivery() -> None:
    """Stop re-raising the interrupt. The handler goes first: a timer signal already
    pending would otherwise still raise once more, wherever the code then is (on the way
    out that is an uncaught KeyboardInterrupt, and Python then dies of SIGINT)."""
    signal.signal(signal.SIGALRM, signal.SIG_IGN)
    signal.setitimer(signal.ITIMER_REAL, 0)


def interrupted() -> int:
    """Report a Ctrl-C, SIGTERM or SIGHUP once (stopping its re-delivery); its exit status."""
    if _Interrupt.requested:
        _stop_redelivery()
    if not _Interrupt.reported:
        _Interrupt.reported = True
        try:
            print(f"llama-chat: {_Interrupt.word}", file=sys.stderr, flush=True)
        except (OSError, ValueError):   # stderr closed, or its terminal hung up
            pass
    return _Interrupt.status


def _quiet_unraisable(hook: object) -> object:
    """An interrupt landing in a finalizer or a C callback would print 'Exception ignored
    in ...' with a traceback; it is re-delivered (see `_on_interrupt`) instead."""
    def quiet(unraisable: object) -> None:
        if not isinstance(getattr(unraisable, "exc_value", None), KeyboardInterrupt):
            hook(unraisable)  # type: ignore[operator]
    return quiet


def _command_of(argv: list[str]) -> str:
    """The sub-command `main` will run for these arguments (no command: the chat TUI)."""
    return argv[0] if argv and argv[0] in COMMANDS else "chat"


def _uninterrupted(fn: Callable[[], int]) -> int:
    """fn(), again if a re-delivered interrupt (see `_on_interrupt`) lands inside it:
    what runs after the work must not be cut short by the interrupt it reports."""
    while True:
        try:
            return fn()
        except KeyboardInterrupt:
            pass


def _settle(code: int) -> int:
    """The exit status, once Ctrl-C can no longer change it (idempotent)."""
    for sig in (signal.SIGINT, *TERMINATING):  # the work is done or reported: exit with its status
        signal.signal(sig, signal.SIG_IGN)
    if _Interrupt.requested:
        _stop_redelivery()
        if not _Interrupt.reported:  # interrupted, but the interrupt was swallowed until the end
            code = interrupted()
    return code


def entry_point() -> None:
    # The chat TUI handles its own signals (its reply is saved, not cut): Python's default
    # there; every other command gets the handlers above (SIGTERM and SIGHUP as Ctrl-C).
    tui = _command_of(sys.argv[1:]) == "chat"
    signal.signal(signal.SIGINT, signal.default_int_handler if tui else _on_interrupt)
    if not tui:
        for sig in TERMINATING:
            _handle(sig, _on_terminate)
    sys.unraisablehook = _quiet_unraisable(sys.unraisablehook)  # type: ignore[assignment]
    try:
        code = main()
    except KeyboardInterrupt:  # between main's own handlers
        code = _uninterrupted(interrupted)
    except Exception as e:  # a bug, not the user's input: still one line unless asked for more
        if _Interrupt.requested:  # Numba's compiler, cut short by the interrupt, fails its own way
            code = _uninterrupted(interrupted)
        elif isinstance(e, MemoryError):
            code = 2
            os.write(2, b"llama-chat: error: out of memory\n")
        elif os.environ.get("LLAMA_CHAT_TRACEBACK"):
            raise
        else:
            first = (str(e).splitlines() or [""])[0][:200]
            os.write(2, f"llama-chat: error: internal error ({type(e).__name__}: {first}); please report it "
                        f"(LLAMA_CHAT_TRACEBACK=1 shows where)\n".encode("utf-8", "replace"))
            code = 2
    code = _uninterrupted(lambda: _settle(code))
    sys.exit(code)


if __name__ == "__main__":
    entry_point()
