"""Shared fixtures. Tests use the real CIFAR-10 copy; a missing copy fails the run rather than skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seratio.cli import main
from fault_tally import write_summary
from tiny_run import train_args

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The directory holding `cifar-10-batches-py/` (or that folder itself), from $SERATIO_DATA."""
    path = Path(os.environ.get("SERATIO_DATA", REPO.parent / "shared" / "data" / "cifar10"))
    if not ((path / "cifar-10-batches-py").is_dir() or (path / "batches.meta").is_file()):
        pytest.fail(
            f"CIFAR-10 not found at {path}. Set SERATIO_DATA to the directory that holds "
            "cifar-10-batches-py/ (in this repo's setup: ../shared/data/cifar10)."
        )
    return path


@pytest.fixture(scope="session")
def tiny_run(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The finished `tiny_run.TINY` run, trained once per session for every module that reads it.
    Read-only: a test that changes a run works on a copy."""
    out = tmp_path_factory.mktemp("runs") / "se-4-4-4"
    assert main(train_args(cifar_dir, out)) == 0
    return out


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_summary(terminalreporter)
