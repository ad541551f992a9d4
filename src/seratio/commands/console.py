"""The console that commands print their tables to."""

from __future__ import annotations

from rich.console import Console

PIPED_WIDTH = 160
"""Wide enough for the report's table; rich's default of 80 for a file cut its cells short ("basel…")."""


def stdout_console() -> Console:
    """A terminal's own width, or, written to a file or pipe, which has no width to fit, at least
    PIPED_WIDTH, so that a table keeps every cell whole."""
    console = Console(highlight=False, markup=False)
    if not console.is_terminal:
        console.width = max(console.width, PIPED_WIDTH)
    return console
