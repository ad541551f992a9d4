"""One exception type for every mistake a user can make.

The CLI turns a `SeratioError` into a one-line message and exit code 2, so
nothing a user types ends in a traceback; an `OSError` (a file the system
refused) gets the same treatment through `os_error_message`. Anything else
escaping is a bug.
"""


class SeratioError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


def user_message(error: SeratioError | OSError) -> str:
    """The one line a user sees for either kind of error they can fix."""
    return os_error_message(error) if isinstance(error, OSError) else str(error)


def os_error_message(error: OSError) -> str:
    """What the operating system refused, and on which file: an unreadable run directory, a
    read-only storage or a name too long is the user's to fix, so it gets one line, not a traceback."""
    reason = error.strerror or str(error)
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason
