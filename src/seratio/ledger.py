"""What the stored trials say about each run: finished, failed for good, in flight, or still needed.

A run is a (ratios, seed) pair. Several trials may name the same run: a retry
after a crash, or a duplicate from two workers enqueueing at the same moment.
The rule that keeps training exactly-once is deterministic, so every worker
reaches the same verdict from the same storage: among the trials of one run
that still count, the one with the lowest number owns it; any later one is a
duplicate and is finished without training.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from optuna.trial import FrozenTrial, TrialState

from seratio.architecture import Ratios as RR
from seratio.store import HEARTBEAT_ATTR

RunKey = tuple[RR, int]

HALVING_CUT = "halving_cut"
"""The epoch at which successive halving would have cut a baseline that it lets train on."""

FINAL_FAILURES = frozenset({"diverged"})
"""Failures that a retry would only repeat; every other failure (stale, interrupted, error) is retried."""


class Status(enum.Enum):
    COMPLETE = "complete"
    FINAL = "final"  # diverged or pruned: resolved, but without a usable result
    LIVE = "live"  # waiting or running
    MISSING = "missing"  # never tried, or only retryable failures


@dataclass(frozen=True)
class TrialView:
    """The seratio attributes of one trial, typed."""

    number: int
    trial_id: int
    state: TrialState
    rr: RR | None
    seed: int | None
    phase: str
    slot: int | None
    duplicate_of: int | None
    reused_from: int | None
    fail_kind: str | None
    value: float | None
    heartbeat: Any
    attrs: dict[str, Any]

    @classmethod
    def of(cls, trial: FrozenTrial) -> TrialView:
        a = trial.user_attrs
        rr = a.get("rr")
        return cls(
            number=trial.number,
            trial_id=trial._trial_id,
            state=trial.state,
            rr=None if rr is None else tuple(rr),
            seed=a.get("seed"),
            phase=a.get("phase", "unknown"),
            slot=a.get("slot"),
            duplicate_of=a.get("duplicate_of"),
            reused_from=a.get("reused_from"),
            fail_kind=a.get("fail_kind"),
            value=trial.value if trial.state == TrialState.COMPLETE else None,
            heartbeat=trial.system_attrs.get(HEARTBEAT_ATTR),
            attrs=a,
        )

    @property
    def key(self) -> RunKey | None:
        return None if self.rr is None or self.seed is None else (self.rr, self.seed)

    @property
    def counts(self) -> bool:
        """Duplicates never count, whatever state a crash left them in."""
        return self.duplicate_of is None

    @property
    def live(self) -> bool:
        return self.state in (TrialState.WAITING, TrialState.RUNNING)

    @property
    def retryable(self) -> bool:
        return self.state == TrialState.FAIL and self.fail_kind not in FINAL_FAILURES

    def status(self) -> Status:
        if self.state == TrialState.COMPLETE:
            return Status.COMPLETE
        if self.live:
            return Status.LIVE
        return Status.MISSING if self.retryable else Status.FINAL


_PRIORITY = (Status.COMPLETE, Status.FINAL, Status.LIVE)


class Ledger:
    """All trials of a study, indexed by run and by TPE slot."""

    def __init__(self, trials: Sequence[FrozenTrial]) -> None:
        self.views = tuple(sorted((TrialView.of(t) for t in trials), key=lambda v: v.number))
        self._by_key: dict[RunKey, list[TrialView]] = {}
        self._by_slot: dict[int, list[TrialView]] = {}
        for view in self.views:
            if view.counts and view.key is not None:
                self._by_key.setdefault(view.key, []).append(view)
            if view.slot is not None and (view.counts or view.rr is not None):
                self._by_slot.setdefault(view.slot, []).append(view)

    def status(self, key: RunKey) -> Status:
        statuses = {view.status() for view in self._by_key.get(key, [])}
        return next((s for s in _PRIORITY if s in statuses), Status.MISSING)

    def value(self, key: RunKey) -> float | None:
        """The selection metric of the run's first completed trial."""
        done = [v for v in self._by_key.get(key, []) if v.state == TrialState.COMPLETE]
        return done[0].value if done else None

    def cut_by_halving(self, rr: RR) -> bool:
        """Whether a run of `rr` trained on past a cut that stopped its equals (the baseline's)."""
        return any(v.rr == rr and v.attrs.get(HALVING_CUT) is not None for v in self.views if v.counts)

    def slot_used(self, slot: int) -> bool:
        """A TPE slot is used once a trial for it is in flight or has drawn its ratios.

        A draw that repeats a configuration still uses its slot, so a sampler that keeps
        proposing the same point cannot make workers loop.
        """
        return any(v.live or v.rr is not None for v in self._by_slot.get(slot, []))

    def sampled(self) -> list[RR]:
        """Ratios the TPE sampler drew, in trial order, each once."""
        seen: dict[RR, None] = {}
        for view in self.views:
            if view.slot is not None and view.rr is not None:
                seen.setdefault(view.rr)
        return list(seen)

    def owner(self, view: TrialView) -> TrialView | None:
        """The earlier trial that owns `view`'s run or slot, if any: then `view` is a duplicate."""
        if view.key is not None:
            for other in self._by_key.get(view.key, []):
                if other.number < view.number and other.status() != Status.MISSING:
                    return other
        if view.slot is not None and view.rr is None:
            for other in self._by_slot.get(view.slot, []):
                if other.number < view.number and (other.live or other.rr is not None):
                    return other
        return None

    def unsettled_before(self, number: int) -> bool:
        """An earlier running trial has not drawn its ratios yet, so ownership cannot be decided."""
        return any(
            v.number < number and v.counts and v.state == TrialState.RUNNING and v.rr is None for v in self.views
        )

    def retried(self) -> set[int]:
        """Numbers of the failed trials whose run a later trial took up again.

        An interrupted or stale trial is retried as a new trial of the same run, so the failure is
        history: status should not count it as a failure the study still has, and halving should
        not count the run's epochs twice (the retry replays them).
        """
        last = {view.key: view.number for view in self.views if view.key is not None}  # views are in number order
        return {
            v.number for v in self.views
            if v.state == TrialState.FAIL and v.duplicate_of is None and v.key is not None and last[v.key] > v.number
        }

    def running(self) -> list[TrialView]:
        return [v for v in self.views if v.counts and v.state == TrialState.RUNNING]

    def any_live(self) -> bool:
        return any(v.counts and v.live for v in self.views)
