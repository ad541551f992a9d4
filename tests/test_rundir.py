"""A run directory's files survive a power cut, not only a kill."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from seratio import rundir


def test_a_write_syncs_the_file_and_then_the_directory_that_holds_its_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    synced: list[Path] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append(Path(os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    target = tmp_path / "run" / "result.json"
    rundir.write_json(target, {"test_accuracy": 0.9})
    assert [path.name.endswith(".tmp") for path in synced] == [True, False]
    assert synced[1] == target.parent
    assert json.loads(target.read_text()) == {"test_accuracy": 0.9}
