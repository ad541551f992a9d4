"""Is a configuration really different from the baseline? The tests, and their verdict in words.

One seed per configuration: McNemar's exact test on the paired test predictions, read from the run
directories. Several seeds: Welch's t-test over seeds and its 95% t-interval of the difference. The
p-values are Holm-adjusted over every configuration tested against the same baseline.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from seratio import stats
from seratio.errors import SeratioError
from seratio.finished_run import paired_correctness
from seratio.records import RR, Aggregate, ConfigResult, TrialRecord
from seratio.report.labels import fmt_p, model_label, short_label

ALPHA = 0.05


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


def _mcnemar(config: ConfigResult, base: ConfigResult) -> tuple[stats.McNemarResult | None, str]:
    a, b = config.runs[0], base.runs[0]
    if a.run_dir is None or b.run_dir is None:
        return None, "not tested: a trial has no run_dir attribute"
    try:
        correct_a, correct_b = paired_correctness(a.run_dir, b.run_dir)
    except SeratioError as error:
        return None, f"not tested: {error}"
    for trial, correct in ((a, correct_a), (b, correct_b)):
        mismatch = _stored_mismatch(trial, correct)
        if mismatch:
            return None, f"not tested: {mismatch}"
    return stats.mcnemar_exact(correct_a, correct_b), ""


def _stored_mismatch(trial: TrialRecord, correct: np.ndarray) -> str:
    """The table shows the stored accuracy and McNemar counts the stored predictions: a run directory
    overwritten or pointed at another run would make the two disagree, and the verdict contradict
    the difference beside it."""
    from_predictions = float(correct.mean())
    if trial.test_accuracy is not None and abs(from_predictions - trial.test_accuracy) <= 0.5 / correct.size:
        return ""
    stored = "none" if trial.test_accuracy is None else f"{100 * trial.test_accuracy:.2f}%"
    return (f"the predictions in {trial.run_dir} give {100 * from_predictions:.2f}% test accuracy, but trial "
            f"#{trial.number} stored {stored}; they are not the same run")


def _test(config: ConfigResult, base: ConfigResult) -> Significance:
    """McNemar for single runs (paired images), Welch over seeds otherwise."""
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
        if math.isnan(welch.p_value):
            return Significance(config.rr, "none", diff, nan, nan, nan, nan,
                                f"not tested: every seed here and in the baseline scored the same ({n} and {m} "
                                "seeds), so Welch's test has no variance to measure the difference against")
        detail = f"t = {welch.statistic:.2f}, df = {welch.df:.1f}; Welch 95% t-interval"
        return Significance(config.rr, "welch", diff, welch.p_value, nan, welch.ci_low, welch.ci_high, detail)
    return Significance(
        config.rr, "none", diff, nan, nan, nan, nan,
        f"not tested: {n} seed(s) here and {m} in the baseline (McNemar needs 1 and 1, Welch at least 2 and 2)",
    )


def against_baseline(agg: Aggregate, baseline_rr: RR, in_order: list[RR]) -> dict[RR, Significance]:
    """Every configuration in `in_order` (table order) against the baseline, with Holm-adjusted p-values."""
    base = agg.configs.get(baseline_rr)
    if base is None:
        return {}
    tests = [_test(agg.configs[rr], base) for rr in in_order if rr != baseline_rr]
    adjusted = stats.holm([s.p_value for s in tests])
    return {
        s.rr: Significance(s.rr, s.method, s.diff, s.p_value, p, s.ci_low, s.ci_high, s.detail)
        for s, p in zip(tests, adjusted)
    }


def conclusion(significance: dict[RR, Significance], baseline_rr: RR, depth: int, has_base: bool) -> str:
    base = model_label(baseline_rr, depth)
    if not has_base:
        return f"No significance test ran: the baseline {base} has no completed comparable run."
    tested = [s for s in significance.values() if not math.isnan(s.p_value)]
    if not tested:
        return f"No significance test could run against the baseline {base}; see the notes beside each row."
    strong = [s for s in tested if s.p_holm < ALPHA]
    loose = [s for s in tested if s.p_value < ALPHA and s.p_holm >= ALPHA]
    k, untested = len(tested), len(significance) - len(tested)
    if not strong:
        which = "No configuration" if not untested else f"None of the {k} tested configuration{'s' if k != 1 else ''}"
        text = (
            f"{which} differs significantly from the baseline {base} in test accuracy "
            f"(5% level, Holm-adjusted over {k} test{'s' if k != 1 else ''}): the differences in the table "
            "could be noise."
        )
    else:
        items = ", ".join(
            f"{short_label(s.rr, depth)} ({100 * s.diff:+.2f} points, adjusted p = {fmt_p(s.p_holm)})" for s in strong
        )
        verb = "differs" if len(strong) == 1 else "differ"
        configurations = "configuration" if k == 1 else "configurations"
        text = f"{len(strong)} of {k} {configurations} {verb} significantly from the baseline {base}: {items}."
    if loose:
        names = ", ".join(short_label(s.rr, depth) for s in loose)
        text += f" {names} had p < 0.05 before adjusting for {k} comparisons, which is not evidence on its own."
    if untested:
        text += (f" {untested} other configuration{'s' if untested != 1 else ''} could not be tested; "
                 "see the notes beside each row.")
    if any(s.method == "mcnemar" for s in tested):
        text += (" With one run per configuration, McNemar's test covers only the sampling of test images: "
                 "it compares two trained networks and says nothing about run-to-run (seed) variation.")
    if any(s.method == "welch" for s in tested):
        text += (" Welch's test covers run-to-run (seed) variation as measured on this one test set, "
                 "not the sampling of the test images themselves.")
    return text
