"""How commands meet the stop signals: SIGTERM stops them exactly like Ctrl-C (the steps that hold
both until they are done are in `seratio.interrupts`).

Batch schedulers and service managers stop jobs with SIGTERM, whose default action ends the process
where it stands: a study trial would stay RUNNING until another worker called it stale, and a
report would leave its half-built directory behind. As a KeyboardInterrupt it unwinds through the
same cleanup as Ctrl-C, and the command ends with "interrupted" and exit code 130.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager

from seratio.interrupts import raise_interrupt


@contextmanager
def sigterm_as_ctrl_c() -> Iterator[None]:
    """For the block, SIGTERM raises KeyboardInterrupt; the previous handler comes back after it,
    so a command called from Python leaves its caller's handlers as they were. (The `seratio`
    command sets this handler for its whole life in `seratio.__main__`.)"""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
