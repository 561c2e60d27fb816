"""User-facing errors: the CLI prints `str(err)` on one line and exits with `exit_code`."""
from __future__ import annotations


def one_line(text: str) -> str:
    """`text` with every character that is not printable escaped (newlines, NULs, other
    control and line-separator characters), so a message stays one line whatever a file
    name or a tensor name in it holds."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode("ascii") for c in text)


class LlamaChatError(Exception):
    """Any problem caused by the user's input or machine, reported without a traceback.
    The message is made one line here, once, for every subclass."""

    exit_code = 2

    def __init__(self, *args: object) -> None:
        if len(args) == 1 and isinstance(args[0], str):
            args = (one_line(args[0]),)
        super().__init__(*args)


class ModelFormatError(LlamaChatError):
    """A model file is missing, truncated, foreign or inconsistent."""


class TokenizerError(LlamaChatError):
    """A tokenizer file is unreadable or does not fit the model."""


class ContextOverflowError(LlamaChatError):
    """The prompt alone does not fit in the model's context window."""


class NonFiniteError(LlamaChatError):
    """The model computed NaN or infinite logits: damaged weights (a NaN or infinite scale
    or value in the file) or activations that overflow fp32. Whatever token would be
    picked from them is noise, so generation stops instead of printing it."""


class BackendError(LlamaChatError):
    """The compute device is missing, out of memory or failed."""
