"""Ctrl-C and SIGTERM at the awkward instants: while seratio loads, during the interpreter's exit,
while workers are being spawned, right after a worker claims a trial, and to one worker of several.

Each instant is made deterministic: the process signals itself at that point (an import hook, an
exit hook), or the test holds the window open. A traceback on stderr, a trial left RUNNING, or a
worker that cannot be stopped fails the test.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from seratio import rundir
from seratio.cli import main
from seratio.interrupts import stop_signals_held
from seratio.overview import progress
from seratio.store import StudyStore
from study_fakes import TINY_CLI, FakeTrainer, create, open_store, work
from tiny_run import train_args

QUIET_ENV = {**os.environ, "SERATIO_NO_TCMALLOC": "1"}  # no re-exec: the hooks below live in this process

INTERRUPT_WHILE_LOADING = """
import os, signal, sys
class Interrupt:
    def find_spec(self, name, path=None, target=None):
        if name == "seratio.errors":  # imported by seratio.cli, halfway through loading the command
            os.kill(os.getpid(), signal.SIGINT)
        return None
sys.meta_path.insert(0, Interrupt())
sys.argv = ["seratio", "info", "--rr", "4"]
from seratio.__main__ import run
sys.exit(run())
"""

SECOND_SIGNAL_AT_EXIT = """
import atexit, os, signal, sys, time
def second_signal():
    os.kill(os.getpid(), signal.SIG)
    time.sleep(0.2)
atexit.register(second_signal)
import seratio.cli
def interrupted(only=None):
    raise KeyboardInterrupt
seratio.cli.build_parser = interrupted
sys.argv = ["seratio", "info"]
from seratio.__main__ import run
sys.exit(run())
"""

SIGNAL_IN_A_WEAKREF_CALLBACK = """
import os, signal, sys, time, weakref
import seratio.cli
class Finalized:
    pass
def stop_inside_callback(ref):
    os.kill(os.getpid(), signal.SIG)
    for _ in range(100_000):  # the handler runs here, where Python discards what it raises
        pass
def long_command(only=None):
    finalized = Finalized()
    ref = weakref.ref(finalized, stop_inside_callback)
    del finalized
    time.sleep(20)
    raise SystemExit(0)
seratio.cli.build_parser = long_command
sys.argv = ["seratio", "info"]
from seratio.__main__ import run
sys.exit(run())
"""


def _python(script: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, env=QUIET_ENV)


def test_ctrl_c_while_seratio_loads_is_one_line_not_a_traceback() -> None:
    done = _python(INTERRUPT_WHILE_LOADING)
    assert (done.returncode, done.stderr) == (130, "seratio: interrupted\n")


@pytest.mark.parametrize("second", ["SIGINT", "SIGTERM"])
def test_a_second_signal_during_exit_after_an_interrupt_prints_nothing_more(second: str) -> None:
    done = _python(SECOND_SIGNAL_AT_EXIT.replace("signal.SIG)", f"signal.{second})"))
    assert (done.returncode, done.stderr) == (130, "seratio: interrupted\n")


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_a_stop_that_python_discards_in_a_weakref_callback_is_sent_again(stop: str) -> None:
    """importlib's module locks have weakref callbacks, so a Ctrl-C early in `study run` could land
    in one; the command then went on for the whole study (20 s here) and ended with exit code 0."""
    started = time.monotonic()
    done = _python(SIGNAL_IN_A_WEAKREF_CALLBACK.replace("signal.SIG)", f"signal.{stop})"))
    assert (done.returncode, done.stderr) == (130, "seratio: interrupted\n")
    assert time.monotonic() - started < 15


def test_a_signal_held_while_workers_spawn_arrives_once_the_spawning_is_done() -> None:
    """Python's own Ctrl-C handler for the test, as the `seratio` command installs one: a shell
    starts a background job (`make test &`) with SIGINT ignored, and Python keeps that."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        _held_interrupt_arrives_after_the_block()
    finally:
        signal.signal(signal.SIGINT, previous)


