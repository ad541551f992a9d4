"""A generic study worker: plan, claim a run from the storage, train it, record it, repeat.

Any number of workers, on any machines, can share one storage. Exactly-once
training rests on three things:

1. Claiming is Optuna's WAITING -> RUNNING transition, which the storage grants
   to exactly one worker.
2. Two workers may enqueue the same run at the same moment. The trial with the
   lower number owns the run (`Ledger.owner`); the other is finished as a
   duplicate without training. Before deciding, a worker waits until every
   earlier running trial has drawn its ratios, so all workers judge the same facts.
3. A run directory is named by (ratios, seed). A retried trial resumes from its
   checkpoint, and a run that already finished is read back, not retrained.

A worker with nothing to claim waits for its peers, failing trials whose
heartbeat stopped so that their runs are retried.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from seratio import rundir, strategies, study
from seratio.architecture import format_rr
from seratio.errors import SeratioError
from seratio.heartbeat import Heartbeat, StaleWatch
from seratio.ledger import HALVING_CUT, RR, Ledger, RunKey, Status, TrialView
from seratio.store import StudyStore
from seratio.train import TrainingDiverged, train_run

Trainer = Callable[..., dict[str, Any]]
"""`train_run`'s signature: (config, out_dir, *, resume, log, on_epoch, wait_for_lock) -> result dict."""

RESULT_ATTRS = (
    "test_accuracy", "test_loss", "val_accuracy", "val_loss", "best_test_accuracy", "best_epoch",
    "params", "macs", "seconds", "epochs", "code_version", "recipe_hash", "precision", "tta_test_accuracy",
    "tta_val_accuracy",
)

RETRIED = "the run is retried, from its last checkpoint if it wrote one"
INTERRUPTED_REASON = f"worker interrupted (Ctrl-C or SIGTERM); {RETRIED}"


class TrialAbandoned(Exception):
    """Another worker failed our trial as stale; stop so its retry owns the run directory alone."""


@dataclass(frozen=True)
class WorkerOptions:
    artifacts: Path
    device: str = "auto"
    data_dir: str | None = None
    heartbeat_interval: float = 15.0
    stale_after: float = 120.0
    sole: bool = False
    """The store's only possible worker (a locked SQLite store): a trial left running is a dead one's."""

    @property
    def poll(self) -> float:
        return min(self.heartbeat_interval, 5.0)


@dataclass
class WorkSummary:
    trained: int = 0
    read_back: int = 0
    pruned: int = 0
    reused: int = 0
    duplicates: int = 0
    failed: list[str] = field(default_factory=list)


