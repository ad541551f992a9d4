"""Ctrl-C and SIGTERM as one KeyboardInterrupt, counted.

Python raises a handler's KeyboardInterrupt wherever the main thread happens to be, and a library
that catches BaseException there (a database driver mid-connect, a finalizer) can swallow it. A
loop that waits only for the exception, like the storage retry loop, would then go on for its
whole patience after the user asked it to stop; once it ran on for a minute after a SIGTERM. The
count lets such a loop see that a stop arrived while it was busy. Only `signal` is imported:
`seratio.__main__` installs the handler before anything else loads.
"""

from __future__ import annotations

import signal

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received = [0]


def raise_interrupt(signum: int, frame: object) -> None:
    """The stop signals' handler (typing.NoReturn would import `typing`, 9 ms outside the guard)."""
    _received[0] += 1
    raise KeyboardInterrupt


def received() -> int:
    """How many stop signals this process has taken so far; compare two readings around a call."""
    return _received[0]
