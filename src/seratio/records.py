"""A study's stored results as plain typed records: one per trial, grouped and aggregated per
configuration (what each run directory holds is read, checked, in `finished_run`).

Reports read only what studies and runs stored and never train.
Everything here is read-only: opening a study must never create a database or
change a trial. Trials whose code version, recipe hash or epoch budget differ
from the study's majority are kept out of the averages and listed with the
reason, because averaging runs of different programs would hide the difference.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import optuna

from seratio.architecture import Ratios as RR
from seratio.errors import SeratioError, print_to_stderr
from seratio.ledger import HALVING_CUT
from seratio.stats import Summary, summarize
from seratio.store import Patience, StudyStore, open_storage, read_patience
from seratio.study_choices import DEFAULT_STORAGE

PROVENANCE_FIELDS = ("code_version", "recipe_hash", "epochs", "precision")


@dataclass(frozen=True)
class StudyDefinition:
    """What the study set out to do, from the study's `seratio_definition` attribute."""

    strategy: str
    candidates: tuple[int, ...]
    seeds: int
    baseline: RR
    select_on: str
    recipe: str
    depth: int
    dataset: str
    epochs: int
    code_version: str | None
    recipe_hash: str | None
    train_subset: int | None = None
    test_subset: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    val_size: int | None = None
    split_seed: int | None = None
    precision: str | None = None
    n_trials: int | None = None
    halving_min_epochs: int | None = None
    phases: dict[str, tuple[int, ...]] = field(default_factory=dict)
    """Each search phase's own ratio list (empty for a study stored without them): a greedy stage
    can only pick a ratio on its list, though its table also shows the incumbent it started from."""


@dataclass(frozen=True)
class TrialRecord:
    """One Optuna trial in any state; metric fields are None until the trial completes."""

    number: int
    state: str
    rr: RR | None
    seed: int | None
    phase: str
    run_dir: Path | None
    value: float | None
    test_accuracy: float | None
    test_loss: float | None
    val_accuracy: float | None
    val_loss: float | None
    best_test_accuracy: float | None
    best_epoch: int | None
    params: int | None
    macs: int | None
    seconds: float | None
    epochs: int | None
    code_version: str | None
    recipe_hash: str | None
    precision: str | None  # fp32 or bf16 as trained: `auto` resolves by device type
    fail_reason: str | None
    last_reported_epoch: int | None
    reused_from: int | None  # a TPE draw of a measured configuration copies that trial's result
    duplicate_of: int | None  # lost a claim race to that trial and was closed without training
    halving_cut: int | None = None  # a baseline in the halving grid: the epoch a cut would have stopped it


@dataclass(frozen=True)
class StudyRecords:
    name: str
    storage: str
    definition: StudyDefinition
    trials: tuple[TrialRecord, ...]


@dataclass(frozen=True)
class Excluded:
    """A complete trial left out of every average, and why."""

    trial: TrialRecord
    reason: str


@dataclass(frozen=True)
class ConfigResult:
    """All comparable completed runs of one configuration (one per seed), summarised.

    Summaries keep the stored units: accuracies are fractions in 0..1.
    """

    rr: RR
    runs: tuple[TrialRecord, ...]
    phases: frozenset[str]
    selection: Summary
    test_accuracy: Summary
    test_loss: Summary
    best_test_accuracy: Summary | None
    params: int | None
    macs: int | None
    epochs: int | None


@dataclass(frozen=True)
class Aggregate:
    configs: dict[RR, ConfigResult]
    excluded: tuple[Excluded, ...]
    incomplete: tuple[TrialRecord, ...]
    majority: dict[str, Any]


# -- reading a study ---------------------------------------------------------------------------


def stored_rr(value: Sequence[int | None] | None) -> RR | None:
    """Stored ratios as a hashable tuple; JSON null becomes None (no SE in that stage)."""
    if value is None:
        return None
    return tuple(None if r is None else int(r) for r in value)


def _definition(attrs: dict[str, Any], name: str) -> StudyDefinition:
    raw = attrs.get("seratio_definition")
    if not isinstance(raw, dict):
        raise SeratioError(f"study {name!r} has no 'seratio_definition' attribute; was it created by seratio?")
    try:
        return _lenient_definition(raw)
    except (TypeError, ValueError) as error:
        raise SeratioError(f"study {name!r} has a damaged seratio definition ({error})") from None


