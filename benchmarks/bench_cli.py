"""Command-line plumbing shared by the benchmark scripts: count checks and the output."""

from __future__ import annotations

import argparse
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any


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
