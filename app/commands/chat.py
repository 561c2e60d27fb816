"""`llama-chat` / `llama-chat chat`: open the chat TUI on a model.

The model is loaded and checked before Textual starts, so a bad path or a mismatched
tokenizer is a one-line error on the terminal rather than a crash inside the full-screen
UI. The slow part of a first start — compiling the kernels — runs behind the TUI's
progress screen, with a one-line note on the terminal when it happens.

Settings come from, in rising precedence: the built-in defaults, the settings file
(`app.settings`: [sampling], then the preset), then the flags given on the command line.
"""
from __future__ import annotations

import argparse
import os
import sys

from inference.errors import LlamaChatError


from .common import (ProgressBar, add_model_arguments, add_sampling_arguments, add_template_arguments,
                     backend_options, model_path, path_arg)

#: How long the UI thread may keep the GIL while the engine's thread waits (CPython: 5 ms).
SWITCH_INTERVAL_S = 0.0005

SAMPLING_FLAGS = ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "repeat_last_n",
                  "max_new_tokens", "seed")
#: how long the CLI waits for a warm start before it opens the TUI on the progress screen
WARM_WAIT_S = 0.8


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_model_arguments(p)
    add_template_arguments(p)
    p.add_argument("--history-db", metavar="PATH", type=path_arg,
                   help="SQLite history file (default: $XDG_DATA_HOME/llama-chat/history.db)")
    p.add_argument("--config", metavar="PATH", type=path_arg,
                   help="settings file (default: $XDG_CONFIG_HOME/llama-chat/config.toml, i.e. "
                        "~/.config/llama-chat/config.toml); flags override it")
    p.add_argument("--preset", metavar="NAME", help="start with this preset from the settings file")
    add_sampling_arguments(p)
    # None = not given on the command line, so the settings file may supply it (the help
    # texts above were written with the built-in defaults).
    p.set_defaults(template=None, system=None, **{name: None for name in SAMPLING_FLAGS})


def leave_a_core_for_the_ui() -> None:
    """Cap the CPU backend's thread pool at (cores - 1) unless the user chose a number.

    The UI thread needs a core to stay responsive while tokens stream: with a pool as
    wide as the machine, a keypress waits for the pool's threads to be descheduled, and
    each time one is, every parallel region waits for it at its barrier. On a 2-core
    machine the second thread decodes faster but makes typing lag while a reply
    streams (tests/bench_tui_latency.py measures the lag); a NUMBA_NUM_THREADS the
    user sets wins. Must run before Numba is imported.
    """
    if "NUMBA_NUM_THREADS" in os.environ:
        return
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    os.environ["NUMBA_NUM_THREADS"] = str(max(1, cores - 1))


def require_terminal() -> None:
    """The TUI takes over a terminal; into a pipe it would write escape codes forever."""
    for name, stream in (("input", sys.stdin), ("output", sys.stdout)):
        try:
            ok = stream is not None and stream.isatty()
        except (ValueError, OSError):
            ok = False
        if not ok:
            raise LlamaChatError(f"the chat needs a terminal, but standard {name} is not one; for pipes "
                                 "and scripts use `llama-chat generate` (e.g. llama-chat generate --chat "
                                 "\"Hello\", or -p \"Once upon a time\")")


def cold_start_note(job, device: str) -> str | None:
    """The terminal's one line when the warm-up is compiling kernels (a first start),
    None for a warm start (kernels loaded from the cache in well under a second)."""
    if job.done or job.warm is None or not job.warm.compiling:
        return None
    return (f"llama-chat: warning: first start on this machine: compiling the {device.upper()} kernels "
            "(once for every weight type, ~1 min on 2 cores, cached after); progress is on screen")


def template_from_args(args: argparse.Namespace, loaded: object):
    """The chat template `--template` names for this model; `--system` needs a chat one.
    (Used by `generate --chat`.)"""
    from inference.chat import resolve_template, template_warning

    template = resolve_template(args.template or "auto", loaded.tokenizer, loaded.name,  # type: ignore[attr-defined]
                                loaded.path)  # type: ignore[attr-defined]
    warning = template_warning(template, loaded.tokenizer)  # type: ignore[attr-defined]
    if warning:
        print(f"llama-chat: warning: {warning}", file=sys.stderr)
    if args.system and not template.uses_system:
        raise LlamaChatError("--system needs a chat template: add --template chatml (or llama2, "
                             "llama3, zephyr, a .jinja file)")
    return template


