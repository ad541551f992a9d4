"""One exception type for every mistake a user can make.

The CLI turns a `SeratioError` into a one-line message and exit code 2, so
nothing a user types ends in a traceback; an `OSError` (a file the system
refused) gets the same treatment through `os_error_message`. Anything else
escaping is a bug. `int_in` is the check that most refusals of a count rest on, and
`print_to_stderr` is where the Python API's warnings go when its caller names no `log`.
"""

import numbers
import sys


class SeratioError(Exception):
    """A user-facing error: the message names the bad value and what is allowed."""


def exact_int(value: object) -> object:
    """numpy's integers as Python ints, anything else unchanged for the checks to judge: a sweep
    built with np.arange passes them, and JSON cannot write them."""
    return int(value) if isinstance(value, numbers.Integral) and not isinstance(value, bool) else value


def int_in(value: object, low: int, high: int) -> bool:
    """An int from low to high; never a bool, which Python counts as an int, nor 5000.0."""
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def user_message(error: SeratioError | OSError) -> str:
    """The one line a user sees for either kind of error they can fix."""
    return os_error_message(error) if isinstance(error, OSError) else str(error)


def os_error_message(error: OSError) -> str:
    """What the operating system refused, and on which file: an unreadable run directory, a
    read-only storage or a name too long is the user's to fix, so it gets one line, not a traceback."""
    reason = error.strerror or str(error)
    paths = [str(p) for p in (error.filename, error.filename2) if p is not None]
    return f"{reason}: {' -> '.join(paths)}" if paths else reason


def print_to_stderr(message: str) -> None:
    """The Python API's default `log`: a caller from a script or notebook sees the warnings too, as
    the command line's user does."""
    print(message, file=sys.stderr, flush=True)
