"""A full disk: `seratio train` and a study trial fail with a clear reason, lose nothing, and finish later.

The disk is a real tmpfs of a few MiB where `mount` is allowed (root, as in CI). Elsewhere the
kernel's answer is imitated: fsync of a file under the directory fails with ENOSPC once the files
there exceed the capacity. Either way the disk is "freed" by deleting a filler file, as a user
would delete something else.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from optuna.trial import TrialState

from faultkit import (
    Record, TINY, assert_no_traceback, assert_same_run, main_in_process, run_outcome, temp_files, train_argv,
)
from seratio import rundir
from seratio.errors import SeratioError
from seratio.store import Patience, StudyStore
from study_fakes import _open

pytestmark = pytest.mark.faults
MiB = 1 << 20


class SmallDisk:
    """A directory with little space; `fill` leaves a chosen number of bytes free, `free` undoes it."""

    def __init__(self, root: Path, capacity: int, mounted: bool) -> None:
        self.root, self.capacity, self.mounted = root, capacity, mounted
        self.filler = root / "filler.bin"

    def free_bytes(self) -> int:
        if self.mounted:
            stats = os.statvfs(self.root)
            return stats.f_bavail * stats.f_frsize
        return self.capacity - self.used()

    def used(self) -> int:
        return sum(p.stat().st_size for p in self.root.rglob("*") if p.is_file())

    def fill(self, leave: int) -> None:
        with open(self.filler, "ab") as handle:
            handle.write(b"\0" * (self.free_bytes() - leave))

    def free(self) -> None:
        self.filler.unlink()

    def refuse_writes_beyond_capacity(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The stand-in for a real filesystem: fsync under `root` fails with ENOSPC when over capacity."""
        real_fsync: Callable[[int], None] = os.fsync

        def fsync(fd: int) -> None:
            if Path(os.readlink(f"/proc/self/fd/{fd}")).is_relative_to(self.root) and self.used() > self.capacity:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            real_fsync(fd)

        monkeypatch.setattr(os, "fsync", fsync)


def _mount_tmpfs(root: Path, capacity: int) -> bool:
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={capacity}", "tmpfs", str(root)],
                          capture_output=True, text=True)
    return done.returncode == 0


@pytest.fixture
def small_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[[int], SmallDisk]]:
    """`small_disk(capacity)`: a tmpfs if mount works here, else the ENOSPC stand-in (never a skip)."""
    mounts: list[Path] = []

    def make(capacity: int) -> SmallDisk:
        root = tmp_path / f"disk{len(mounts)}"
        root.mkdir()
        if _mount_tmpfs(root, capacity):
            mounts.append(root)
            return SmallDisk(root, capacity, mounted=True)
        disk = SmallDisk(root, capacity, mounted=False)
        disk.refuse_writes_beyond_capacity(monkeypatch)
        return disk

    yield make
    for root in mounts:
        subprocess.run(["umount", "-l", str(root)], check=True)