def sampling_settings(args: argparse.Namespace, file_settings, preset: str | None):
    """Built-in defaults <- settings file [sampling] <- preset <- flags; (base, final).
    `base` is what the TUI's "start-up settings" preset returns to (file + flags)."""
    from dataclasses import replace

    from inference.sampler import SamplingSettings, check_value

    flags: dict[str, object] = {}
    for name in SAMPLING_FLAGS:
        value = getattr(args, name, None)
        if value is None:
            continue
        try:
            flags[name] = check_value(name, value)
        except ValueError as e:
            raise LlamaChatError(f"--{e}") from None
    file_base = replace(SamplingSettings(), **file_settings.sampling)
    base = replace(file_base, **flags)
    start = replace(file_base, **(file_settings.presets[preset] if preset else {}))
    return base, replace(start, **flags)


def chosen_sampling(args: argparse.Namespace, file_settings, preset: str | None) -> set[str]:
    """The sampling settings the user chose (flags, the settings file, the preset)."""
    chosen = {name for name in SAMPLING_FLAGS if getattr(args, name, None) is not None}
    chosen |= set(file_settings.sampling)
    if preset:
        chosen |= set(file_settings.presets[preset])
    return chosen


def run(args: argparse.Namespace) -> int:
    require_terminal()
    if args.device == "cpu":
        leave_a_core_for_the_ui()
    from app.settings import SettingsError, load_settings
    from app.tui.model_host import ModelJob, ModelOpener
    from app.tui.store import HistoryStore, refuse_foreign

    if args.history_db:
        refuse_foreign(args.history_db)   # before the model loads
    settings_file = load_settings(args.config, required=bool(args.config))
    preset = args.preset or settings_file.preset
    if preset and preset not in settings_file.presets:
        known = ", ".join(settings_file.presets) or "none defined"
        raise SettingsError(f"--preset {preset}: no such preset in {settings_file.path or 'the settings file'} "
                            f"(presets: {known})")
    base, settings = sampling_settings(args, settings_file, preset)
    system = args.system if args.system is not None else (settings_file.system or "")
    opener = ModelOpener(args.device, args.quant, args.group_size,
                         args.template or settings_file.template or "auto", backend_options(args))
    bar = ProgressBar("quantizing to int8 (first load only; cached)")
    host = opener.open(model_path(args, settings_file.model), settings, args.tokenizer, progress=bar)
    bar.close()
    if system and not host.template.uses_system:
        host.close()
        raise LlamaChatError("--system needs a chat template: add --template chatml (or llama2, "
                             "llama3, zephyr, a .jinja file)")
    from inference.sampler import for_conversation
    chat, chosen = host.template.source is not None, chosen_sampling(args, settings_file, preset)
    base = for_conversation(base, chat, chosen)
    host.engine.settings = for_conversation(host.engine.settings, chat, chosen)
    job = ModelJob(host=host).start()
    job.wait(WARM_WAIT_S)
    note = cold_start_note(job, args.device)
    if note:
        print(note, file=sys.stderr, flush=True)
    store = HistoryStore.open(args.history_db)

    from app.tui.chat_app import ChatApp  # Textual is imported only once the model loaded

    app = ChatApp(host, store, system=system, opener=opener, presets=settings_file.presets,
                  preset=preset, base_settings=base, startup=job)
    # The forward runs without the GIL, but each token takes it once (sampling, text, the
    # hand-over); while the UI draws a reply, that wait lasts a whole switch interval.
    # `serve` keeps the default: there the thread kept waiting is the event loop's, which
    # is off the decode path (see DEVELOPERS.md).
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    try:
        value = app.run()
    finally:
        lost = store.close()
        app.host.close()
    if lost:
        print(f"llama-chat: warning: {lost} history change{'s' if lost != 1 else ''} could not be saved: "
              f"{store.path} stayed locked by another program", file=sys.stderr)
    if app.return_code:   # Textual caught an exception (and printed it): never exit 0 on a crash
        return int(value) if isinstance(value, int) and value else int(app.return_code)
    return int(value or 0)
