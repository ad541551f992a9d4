"""What a report says, decided once: rows per phase, winners, significance, notes.

Every output format (tables, figures, HTML) renders this one structure, so the
Markdown table, the JSON and the HTML page cannot disagree about a winner or a
p-value. A run directory missing for McNemar becomes a note, never a crash,
because reports are often made on a machine that holds the study database but
not every worker's files (see `significance`).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np

from seratio.records import (
    RR, Aggregate, ConfigResult, Excluded, StudyDefinition, StudyRecords, TrialRecord, aggregate,
)
from seratio.report.labels import model_label, short_label
from seratio.report.paper_table import paper_accuracies, paper_note
from seratio.report.seed_noise import SeedNoise, noise_note, seed_noise
from seratio.report.significance import Significance, against_baseline, conclusion
from seratio.strategies import ratio_order

PHASE_ORDER = ("baseline", "constant", "stage1", "stage2", "stage3", "grid", "tpe", "halving")


@dataclass(frozen=True)
class Row:
    phase: str
    config: ConfigResult
    winner: bool


@dataclass(frozen=True)
class Highlight:
    """A model drawn in the curves and confusion figures (paper Figs. 5 and 6).

    `roles` holds "baseline", "best constant" and/or "best found"; one model can be several.
    """

    roles: tuple[str, ...]
    config: ConfigResult

    @property
    def role(self) -> str:
        return " and ".join(self.roles)


@dataclass(frozen=True)
class ReportContent:
    study: StudyRecords
    aggregate: Aggregate
    baseline_rr: RR
    phases: tuple[tuple[str, tuple[Row, ...]], ...]
    significance: dict[RR, Significance]
    highlights: tuple[Highlight, ...]
    selection_note: str
    conclusion: str
    pareto_note: str
    notes: tuple[str, ...]
    seed_noise: SeedNoise | None = None
    paper: dict[RR, float] | None = None  # Table 3's accuracies, where the study trained as the paper did

    @property
    def excluded(self) -> tuple[Excluded, ...]:
        return self.aggregate.excluded

    @property
    def incomplete(self) -> tuple[TrialRecord, ...]:
        return self.aggregate.incomplete


def completed_as(agg: Aggregate, trial: TrialRecord) -> int | None:
    """The finished trial that ran the same configuration and seed, e.g. the retry of a crashed one."""
    config = agg.configs.get(trial.rr) if trial.rr is not None else None
    return next((t.number for t in config.runs if t.seed == trial.seed), None) if config else None


# -- building ----------------------------------------------------------------------------------


def _phase_order(phases: set[str]) -> list[str]:
    known = [p for p in PHASE_ORDER if p in phases]
    return known + sorted(phases - set(PHASE_ORDER))


def _stage_index(phase: str) -> int | None:
    """The stage a greedy phase varies (0 for "stage1"), or None for any other phase."""
    return int(phase[5:]) - 1 if phase.startswith("stage") and phase[5:].isdigit() else None


def _carried_over(phase: str, members: set[RR], configs: dict[RR, ConfigResult]) -> set[RR]:
    """The incumbent a greedy stage phase starts from, as the paper's Table 3 repeats it.

    A stage phase varies one stage with the others fixed; any stored configuration
    with those fixed values (usually the previous winner) belongs in its table.
    """
    stage = _stage_index(phase)
    if stage is None or not members:
        return set()
    fixed = {rr[:stage] + rr[stage + 1 :] for rr in members}
    if len(fixed) != 1:
        return set()
    (others,) = fixed
    return {rr for rr in configs if len(rr) > stage and rr[:stage] + rr[stage + 1 :] == others}


def _first_best(configs: Sequence[ConfigResult]) -> ConfigResult | None:
    """Highest selection mean; a tie goes to the smallest ratios, as the search itself breaks ties."""
    ordered = sorted(configs, key=lambda c: ratio_order(c.rr))
    return max(ordered, key=lambda c: round(c.selection.mean, 12), default=None)  # as strategies.score rounds


def halving_cuts(study: StudyRecords) -> dict[RR, list[int]]:
    """The baseline's cuts under halving, from every trial of it, as the search reads them: a cut
    trial that failed and was then read back by its retry stays cut."""
    cuts: dict[RR, set[int]] = {}
    for t in study.trials:
        if t.halving_cut is not None and t.duplicate_of is None and t.rr is not None:
            cuts.setdefault(t.rr, set()).add(t.halving_cut)
    return {rr: sorted(epochs) for rr, epochs in cuts.items()}


def _may_win(config: ConfigResult, phase: str, lists: dict[str, tuple[int, ...]], cut: Collection[RR]) -> bool:
    """Whether the phase's search could pick `config`. The paper's stage 1 list {2, 4, 8} cannot keep
    an incumbent (16, 16, 16): the table shows it, but the stage's winner is one of its own. A
    baseline that halving would have cut trained on only for the comparisons."""
    if config.rr in cut:
        return False
    stage = _stage_index(phase)
    return stage is None or phase not in lists or config.rr[stage] in lists[phase]


def _phase_rows(
    agg: Aggregate, seeds: int, lists: dict[str, tuple[int, ...]], cut: Collection[RR]
) -> tuple[tuple[str, tuple[Row, ...]], ...]:
    all_phases = {p for c in agg.configs.values() for p in c.phases}
    result = []
    for phase in _phase_order(all_phases):
        members = {rr for rr, c in agg.configs.items() if phase in c.phases}
        members |= _carried_over(phase, members, agg.configs)
        configs = sorted((agg.configs[rr] for rr in members), key=lambda c: ratio_order(c.rr))
        winner = _first_best(_all_seeds([c for c in configs if _may_win(c, phase, lists, cut)], seeds))
        rows = tuple(Row(phase, c, len(configs) > 1 and c is winner) for c in configs)
        if rows:  # a phase with no finished run shows up in the list of unfinished trials instead
            result.append((phase, rows))
    return tuple(result)


def _all_seeds(configs: list[ConfigResult], seeds: int) -> list[ConfigResult]:
    """The configurations measured with every seed, as the search scores them (halving can prune
    one seed of a configuration and keep another); all of them if none is complete."""
    return [c for c in configs if c.selection.n >= seeds] or configs


def _highlights(
    agg: Aggregate, baseline_rr: RR, phases: tuple[tuple[str, tuple[Row, ...]], ...], seeds: int,
    lists: dict[str, tuple[int, ...]], cut: Collection[RR],
) -> tuple[Highlight, ...]:
    """Baseline, best constant and best found (by the selection metric), each shown once.

    The best found is the last phase's winner: for greedy that is the search's own final
    choice, which a tie elsewhere in the table must not replace. A baseline that the search
    also measured, like (8, 8, 8) among the constants, competes like any other configuration.
    """
    searched = {row.config.rr for phase, rows in phases if phase != "baseline" for row in rows}
    others = _all_seeds([c for rr, c in agg.configs.items() if (rr != baseline_rr or rr in searched)
                         and rr not in cut], seeds)
    constant = [c for c in others if None not in c.rr and len(set(c.rr)) == 1]
    last = _all_seeds([row.config for phase, rows in phases[-1:] if phase != "baseline" for row in rows
                       if _may_win(row.config, phase, lists, cut)], seeds)
    chosen = [
        ("baseline", agg.configs.get(baseline_rr)),
        ("best constant", _first_best(constant)),
        ("best found", _first_best(last) or _first_best(others)),
    ]
    roles: dict[RR, list[str]] = {}
    configs: dict[RR, ConfigResult] = {}
    for role, config in chosen:
        if config is not None:
            roles.setdefault(config.rr, []).append(role)
            configs[config.rr] = config
    return tuple(Highlight(tuple(r), configs[rr]) for rr, r in roles.items())


def selection_note(select_on: str) -> str:
    if select_on == "test":
        return (
            "Winners were selected on test accuracy, as in the paper (test-set selection): the same numbers "
            "choose and score a winner, so its test accuracy is optimistically biased."
        )
    return (
        "Winners were selected on validation accuracy (a split held out from the training set); "
        "test accuracy and loss are of the last epoch and played no part in the choice."
    )


def pareto_front(cost: list[float], accuracy: list[float]) -> list[bool]:
    """True where no other point is at least as cheap and as accurate, and strictly better in one."""
    c, a = np.asarray(cost, dtype=float), np.asarray(accuracy, dtype=float)
    front = []
    for i in range(c.size):
        dominated = (c <= c[i]) & (a >= a[i]) & ((c < c[i]) | (a > a[i]))
        front.append(not bool(dominated.any()))
    return front


def _pareto_note(agg: Aggregate, highlights: tuple[Highlight, ...], depth: int) -> str:
    """Answers the paper's open question: do gains only come with more parameters?"""
    sized = [(c, c.params) for c in agg.configs.values() if c.params is not None]
    found = next((h.config for h in highlights if "best found" in h.roles), None)
    if found is None or found.params is None or len(sized) < 2:
        return "Too few configurations with parameter counts for a Pareto analysis."
    acc = found.test_accuracy.mean
    dominating = [c for c, params in sized
                  if params <= found.params and c.test_accuracy.mean >= acc
                  and (params < found.params or c.test_accuracy.mean > acc)]
    name = model_label(found.rr, depth)
    if not dominating:
        return (f"The best found, {name}, is on the accuracy-parameters Pareto front: "
                "no configuration with as few or fewer parameters has a higher mean test accuracy.")
    others = ", ".join(short_label(c.rr, depth) for c in dominating)
    return (f"The best found, {name}, is not on the accuracy-parameters Pareto front: {others} "
            f"{'is' if len(dominating) == 1 else 'are'} at least as accurate with no more parameters.")


