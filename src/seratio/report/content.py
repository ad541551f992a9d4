"""What a report says, decided once: rows per phase, winners, significance, notes.

Every output format (tables, figures, HTML) renders this one structure, so the
Markdown table, the JSON and the HTML page cannot disagree about a winner or a
p-value. Reading run directories for McNemar happens here; a missing directory
becomes a note, never a crash, because reports are often made on a machine
that holds the study database but not every worker's files.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seratio import stats
from seratio.errors import SeratioError
from seratio.records import (
    RR,
    Aggregate,
    ConfigResult,
    Excluded,
    StudyRecords,
    TrialRecord,
    aggregate,
    paired_correctness,
)

ALPHA = 0.05
PHASE_ORDER = ("baseline", "constant", "stage1", "stage2", "stage3", "grid", "tpe", "halving")
PHASE_TITLES = {
    "baseline": "Baseline",
    "constant": "Constant reduction ratio",
    "stage1": "Stage 1 greedy RR search",
    "stage2": "Stage 2 greedy RR search",
    "stage3": "Stage 3 greedy RR search",
    "grid": "Grid search",
    "tpe": "TPE search",
    "halving": "Successive halving",
}


@dataclass(frozen=True)
class Significance:
    """One configuration against the baseline; `diff` is in accuracy (fraction), config minus baseline."""

    rr: RR
    method: str  # "mcnemar", "welch" or "none"
    diff: float
    p_value: float
    p_holm: float
    ci_low: float
    ci_high: float
    detail: str


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

    @property
    def excluded(self) -> tuple[Excluded, ...]:
        return self.aggregate.excluded

    @property
    def incomplete(self) -> tuple[TrialRecord, ...]:
        return self.aggregate.incomplete


# -- naming ------------------------------------------------------------------------------------


def ratios_text(rr: RR) -> str:
    """Paper style "(8, 2, 16)"; a stage without SE shows as "-"; no SE at all as "-"."""
    if all(r is None for r in rr):
        return "-"
    return "(" + ", ".join("-" if r is None else str(r) for r in rr) + ")"


def model_name(rr: RR, depth: int) -> str:
    return f"ResNet-{depth}" if all(r is None for r in rr) else f"SE-ResNet-{depth}"


def model_label(rr: RR, depth: int) -> str:
    ratios = ratios_text(rr)
    return model_name(rr, depth) + ("" if ratios == "-" else f" {ratios}")


def short_label(rr: RR, depth: int) -> str:
    """Ratios alone identify an SE model once a caption names the network; the plain one keeps its name."""
    ratios = ratios_text(rr)
    return model_name(rr, depth) if ratios == "-" else ratios


def model_slug(rr: RR) -> str:
    """File-name-safe model id: `resnet` or `se_8_2_16` (`none` for a stage without SE)."""
    if all(r is None for r in rr):
        return "resnet"
    return "se_" + "_".join("none" if r is None else str(r) for r in rr)


def completed_as(agg: Aggregate, trial: TrialRecord) -> int | None:
    """The finished trial that ran the same configuration and seed, e.g. the retry of a crashed one."""
    config = agg.configs.get(trial.rr) if trial.rr is not None else None
    return next((t.number for t in config.runs if t.seed == trial.seed), None) if config else None


def phase_title(phase: str) -> str:
    return PHASE_TITLES.get(phase, phase)


# -- building ----------------------------------------------------------------------------------


def _rr_key(rr: RR) -> tuple[int, ...]:
    return tuple(-1 if r is None else r for r in rr)


def _phase_order(phases: set[str]) -> list[str]:
    known = [p for p in PHASE_ORDER if p in phases]
    return known + sorted(phases - set(PHASE_ORDER))


def _carried_over(phase: str, members: set[RR], configs: dict[RR, ConfigResult]) -> set[RR]:
    """The incumbent a greedy stage phase starts from, as the paper's Table 3 repeats it.

    A stage phase varies one stage with the others fixed; any stored configuration
    with those fixed values (usually the previous winner) belongs in its table.
    """
    if not phase.startswith("stage") or not phase[5:].isdigit() or not members:
        return set()
    stage = int(phase[5:]) - 1
    fixed = {rr[:stage] + rr[stage + 1 :] for rr in members}
    if len(fixed) != 1:
        return set()
    (others,) = fixed
    return {rr for rr in configs if len(rr) > stage and rr[:stage] + rr[stage + 1 :] == others}


def _first_best(configs: Sequence[ConfigResult]) -> ConfigResult | None:
    """Highest selection mean; a tie goes to the smallest ratios, as the search itself breaks ties."""
    ordered = sorted(configs, key=lambda c: _rr_key(c.rr))
    return max(ordered, key=lambda c: c.selection.mean, default=None)


def _phase_rows(agg: Aggregate) -> tuple[tuple[str, tuple[Row, ...]], ...]:
    all_phases = {p for c in agg.configs.values() for p in c.phases}
    result = []
    for phase in _phase_order(all_phases):
        members = {rr for rr, c in agg.configs.items() if phase in c.phases}
        members |= _carried_over(phase, members, agg.configs)
        configs = sorted((agg.configs[rr] for rr in members), key=lambda c: _rr_key(c.rr))
        winner = _first_best(configs)
        rows = tuple(Row(phase, c, len(configs) > 1 and c is winner) for c in configs)
        if rows:  # a phase with no finished run shows up in the list of unfinished trials instead
            result.append((phase, rows))
    return tuple(result)


def _mcnemar(config: ConfigResult, base: ConfigResult) -> tuple[stats.McNemarResult | None, str]:
    a, b = config.runs[0], base.runs[0]
    if a.run_dir is None or b.run_dir is None:
        return None, "not tested: a trial has no run_dir attribute"
    try:
        correct_a, correct_b = paired_correctness(a.run_dir, b.run_dir)
    except SeratioError as error:
        return None, f"not tested: {error}"
    return stats.mcnemar_exact(correct_a, correct_b), ""


def _test(config: ConfigResult, base: ConfigResult) -> Significance:
    """McNemar for single runs (paired images), Welch + bootstrap over seeds otherwise."""
    diff = config.test_accuracy.mean - base.test_accuracy.mean
    nan = math.nan
    n, m = config.test_accuracy.n, base.test_accuracy.n
    if n == 1 and m == 1:
        result, why = _mcnemar(config, base)
        if result is None:
            return Significance(config.rr, "none", diff, nan, nan, nan, nan, why)
        detail = f"{result.b} images right only here, {result.c} only in the baseline"
        return Significance(config.rr, "mcnemar", diff, result.p_value, nan, nan, nan, detail)
    if n >= 2 and m >= 2:
        a = [t.test_accuracy for t in config.runs]
        b = [t.test_accuracy for t in base.runs]
        welch = stats.welch_t_test(a, b)  # type: ignore[arg-type]  # complete runs have accuracies
        boot = stats.bootstrap_diff_ci(a, b)  # type: ignore[arg-type]
        detail = f"t = {welch.statistic:.2f}, df = {welch.df:.1f}; CI from {boot.resamples} bootstrap resamples"
        return Significance(config.rr, "welch", diff, welch.p_value, nan, boot.low, boot.high, detail)
    return Significance(
        config.rr, "none", diff, nan, nan, nan, nan,
        f"not tested: {n} seed(s) here and {m} in the baseline (McNemar needs 1 and 1, Welch at least 2 and 2)",
    )


def _significance(agg: Aggregate, baseline_rr: RR, phases: tuple[tuple[str, tuple[Row, ...]], ...]
                  ) -> dict[RR, Significance]:
    """Every configuration against the baseline, in table order, with Holm-adjusted p-values."""
    base = agg.configs.get(baseline_rr)
    if base is None:
        return {}
    in_order = list(dict.fromkeys(row.config.rr for _, rows in phases for row in rows))
    tests = [_test(agg.configs[rr], base) for rr in in_order if rr != baseline_rr]
    adjusted = stats.holm([s.p_value for s in tests])
    return {
        s.rr: Significance(s.rr, s.method, s.diff, s.p_value, p, s.ci_low, s.ci_high, s.detail)
        for s, p in zip(tests, adjusted)
    }


def _highlights(
    agg: Aggregate, baseline_rr: RR, phases: tuple[tuple[str, tuple[Row, ...]], ...]
) -> tuple[Highlight, ...]:
    """Baseline, best constant and best found (by the selection metric), each shown once.

    The best found is the last phase's winner: for greedy that is the search's own final
    choice, which a tie elsewhere in the table must not replace.
    """
    others = [c for rr, c in agg.configs.items() if rr != baseline_rr]
    constant = [c for c in others if None not in c.rr and len(set(c.rr)) == 1]
    last = [row.config for _, rows in phases[-1:] for row in rows if row.config.rr != baseline_rr]
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


def fmt_p(p: float) -> str:
    if math.isnan(p):
        return "n/a"
    return f"{p:.2g}" if p < 0.001 else f"{p:.3f}"


def _conclusion(significance: dict[RR, Significance], baseline_rr: RR, depth: int, has_base: bool) -> str:
    base = model_label(baseline_rr, depth)
    if not has_base:
        return f"No significance test ran: the baseline {base} has no completed comparable run."
    tested = [s for s in significance.values() if not math.isnan(s.p_value)]
    if not tested:
        return f"No significance test could run against the baseline {base}; see the notes beside each row."
    strong = [s for s in tested if s.p_holm < ALPHA]
    loose = [s for s in tested if s.p_value < ALPHA and s.p_holm >= ALPHA]
    k = len(tested)
    if not strong:
        text = (
            f"No configuration differs significantly from the baseline {base} in test accuracy "
            f"(5% level, Holm-adjusted over {k} test{'s' if k != 1 else ''}): the differences in the table "
            "could be noise."
        )
    else:
        items = ", ".join(
            f"{ratios_text(s.rr)} ({100 * s.diff:+.2f} points, adjusted p = {fmt_p(s.p_holm)})" for s in strong
        )
        verb = "differs" if len(strong) == 1 else "differ"
        configurations = "configuration" if k == 1 else "configurations"
        text = f"{len(strong)} of {k} {configurations} {verb} significantly from the baseline {base}: {items}."
    if loose:
        names = ", ".join(ratios_text(s.rr) for s in loose)
        text += f" {names} had p < 0.05 before adjusting for {k} comparisons, which is not evidence on its own."
    if any(s.method == "mcnemar" for s in tested):
        text += (" With one run per configuration, McNemar's test covers only the sampling of test images: "
                 "it compares two trained networks and says nothing about run-to-run (seed) variation.")
    return text


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


def build_content(study: StudyRecords, baseline_rr: RR | None = None) -> ReportContent:
    """Decide everything a report shows; `baseline_rr` overrides the study's own baseline."""
    agg = aggregate(study)
    baseline = baseline_rr if baseline_rr is not None else study.definition.baseline
    depth = study.definition.depth
    phases = _phase_rows(agg)
    significance = _significance(agg, baseline, phases)
    highlights = _highlights(agg, baseline, phases)
    notes = []
    if baseline not in agg.configs:
        notes.append(f"The baseline {model_label(baseline, depth)} has no completed comparable run in this study.")
    return ReportContent(
        study=study,
        aggregate=agg,
        baseline_rr=baseline,
        phases=phases,
        significance=significance,
        highlights=highlights,
        selection_note=selection_note(study.definition.select_on),
        conclusion=_conclusion(significance, baseline, depth, baseline in agg.configs),
        pareto_note=_pareto_note(agg, highlights, depth),
        notes=tuple(notes),
    )
