"""Exceptions that carry a message meant for the user.

`InputError` is raised for anything wrong with what the user gave us (files,
contour levels, options).  The CLI turns it into one line on stderr and exit
code 2; anything else escaping the library is a bug (exit code 1).
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad user input: the message names the problem and how to fix it."""


def one_line(exc, limit: int | None = None) -> str:
    """An exception's message as one line (never empty), cut to `limit` characters."""
    text = " ".join(str(exc).split()) or type(exc).__name__
    return text if limit is None or len(text) <= limit else text[: limit - 3] + "..."
