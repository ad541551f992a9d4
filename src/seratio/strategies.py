"""Which runs a strategy wants, given what the study has measured so far.

A plan is a pure function of the study definition and the stored results, so
every worker computes the same plan and the storage alone coordinates them.
The fixed strategies (constant, grid, greedy, the paper preset, halving's
configurations) name their runs outright; they reach Optuna as enqueued trials
with fixed parameters, because a WAITING trial can be claimed atomically and a
sampler's pick cannot. TPE asks for `n_trials` slots; the TPE sampler draws each
slot's ratios when a worker claims it. Halving adds Optuna's successive-halving
pruner to the grid (see `worker.py`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from seratio.errors import SeratioError
from seratio.ledger import RR, Ledger, Status

STAGES = ("stage1", "stage2", "stage3")
DONE = "done"


@dataclass(frozen=True)
class Unit:
    """One run the strategy wants: a configuration, a seed, and the phase that first asked for it."""

    rr: RR
    seed: int
    phase: str

    @property
    def key(self) -> tuple[RR, int]:
        return (self.rr, self.seed)


@dataclass(frozen=True)
class Plan:
    units: tuple[Unit, ...]
    phase: str
    slots: int = 0
    best: RR | None = None

    @property
    def done(self) -> bool:
        return self.phase == DONE


def score(ledger: Ledger, rr: RR, seeds: int) -> float | None:
    """Mean selection metric over all seeds; None until every seed has completed."""
    values = [ledger.value((rr, s)) for s in range(seeds)]
    if any(v is None for v in values):
        return None
    return round(math.fsum(values) / seeds, 12)  # type: ignore[arg-type]  # equal means compare equal


def best_of(ledger: Ledger, configs: Sequence[RR], seeds: int, phase: str) -> RR:
    """The highest mean; ties go to the earlier candidate so every worker agrees."""
    scored = [(s, rr) for rr in configs if (s := score(ledger, rr, seeds)) is not None]
    if not scored:
        raise SeratioError(f"phase {phase}: no configuration finished (all failed), so the search cannot continue")
    top = max(s for s, _ in scored)
    return next(rr for s, rr in scored if s == top)


def _units(configs: Iterable[RR], seeds: int, phase: str) -> list[Unit]:
    return [Unit(rr, seed, phase) for rr in configs for seed in range(seeds)]


def _merge(units: list[Unit], more: list[Unit]) -> list[Unit]:
    """Add runs not already wanted: a configuration measured earlier is reused, never retrained."""
    known = {u.key for u in units}
    return units + [u for u in more if u.key not in known]


def _baseline(definition: Mapping[str, Any]) -> list[Unit]:
    """Merged after the search's own runs: a baseline that is also a candidate, like (8, 8, 8),
    belongs to its search phase, which must wait for it and whose table shows it."""
    return _units([tuple(definition["baseline"])], definition["seeds"], "baseline")


def _resolved(ledger: Ledger, units: Iterable[Unit]) -> bool:
    """Every run is finished, or failed for good (diverged, pruned)."""
    return all(ledger.status(u.key) in (Status.COMPLETE, Status.FINAL) for u in units)


def _greedy(definition: Mapping[str, Any], ledger: Ledger) -> Plan:
    """The paper's search: best constant, then each stage in turn with the others fixed at the best so far."""
    seeds, phases = definition["seeds"], definition["phases"]
    configs = [(r, r, r) for r in phases["constant"]]
    units = _merge(_units(configs, seeds, "constant"), _baseline(definition))
    if not _resolved(ledger, [u for u in units if u.phase == "constant"]):
        return Plan(tuple(units), "constant")
    best = best_of(ledger, configs, seeds, "constant")
    for stage, name in enumerate(STAGES):
        configs = [best[:stage] + (r,) + best[stage + 1 :] for r in phases[name]]
        wanted = _units(configs, seeds, name)
        units = _merge(units, wanted)
        if not _resolved(ledger, wanted):
            return Plan(tuple(units), name, best=best)
        best = best_of(ledger, configs, seeds, name)
    return Plan(tuple(units), DONE if _resolved(ledger, units) else "baseline", best=best)


