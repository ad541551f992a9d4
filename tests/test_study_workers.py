"""Several worker processes on one journal storage: exactly-once training and recovery from SIGKILL.

The fake-trainer stress test races many workers over many runs; the others train
tiny real models through the CLI, as a user would.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch
from optuna.trial import TrialState

from seratio import strategies
from seratio.cli import main
from seratio.rundir import read_metrics
from study_fakes import TINY_CLI, assert_trained_exactly_once, create, fake_workers, open_store


def seratio(*args: str) -> list[str]:
    return [sys.executable, "-m", "seratio", *args]


def test_four_racing_fake_workers_train_each_run_exactly_once(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(storage, "race", "greedy", tmp_path / "runs", seeds=2)
    fake_workers(storage, "race", 4)
    ledger = assert_trained_exactly_once(store, definition)
    assert strategies.plan(definition, ledger).best == (4, 2, 16)


def _training_lines(stderr: str) -> Counter[str]:
    return Counter(re.findall(r"training in (\S+)", stderr))


def test_greedy_with_two_local_workers_trains_each_run_once_and_a_rerun_trains_nothing(
    tmp_path: Path, cifar_dir: Path
) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    command = seratio("study", "run", "greedy", "--name", "g", "--storage", storage, "--candidates", "2,4",
                      "--baseline", "2,2,2", "--epochs", "1", "--workers", "2", "--artifacts", str(tmp_path / "runs"),
                      "--data-dir", str(cifar_dir), *TINY_CLI)
    first = subprocess.run(command, capture_output=True, text=True, timeout=400)
    assert first.returncode == 0, first.stderr
    trained = _training_lines(first.stderr)
    assert len(trained) == 5 and set(trained.values()) == {1}, first.stderr  # (2,2,2) (4,4,4) + one per stage
    assert len(set(re.findall(r"^\[(\d+)\] worker done", first.stderr, re.M))) == 2
    results = [json.loads(Path(d, "result.json").read_text()) for d in trained]
    assert all(r["epochs"] == 1 for r in results)
    again = subprocess.run(command, capture_output=True, text=True, timeout=200)
    assert again.returncode == 0, again.stderr
    assert _training_lines(again.stderr) == Counter() and "done" in again.stdout


def _wait_for_epoch(run_dir: Path, epochs: int, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        metrics = run_dir / "metrics.jsonl"
        if (run_dir / "checkpoint.pt").exists() and metrics.exists() and len(read_metrics(metrics)) >= epochs:
            return
        assert process.poll() is None, process.communicate()[1]
        time.sleep(0.1)
    raise AssertionError(f"{run_dir} never reached epoch {epochs}")


def test_a_sigkilled_worker_trial_is_finished_by_another_worker_from_its_checkpoint(
    tmp_path: Path, cifar_dir: Path
) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    runs = tmp_path / "runs"
    victim = subprocess.Popen(
        seratio("study", "run", "constant", "--name", "k", "--storage", storage, "--candidates", "4",
                "--baseline", "4,4,4", "--epochs", "2", "--artifacts", str(runs), "--data-dir", str(cifar_dir),
                *TINY_CLI),
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )
    run_dir = runs / "rr-4-4-4_seed-0"
    _wait_for_epoch(run_dir, 1, victim)
    os.kill(victim.pid, signal.SIGKILL)
    victim.wait()
    first_epoch = read_metrics(run_dir / "metrics.jsonl")[0]

    rescuer = subprocess.run(
        seratio("study", "worker", "--name", "k", "--storage", storage, "--data-dir", str(cifar_dir),
                "--heartbeat-interval", "0.5", "--stale-after", "4"),
        capture_output=True, text=True, timeout=400,
    )
    assert rescuer.returncode == 0, rescuer.stderr
    assert re.search(r"resuming \S+rr-4-4-4_seed-0 after epoch 1", rescuer.stderr), rescuer.stderr
    metrics = read_metrics(run_dir / "metrics.jsonl")
    assert [row["epoch"] for row in metrics] == [1, 2]
    assert metrics[0] == first_epoch  # epoch 1 came from the checkpoint, not from training again
    assert json.loads((run_dir / "result.json").read_text())["epochs"] == 2
    states = [(t.state, t.user_attrs.get("fail_kind")) for t in open_store(storage, "k").trials()]
    assert states == [(TrialState.FAIL, "stale"), (TrialState.COMPLETE, None)]


def _results(runs: Path) -> dict[str, dict[str, object]]:
    keep = ("test_accuracy", "test_loss", "train_loss", "confusion_matrix")
    return {d.name: {k: json.loads((d / "result.json").read_text())[k] for k in keep} for d in sorted(runs.iterdir())}


def _worker_pids(stderr: str) -> set[str]:
    return set(re.findall(r"^\[(\d+)\] worker done", stderr, re.MULTILINE))


def test_trials_per_device_train_side_by_side_and_equal_sequential_runs(tmp_path: Path, cifar_dir: Path) -> None:
    """K trials at once on one device, through `study run` and `study worker`, give what one worker gives alone."""
    study = ["constant", "--candidates", "2,4", "--baseline", "2,2,2", "--epochs", "1", "--data-dir", str(cifar_dir), *TINY_CLI]
    one_thread = {**os.environ, "OMP_NUM_THREADS": "1"}  # what each of 2 concurrent trials gets on this 2-core CI box
    sequential = subprocess.run(
        seratio("study", "run", *study, "--name", "s", "--storage", f"sqlite:///{tmp_path / 's.db'}",
                "--artifacts", str(tmp_path / "seq")),
        capture_output=True, text=True, timeout=400, env=one_thread,
    )
    assert sequential.returncode == 0, sequential.stderr
    assert len(_worker_pids(sequential.stderr)) == 1
    expected = _results(tmp_path / "seq")
    assert sorted(expected) == ["rr-2-2-2_seed-0", "rr-4-4-4_seed-0"]

    side_by_side = subprocess.run(
        seratio("study", "run", *study, "--name", "c", "--storage", f"journal:{tmp_path / 'c.log'}",
                "--artifacts", str(tmp_path / "con"), "--trials-per-device", "2", "--device", "cpu"),
        capture_output=True, text=True, timeout=400,
    )
    assert side_by_side.returncode == 0, side_by_side.stderr
    assert len(_worker_pids(side_by_side.stderr)) == 2
    assert _results(tmp_path / "con") == expected

    storage = f"journal:{tmp_path / 'w.log'}"
    create(storage, "w", "constant", tmp_path / "wrk", candidates=(2, 4), baseline=(2, 2, 2))
    joined = subprocess.run(
        seratio("study", "worker", "--name", "w", "--storage", storage, "--trials-per-device", "2",
                "--data-dir", str(cifar_dir)),
        capture_output=True, text=True, timeout=400,
    )
    assert joined.returncode == 0, joined.stderr
    assert len(_worker_pids(joined.stderr)) == 2
    assert _results(tmp_path / "wrk") == expected


def test_more_than_one_trial_per_device_on_sqlite_is_refused_before_the_store_is_touched(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    done = subprocess.run(
        seratio("study", "run", "constant", "--name", "s", "--storage", f"sqlite:///{db}", "--trials-per-device", "2"),
        capture_output=True, text=True, timeout=60,
    )
    assert done.returncode == 2 and "--trials-per-device 2 asks for 2 parallel workers" in done.stderr
    assert "journal:" in done.stderr and not db.exists()


def test_a_tpe_draw_of_a_configuration_in_training_waits_and_reuses_its_result(tmp_path: Path) -> None:
    """With one candidate every draw is (2, 2, 2); a draw made while another worker trains it used
    to be dropped as a duplicate, spending the draw without a result."""
    storage = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(storage, "t", "tpe", tmp_path / "runs", candidates=(2,), n_trials=3)
    fake_workers(storage, "t", 2, sleep=3.0)  # the first draw trains long enough for the other worker to draw
    ledger = assert_trained_exactly_once(store, definition)
    draws = [v for v in ledger.views if v.slot is not None and v.duplicate_of is None]
    assert sorted(v.slot for v in draws) == [0, 1, 2]
    assert all(v.state == TrialState.COMPLETE and v.rr == (2, 2, 2) for v in draws)
    assert sum(v.reused_from is not None for v in draws) == 2  # trained once, reused twice


def test_trials_per_device_spreads_workers_over_every_gpu_in_study_run_and_study_worker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """On a machine with two GPUs, `--device auto --trials-per-device 2` means two trials on each, in
    both commands; `study worker` used to put all of them on the first GPU."""
    from seratio.commands import study_actions as study_command

    spawned: list[list[str]] = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(study_command, "_spawn_workers", lambda args, artifacts, devices, threads: spawned.append(devices))
    storage = f"journal:{tmp_path / 's.log'}"
    assert main(["study", "run", "constant", "--name", "s", "--storage", storage, "--artifacts", str(tmp_path / "runs"),
                 "--candidates", "2", "--device", "auto", "--trials-per-device", "2"]) == 0
    assert main(["study", "worker", "--name", "s", "--storage", storage, "--trials-per-device", "2"]) == 0
    assert spawned == [["cuda:0", "cuda:1", "cuda:0", "cuda:1"]] * 2


def test_trials_per_device_on_a_gpu_without_an_mps_daemon_warn_that_the_trials_take_turns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Without MPS, K processes on one GPU trained no faster than one (0.93x on an H100); under it,
    2.1-2.5x on an H200. The warning follows CUDA_MPS_PIPE_DIRECTORY, where CUDA looks for the daemon."""
    from seratio.commands import study_actions as study_command

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(study_command, "_spawn_workers", lambda args, artifacts, devices, threads: None)
    pipe = tmp_path / "mps-pipe"
    pipe.mkdir()
    monkeypatch.setenv("CUDA_MPS_PIPE_DIRECTORY", str(pipe))
    storage = f"journal:{tmp_path / 's.log'}"
    run = ["study", "run", "constant", "--name", "s", "--storage", storage, "--artifacts", str(tmp_path / "runs"),
           "--candidates", "2", "--trials-per-device", "4"]
    assert main([*run, "--device", "cuda"]) == 0
    assert f"4 trials per GPU, but no NVIDIA MPS daemon listens at {pipe / 'control'}" in capsys.readouterr().err
    (pipe / "control").touch()  # where the daemon's control socket would be
    assert main([*run, "--device", "cuda"]) == 0
    assert main(["study", "worker", "--name", "s", "--storage", storage, "--trials-per-device", "4"]) == 0
    assert "MPS" not in capsys.readouterr().err
    (pipe / "control").unlink()
    assert main([*run, "--device", "cpu"]) == 0
    assert "MPS" not in capsys.readouterr().err


