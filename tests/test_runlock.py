"""One writer per run directory: a second `seratio train` is refused, a study's retry waits."""

from __future__ import annotations

import errno
import fcntl
import json
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from seratio import runlock
from seratio.cli import main
from seratio.config import RunConfig
from seratio.train import train_run

SMALL = ["--depth", "8", "--train-subset", "200", "--test-subset", "500", "--val-size", "100", "--batch-size", "64"]
"""The runs of every test here, as `train` and `study run` both take them."""
TINY = [*SMALL, "--rr", "4,4,4"]


def _wait_for(path: Path, process: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert process.poll() is None, process.communicate()[1]
        assert time.monotonic() < deadline, f"{path} never appeared"
        time.sleep(0.1)


def test_a_second_train_into_a_directory_being_written_is_refused_and_a_kill_frees_it(
    tmp_path: Path, cifar_dir: Path
) -> None:
    out = tmp_path / "run"
    # 100 epochs of about 0.4 s: still writing when the second process has started, however slow; killed below
    command = [sys.executable, "-m", "seratio", "train", *TINY, "--epochs", "100", "--data-dir", str(cifar_dir),
               "--out", str(out), "--quiet"]
    first = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        _wait_for(out / "checkpoint.pt", first)
        second = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stderr
        message = " ".join(second.stderr.split())
        assert f"{out} is being written by another seratio process (pid {first.pid} on" in message
    finally:
        first.kill()
        first.wait()
    with runlock.hold(out, wait=False, log=print):  # the kernel dropped the dead writer's lock
        assert (out / runlock.LOCK_FILE).read_text().startswith("pid ")


def test_a_retry_that_waits_for_the_lock_resumes_after_the_writer_stops(tmp_path: Path, cifar_dir: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    config = RunConfig(depth=8, rr=(4, 4, 4), train_subset=200, test_subset=500, val_size=100, batch_size=64, epochs=1,
                       data_dir=str(cifar_dir))
    logs: list[str] = []
    results: list[dict] = []
    with runlock.hold(out, wait=False, log=print):
        waiter = threading.Thread(target=lambda: results.append(
            train_run(config, out, resume=True, log=logs.append, wait_for_lock=True)))
        waiter.start()
        time.sleep(2.0)
        assert waiter.is_alive() and not (out / "config.json").exists()
        assert any(f"to stop writing {out}" in line for line in logs), logs
    waiter.join(timeout=120)
    assert not waiter.is_alive() and results[0]["epochs"] == 1 and results[0]["test_accuracy"] > 0.1


def test_a_filesystem_that_cannot_lock_warns_and_the_study_still_trains_every_run(
    tmp_path: Path, cifar_dir: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """NFS without its lock manager answers flock with ENOLCK (some FUSE mounts with EOPNOTSUPP)."""

    def no_locks(fd: object, operation: int) -> None:
        raise OSError(errno.ENOLCK, "No locks available")

    monkeypatch.setattr(fcntl, "flock", no_locks)
    db, runs = tmp_path / "s.db", tmp_path / "runs"
    code = main(["study", "run", "constant", "--candidates", "4", "--name", "s", "--storage", f"sqlite:///{db}",
                 "--artifacts", str(runs), *SMALL, "--epochs", "1", "--data-dir", str(cifar_dir)])
    err = capsys.readouterr().err
    assert code == 0, err
    joined = "".join(err.split())  # rich folds long paths across lines
    assert f"cannotlock{db}.lock(Nolocksavailable)" in joined and "wouldnotberefused" in joined
    for name in ("rr-none-none-none_seed-0", "rr-4-4-4_seed-0"):
        assert f"cannotlock{runs / name / runlock.LOCK_FILE}(Nolocksavailable)" in joined
        result = json.loads((runs / name / "result.json").read_text())
        assert result["epochs"] == 1 and 0.0 <= result["test_accuracy"] <= 1.0
    assert joined.count("withouttheone-writerguard") == 2
