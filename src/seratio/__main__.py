"""The `seratio` command and `python -m seratio`: a guard around everything it runs.

A Ctrl-C or SIGTERM at any instant must end in one line. Python spends some 50 ms importing
`seratio.cli`, and an interrupt there used to print a traceback, so that import happens inside
the guard, after the tcmalloc re-exec (so it is imported once). Only `signal` and `sys`, built into the
interpreter, and `seratio.interrupts`, which imports only small standard modules, are imported before it.
SIGTERM, what batch schedulers and service managers stop jobs with, is turned into the same
KeyboardInterrupt first of all, so that every command (a report waiting for its storage, `study
status`) unwinds and says so instead of dying silently; both signals are counted
(`seratio.interrupts`), so that a retry loop notices one that a library swallowed.
"""

from __future__ import annotations

import signal
import sys

from seratio.interrupts import STOP_SIGNALS, install

INTERRUPTED = 130


def run() -> int:
    try:
        install()
        from seratio.runtime import reexec_with_tcmalloc

        reexec_with_tcmalloc()  # here, not in cli.main: a call from Python must never replace its process
        from seratio.cli import main

        code = main()
    except KeyboardInterrupt:
        print("seratio: interrupted", file=sys.stderr)
        code = INTERRUPTED
    if code == INTERRUPTED:
        _ignore_stop_signals()
    return code


def _ignore_stop_signals() -> None:
    """The process is ending: a second Ctrl-C, or the SIGTERM that a stopping service sends every
    process, must not break into the interpreter's teardown (torch's exit hooks then print a
    traceback after "interrupted")."""
    for number in STOP_SIGNALS:
        signal.signal(number, signal.SIG_IGN)


if __name__ == "__main__":
    sys.exit(run())
