"""Shared fixtures. Tests use the real CIFAR-10 copy; a missing copy fails the run rather than skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from seratio.cli import main
from seratio.datasets import resolve_data_dir
from seratio.errors import SeratioError
from fault_tally import write_summary
from tiny_run import train_args

REPO = Path(__file__).resolve().parents[1]
LONGEST_FIRST = (
    "test_study_workers.py", "test_train.py", "faults/test_study_faults.py", "test_report_output.py",
    "test_bf16.py", "faults/test_kill.py", "test_api.py", "test_interrupts.py", "test_report.py",
)
"""The files that take longest, longest first (59-172 s each in a two-worker run on 2026-11-28;
`--junitxml` gives each test's seconds). `make test` hands whole files to two pytest-xdist workers
in collection order (`--no-loadscope-reorder`: by default xdist puts the files with the most tests
first), so a long file collected last ran alone at the end; these go first, and the short files
fill in behind them."""


@pytest.fixture(scope="session")
def cifar_dir() -> Path:
    """The directory holding `cifar-10-batches-py/` (or that folder itself): $SERATIO_DATA, else this
    repo's shared copy, else the download cache that a bare `seratio` uses, as the README says."""
    shared = REPO.parent / "shared" / "data" / "cifar10"
    env = os.environ.get("SERATIO_DATA")
    if not env and not shared.is_dir():
        try:
            return resolve_data_dir(None, "cifar10")
        except SeratioError as error:
            pytest.fail(f"CIFAR-10 is not in the download cache and could not be fetched: {error}")
    path = Path(env or shared)
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


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        path = item.path.relative_to(REPO / "tests").as_posix()
        return LONGEST_FIRST.index(path) if path in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)  # stable: every file keeps its tests together and in order


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    write_summary(terminalreporter)
