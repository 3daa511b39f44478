"""Exceptions that carry a message meant for the user.

`InputError` is raised for anything wrong with what the user gave us (files,
contour levels, options).  The CLI turns it into one line on stderr and exit
code 2; anything else escaping the library is a bug (exit code 1).
"""


class InputError(ValueError):
    """Bad user input: the message names the problem and how to fix it."""
