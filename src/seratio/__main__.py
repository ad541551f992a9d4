"""The `seratio` command and `python -m seratio`: a guard around everything it runs.

A Ctrl-C or SIGTERM at any instant must end in one line. Python spends some 50 ms importing
`seratio.cli` (twice, with the tcmalloc re-exec), and an interrupt there used to print a
traceback, so that import happens inside the guard. Only `signal` and `sys`, built into the
interpreter, are imported before it.
"""

from __future__ import annotations

import signal
import sys

INTERRUPTED = 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


def run() -> int:
    try:
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
