"""Pydantic's validation errors as one line a person can act on, worded the same for messages, files and requests."""

from __future__ import annotations

from collections.abc import Callable

from pydantic import ValidationError
from pydantic_core import ErrorDetails


def field_path(error: ErrorDetails) -> str:
    """Where the error is, dotted (`box.x1`, `0.url`); empty for a check of the whole model."""
    return ".".join(str(part) for part in error["loc"])


def error_message(error: ErrorDetails) -> str:
    # A validator's ValueError reads "Value error, <its text>": the text alone is what the reader needs.
    return error["msg"].removeprefix("Value error, ")


def describe_error(error: ErrorDetails) -> str:
    """`path: message`, or the message alone when it is about the whole model (it names its fields itself).
    Never the value given: it may be a secret or a whole message."""
    path = field_path(error)
    return f"{path}: {error_message(error)}" if path else error_message(error)


def describe_errors(
    exc: ValidationError, *, limit: int | None = None, describe: Callable[[ErrorDetails], str] = describe_error
) -> str:
    """Every error (or the first `limit`, with a count of the rest), joined by "; "."""
    errors = exc.errors()
    shown = errors if limit is None else errors[:limit]
    rest = len(errors) - len(shown)
    return "; ".join(describe(e) for e in shown) + (f" (+{rest} more)" if rest else "")
