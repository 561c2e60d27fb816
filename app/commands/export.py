"""`llama-chat export ID|--last [-o FILE] [--format md|json]`: a saved conversation as a file.

Markdown has a heading per message (role, model, time) with the text verbatim below it;
JSON is a list of {role, content, model, created, ...}, the system prompt first. Reads the
history read-only: exporting never changes it. Without -o the text goes to stdout.
"""
from __future__ import annotations

import argparse
import os
import sys

from inference.errors import LlamaChatError

from .common import exists_error, path_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("id", nargs="?", type=int, metavar="ID",
                   help="conversation id (the history sidebar and `--format json` show it)")
    p.add_argument("--last", action="store_true", help="the most recently updated conversation")
    p.add_argument("-o", "--output", metavar="FILE", type=path_arg,
                   help="write here (default: standard output); an existing FILE needs --force")
    p.add_argument("--force", "-f", action="store_true", help="overwrite FILE if it exists")
    p.add_argument("--format", choices=("md", "json"), default=None,
                   help="md or json (default: from the -o file's extension, else md)")
    p.add_argument("--history-db", metavar="PATH", type=path_arg,
                   help="SQLite history file (default: $XDG_DATA_HOME/llama-chat/history.db)")


def run(args: argparse.Namespace) -> int:
    from app.tui import transcript
    from app.tui.store import HistoryStore, default_path

    if (args.id is None) == (not args.last):
        raise LlamaChatError("export needs a conversation ID or --last (one of them)")
    if args.output and os.path.lexists(args.output) and not args.force:   # before anything is read
        raise exists_error(args.output)
    path = args.history_db or default_path()
    if not os.path.exists(path):
        raise LlamaChatError(f"no history database at {path}")
    store = HistoryStore.open_read_only(path, "opened for export")
    try:
        if store.db is None:
            raise LlamaChatError(store.notices[0] if store.notices else f"cannot read {path}")
        info = store.latest() if args.last else store.conversation(args.id)
        if info is None:
            raise LlamaChatError("the history has no conversations" if args.last
                                 else f"no conversation {args.id} in {path}")
        got = transcript.from_store(store, info.id)
    finally:
        store.close(wait=0)
    assert got is not None
    header, entries = got
    fmt = args.format or (transcript.format_for(args.output) if args.output else "md")
    text = transcript.render(header, entries, fmt)
    if args.output:
        try:
            with open(args.output, "w" if args.force else "x", encoding="utf-8") as f:
                f.write(text)
        except FileExistsError:   # created since the check above
            raise exists_error(args.output) from None
        except OSError as e:
            raise LlamaChatError(f"cannot write {args.output}: {e.strerror}") from None
        print(f"exported conversation {header.id} ({len(entries)} messages) to {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0

