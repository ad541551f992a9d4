"""Studies under concurrency and a lost database: every run trained once, every result kept once.

All studies here have one definition: the constant strategy over {4} plus the plain ResNet
baseline, two seeds, one epoch each, so four real (tiny) runs. Runs are deterministic on CPU
(one thread everywhere), so a study's final state must equal the sequential study's: the same
(configuration, seed) pairs with bit-identical metrics, however many workers raced or however
long the database was away.
"""

from __future__ import annotations

import multiprocessing
import re
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from optuna.trial import TrialState

from faultkit import TINY, Record, assert_no_traceback, main_in_process, one_thread_env, seratio_command
from pgserver import Postgres, PostgresUnavailable
from seratio.ledger import Ledger, RunKey
from seratio.store import Patience, StudyStore, open_storage

pytestmark = pytest.mark.faults
RUNS = 4
DEFINITION = ["constant", "--candidates", "4", "--baseline", "none", "--seeds", "2", "--epochs", "1", *TINY]
PATIENT = ["--heartbeat-interval", "0.5", "--stale-after", "30", "--db-patience", "120"]
METRICS = ("test_accuracy", "test_loss", "val_accuracy", "val_loss", "params")
Outcome = dict[RunKey, tuple[object, ...]]


@pytest.fixture(scope="module")
def postgres() -> Iterator[Postgres]:
    try:
        server = Postgres()
    except PostgresUnavailable as error:
        pytest.fail(str(error))
    yield server
    server.remove()


