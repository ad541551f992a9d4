"""SIGKILL a training process again and again, at random and at the worst instants of its writes.

Each kill is followed by `seratio train --resume`. The promise: every resume succeeds, no kill
costs more than the epoch in flight, and the run ends bit-identical (every metric, the result and
every test prediction) to the uninterrupted reference run on CPU.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from faultkit import (
    Record, assert_no_traceback, assert_same_run, one_thread_env, run_outcome, run_seratio, seratio_command,
    temp_files, train_argv,
)
from seratio import rundir

pytestmark = pytest.mark.faults
SEED = 20261126
"""Fixes the random kill points, so a failure can be replayed."""


@dataclass(frozen=True)
class Kill:
    """One way to kill: a launcher kill point (an exact instant of a write), or an outside observer."""

    what: str
    kill_at: str = "-"
    into_next_epoch: float | None = None  # random kill: this fraction into the epoch after the first one it ends
    watch_checkpoint: bool = False


@dataclass(frozen=True)
class Landed:
    kill: Kill
    landed: bool  # the process died of SIGKILL (not: it finished before the kill came)
    epochs_written: int  # metrics.jsonl rows when it died: epochs it had finished
    resumable_epoch: int  # epoch of the newest checkpoint that verifies: where the next resume starts

    @property
    def lost(self) -> int:
        """Finished epochs a resume cannot recover, beyond the one whose checkpoint was being written."""
        return max(0, self.epochs_written - 1 - self.resumable_epoch)


def _schedule(rng: random.Random) -> list[Kill]:
    """Kills in an order that reaches every exact point, whatever the random ones hit.

    Random kills come where at least two epochs remain, so they can never let the run finish
    early, and their instant is a fraction of the process's own epoch time, so they land mid-run
    on a fast machine and a slow one alike.
    """
    return [
        Kill("first write of the run dir (config.json temp file, not yet renamed)", "config.json:fsync:1"),
        Kill("random point in an epoch", into_next_epoch=rng.uniform(0.05, 0.95)),
        Kill("checkpoint.pt rotated to checkpoint.prev.pt, new one not yet written", "checkpoint.pt:rotate:1"),
        Kill("checkpoint.pt temp file half written", "checkpoint.pt:partial:1"),
        Kill("random point in an epoch", into_next_epoch=rng.uniform(0.05, 0.95)),
        Kill("watcher: checkpoint temp file appears or metrics just rewritten", watch_checkpoint=True),
        Kill("result.json temp file written, not renamed (predictions already saved)", "result.json:fsync:1"),
    ]


def _wait_for_epoch_end(process: subprocess.Popen[bytes], run: Path, timeout: float = 300) -> bool:
    """Until this process ends an epoch (metrics.jsonl is rewritten just before the checkpoint) or a
    checkpoint temp file shows; False if the process exited first."""
    metrics = run / rundir.METRICS
    before = metrics.stat().st_mtime_ns if metrics.exists() else None
    leftovers = set(run.glob(".checkpoint.pt.*.tmp"))  # from earlier kills; only a new one counts
    deadline = time.monotonic() + timeout
    while process.poll() is None and time.monotonic() < deadline:
        if (metrics.exists() and metrics.stat().st_mtime_ns != before) or set(run.glob(".checkpoint.pt.*.tmp")) - leftovers:
            return True
        time.sleep(0.0005)
    return False


def _kill_once(kill: Kill, args: list[str], run: Path) -> Landed:
    process = subprocess.Popen(
        seratio_command(*args, kill_at=kill.kill_at),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=one_thread_env(),
    )
    try:
        if (kill.watch_checkpoint or kill.into_next_epoch is not None) and _wait_for_epoch_end(process, run):
            if kill.into_next_epoch is not None:
                seconds = rundir.read_metrics(run / rundir.METRICS)[-1]["seconds"]
                time.sleep(kill.into_next_epoch * seconds)
            os.kill(process.pid, signal.SIGKILL)
        _, stderr = process.communicate(timeout=300)
    finally:
        if process.poll() is None:
            process.kill()
    assert_no_traceback(stderr.decode())
    landed = process.returncode == -signal.SIGKILL
    assert landed or process.returncode == 0, stderr.decode()
    rows = rundir.read_metrics(run / rundir.METRICS) if (run / rundir.METRICS).exists() else []
    checkpoint, _ = rundir.load_checkpoint(run) if run.is_dir() else (None, [])
    return Landed(kill, landed, len(rows), 0 if checkpoint is None else checkpoint["epoch"])


def test_repeated_sigkill_including_mid_checkpoint_write_resumes_bit_identical(
    reference_run: Path, cifar_dir: Path, tmp_path: Path, tally: Record
) -> None:
    run = tmp_path / "run"
    outcomes: list[Landed] = []
    for index, kill in enumerate(_schedule(random.Random(SEED))):
        args = train_argv(cifar_dir, run, *(["--resume"] if index else []))
        outcomes.append(_kill_once(kill, args, run))
        if (run / rundir.RESULT).exists():
            break
    final = run_seratio(train_argv(cifar_dir, run, "--resume"))
    assert final.returncode == 0, final.stderr
    assert_no_traceback(final.stderr)

    report = "\n".join(f"{o.kill.what}: landed={o.landed} epochs={o.epochs_written} resume@{o.resumable_epoch}"
                       for o in outcomes)
    landed = [o for o in outcomes if o.landed]
    identical = run_outcome(run) == run_outcome(reference_run)
    tally("SIGKILL of `seratio train`: exact write instants, random points, watcher", len(landed),
          sum(o.lost == 0 for o in landed) if identical else 0, sum(o.lost for o in landed) + (not identical))
    assert len(landed) == len(outcomes) == 7, report  # every kill landed, none came after the run was done
    assert all(o.lost == 0 for o in outcomes), report
    assert_same_run(run, reference_run)
    assert temp_files(run) == [], "a finished run dir keeps no leftovers of interrupted writes"