def grid_configs(definition: Mapping[str, Any]) -> list[RR]:
    """Every combination of the stages' candidates: what grid and halving search."""
    per_stage = definition["stage_candidates"]
    return [(a, b, c) for a in per_stage[0] for b in per_stage[1] for c in per_stage[2]]


def _exhaustive(definition: Mapping[str, Any], ledger: Ledger, configs: list[RR], phase: str) -> Plan:
    units = _merge(_units(configs, definition["seeds"], phase), _baseline(definition))
    done = _resolved(ledger, units)
    best = best_measured(ledger, configs, definition["seeds"])
    return Plan(tuple(units), DONE if done else phase, best=best)


def best_measured(ledger: Ledger, configs: Sequence[RR], seeds: int) -> RR | None:
    """Ties go to the smallest ratios, as everywhere else, not to the earliest TPE draw."""
    scored = sorted((rr for rr in configs if score(ledger, rr, seeds) is not None), key=ratio_order)
    return best_of(ledger, scored, seeds, "any") if scored else None


def ratio_order(rr: RR) -> tuple[int, ...]:
    """Smallest ratios first, no SE (None) before any ratio: the order ties are broken in."""
    return tuple(-1 if r is None else r for r in rr)


def _constant(definition: Mapping[str, Any], ledger: Ledger) -> Plan:
    return _exhaustive(definition, ledger, [(r, r, r) for r in definition["phases"]["constant"]], "constant")


def _grid(definition: Mapping[str, Any], ledger: Ledger) -> Plan:
    return _exhaustive(definition, ledger, grid_configs(definition), "grid")


def _halving(definition: Mapping[str, Any], ledger: Ledger) -> Plan:
    """The grid's plan; a baseline in the grid trains to the end for the comparisons, but where a
    cut would have stopped it, it cannot be the pick, or passing the cuts would be its privilege."""
    configs = grid_configs(definition)
    plan = _exhaustive(definition, ledger, configs, "halving")
    eligible = [rr for rr in configs if not ledger.cut_by_halving(rr)]
    return replace(plan, best=best_measured(ledger, eligible, definition["seeds"]))


def _tpe(definition: Mapping[str, Any], ledger: Ledger) -> Plan:
    """n_trials TPE draws; every drawn configuration is then run with every seed."""
    sampled, slots = ledger.sampled(), definition["n_trials"]
    units = _merge(_units(sampled, definition["seeds"], "tpe"), _baseline(definition))
    drawn = all(ledger.slot_used(s) for s in range(slots)) and not ledger.any_live()
    done = drawn and _resolved(ledger, units)
    best = best_measured(ledger, sampled, definition["seeds"])
    return Plan(tuple(units), DONE if done else "tpe", slots, best)


def most_runs(definition: Mapping[str, Any]) -> int:
    """The runs the whole search trains at most, for `study status`'s estimate: greedy's later
    stages and TPE's later draws are in no plan yet. A greedy stage whose list holds every constant
    candidate repeats the incumbent, measured once; TPE may draw a configuration twice."""
    strategy, phases = definition["strategy"], definition["phases"]
    if strategy in ("greedy", "paper"):
        constant = set(phases["constant"])
        configs = [(r, r, r) for r in constant]
        extra = sum(len(phases[name]) - (constant <= set(phases[name])) for name in STAGES)
    elif strategy == "tpe":
        configs, extra = [], definition["n_trials"]
    else:
        configs, extra = ([(r, r, r) for r in phases["constant"]] if strategy == "constant"
                          else grid_configs(definition)), 0
    baseline = tuple(definition["baseline"]) not in configs
    return (len(configs) + extra + baseline) * definition["seeds"]


PLANNERS = {
    "constant": _constant,
    "greedy": _greedy,
    "paper": _greedy,
    "grid": _grid,
    "tpe": _tpe,
    "halving": _halving,
}


def plan(definition: Mapping[str, Any], ledger: Ledger) -> Plan:
    return PLANNERS[definition["strategy"]](definition, ledger)