def _subset_notes(definition: StudyDefinition) -> list[str]:
    """A quick study's numbers must not be read as the paper's: say which data they come from."""
    parts = [f"a stratified subset of {count:,} {what} images" for count, what in
             ((definition.train_subset, "training"), (definition.test_subset, "test")) if count is not None]
    if not parts:
        return []
    return [f"Quick-run data: this study used {' and '.join(parts)}, so its accuracies are not comparable "
            "with full-data runs or the paper's."]


def _few_seeds_notes(agg: Aggregate) -> list[str]:
    """Two seeds give a t-interval with one degree of freedom: honest, but so wide that it can pass
    0% or 100%, which reads like a bug unless the report says why."""
    two_seeds = sum(c.test_accuracy.n == 2 for c in agg.configs.values())
    if not two_seeds:
        return []
    return [f"{two_seeds} configuration(s) have 2 seeds: their 95% t-intervals have 1 degree of freedom "
            "(t = 12.7), so they span about 9 standard deviations and can reach past 0% or 100%, and Welch "
            "tests between them have little power. 3 to 5 seeds per configuration give useful intervals."]


def build_content(study: StudyRecords, baseline_rr: RR | None = None) -> ReportContent:
    """Decide everything a report shows; `baseline_rr` overrides the study's own baseline."""
    agg = aggregate(study)
    baseline = baseline_rr if baseline_rr is not None else study.definition.baseline
    depth = study.definition.depth
    cut = halving_cuts(study)
    phases = _phase_rows(agg, study.definition.seeds, study.definition.phases, cut)
    significance = against_baseline(agg, baseline, list(dict.fromkeys(r.config.rr for _, rows in phases for r in rows)))
    highlights = _highlights(agg, baseline, phases, study.definition.seeds, study.definition.phases, cut)
    notes = []
    if baseline not in agg.configs:
        notes.append(f"The baseline {model_label(baseline, depth)} has no completed comparable run in this study.")
    notes += [f"{model_label(rr, depth)}, the study's baseline, is in the halving grid: it trained every epoch for "
              f"the comparisons, but a cut would have stopped it (at epoch {', '.join(map(str, epochs))}), so it "
              "could not win." for rr, epochs in cut.items() if rr in agg.configs]
    found = next((h.config for h in highlights if "best found" in h.roles), None)
    noise = seed_noise(agg, study.definition.seeds, found, baseline)
    if noise is not None:
        notes.append(noise_note(noise))
    paper = paper_accuracies(study.definition)
    compared = None if paper is None else paper_note(agg, paper, study.definition.val_size)
    notes += [compared] if compared else []
    notes += _subset_notes(study.definition)
    notes += _few_seeds_notes(agg)
    return ReportContent(
        study=study,
        aggregate=agg,
        baseline_rr=baseline,
        phases=phases,
        significance=significance,
        highlights=highlights,
        selection_note=selection_note(study.definition.select_on),
        conclusion=conclusion(significance, baseline, depth, baseline in agg.configs),
        pareto_note=_pareto_note(agg, highlights, depth),
        notes=tuple(notes),
        seed_noise=noise,
        paper=paper,
    )