class Workers:
    """`study run` processes of one study, started together; their stderr goes to files (no pipe stalls)."""

    def __init__(
        self, storage: str, name: str, artifacts: Path, logs: Path, count: int, cifar_dir: Path,
        definition: list[str] = DEFINITION,
    ) -> None:
        logs.mkdir(exist_ok=True)
        self.logs = [logs / f"worker{i}.log" for i in range(count)]
        command = seratio_command("study", "run", *definition, "--name", name, "--storage", storage,
                                  "--artifacts", str(artifacts), "--data-dir", str(cifar_dir), *PATIENT)
        self.processes = [
            subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=log.open("w"), env=one_thread_env())
            for log in self.logs
        ]

    def stderr(self) -> str:
        return "".join(log.read_text() for log in self.logs)

    def wait(self, timeout: float = 400) -> str:
        deadline = time.monotonic() + timeout
        for process in self.processes:
            process.wait(max(1.0, deadline - time.monotonic()))
        err = self.stderr()
        assert [p.returncode for p in self.processes] == [0] * len(self.processes), err
        assert_no_traceback(err)
        return err

    def wait_for(self, pattern: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while not re.search(pattern, self.stderr()):
            assert time.monotonic() < deadline, f"never saw {pattern!r}:\n{self.stderr()}"
            assert all(p.poll() is None for p in self.processes), self.stderr()
            time.sleep(0.05)


def trainings(stderr: str) -> Counter[str]:
    """How many times each run directory started training, across all workers' logs."""
    return Counter(re.findall(r"training in (\S+)", stderr))


def outcome(storage: str, name: str) -> Outcome:
    """(ratios, seed) -> metrics of the completed trial; fails if any run completed twice or a non-duplicate failed."""
    store = StudyStore(open_storage(storage, create=False, patience=Patience(30), log=print), name, Patience(30), print)
    ledger = Ledger(store.trials())
    complete = [v for v in ledger.views if v.state == TrialState.COMPLETE and v.reused_from is None]
    counted = Counter(v.key for v in complete)
    assert set(counted.values()) == {1}, f"runs completed more than once: {counted}"
    assert all(v.duplicate_of is not None for v in ledger.views if v.state != TrialState.COMPLETE), ledger.views
    return {v.key: tuple(v.attrs[k] for k in METRICS) for v in complete}  # type: ignore[misc]


@pytest.fixture(scope="module")
def sequential(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Outcome:
    """The study worked by one process alone: what every concurrent or disturbed study must end up as."""
    root = tmp_path_factory.mktemp("sequential")
    storage = f"journal:{root / 'study.log'}"
    workers = Workers(storage, "seq", root / "runs", root / "logs", 1, cifar_dir)
    trained = trainings(workers.wait())
    assert len(trained) == RUNS and set(trained.values()) == {1}
    return outcome(storage, "seq")


@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_four_worker_processes_train_every_run_exactly_once_and_end_as_the_sequential_study(
    backend: str, sequential: Outcome, cifar_dir: Path, tmp_path: Path, request: pytest.FixtureRequest,
    tally: Record,
) -> None:
    name = "four"
    if backend == "postgresql":
        storage = request.getfixturevalue("postgres").fresh_database("four")
    else:
        storage = f"journal:{tmp_path / 'study.log'}"
    workers = Workers(storage, name, tmp_path / "runs", tmp_path / "logs", 4, cifar_dir)
    err = workers.wait()
    trained = trainings(err)
    final = outcome(storage, name)
    lost = len(set(sequential) - set(final)) + sum(n - 1 for n in trained.values())
    tally(f"4 concurrent worker processes, {backend} storage (runs)", RUNS, len(final), lost)
    assert len(trained) == RUNS and set(trained.values()) == {1}, err
    assert len(set(re.findall(r"^\[(\d+)\] trial", err, re.M))) >= 2, "the runs were not shared out"
    assert final == sequential


def _connect_when_released(url: str, start: Any) -> None:
    start.wait()
    open_storage(url, create=True, patience=Patience(60), log=print)


def test_workers_connecting_together_to_a_fresh_postgres_database_all_get_in(postgres: Postgres, tally: Record) -> None:
    """The first connection creates Optuna's tables; the others lose that race and must retry, not crash.

    Released by one barrier, so the race happens every time rather than by luck of timing.
    """
    url = postgres.fresh_database("race")
    context = multiprocessing.get_context("fork")
    start = context.Barrier(6)
    processes = [context.Process(target=_connect_when_released, args=(url, start)) for _ in range(6)]
    for process in processes:
        process.start()
    for process in processes:
        process.join(120)
    connected = sum(p.exitcode == 0 for p in processes)
    tally("6 workers connecting at once to a fresh PostgreSQL database (schema race)", 6, connected, 0)
    assert connected == 6, [p.exitcode for p in processes]


OUTAGE = r"storage unreachable \((?!another worker is creating the study tables)"
"""A worker's retry because the database is gone. Two workers starting on a fresh database also
retry while one of them creates the tables; that earlier, separate wait must neither stand for the
outage nor join its backoff sequence."""


def _backoff_waits(stderr: str) -> dict[str, list[float]]:
    waits: dict[str, list[float]] = {}
    for pid, wait in re.findall(rf"^\[(\d+)\] {OUTAGE}.*; retrying in ([\d.]+)s(?: \(.*\))?$", stderr, re.M):
        waits.setdefault(pid, []).append(float(wait))
    return waits


def test_postgres_stopped_while_workers_train_then_started_loses_and_duplicates_nothing(
    postgres: Postgres, sequential: Outcome, cifar_dir: Path, tmp_path: Path, tally: Record
) -> None:
    """The database goes away mid-training and stays away until workers need it (a result to record,
    a run to claim) and have backed off twice, so results are produced while it is gone."""
    name = "outage"
    url = postgres.fresh_database(name)
    workers = Workers(url, name, tmp_path / "runs", tmp_path / "logs", 2, cifar_dir)
    workers.wait_for(r"training in")
    postgres.stop()
    try:
        workers.wait_for(OUTAGE)
        time.sleep(4)  # first waits 0.5 s, 1 s, 2 s: long enough for the backoff to show
    finally:
        postgres.start()
    err = workers.wait()
    final = outcome(url, name)
    trained = trainings(err)
    lost = len(set(sequential) - set(final)) + sum(n - 1 for n in trained.values())
    tally("PostgreSQL stopped while 2 workers train, until they back off (runs)", RUNS, len(final), lost)
    waits = _backoff_waits(err)
    assert waits and all(w == sorted(w) for w in waits.values()), err  # waits only grow
    assert max(max(w) for w in waits.values()) > min(min(w) for w in waits.values()), err  # backoff, not a fixed poll
    assert len(trained) == RUNS and set(trained.values()) == {1}, err
    assert final == sequential


def test_sqlite_with_parallel_workers_is_refused_before_the_store_is_touched(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "study.db"
    argv = ["study", "run", *DEFINITION, "--name", "s", "--storage", f"sqlite:///{db}", "--workers", "4",
            "--data-dir", str(cifar_dir)]
    assert main_in_process(argv) == 2
    err = capsys.readouterr().err
    assert "--workers 4" in err and "journal:" in err and "postgresql://" in err
    assert not db.exists()


def test_a_second_worker_on_a_busy_sqlite_store_is_refused_and_the_first_never_sees_a_lock(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A user starts a second worker by hand while one trains on SQLite (heartbeats every 0.5 s)."""
    storage = f"sqlite:///{tmp_path / 'study.db'}"
    single = ["constant", "--candidates", "4", "--baseline", "4,4,4", "--epochs", "1", *TINY]
    first = Workers(storage, "s", tmp_path / "runs", tmp_path / "logs", 1, cifar_dir, definition=single)
    first.wait_for(r"training in")
    common = ["--name", "s", "--storage", storage]
    study_run = ["study", "run", *single, *common, "--artifacts", str(tmp_path / "runs"), "--data-dir", str(cifar_dir)]
    for argv in (study_run, ["study", "worker", *common]):
        assert main_in_process(argv) == 2
        err = capsys.readouterr().err
        assert "another seratio worker is already using it" in err and "journal:" in err, err
        assert "training in" not in err
    err = first.wait()
    assert "database is locked" not in err and len(trainings(err)) == 1
