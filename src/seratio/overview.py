"""What a study has done so far: its phase, trial counts, best configuration, and one row per trial.

Read-only: `study status` and `study export` never change a trial.
"""

from __future__ import annotations

import math
import statistics
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from seratio import strategies
from seratio.architecture import format_rr
from seratio.errors import SeratioError
from seratio.ledger import HALVING_CUT, RR, Ledger, Status

EXPORT_ATTRS = (
    "phase", "seed", "test_accuracy", "test_loss", "val_accuracy", "val_loss", "best_test_accuracy",
    "best_epoch", "params", "macs", "seconds", "epochs", "code_version", "recipe_hash", "precision", "run_dir",
    "fail_reason", "duplicate_of", "reused_from", "tta_test_accuracy", "tta_val_accuracy", HALVING_CUT,
)


COUNTED = ("done", "running", "waiting", "failed", "retried", "pruned", "reused", "duplicate")
"""The trial categories `study status` counts; "retried" are failures that a later trial took up again."""


@dataclass(frozen=True)
class Progress:
    phase: str
    counts: dict[str, int]
    best: RR | None
    best_score: float | None
    baseline_score: float | None
    planned: int  # runs the current plan wants
    ended: int  # of those, finished or failed for good (diverged, pruned)
    most: int  # runs the whole search trains at most
    run_seconds: tuple[float, ...]  # training time of each run finished here (not reused ones)
    run_epochs: tuple[int, ...]  # epochs each run that ended here trained: all, or up to halving's cut
    epoch_seconds: float | None  # training time per epoch over the runs finished here


def _category(trial: FrozenTrial) -> str:
    attrs = trial.user_attrs
    if "duplicate_of" in attrs:
        return "duplicate"
    if "reused_from" in attrs:
        return "reused"
    return {
        TrialState.COMPLETE: "done", TrialState.RUNNING: "running", TrialState.WAITING: "waiting",
        TrialState.FAIL: "failed", TrialState.PRUNED: "pruned",
    }[trial.state]


def progress(definition: dict[str, Any], trials: list[FrozenTrial]) -> Progress:
    """The search's own best where it has decided one (greedy after its constant phase, the others
    from their first result), so that status names the configuration the study will pick."""
    ledger = Ledger(trials)
    seeds, baseline = definition["seeds"], tuple(definition["baseline"])
    try:
        current = strategies.plan(definition, ledger)
        phase, best = current.phase, current.best or _best_measured(ledger, current, seeds)
        units = current.units
    except SeratioError as error:
        phase, best, units = f"blocked: {error}", None, ()
    retried = ledger.retried()
    counts = Counter("retried" if t.number in retried else _category(t) for t in trials)
    return Progress(
        phase=phase,
        counts={k: counts.get(k, 0) for k in COUNTED},
        best=best,
        best_score=strategies.score(ledger, best, seeds) if best else None,
        baseline_score=strategies.score(ledger, baseline, seeds),
        planned=len(units),
        ended=sum(ledger.status(u.key) in (Status.COMPLETE, Status.FINAL) for u in units),
        most=strategies.most_runs(definition),
        **_training_time(ledger, trials),
    )


def _training_time(ledger: Ledger, trials: list[FrozenTrial]) -> dict[str, Any]:
    """What the runs trained here took: seconds per finished run, epochs per ended run (a run that
    halving cut ended at its last reported epoch), and seconds per epoch. Reused results trained
    elsewhere and say nothing about this study's machines."""
    reported = {t.number: t.intermediate_values for t in trials}
    own = [v for v in ledger.views if v.counts and v.reused_from is None]
    finished = [v for v in own if v.state == TrialState.COMPLETE and isinstance(v.attrs.get("seconds"), (int, float))
                and isinstance(v.attrs.get("epochs"), int) and v.attrs["epochs"] > 0]
    cut = [max(reported[v.number]) for v in own if v.state == TrialState.PRUNED and reported[v.number]]
    seconds = tuple(float(v.attrs["seconds"]) for v in finished)
    epochs = tuple(v.attrs["epochs"] for v in finished)
    return {
        "run_seconds": seconds,
        "run_epochs": epochs + tuple(cut),
        "epoch_seconds": sum(seconds) / sum(epochs) if epochs else None,
    }


