"""Checkpoints damaged on disk: detected by their SHA-256, never loaded, and the run still ends right.

The damage a disk, a copy or an editor can do: a file cut to nothing or in half, a flipped byte
in the payload under an intact header, a flipped byte in the digest, a file that is not a seratio
checkpoint at all. Detection is checked directly on `rundir`; recovery end to end on a real run,
which must then end bit-identical to the undamaged reference.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from faultkit import Record, assert_same_run, main_in_process, run_outcome, train_argv
from seratio import rundir

pytestmark = pytest.mark.faults
HEADER = len(b"SERATIO-CKPT-1\n") + 65  # magic line, then the hex SHA-256 and a newline


def _flip(offset: int) -> Callable[[bytes], bytes]:
    def damage(blob: bytes) -> bytes:
        where = offset % len(blob)
        return blob[:where] + bytes([blob[where] ^ 0xFF]) + blob[where + 1 :]

    return damage


def _plain_torch_file(blob: bytes) -> bytes:
    """What torch.save writes: a valid pickle archive, but without seratio's checksum header."""
    return blob[HEADER:]


DAMAGE: dict[str, Callable[[bytes], bytes]] = {
    "truncated to 0 bytes": lambda blob: b"",
    "truncated to half": lambda blob: blob[: len(blob) // 2],
    "header only, payload gone": lambda blob: blob[:HEADER],
    "payload byte flipped, header intact": _flip(-100),
    "first payload byte flipped": _flip(HEADER),
    "digest byte flipped": _flip(len(b"SERATIO-CKPT-1\n") + 3),
    "one byte appended": lambda blob: blob + b"\0",
    "no seratio header (plain torch.save file)": _plain_torch_file,
}


def _damage(path: Path, how: str) -> None:
    path.write_bytes(DAMAGE[how](path.read_bytes()))


@pytest.fixture
def torch_loads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts torch.load calls: a damaged file must be refused before torch ever unpickles it."""
    calls: list[int] = []
    real = torch.load

    def counting(*args: object, **kwargs: object) -> object:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", counting)
    return calls


def _two_checkpoints(run: Path) -> None:
    for epoch in (1, 2):
        rundir.save_checkpoint(run, {"epoch": epoch, "weights": torch.arange(2000, dtype=torch.float32) * epoch})


@pytest.mark.parametrize("how", DAMAGE)
def test_damaged_newest_checkpoint_is_detected_and_the_previous_one_loaded(
    tmp_path: Path, how: str, torch_loads: list[int], tally: Record
) -> None:
    _two_checkpoints(tmp_path)
    _damage(tmp_path / rundir.CHECKPOINT, how)
    checkpoint, notes = rundir.load_checkpoint(tmp_path)
    good = checkpoint is not None and checkpoint["epoch"] == 1 and len(torch_loads) == 1
    tally(f"checkpoint damaged on disk ({len(DAMAGE)} kinds): previous loaded, damaged never", 1, int(good), int(not good))
    assert checkpoint is not None and checkpoint["epoch"] == 1
    assert torch.equal(checkpoint["weights"], torch.arange(2000, dtype=torch.float32))
    assert len(notes) == 1 and str(tmp_path / rundir.CHECKPOINT) in notes[0]
    assert "SHA-256" in notes[0] or "header" in notes[0]
    assert len(torch_loads) == 1  # only the good file was unpickled


@pytest.mark.parametrize("how", DAMAGE)
def test_both_checkpoints_damaged_loads_nothing(tmp_path: Path, how: str, torch_loads: list[int], tally: Record) -> None:
    _two_checkpoints(tmp_path)
    _damage(tmp_path / rundir.CHECKPOINT, how)
    _damage(tmp_path / rundir.PREVIOUS_CHECKPOINT, "payload byte flipped, header intact")
    checkpoint, notes = rundir.load_checkpoint(tmp_path)
    good = checkpoint is None and torch_loads == []
    tally(f"both checkpoints damaged ({len(DAMAGE)} kinds): nothing loaded", 1, int(good), int(not good))
    assert checkpoint is None and len(notes) == 2
    assert torch_loads == []


def _interrupted_copy(reference: Path, run: Path) -> None:
    """The reference run as a kill after its last checkpoint would leave it: no result files yet."""
    run.mkdir()
    for name in (rundir.CONFIG, rundir.METRICS, rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
        shutil.copy2(reference / name, run / name)


def test_resume_with_newest_checkpoint_truncated_to_nothing_falls_back_to_previous(
    reference_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: Record
) -> None:
    run = tmp_path / "run"
    _interrupted_copy(reference_run, run)
    _damage(run / rundir.CHECKPOINT, "truncated to 0 bytes")
    code = main_in_process(train_argv(cifar_dir, run, "--resume"))
    err = capsys.readouterr().err
    identical = code == 0 and run_outcome(run) == run_outcome(reference_run)
    tally("checkpoint.pt truncated to 0 bytes (previous intact)", 1, int(identical), int(not identical))
    assert code == 0, err
    assert f"{run / rundir.CHECKPOINT} has no seratio checkpoint header" in err and "falling back" in err
    assert "after epoch 2" in err
    assert_same_run(run, reference_run)


def test_resume_with_both_checkpoints_corrupt_restarts_from_zero_and_ends_identical(
    reference_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], tally: Record
) -> None:
    run = tmp_path / "run"
    _interrupted_copy(reference_run, run)
    _damage(run / rundir.CHECKPOINT, "payload byte flipped, header intact")
    _damage(run / rundir.PREVIOUS_CHECKPOINT, "truncated to half")
    code = main_in_process(train_argv(cifar_dir, run, "--resume"))
    err = capsys.readouterr().err
    identical = code == 0 and run_outcome(run) == run_outcome(reference_run)
    tally("both checkpoints corrupt (payload flip + truncation)", 1, int(identical), int(not identical))
    assert code == 0, err
    assert err.count("fails its SHA-256 check") == 2 and "restarting the run from epoch 0" in err
    assert_same_run(run, reference_run)