def _held_interrupt_arrives_after_the_block() -> None:
    reached = False
    with pytest.raises(KeyboardInterrupt):
        with stop_signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.05)  # a KeyboardInterrupt would land here, between two spawns
            reached = True
    assert reached


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_a_command_spawned_while_signals_are_held_can_still_be_stopped(
    cifar_dir: Path, tmp_path: Path, stop: signal.Signals
) -> None:
    """Holding the signals must not pass on to the workers spawned meanwhile, or Ctrl-C would never
    reach them; and `train` stops on SIGTERM exactly as on Ctrl-C (it used to die silently with 143)."""
    out = tmp_path / "run"
    with stop_signals_held():
        child = subprocess.Popen([sys.executable, "-m", "seratio", *train_args(cifar_dir, out, "--epochs", "50")],
                                 stderr=subprocess.PIPE, text=True, env=QUIET_ENV)
    deadline = time.monotonic() + 120
    while not (out / "metrics.jsonl").exists():  # training, past every import
        assert child.poll() is None and time.monotonic() < deadline, child.communicate()[1]
        time.sleep(0.05)
    child.send_signal(stop)
    _, err = child.communicate(timeout=60)
    hint = f"to continue: seratio train --resume --out {out} --data-dir {cifar_dir}\n"  # the data folder is this machine's
    assert (child.returncode, err) == (130, hint + "seratio: interrupted\n")
    assert not list(out.glob(".*.tmp"))  # stopped between writes, resumable


def test_an_interrupt_right_after_a_claim_fails_the_trial_instead_of_leaving_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Otherwise the trial stays RUNNING without a heartbeat, and the next worker waits out --stale-after."""
    storage = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(storage, "c", "constant", tmp_path / "runs", candidates=(4,))
    read_back = StudyStore.trial

    def interrupted_once(self: StudyStore, trial_id: int) -> Any:
        monkeypatch.setattr(StudyStore, "trial", read_back)
        raise KeyboardInterrupt

    monkeypatch.setattr(StudyStore, "trial", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        work(storage, "c", FakeTrainer(), stale_after=600)
    states = [(t.state, t.user_attrs.get("fail_kind")) for t in open_store(storage, "c").trials()]
    assert (TrialState.FAIL, "interrupted") in states and TrialState.RUNNING not in {s for s, _ in states}
    started = time.monotonic()
    work(storage, "c", FakeTrainer(), stale_after=600)  # nothing to wait for: the rerun finishes at once
    assert time.monotonic() - started < 30
    counts = progress(definition, store.trials()).counts  # the interruption is history, not a failure
    assert (counts["done"], counts["failed"], counts["retried"], counts["running"]) == (2, 0, 1, 0)


def test_an_interrupt_while_the_claim_is_recorded_fails_the_trial_instead_of_leaving_it_running(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The storage has recorded the claim but not yet answered when Ctrl-C lands: the worker does
    not know that the trial is its own, yet no one else can take it for --stale-after."""
    storage = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(storage, "c", "constant", tmp_path / "runs", candidates=(4,))
    real_claim = StudyStore.claim

    def interrupted_once(self: StudyStore, trial_id: int) -> bool:
        monkeypatch.setattr(StudyStore, "claim", real_claim)
        real_claim(self, trial_id)
        raise KeyboardInterrupt

    monkeypatch.setattr(StudyStore, "claim", interrupted_once)
    with pytest.raises(KeyboardInterrupt):
        work(storage, "c", FakeTrainer(), stale_after=600)
    states = [(t.state, t.user_attrs.get("fail_kind")) for t in open_store(storage, "c").trials()]
    assert states == [(TrialState.FAIL, "interrupted"), (TrialState.WAITING, None)]
    started = time.monotonic()
    work(storage, "c", FakeTrainer(), stale_after=600)
    assert time.monotonic() - started < 30
    counts = progress(definition, store.trials()).counts
    assert (counts["done"], counts["failed"], counts["retried"], counts["running"]) == (2, 0, 1, 0)


