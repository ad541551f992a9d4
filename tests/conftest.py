"""Shared fixtures. Tests use the real CIFAR-10 copy; a missing copy fails the run rather than skipping."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

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
