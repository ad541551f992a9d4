"""The tally of injected faults: each fault test records its rows in its own test report, and the
session summary sums them into one table.

In the report, not in a module-level list, because under pytest-xdist the tests run in worker
processes and only their reports reach the controller, which prints the summary. For the same
reason the summary hook is in the top conftest.py: the controller loads only that one.
"""

from __future__ import annotations

import pytest

TALLY_PROPERTY = "fault_tally"


def write_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per kind of fault, summed over the tests (and parametrizations) that injected it."""
    reports = [r for key in ("passed", "failed") for r in terminalreporter.stats.get(key, []) if r.when == "call"]
    rows = [value for r in reports for name, value in r.user_properties if name == TALLY_PROPERTY]
    if not rows:
        return
    totals: dict[str, list[int]] = {}
    for fault, *counts in rows:
        total = totals.setdefault(fault, [0, 0, 0])
        for i, value in enumerate(counts):
            total[i] += value
    terminalreporter.section("faults injected")
    terminalreporter.write_line(f"{'fault':<78} {'tried':>5} {'survived':>8} {'lost':>4}")
    for fault, (tried, survived, lost) in totals.items():
        terminalreporter.write_line(f"{fault:<78} {tried:>5} {survived:>8} {lost:>4}")