def test_a_rerun_on_a_locked_sqlite_store_retries_a_dead_trial_at_once(tmp_path: Path, cifar_dir: Path) -> None:
    """A trial left running by a killed `study run` on SQLite cannot belong to a live worker, since the
    rerun holds the store's lock: it is retried at once instead of after --stale-after (here an hour)."""
    storage = f"sqlite:///{tmp_path / 's.db'}"
    store, _ = create(storage, "s", "constant", tmp_path / "runs", candidates=(2,), baseline=(2, 2, 2))
    run_dir = (tmp_path / "runs" / "rr-2-2-2_seed-0").resolve()
    store.enqueue({"r1": 2, "r2": 2, "r3": 2}, {"rr": [2, 2, 2], "seed": 0, "phase": "constant", "run_dir": str(run_dir)})
    assert store.claim(store.trials()[0]._trial_id)  # the worker that claimed it was killed
    rerun = subprocess.run(
        seratio("study", "worker", "--name", "s", "--storage", storage, "--stale-after", "3600",
                "--data-dir", str(cifar_dir)),
        capture_output=True, text=True, timeout=120,
    )
    assert rerun.returncode == 0, rerun.stderr
    dead, retry = sorted(store.trials(), key=lambda t: t.number)
    assert dead.state == TrialState.FAIL and "left running by a worker that is gone" in dead.user_attrs["fail_reason"]
    assert retry.state == TrialState.COMPLETE and retry.user_attrs["run_dir"] == str(run_dir)
    assert 0.1 < retry.value <= 1.0
