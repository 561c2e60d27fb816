"""`llama-chat tokenize TEXT`: print token ids, space-separated, on one line.

`--tokenizer` takes any tokenizer file llama-chat reads, a GGUF model included (its
embedded vocabulary); without it, the tokenizer of `--model`, whose default is the model
`generate` and `chat` run without one (so the ids are the ones they would feed it). BOS
is added when the model adds it (`add_bos`), unless --no-bos. Control-token spellings in
TEXT stay text unless --special.
"""
from __future__ import annotations

import argparse
import os

from inference.errors import TokenizerError
from inference.formats.detect import is_gguf
from inference.loader import find_tokenizer
from inference.tokenizer import load_tokenizer

from .common import path_arg, resolve_model_arg


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("text", help="text to tokenize")
    p.add_argument("--tokenizer", "-t", metavar="PATH", type=path_arg,
                   help="tokenizer.bin, .model, tokenizer.json or a GGUF model (default: the tokenizer of the model "
                        "that runs without --model, marked * by `llama-chat models`)")
    p.add_argument("--model", "-m", metavar="PATH", type=path_arg, help="take the tokenizer of (or beside) this model")
    p.add_argument("--no-bos", action="store_true", help="do not prepend BOS")
    p.add_argument("--special", action="store_true",
                   help="turn spelled-out control tokens (e.g. <|im_end|>) into their ids")


def run(args: argparse.Namespace) -> int:
    path = args.tokenizer
    if path is None:
        model = resolve_model_arg(args.model)   # without --model: the model generate and chat run
        path = model if os.path.isfile(model) and is_gguf(model) else find_tokenizer(model)
    if path is None or not os.path.exists(path):
        raise TokenizerError(f"tokenizer not found: {path or 'none beside the model'}")
    tok = load_tokenizer(path)
    ids = tok.encode(args.text, bos=False if args.no_bos else None, special=args.special)
    print(" ".join(str(i) for i in ids))
    return 0
