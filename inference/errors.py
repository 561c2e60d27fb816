"""User-facing errors: the CLI prints `str(err)` on one line and exits with `exit_code`."""
from __future__ import annotations


class LlamaChatError(Exception):
    """Any problem caused by the user's input or machine, reported without a traceback."""

    exit_code = 2


class ModelFormatError(LlamaChatError):
    """A model file is missing, truncated, foreign or inconsistent."""


class TokenizerError(LlamaChatError):
    """A tokenizer file is unreadable or does not fit the model."""


class ContextOverflowError(LlamaChatError):
    """The prompt alone does not fit in the model's context window."""


class BackendError(LlamaChatError):
    """The compute device is missing, out of memory or failed."""
