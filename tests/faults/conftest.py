"""Fixtures of the fault suite: the uninterrupted reference run, and the tally of faults survived.

Every test module here sets `pytestmark = pytest.mark.faults`. The tally is printed at the end
of the session, so the numbers in GUARANTEES.md (fault, runs tried, survived, data lost) come
from a real run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from faultkit import TALLY, Record, Tally, assert_no_traceback, run_seratio, train_argv


@pytest.fixture
def tally() -> Record:
    """`tally(fault, tried, survived, lost)`: one row per kind of fault a test injected."""

    def record(fault: str, tried: int, survived: int, lost: int) -> None:
        TALLY.append(Tally(fault, tried, survived, lost))

    return record


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line per kind of fault, summed over the tests (and parametrizations) that injected it."""
    if not TALLY:
        return
    totals: dict[str, list[int]] = {}
    for row in TALLY:
        total = totals.setdefault(row.fault, [0, 0, 0])
        for i, value in enumerate((row.tried, row.survived, row.lost)):
            total[i] += value
    terminalreporter.section("faults injected")
    terminalreporter.write_line(f"{'fault':<78} {'tried':>5} {'survived':>8} {'lost':>4}")
    for fault, (tried, survived, lost) in totals.items():
        terminalreporter.write_line(f"{fault:<78} {tried:>5} {survived:>8} {lost:>4}")


@pytest.fixture(scope="session")
def reference_run(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained once without any fault: what every faulted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_seratio(train_argv(cifar_dir, out))
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done.stderr)
    return out
