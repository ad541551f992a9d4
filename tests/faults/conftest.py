"""Fixtures of the fault suite: the uninterrupted reference run, and the tally of faults survived.

Every test module here sets `pytestmark = pytest.mark.faults`. The tally is printed at the end
of the session (`fault_tally`), so the numbers in the README's "Faults injected" table (fault,
runs tried, survived, data lost) come from a real run.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from fault_tally import TALLY_PROPERTY
from faultkit import Record, assert_no_traceback, run_seratio, train_argv


@pytest.fixture
def tally(request: pytest.FixtureRequest) -> Record:
    """`tally(fault, tried, survived, lost)`: one row per kind of fault a test injected."""

    def record(fault: str, tried: int, survived: int, lost: int) -> None:
        request.node.user_properties.append((TALLY_PROPERTY, (fault, tried, survived, lost)))

    return record


@pytest.fixture(scope="session")
def reference_run(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny run trained once without any fault: what every faulted run must end up equal to."""
    out = tmp_path_factory.mktemp("reference") / "run"
    done = run_seratio(train_argv(cifar_dir, out))
    assert done.returncode == 0, done.stderr
    assert_no_traceback(done.stderr)
    return out
