"""Command-line plumbing shared by the benchmark scripts: counts, progress, stop signals, output."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from seratio.interrupts import raise_interrupt

STOPPED = 130
"""The exit code of a script stopped by Ctrl-C or SIGTERM, as the shell gives one killed by SIGINT."""


def log(message: str) -> None:
    """Progress on stderr, at once: stdout holds the table alone."""
    print(message, file=sys.stderr, flush=True)


def stoppable(measure: Callable[[], dict[str, Any]], unit: str) -> dict[str, Any] | None:
    """`measure()` with SIGTERM raised as Ctrl-C is, so that a device call's time limit (`timeout`)
    lets the script print what it finished (each `measure` keeps its finished rounds or cases);
    None, said on stderr, when the stop came before its first `unit` ended."""
    signal.signal(signal.SIGTERM, raise_interrupt)
    try:
        return measure()
    except KeyboardInterrupt:
        log(f"interrupted before the first {unit} ended: nothing to print")
        return None


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type for counts (rounds, repeats, epochs): a bad value is refused up front,
    naming it, instead of failing after minutes of measuring (a median of no rounds)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"{value} must be >= {minimum}")
        return value

    return parse


def emit(table: Callable[[dict[str, Any]], str], result: dict[str, Any], json_path: Path | None) -> int:
    """Print the table for people; also write every number as JSON when asked (`--json`), for RESULTS.md.

    The JSON is written before the table is formatted, so a formatting bug cannot lose minutes of
    measurement (on a lent GPU, a rerun may not fit the time left)."""
    if json_path:
        json_path.write_text(json.dumps(result, indent=2))
    print(table(result))
    return 0
