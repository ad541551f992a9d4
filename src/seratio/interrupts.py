"""Ctrl-C and SIGTERM as one KeyboardInterrupt, counted.

Python raises a handler's KeyboardInterrupt wherever the main thread happens to be, and a library
that catches BaseException there (a database driver mid-connect, a finalizer) can swallow it. A
loop that waits only for the exception, like the storage retry loop, would then go on for its
whole patience after the user asked it to stop; once it ran on for a minute after a SIGTERM. The
count lets such a loop see that a stop arrived while it was busy. Python itself discards the
exception when the handler runs inside a weakref callback or a finalizer (importlib's module locks
have one, so Ctrl-C in the first quarter second of `study run` used to vanish and the study trained
to the end); `install` makes Python's hook for such exceptions send the signal again. Only small
standard modules are imported: `seratio.__main__` installs the handler before anything else loads.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)

REDELIVER_SECONDS = 0.05
"""How long a discarded stop waits before it is sent again: long enough for the callback that
discarded it to return, so that it lands in the code the user meant to stop."""

_received = [0]
_last_signal = [signal.SIGINT]


def install() -> None:
    """The stop signals' handler, and the hook that sends a stop again when Python discarded it."""
    for number in STOP_SIGNALS:
        signal.signal(number, raise_interrupt)
    sys.unraisablehook = _redeliver_discarded(sys.unraisablehook)


def raise_interrupt(signum: int, frame: object) -> None:
    """The stop signals' handler (typing.NoReturn would import `typing`, 9 ms outside the guard)."""
    _received[0] += 1
    _last_signal[0] = signum
    raise KeyboardInterrupt


def _redeliver_discarded(
    previous: Callable[[sys.UnraisableHookArgs], object],
) -> Callable[[sys.UnraisableHookArgs], None]:
    """An unraisable-exception hook for which a KeyboardInterrupt is a stop that must not be lost:
    raising it again here would be discarded too, so a helper thread sends the signal anew."""

    def hook(unraisable: sys.UnraisableHookArgs) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            previous(unraisable)
            return
        resend = threading.Timer(REDELIVER_SECONDS, os.kill, (os.getpid(), _last_signal[0]))
        resend.daemon = True  # a process that ends first does not wait for it
        resend.start()

    return hook


def received() -> int:
    """How many stop signals this process has taken so far; compare two readings around a call."""
    return _received[0]


@contextmanager
def stop_signals_held() -> Iterator[None]:
    """Ctrl-C and SIGTERM wait until the block is done, then arrive as if sent that moment, so a
    round of spawns or of forwarded signals, or an epoch's metrics and checkpoint, is never cut in half.

    Handlers, not the signal mask: a process-directed signal goes to any thread that does not
    block it, and a mask set in one thread would not hold it.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = {number: signal.signal(number, lambda number, frame: caught.append(number)) for number in STOP_SIGNALS}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, signal.SIG_DFL if handler is None else handler)
    for number in dict.fromkeys(caught):
        os.kill(os.getpid(), number)
