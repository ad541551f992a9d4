"""Fast stand-ins for training, and helpers that run studies in-process or as worker processes.

The fake trainer obeys `train_run`'s contract (run directory, resume, on_epoch,
result keys) and appends one line per real training call to the run directory's
`train_calls` file, so tests can count trainings across processes.

Run as a script, it is a worker process with the fake trainer:
    python tests/study_fakes.py STORAGE NAME [SLEEP_SECONDS]
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from optuna.trial import TrialState

from seratio import strategies
from seratio.config import RunConfig, code_version
from seratio.ledger import Ledger
from seratio.store import Patience, StudyStore, open_storage
from seratio.study import StudyRequest, build_definition, create_or_join, load_definition
from seratio.worker import Worker, WorkerOptions

RR = tuple[int | None, ...]
Accuracy = Callable[[RR, int], float]

TINY = RunConfig(depth=8, recipe="paper", epochs=1, batch_size=64, train_subset=200, test_subset=500, val_size=100)
TINY_CLI = ["--depth", "8", "--recipe", "paper", "--batch-size", "64", "--train-subset", "200", "--test-subset", "500",
            "--val-size", "100", "--heartbeat-interval", "0.5", "--stale-after", "30"]
"""The same tiny runs through the CLI. The tests that use them count trainings and failure kinds,
so a heartbeat late on a loaded CI machine must not get a live trial called stale; none of them
needs a dead worker found quickly (the one that kills a worker gives its rescuer --stale-after 4)."""
TABLE3 = {
    (None, None, None): 90.97, (2, 2, 2): 90.86, (4, 4, 4): 91.12, (8, 8, 8): 91.17, (16, 16, 16): 91.06,
    (2, 8, 8): 90.78, (4, 8, 8): 90.78, (8, 2, 8): 91.31, (8, 4, 8): 91.18, (8, 16, 8): 91.02,
    (8, 2, 2): 91.39, (8, 2, 4): 90.88, (8, 2, 16): 91.53, (8, 2, 32): 91.22,
}


def smooth_accuracy(rr: RR, seed: int) -> float:
    """A made-up but structured landscape: best at (4, 2, 16); seeds add small noise."""
    target = (4, 2, 16)
    distance = sum(abs((r or 64).bit_length() - t.bit_length()) for r, t in zip(rr, target))
    return 0.9 - 0.01 * distance + 0.001 * ((seed * 7 + sum(r or 0 for r in rr)) % 3)


class FakeTrainer:
    """Deterministic accuracies from `accuracy(rr, seed)`; counts calls that train (not read-backs)."""

    def __init__(self, accuracy: Accuracy = smooth_accuracy, *, epochs: int = 1, sleep: float = 0.0) -> None:
        self.accuracy, self.epochs, self.sleep = accuracy, epochs, sleep
        self.calls: list[tuple[RR, int]] = []

    def __call__(self, config: RunConfig, out_dir: Path, *, resume: bool, log: Callable[[str], None],
                 on_epoch: Callable[[dict[str, Any]], None] | None = None, show_progress: bool = False,
                 wait_for_lock: bool = False) -> dict[str, Any]:
        out = Path(out_dir)
        if (out / "result.json").exists():
            return json.loads((out / "result.json").read_text())
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "train_calls", "a") as handle:
            handle.write(f"{os.getpid()}\n")
        self.calls.append((config.rr, config.seed))
        final = self.accuracy(config.rr, config.seed)
        for epoch in range(1, self.epochs + 1):
            time.sleep(self.sleep)
            value = final * epoch / self.epochs
            if on_epoch is not None:
                on_epoch({"epoch": epoch, "val_accuracy": value, "test_accuracy": value})
        result = _result(config, final)
        (out / "result.json").write_text(json.dumps(result))
        return result


def _result(config: RunConfig, accuracy: float) -> dict[str, Any]:
    recipe = config.resolved_recipe()
    result = {
        "test_accuracy": accuracy, "test_loss": 1 - accuracy, "val_accuracy": accuracy, "val_loss": 1 - accuracy,
        "best_test_accuracy": accuracy, "best_epoch": 1, "params": 1000, "macs": 2000, "seconds": 0.01,
        "epochs": recipe.epochs, "code_version": code_version(), "recipe_hash": recipe.fingerprint(), "precision": "fp32",
    }
    if recipe.tta != "none":  # like a real run: the views gain a little over one view
        result |= {"tta": recipe.tta, "tta_test_accuracy": accuracy + 0.01, "tta_val_accuracy": accuracy + 0.02}
    return result


def table3_accuracy(rr: RR, seed: int) -> float:
    return TABLE3[rr] / 100


def create(storage: str, name: str, strategy: str, artifacts: Path, run: RunConfig = TINY, **request: Any) -> tuple[StudyStore, dict[str, Any]]:
    definition = build_definition(StudyRequest(strategy=strategy, run=run, **request))
    store = StudyStore.create_or_join(_open(storage, create=True), name, Patience(seconds=30), lambda m: None)
    create_or_join(store, definition, artifacts)
    return store, definition


def open_store(storage: str, name: str) -> StudyStore:
    return StudyStore(_open(storage, create=False), name, Patience(seconds=30), lambda m: None)


def work(
    storage: str, name: str, trainer: FakeTrainer, *, stale_after: float = 3.0, log: Callable[[str], None] = lambda m: None,
    artifacts: Path | None = None,
) -> Worker:
    """One worker until the study is done; `artifacts` as `study worker --artifacts` gives it."""
    store = StudyStore(_open(storage, create=False), name, Patience(seconds=60), log)
    definition, stored_artifacts = load_definition(store)
    options = WorkerOptions(artifacts=artifacts or stored_artifacts, heartbeat_interval=0.2, stale_after=stale_after)
    worker = Worker(store, definition, options, trainer=trainer, log=log)
    worker.run()
    return worker


def _open(storage: str, *, create: bool) -> Any:
    return open_storage(storage, create=create, patience=Patience(seconds=30), log=lambda m: None)


def fake_workers(storage: str, name: str, count: int, sleep: float = 0.02) -> None:
    """`count` worker processes with the fake trainer, started together to maximise races."""
    processes = [
        subprocess.Popen([sys.executable, __file__, storage, name, str(sleep)], stderr=subprocess.PIPE, text=True)
        for _ in range(count)
    ]
    for p in processes:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err


def assert_trained_exactly_once(store: StudyStore, definition: dict[str, Any]) -> Ledger:
    """Every planned run completed by exactly one trial and trained by exactly one call."""
    ledger = Ledger(store.trials())
    plan = strategies.plan(definition, ledger)
    assert plan.done
    complete = Counter(v.key for v in ledger.views if v.state == TrialState.COMPLETE and v.reused_from is None)
    assert set(complete) == {u.key for u in plan.units} and set(complete.values()) == {1}
    for view in ledger.views:
        if view.state == TrialState.COMPLETE:
            calls = Path(view.attrs["run_dir"], "train_calls")
            assert not calls.exists() or len(calls.read_text().splitlines()) == 1, calls
    assert all(v.duplicate_of is not None for v in ledger.views if v.state == TrialState.FAIL)
    return ledger


if __name__ == "__main__":
    work(sys.argv[1], sys.argv[2], FakeTrainer(sleep=float(sys.argv[3]) if len(sys.argv) > 3 else 0.0),
         log=lambda message: print(message, file=sys.stderr))