@dataclass(frozen=True)
class TimeLeft:
    """Training time still to come, at the pace of the runs finished here. Under halving a run
    costs the mean epochs that ended runs trained (early runs meet fewer rivals at each cut, so
    this errs high); `uncut` is the plan's time if every run trained in full."""

    plan: float  # seconds the current plan still needs
    search: float  # at most, for the whole search (later greedy stages and TPE draws are not planned yet)
    per_run: float
    uncut: float
    finished_runs: int  # the runs the pace comes from
    halving_epochs: float | None  # mean epochs of the ended runs, under halving


def time_left(state: Progress, strategy: str) -> TimeLeft | None:
    """None once the search is done, or before its first finished run gives a pace."""
    if state.phase == strategies.DONE or not state.run_seconds:
        return None
    full_run = statistics.mean(state.run_seconds)
    runs_left = max(state.planned - state.ended, 0)
    epochs = None
    per_run = full_run
    if strategy == "halving" and state.epoch_seconds is not None:
        epochs = statistics.mean(state.run_epochs)
        per_run = epochs * state.epoch_seconds
    return TimeLeft(runs_left * per_run, max(state.most - state.ended, 0) * per_run, per_run, runs_left * full_run,
                    len(state.run_seconds), epochs)


def status_record(name: str, definition: dict[str, Any], state: Progress) -> dict[str, Any]:
    """`study status --json`: what the text shows, for a script that watches a study."""
    left = time_left(state, definition["strategy"])
    return {
        "study": name, "strategy": definition["strategy"], "seeds": definition["seeds"],
        "select_on": definition["select_on"], "phase": state.phase, "done": state.phase == strategies.DONE,
        "counts": state.counts,
        "best": None if state.best is None else {"rr": list(state.best), "score": state.best_score},
        "baseline": {"rr": list(definition["baseline"]), "score": state.baseline_score},
        "runs": {"planned": state.planned, "ended": state.ended, "most": state.most},
        "seconds_left": None if left is None else {
            "plan": left.plan, "search": left.search, "per_run": left.per_run, "if_none_cut": left.uncut,
            "from_finished_runs": left.finished_runs, "halving_mean_epochs": left.halving_epochs},
    }


def _best_measured(ledger: Ledger, current: strategies.Plan, seeds: int) -> RR | None:
    """Before greedy's first decision: the best finished configuration the search asked for."""
    return strategies.best_measured(
        ledger, [u.rr for u in current.units if u.phase != "baseline" and not ledger.cut_by_halving(u.rr)], seeds)


def trial_row(trial: FrozenTrial) -> dict[str, Any]:
    """One exported row: number, state, ratios, the selection metric, then every seratio attribute."""
    attrs = trial.user_attrs
    rr = attrs.get("rr")
    row: dict[str, Any] = {
        "number": trial.number,
        "state": trial.state.name,
        "rr": None if rr is None else format_rr(tuple(rr)),
        "value": trial.value if trial.state == TrialState.COMPLETE else None,
    }
    row.update({key: attrs.get(key) for key in EXPORT_ATTRS})
    reported = trial.intermediate_values  # halving's per-epoch reports: where a pruned run was cut, and at what
    row["last_reported_epoch"] = max(reported) if reported else None
    row["last_reported_value"] = reported[max(reported)] if reported else None
    row["started"] = _utc(trial.datetime_start)
    row["finished"] = _utc(trial.datetime_complete)
    return {key: _finite_or_none(value) for key, value in row.items()}


def _utc(moment: datetime | None) -> str | None:
    """Optuna stores the writer's local time without its zone, so a spreadsheet could not tell
    which zone an export is in. Read as this machine's local time (exact where writer and reader
    share a zone; clusters usually run in UTC) and written in UTC with its offset."""
    return None if moment is None else moment.astimezone(timezone.utc).isoformat()


def _finite_or_none(value: Any) -> Any:
    """A NaN or infinite number (a damaged record) exports as empty: JSON has no NaN, and a
    spreadsheet would read "nan" as text."""
    return None if isinstance(value, float) and not math.isfinite(value) else value
