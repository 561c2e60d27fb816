"""`llama-chat tokenize TEXT`: print token ids, space-separated, on one line."""
from __future__ import annotations

import argparse
import os

from inference.loader import DEFAULT_MODEL, find_tokenizer
from inference.tokenizer import load_tokenizer


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="text to tokenize")
    p.add_argument("--tokenizer", "-t", metavar="PATH", help="tokenizer.bin or .model (default: the bundled one)")
    p.add_argument("--model", "-m", metavar="MODEL",
                   help="take the tokenizer beside this model (a path or a name from `llama-chat models`)")
    p.add_argument("--no-bos", action="store_true", help="do not prepend BOS")


def run(args: argparse.Namespace) -> int:
    from inference.discovery import resolve_model
    path = args.tokenizer or find_tokenizer(resolve_model(args.model) if args.model else DEFAULT_MODEL)
    if path is None or not os.path.exists(path):
        from inference.errors import TokenizerError
        raise TokenizerError(f"tokenizer not found: {path or 'none beside the model'}")
    tok = load_tokenizer(path)
    print(" ".join(str(i) for i in tok.encode(args.text, bos=not args.no_bos)))
    return 0