def test_one_worker_interrupted_on_its_own_is_not_a_failed_study(cifar_dir: Path, tmp_path: Path) -> None:
    """The other worker takes its trial over and finishes; `study run` says so and exits 0."""
    storage, log = f"journal:{tmp_path / 'study.log'}", tmp_path / "stderr.txt"
    command = [sys.executable, "-m", "seratio", "study", "run", "constant", "--name", "w", "--storage", storage,
               "--candidates", "2,4,8", "--epochs", "2", "--workers", "2", "--artifacts", str(tmp_path / "runs"),
               "--data-dir", str(cifar_dir), *TINY_CLI]
    with open(log, "w") as stderr:
        parent = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=stderr, text=True)
        victim = _a_training_worker(parent, log)
        os.kill(victim, signal.SIGINT)
        assert parent.wait(timeout=400) == 0, log.read_text()
    text = log.read_text()
    assert "warning: 1 of 2 workers were interrupted; the others finished the study" in text
    assert "Traceback" not in text
    trials = open_store(storage, "w").trials()
    assert {tuple(t.user_attrs["rr"]) for t in trials if t.state == TrialState.COMPLETE} == {
        (2, 2, 2), (4, 4, 4), (8, 8, 8), (None, None, None)}
    failed = [t for t in trials if t.state == TrialState.FAIL and "duplicate_of" not in t.user_attrs]  # not races
    assert [t.user_attrs.get("fail_kind") for t in failed] == ["interrupted"]


def _a_training_worker(parent: subprocess.Popen[str], log: Path) -> int:
    """The pid of the worker child that most recently started a trial it has not finished, once the
    first trial of the study is done. The latest "training in" line alone may belong to a worker
    that has finished since, and an interrupt between two trials leaves no trial interrupted."""
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        text = log.read_text()
        busy: dict[int, bool] = {}  # pid -> its latest trial line starts a trial; the latest pid last
        for pid, event in re.findall(r"^\[(\d+)\] trial #\d+ [^:]*: (training in|done, )", text, re.M):
            busy.pop(int(pid), None)
            busy[int(pid)] = event == "training in"
        training = [pid for pid, started in busy.items() if started]
        if ": done, val accuracy" in text and len(set(busy) - {parent.pid}) == 2 and training:
            return training[-1]
        assert parent.poll() is None, text
        time.sleep(0.05)
    raise AssertionError(f"no worker trained: {log.read_text()}")


@pytest.mark.parametrize("command", [["study", "status", "--name", "s"], ["report", "--name", "s", "--out", "{tmp}/r"]])
def test_sigterm_while_a_command_waits_for_its_storage_is_one_line(tmp_path: Path, command: list[str]) -> None:
    """SIGTERM is Ctrl-C for every command from the start, not only once a command has begun its
    work: a status or report retrying an unreachable database used to die silently with 143."""
    argv = [part.replace("{tmp}", str(tmp_path)) for part in command]
    child = subprocess.Popen(
        [sys.executable, "-m", "seratio", *argv, "--storage", "postgresql://nobody@127.0.0.1:1/none",
         "--db-patience", "120"], stderr=subprocess.PIPE, text=True, env=QUIET_ENV)
    time.sleep(3)  # imported, and retrying the connection
    assert child.poll() is None
    child.send_signal(signal.SIGTERM)
    _, err = child.communicate(timeout=60)
    assert child.returncode == 130 and err.endswith("seratio: interrupted\n") and "Traceback" not in err, err


def test_a_sigterm_while_an_epoch_is_saved_keeps_that_epoch(
    cifar_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The signal waits until the metrics and the checkpoint are written: it used to abort the write,
    and the resumed run trained the finished epoch again."""
    save = rundir.save_checkpoint

    def signalled_mid_save(run_dir: Path, state: dict) -> None:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.05)  # an unheld KeyboardInterrupt lands here, before the checkpoint is written
        save(run_dir, state)

    monkeypatch.setattr(rundir, "save_checkpoint", signalled_mid_save)
    out = tmp_path / "run"
    small = ["--train-subset", "200", "--test-subset", "200", "--val-size", "100"]
    assert main(train_args(cifar_dir, out, *small)) == 130
    state, _ = rundir.load_checkpoint(out)
    assert state is not None and state["epoch"] == 1
    assert len((out / "metrics.jsonl").read_text().splitlines()) == 1
