"""One writer per run directory: a second `seratio train` is refused, a study's retry waits."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

from seratio import runlock
from seratio.config import RunConfig
from seratio.train import train_run

TINY = ["--depth", "8", "--rr", "4,4,4", "--train-subset", "200", "--val-size", "100", "--batch-size", "64"]


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
    command = [sys.executable, "-m", "seratio.cli", "train", *TINY, "--epochs", "20", "--data-dir", str(cifar_dir),
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
    config = RunConfig(depth=8, rr=(4, 4, 4), train_subset=200, val_size=100, batch_size=64, epochs=1,
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