def _lenient_definition(raw: dict[str, Any]) -> StudyDefinition:
    """Defaults for keys that older studies lack, since a report only reads; values of the wrong
    type raise, for the caller to name the study."""
    return StudyDefinition(
        strategy=str(raw.get("strategy", "unknown")),
        candidates=tuple(int(c) for c in raw.get("candidates", ())),
        seeds=int(raw.get("seeds", 1)),
        baseline=stored_rr(raw.get("baseline")) or (None, None, None),
        select_on=str(raw.get("select_on", "val")),
        recipe=str(raw.get("recipe", "unknown")),
        depth=int(raw.get("depth", 50)),
        dataset=str(raw.get("dataset", "cifar10")),
        epochs=int(raw.get("epochs", 0)),
        code_version=raw.get("code_version"),
        recipe_hash=raw.get("recipe_hash"),
        train_subset=_opt(raw, "train_subset", int),
        test_subset=_opt(raw, "test_subset", int),
        batch_size=_opt(raw, "batch_size", int),
        lr=_opt(raw, "lr", float),
        val_size=_opt(raw, "val_size", int),
        split_seed=_opt(raw, "split_seed", int),
        precision=_opt(raw, "precision", str),
        n_trials=_opt(raw, "n_trials", int),
        halving_min_epochs=_opt(raw, "halving_min_epochs", int),
        phases={str(name): tuple(int(r) for r in ratios) for name, ratios in (raw.get("phases") or {}).items()},
    )


def _opt(attrs: dict[str, Any], key: str, kind: type) -> Any:
    value = attrs.get(key)
    return None if value is None else kind(value)


def _trial_record(trial: optuna.trial.FrozenTrial) -> TrialRecord:
    a = trial.user_attrs
    run_dir = a.get("run_dir")
    return TrialRecord(
        number=trial.number,
        state=trial.state.name,
        rr=stored_rr(a.get("rr")),
        seed=_opt(a, "seed", int),
        phase=str(a.get("phase", "unknown")),
        run_dir=Path(run_dir) if run_dir else None,
        value=trial.value if trial.state == optuna.trial.TrialState.COMPLETE else None,
        test_accuracy=_opt(a, "test_accuracy", float),
        test_loss=_opt(a, "test_loss", float),
        val_accuracy=_opt(a, "val_accuracy", float),
        val_loss=_opt(a, "val_loss", float),
        best_test_accuracy=_opt(a, "best_test_accuracy", float),
        best_epoch=_opt(a, "best_epoch", int),
        params=_opt(a, "params", int),
        macs=_opt(a, "macs", int),
        seconds=_opt(a, "seconds", float),
        epochs=_opt(a, "epochs", int),
        code_version=a.get("code_version"),
        recipe_hash=a.get("recipe_hash"),
        precision=a.get("precision"),
        fail_reason=a.get("fail_reason"),
        last_reported_epoch=max(trial.intermediate_values, default=None),
        reused_from=_opt(a, "reused_from", int),
        duplicate_of=_opt(a, "duplicate_of", int),
        halving_cut=_opt(a, HALVING_CUT, int),
    )


def load_study(
    name: str, storage_url: str, patience: Patience, log: Callable[[str], None] = lambda message: None,
    *, artifacts: Path | None = None,
) -> StudyRecords:
    """Every trial of study `name`, in trial order, as plain records.

    Opens the storage with `create=False` (a typo must not conjure an empty store)
    and waits at most `patience` for an unreachable database. `artifacts` is where the study's run
    folder is mounted on this machine, when that is not where the study recorded it.
    """
    storage = open_storage(storage_url, create=False, patience=patience, log=log)
    store = StudyStore(storage, name, patience, log)
    definition = _definition(store.user_attrs(), name)
    trials = tuple(_moved(_checked_trial_record(t, name), artifacts) for t in store.trials())
    return StudyRecords(name, storage_url, definition, trials)


def read_study(
    name: str, storage: str = DEFAULT_STORAGE, *, artifacts: Path | str | None = None, db_patience: float = 30.0,
) -> StudyRecords:
    """`load_study` for a notebook: what `seratio report` reads, with the command line's defaults,
    and any warning about the storage on stderr."""
    return load_study(name, storage, read_patience(db_patience), print_to_stderr,
                      artifacts=None if artifacts is None else Path(artifacts))