class Worker:
    def __init__(
        self,
        store: StudyStore,
        definition: dict[str, Any],
        options: WorkerOptions,
        *,
        trainer: Trainer = train_run,
        log: Callable[[str], None] = lambda message: None,
    ) -> None:
        self.store, self.definition, self.options = store, definition, options
        self.trainer, self.log = trainer, log
        self.sampler, self.pruner = study.sampler(definition), study.pruner(definition)
        self.watch = StaleWatch(options.stale_after)
        self.excluded: set[RunKey] = set()
        self.own: set[int] = set()
        self.summary = WorkSummary()

    # -- the loop ---------------------------------------------------------------------------------

    def run(self) -> WorkSummary:
        """Work until the strategy is done; raise if failed runs block it (they resume on a rerun).

        A block must show in two reads a poll apart: one read can predate what other workers
        enqueued meanwhile, so a worker starting on an empty study would see nothing to take.
        """
        blocked_before = False
        while True:
            ledger = self._ledger()
            plan = strategies.plan(self.definition, ledger)
            if self._enqueue_missing(plan, ledger):
                ledger = self._ledger()
            view = self._claim(ledger)
            blocked = view is None and not plan.done and self._blocked(ledger)
            if view is not None:
                self._process(view)
            elif plan.done:
                return self.summary
            elif blocked and blocked_before:
                raise SeratioError(self._blocked_message())
            else:
                time.sleep(self.options.poll * random.uniform(0.5, 1.5))
            blocked_before = blocked

    def _ledger(self) -> Ledger:
        """Fresh trials, after failing those whose workers stopped sending heartbeats.

        The sole worker of a store fails every trial it does not run at once: waiting `--stale-after`
        for a heartbeat that cannot come would only delay the rerun after a crash.
        """
        ledger = Ledger(self.store.trials())
        if self.options.sole:
            stale = [view for view in ledger.running() if view.trial_id not in self.own]
            why = "left running by a worker that is gone (this worker holds the store's lock)"
        else:
            stale = self.watch.stale(ledger.running(), self.own)
            why = f"no heartbeat for {self.options.stale_after:.0f}s (worker lost)"
        for view in stale:
            self._fail(view, "stale", f"{why}; {RETRIED}")
        return Ledger(self.store.trials()) if stale else ledger

    def _enqueue_missing(self, plan: strategies.Plan, ledger: Ledger) -> bool:
        """Enqueue every wanted run (and TPE slot) with no trial that counts; True if any was added.

        Each is checked against a fresh read just before it is enqueued, which narrows (but cannot
        close) the window in which two workers enqueue the same run; `Ledger.owner` settles the rest.
        """
        added = False
        for unit in plan.units:
            if ledger.status(unit.key) == Status.MISSING and unit.key not in self.excluded:
                ledger = Ledger(self.store.trials())
                if ledger.status(unit.key) == Status.MISSING:
                    self.store.enqueue(self._params(unit.rr), self._run_attrs(unit.rr, unit.seed, unit.phase))
                    added = True
        for slot in range(plan.slots):
            if not ledger.slot_used(slot):
                ledger = Ledger(self.store.trials())
                if not ledger.slot_used(slot):
                    self.store.enqueue({}, {"phase": "tpe", "slot": slot, "seed": 0})
                    added = True
        return added

    def _params(self, rr: RR) -> dict[str, int]:
        """Optuna parameters r1..r3 when the ratios lie in the search space (the baseline usually does not)."""
        choices = self.definition["stage_candidates"]
        if all(r in stage for r, stage in zip(rr, choices)):
            return {f"r{i + 1}": r for i, r in enumerate(rr)}  # type: ignore[misc]
        return {}

    def _run_attrs(self, rr: RR, seed: int, phase: str) -> dict[str, Any]:
        run_dir = self.options.artifacts / study.run_name(rr, seed)
        return {"rr": list(rr), "seed": seed, "phase": phase, "run_dir": str(run_dir.resolve())}

    def _claim(self, ledger: Ledger) -> TrialView | None:
        """Retries of failed runs first: they resume from their checkpoints, so they finish soonest.
        Queued behind fresh runs, on pre-emptible machines every run was started and none finished."""
        failed = {view.key for view in ledger.views if view.state == TrialState.FAIL}
        waiting = [view for view in ledger.views if view.state == TrialState.WAITING and view.key not in self.excluded]
        for view in sorted(waiting, key=lambda view: view.key not in failed):
            try:
                if self.store.claim(view.trial_id):
                    return TrialView.of(self.store.trial(view.trial_id))
            except KeyboardInterrupt:
                self._fail_unstamped(view)
                raise
        return None

    def _fail_unstamped(self, view: TrialView) -> None:
        """Ctrl-C between the storage recording our claim and `_process` starting the heartbeat:
        the trial would wait out --stale-after; failed, it is retried at once. The claim may have
        been recorded without the call returning, so the trial may be another worker's, claimed in
        the same instant: that one has its heartbeat within moments, and failing it would cost
        only a retry, so only a trial without one is failed."""
        current = TrialView.of(self.store.trial(view.trial_id))
        if current.state == TrialState.RUNNING and current.heartbeat is None:
            self._fail(view, "interrupted", INTERRUPTED_REASON)

    def _blocked(self, ledger: Ledger) -> bool:
        """Nobody is running anything and nothing left is ours to take: waiting would be forever."""
        takeable = [v for v in ledger.views if v.state == TrialState.WAITING and v.key not in self.excluded]
        return not ledger.running() and not takeable

    def _blocked_message(self) -> str:
        failures = "; ".join(self.summary.failed) or "runs failed in other workers (see 'seratio study status')"
        return (
            f"study {self.store.name!r} cannot finish: {failures}. Fix the cause and run the study again; "
            "failed runs resume from their checkpoints"
        )

    # -- one claimed trial ------------------------------------------------------------------------

    def _process(self, view: TrialView) -> None:
        self.own.add(view.trial_id)
        try:
            with Heartbeat(self.store, view.trial_id, self.options.heartbeat_interval, self.log) as heartbeat:
                trial = self._optuna_trial(view.trial_id)
                view = self._settle(view, trial)
                owner = self._ledger().owner(view)
                if owner is not None and owner.live and view.slot is not None and view.rr is not None:
                    owner = self._await_owner(view, owner, heartbeat)
                if heartbeat.abandoned.is_set():
                    self.log(f"trial #{view.number}: another worker declared this trial stale; left to its retry")
                elif owner is not None:
                    self._discard(view, owner)
                else:
                    self._train(view, trial, heartbeat)
        except KeyboardInterrupt:
            self._fail(view, "interrupted", INTERRUPTED_REASON)
            raise
        finally:
            self.own.discard(view.trial_id)

    def _optuna_trial(self, trial_id: int) -> optuna.trial.Trial:
        """The claimed trial as Optuna's Trial, for the sampler and pruner.

        A fresh Study object per trial, because samplers cache the trial list per Study and
        thread, and a stale list would hide what other workers did meanwhile.
        """
        optuna_study = self.store.optuna_study(self.sampler, self.pruner)
        return self.store.call(lambda: optuna.trial.Trial(optuna_study, trial_id))

    def _settle(self, view: TrialView, trial: optuna.trial.Trial) -> TrialView:
        """Wait until every earlier running trial has its ratios; then draw ours if TPE is to choose them."""
        while self._ledger().unsettled_before(view.number):
            time.sleep(self.options.poll * random.uniform(0.5, 1.5))
        if view.slot is not None and view.rr is None and self._ledger().owner(view) is None:
            choices = self.definition["stage_candidates"]
            rr = tuple(
                self.store.call(lambda: trial.suggest_categorical(f"r{i + 1}", c)) for i, c in enumerate(choices)
            )
            for key, value in self._run_attrs(rr, 0, "tpe").items():
                self.store.set_trial_attr(view.trial_id, key, value)
        elif view.rr is not None:  # record the fixed ratios as Optuna parameters, so samplers and dashboards see them
            for name, choices in zip(self._params(view.rr), self.definition["stage_candidates"]):
                self.store.call(lambda: trial.suggest_categorical(name, choices))
        return TrialView.of(self.store.trial(view.trial_id))

    def _await_owner(self, view: TrialView, owner: TrialView, heartbeat: Heartbeat) -> TrialView | None:
        """A TPE draw of a configuration that another trial is still training waits for that trial,
        to reuse its result, or to train the run itself if the trial failed and left it to a retry:
        dropped as a duplicate, the draw would be spent without a result."""
        self.log(f"trial #{view.number}: {self._label(view)} is being trained by trial #{owner.number}; waiting for it")
        current: TrialView | None = owner
        while current is not None and current.live and not heartbeat.abandoned.is_set():
            time.sleep(self.options.poll * random.uniform(0.5, 1.5))
            current = self._ledger().owner(view)
        return current

    def _discard(self, view: TrialView, owner: TrialView) -> None:
        """A TPE draw of a measured configuration reuses its result; any other duplicate is dropped untrained."""
        if view.slot is not None and owner.state == TrialState.COMPLETE and view.rr is not None:
            for key in RESULT_ATTRS:
                self.store.set_trial_attr(view.trial_id, key, owner.attrs.get(key))
            self.store.set_trial_attr(view.trial_id, "reused_from", owner.number)
            self.store.finish(view.trial_id, TrialState.COMPLETE, owner.value)
            self.summary.reused += 1
            self.log(f"trial #{view.number}: {self._label(view)} already measured by trial #{owner.number}; reused")
            return
        self.store.set_trial_attr(view.trial_id, "duplicate_of", owner.number)
        reason = f"duplicate of trial #{owner.number} (enqueued twice by racing workers); not trained"
        self.store.set_trial_attr(view.trial_id, "fail_reason", reason)
        self.store.finish(view.trial_id, TrialState.FAIL)
        self.summary.duplicates += 1

    def _label(self, view: TrialView) -> str:
        rr = "none" if view.rr is None else format_rr(view.rr)
        return f"rr {rr} seed {view.seed}"

    def _train(self, view: TrialView, trial: optuna.trial.Trial, heartbeat: Heartbeat) -> None:
        assert view.rr is not None and view.seed is not None
        config = study.run_config(
            self.definition, view.rr, view.seed, device=self.options.device, data_dir=self.options.data_dir
        )
        prefix = f"trial #{view.number} {self._label(view)}"
        # From this worker's root, not the trial's stored path: a planner on another machine may have
        # had the shared run folder mounted elsewhere (`study worker --artifacts`).
        run_dir = self.options.artifacts.resolve() / study.run_name(view.rr, view.seed)
        finished_before = (run_dir / rundir.RESULT).is_file()  # a crash before COMPLETE, or a new store's rerun
        self.log(f"{prefix}: {'reading back the finished run in' if finished_before else 'training in'} {run_dir}")
        try:
            result = self.trainer(
                config, run_dir, resume=True, log=lambda message: self.log(f"{prefix}: {message}"),
                on_epoch=self._epoch_hook(view, trial, heartbeat, run_dir, prefix),
                wait_for_lock=True,
            )
        except TrainingDiverged as error:
            self._fail(view, "diverged", str(error))
        except optuna.TrialPruned:
            if self.store.finish(view.trial_id, TrialState.PRUNED):
                self.summary.pruned += 1
                self.log(f"{prefix}: pruned by successive halving")
        except TrialAbandoned:
            self.log(f"{prefix}: another worker declared this trial stale; stopped so its retry resumes alone")
        except Exception as error:  # one broken run must not stop the study; the worker moves on
            self._fail(view, "error", f"{type(error).__name__}: {error}")
            self.excluded.add((view.rr, view.seed))
            self.summary.failed.append(f"trial #{view.number} {self._label(view)}: {error}")
            if not isinstance(error, SeratioError):  # a user-facing error says all in its message
                self.log(f"{prefix}: failed\n{traceback.format_exc()}")
        else:
            self._record(view, result, prefix, read_back=finished_before)

    def _competes(self, view: TrialView) -> bool:
        """Under halving, every run of a grid configuration. A baseline outside the grid (the plain
        ResNet by default) is not reported: the report tests every configuration against it fully
        trained, and its epochs must not set the bar the others are cut at. A baseline inside the
        grid is reported like its equals, but a cut only marks it (`_report`)."""
        return self.definition["strategy"] == "halving" and view.rr in strategies.grid_configs(self.definition)

    def _epoch_hook(
        self, view: TrialView, trial: optuna.trial.Trial, heartbeat: Heartbeat, run_dir: Path, prefix: str
    ) -> Callable[[dict[str, Any]], None]:
        """Per epoch: a log line, a stop if another worker took the trial over, and halving's report
        until the run is cut (a baseline in the grid trains on, reported no more)."""
        metric = f"{self.definition['select_on']}_accuracy"
        epochs = self.definition["epochs"]
        reporting = self._competes(view)
        first, cut = [True], [False]

        def on_epoch(row: dict[str, Any]) -> None:
            seconds = row.get("seconds", 0.0)
            self.log(f"{prefix}: epoch {row['epoch']}/{epochs} {metric} {row[metric]:.4f} ({seconds:.1f}s)")
            if heartbeat.abandoned.is_set():
                raise TrialAbandoned
            if reporting and first[0]:
                first[0] = False
                cut[0] = self._replay_for_pruner(view, trial, run_dir, row["epoch"], prefix)
            if reporting and not cut[0]:
                cut[0] = self._report(view, trial, row, prefix)

        return on_epoch

    def _report(self, view: TrialView, trial: optuna.trial.Trial, row: dict[str, Any], prefix: str) -> bool:
        """Halving's per-epoch report and pruning check; a run that has trained its last epoch is
        finished, and pruning it would throw a complete result away. True where the baseline was
        cut: it trains on for the comparisons, marked so that the search cannot pick it."""
        self.store.call(lambda: trial.report(row[f"{self.definition['select_on']}_accuracy"], row["epoch"]))
        if row["epoch"] >= self.definition["epochs"] or not self.store.call(trial.should_prune):
            return False
        if view.rr != tuple(self.definition["baseline"]):
            raise optuna.TrialPruned
        self.store.set_trial_attr(view.trial_id, HALVING_CUT, row["epoch"])
        self.log(f"{prefix}: successive halving would cut it here; as the baseline it trains on, but cannot win")
        return True

    def _replay_for_pruner(
        self, view: TrialView, trial: optuna.trial.Trial, run_dir: Path, resumed_at: int, prefix: str
    ) -> bool:
        """A retried halving trial resumes mid-run: report the epochs its predecessor trained, and
        say whether one of them cut the baseline.

        Without them the new trial would reach its first rung with no history, and successive
        halving would judge it on a later epoch than its peers. Called at the first epoch this
        trial trains, when the run directory's lock is held and its metrics are the checkpoint's;
        only the epochs before that one are replayed, so no epoch is reported twice.
        """
        if resumed_at <= 1:
            return False
        metrics = run_dir / rundir.METRICS
        try:
            rows = [row for row in rundir.read_metrics(metrics) if row["epoch"] < resumed_at]
        except (OSError, ValueError, KeyError) as error:
            self.log(f"{prefix}: earlier epochs not replayed to the pruner ({metrics}: {error})")
            return False
        self.log(f"{prefix}: replaying epochs 1-{resumed_at - 1} to the pruner")
        return any(self._report(view, trial, row, prefix) for row in rows)

    def _record(self, view: TrialView, result: dict[str, Any], prefix: str, *, read_back: bool) -> None:
        """Result attributes first, then COMPLETE.

        A crash in between leaves a running trial; its retry finds the finished run directory
        and reads the result back instead of training again.
        """
        for key in RESULT_ATTRS:
            if not self.store.set_trial_attr(view.trial_id, key, result.get(key)):
                self.log(f"{prefix}: trial was taken over; its finished run stays in place for the retry")
                return
        value = result[f"{self.definition['select_on']}_accuracy"]
        if self.store.finish(view.trial_id, TrialState.COMPLETE, value):
            if read_back:
                self.summary.read_back += 1
            else:
                self.summary.trained += 1
            self.log(f"{prefix}: done, {self.definition['select_on']} accuracy {value:.2%}")

    def _fail(self, view: TrialView, kind: str, reason: str) -> None:
        """Reason first, then FAIL; losing the race to another worker that failed it first is fine."""
        if self.store.set_trial_attr(view.trial_id, "fail_kind", kind):
            self.store.set_trial_attr(view.trial_id, "fail_reason", reason)
            if self.store.finish(view.trial_id, TrialState.FAIL):
                self.log(f"trial #{view.number} {self._label(view)}: failed ({kind}): {reason}")
