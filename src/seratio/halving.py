"""Successive halving that counts each run once at every cut.

Optuna's pruner compares a trial with every trial that passed the same rung, failed ones
included. A halving run interrupted after a cut is retried as a new trial that replays the
epochs its predecessor trained (`worker._replay_for_pruner`), so without this filter the run
would stand at that cut twice: as the failed trial and as its retry. Two copies of one value
move the cut for every run judged there.
"""

from __future__ import annotations

from collections.abc import Container
from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from seratio.ledger import Ledger


class _WithoutRetried:
    """The study as the pruner should see it: the failed trials that were retried are left out."""

    def __init__(self, study: optuna.Study) -> None:
        self._study = study

    def get_trials(self, deepcopy: bool = True, states: Container[TrialState] | None = None) -> list[FrozenTrial]:
        trials = self._study.get_trials(deepcopy=deepcopy)
        retried = Ledger(trials).retried()
        return [t for t in trials if t.number not in retried and (states is None or t.state in states)]

    def __getattr__(self, name: str) -> Any:
        return getattr(self._study, name)


class RetryAwareHalving(optuna.pruners.SuccessiveHalvingPruner):
    """Optuna's asynchronous successive halving, judged over one trial per run."""

    def prune(self, study: optuna.Study, trial: FrozenTrial) -> bool:
        return super().prune(_WithoutRetried(study), trial)  # type: ignore[arg-type]