def test_the_enospc_stand_in_refuses_like_a_full_filesystem(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where tmpfs cannot be mounted the suite relies on the stand-in; prove it behaves as a full disk."""
    disk = SmallDisk(tmp_path, capacity=MiB, mounted=False)
    disk.refuse_writes_beyond_capacity(monkeypatch)
    disk.fill(leave=100_000)
    with pytest.raises(SeratioError, match=re.escape(f"no space left on device while writing {tmp_path / 'x.bin'}")):
        rundir.write_atomic(tmp_path / "x.bin", b"1" * 200_000)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["filler.bin"]  # no temp file left behind
    disk.free()
    rundir.write_atomic(tmp_path / "x.bin", b"1" * 200_000)


def test_full_disk_fails_train_with_exit_2_and_a_resume_after_freeing_space_ends_identical(
    reference_run: Path, cifar_dir: Path, small_disk: Callable[[int], SmallDisk],
    capsys: pytest.CaptureFixture[str], tally: Record,
) -> None:
    disk = small_disk(4 * MiB)
    run = disk.root / "run"
    run.mkdir()
    for name in (rundir.CONFIG, rundir.METRICS):
        shutil.copy2(reference_run / name, run / name)
    shutil.copy2(reference_run / rundir.PREVIOUS_CHECKPOINT, run / rundir.CHECKPOINT)  # epoch 2 of 3, alone
    disk.fill(leave=(reference_run / rundir.CHECKPOINT).stat().st_size // 2)

    code = main_in_process(train_argv(cifar_dir, run, "--resume"))
    err = capsys.readouterr().err
    assert code == 2, err
    assert f"seratio: error: no space left on device while writing {run / rundir.CHECKPOINT}" in err
    assert_no_traceback(err)
    assert temp_files(run) == []
    checkpoint, notes = rundir.load_checkpoint(run)
    assert notes == [] and checkpoint is not None and checkpoint["epoch"] == 2  # the good one survived

    disk.free()
    code = main_in_process(train_argv(cifar_dir, run, "--resume"))
    identical = code == 0 and run_outcome(run) == run_outcome(reference_run)
    tally(f"disk full during `seratio train` ({'tmpfs' if disk.mounted else 'injected ENOSPC'})",
          1, int(identical), int(not identical))
    assert code == 0, capsys.readouterr().err
    assert_same_run(run, reference_run)


def _trials(storage: str, name: str) -> list:  # type: ignore[type-arg]
    return StudyStore(_open(storage, create=False), name, Patience(seconds=10), lambda m: None).trials()


def test_full_disk_fails_one_study_trial_keeps_the_others_and_a_rerun_completes(
    cifar_dir: Path, tmp_path: Path, small_disk: Callable[[int], SmallDisk],
    capsys: pytest.CaptureFixture[str], tally: Record,
) -> None:
    """Two one-epoch runs; the disk holds about one and a half, so the second run's checkpoint cannot be written."""
    disk = small_disk(4 * MiB)
    disk.fill(leave=2 * MiB)
    storage = f"journal:{tmp_path / 'study.log'}"
    argv = ["study", "run", "constant", "--name", "disk", "--storage", storage, "--candidates", "4",
            "--baseline", "none", "--epochs", "1", "--artifacts", str(disk.root / "runs"), "--data-dir", str(cifar_dir),
            *TINY, "--heartbeat-interval", "0.5", "--stale-after", "30"]

    assert main_in_process(argv) == 2
    err = capsys.readouterr().err
    assert_no_traceback(err)
    last = err.strip().splitlines()[-1]
    assert last.startswith("seratio: error: study 'disk' cannot finish") and "no space left on device" in last
    first = _trials(storage, "disk")
    complete = [t for t in first if t.state == TrialState.COMPLETE]
    failed = [t for t in first if t.state == TrialState.FAIL]
    assert len(complete) == 1 and len(failed) == 1, first
    assert "no space left on device" in failed[0].user_attrs["fail_reason"]
    kept = Path(complete[0].user_attrs["run_dir"])
    kept_before = run_outcome(kept)
    assert kept_before["result"]["test_accuracy"] == complete[0].user_attrs["test_accuracy"]

    disk.free()
    assert main_in_process(argv) == 0
    rerun_err = capsys.readouterr().err
    trained = re.findall(r"training in (\S+)", rerun_err)
    assert trained == [failed[0].user_attrs["run_dir"]], rerun_err  # only the failed run, and once
    final = _trials(storage, "disk")
    done = {t.number: t for t in final if t.state == TrialState.COMPLETE}
    assert len(done) == 2 and complete[0].number in done
    assert done[complete[0].number].value == complete[0].value  # the finished trial was not touched
    assert run_outcome(kept) == kept_before
    lost = 2 - len(done)
    tally(f"disk full during a study trial ({'tmpfs' if disk.mounted else 'injected ENOSPC'})", 1, int(not lost), lost)