def _moved(record: TrialRecord, artifacts: Path | None) -> TrialRecord:
    """A run directory under `artifacts`: a worker puts every run directly in its root, by name."""
    if artifacts is None or record.run_dir is None:
        return record
    return replace(record, run_dir=artifacts / record.run_dir.name)


def _checked_trial_record(trial: optuna.trial.FrozenTrial, study: str) -> TrialRecord:
    """A trial whose stored attributes were edited into nonsense ends the report in one line naming it."""
    try:
        return _trial_record(trial)
    except (TypeError, ValueError) as error:
        raise SeratioError(f"study {study!r}, trial {trial.number}: a stored attribute is damaged ({error})") from None


# -- grouping and aggregation ------------------------------------------------------------------


def _majority(values: Iterable[Any], prefer: Any) -> Any:
    """Most common value; a tie goes to what the study definition says, then to the first seen."""
    counts = Counter(values)
    if not counts:
        return None
    top = max(counts.values())
    tied = [v for v, c in counts.items() if c == top]
    return prefer if prefer in tied else tied[0]


def _is_complete(t: TrialRecord) -> bool:
    return t.state == "COMPLETE" and t.rr is not None and t.value is not None and t.test_accuracy is not None


def aggregate(study: StudyRecords) -> Aggregate:
    """Group completed trials by ratios and summarise over seeds; list everything left out."""
    complete = [t for t in study.trials if _is_complete(t)]
    # A lost claim race is bookkeeping, not a failed run: the run it names is the other trial.
    incomplete = tuple(t for t in study.trials if not _is_complete(t) and t.duplicate_of is None)
    d = study.definition
    prefer = {"code_version": d.code_version, "recipe_hash": d.recipe_hash, "epochs": d.epochs, "precision": None}
    majority = {f: _majority((getattr(t, f) for t in complete), prefer[f]) for f in PROVENANCE_FIELDS}

    excluded: list[Excluded] = []
    kept: dict[tuple[RR, int | None], TrialRecord] = {}
    for t in complete:
        differs = [f"{f} {getattr(t, f)!r} (majority {majority[f]!r})" for f in PROVENANCE_FIELDS
                   if getattr(t, f) != majority[f]]
        key = (t.rr, t.seed)
        not_fractions = [f"{name} {value!r}" for name, value in (("test accuracy", t.test_accuracy), ("objective", t.value))
                         if not 0 <= value <= 1]  # type: ignore[operator]  # complete trials have both; NaN fails too
        if not_fractions:
            excluded.append(Excluded(t, f"stores {' and '.join(not_fractions)}, not an accuracy from 0 to 1; "
                                        "a damaged record"))
        elif t.reused_from is not None:
            excluded.append(Excluded(t, f"reuses the result of trial #{t.reused_from}; not a separate run"))
        elif differs:
            excluded.append(Excluded(t, "differs from the study: " + ", ".join(differs)))
        elif key in kept:
            excluded.append(Excluded(t, f"repeats trial #{kept[key].number} (same ratios and seed {t.seed})"))
        else:
            kept[key] = t

    by_rr: dict[RR, list[TrialRecord]] = {}
    for (rr, _), t in kept.items():
        by_rr.setdefault(rr, []).append(t)
    configs = {rr: _config(rr, runs) for rr, runs in by_rr.items()}
    return Aggregate(configs, tuple(excluded), incomplete, majority)


def _config(rr: RR, runs: list[TrialRecord]) -> ConfigResult:
    runs = sorted(runs, key=lambda t: (t.seed if t.seed is not None else -1, t.number))
    best = [t.best_test_accuracy for t in runs if t.best_test_accuracy is not None]
    losses = [t.test_loss if t.test_loss is not None else math.nan for t in runs]
    return ConfigResult(
        rr=rr,
        runs=tuple(runs),
        phases=frozenset(t.phase for t in runs),
        selection=summarize([t.value for t in runs]),  # type: ignore[misc]  # complete trials have values
        test_accuracy=summarize([t.test_accuracy for t in runs]),  # type: ignore[misc]
        test_loss=summarize(losses),
        best_test_accuracy=summarize(best) if len(best) == len(runs) else None,
        params=runs[0].params,
        macs=runs[0].macs,
        epochs=runs[0].epochs,
    )
