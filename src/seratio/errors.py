"""One exception type for every mistake a user can make.

The CLI turns a `SeratioError` into a one-line message and exit code 2, so
nothing a user types ends in a traceback. Anything else escaping is a bug.
"""


class SeratioError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""
