"""seratio.stats against scipy/statsmodels references and hand-computed values."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.multitest import multipletests
from statsmodels.stats.power import TTestIndPower

from seratio import stats
from seratio.errors import SeratioError

# Three seeds per configuration, as accuracies in percent (fixed inputs).
SE_8_2_16 = [91.53, 91.21, 91.40]
SE_8_8_8 = [91.17, 90.95, 91.02]
RESNET = [90.97, 90.71, 91.10]

# Accuracies as stored: percent with two decimals (10k test images).
accuracies = st.lists(st.integers(8000, 9500).map(lambda v: v / 100), min_size=2, max_size=8)


def test_summary_matches_scipy_t_interval() -> None:
    s = stats.summarize(SE_8_2_16)
    low, high = sps.t.interval(0.95, df=2, loc=np.mean(SE_8_2_16), scale=sps.sem(SE_8_2_16))
    assert s.n == 3
    assert s.mean == pytest.approx(np.mean(SE_8_2_16))
    assert s.std == pytest.approx(np.std(SE_8_2_16, ddof=1))
    assert (s.ci_low, s.ci_high) == pytest.approx((low, high))


def test_summary_of_one_value_has_no_spread() -> None:
    s = stats.summarize([91.53])
    assert (s.n, s.mean) == (1, 91.53)
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_summary_needs_a_value() -> None:
    with pytest.raises(SeratioError):
        stats.summarize([])


def test_welch_matches_scipy_on_fixed_inputs() -> None:
    ours = stats.welch_t_test(SE_8_2_16, RESNET)
    ref = sps.ttest_ind(SE_8_2_16, RESNET, equal_var=False)
    assert ours.statistic == pytest.approx(ref.statistic)
    assert ours.p_value == pytest.approx(ref.pvalue)
    assert ours.df == pytest.approx(ref.df)
    assert ours.diff == pytest.approx(np.mean(SE_8_2_16) - np.mean(RESNET))


@pytest.mark.filterwarnings("ignore:Precision loss:RuntimeWarning")  # scipy on constant groups
@settings(max_examples=50, deadline=None)
@given(accuracies, accuracies)
def test_welch_matches_scipy_on_random_inputs(a: list[float], b: list[float]) -> None:
    ours = stats.welch_t_test(a, b)
    ref = sps.ttest_ind(a, b, equal_var=False)
    if math.isnan(ours.p_value):  # both groups without spread: equal values, whatever np.var's rounding says
        assert len(set(a)) == 1 and len(set(b)) == 1
    else:
        assert ours.p_value == pytest.approx(ref.pvalue, rel=1e-6, abs=1e-12)


def test_equal_values_have_no_spread_despite_rounding() -> None:
    """The mean of three 0.905s is 0.9049999999999999: a variance of ~1e-32, not 0, made Welch 'significant'."""
    assert math.isnan(stats.welch_t_test([0.905] * 3, [0.9] * 3).p_value)
    assert stats.summarize([0.905] * 3).std == 0.0 and stats.pooled_std([[0.905] * 3, [0.9] * 3]) == (0.0, 4)


def test_welch_without_variance_is_undefined() -> None:
    assert math.isnan(stats.welch_t_test([91.0, 91.0], [90.0, 90.0]).p_value)


def test_welch_needs_two_values_per_group() -> None:
    with pytest.raises(SeratioError, match="at least 2"):
        stats.welch_t_test([91.0], RESNET)


def test_welch_interval_equals_scipys_and_brackets_the_difference() -> None:
    ours = stats.welch_t_test(SE_8_2_16, RESNET)
    ref = sps.ttest_ind(SE_8_2_16, RESNET, equal_var=False).confidence_interval(0.95)
    assert (ours.ci_low, ours.ci_high) == pytest.approx((ref.low, ref.high), rel=1e-9)
    assert ours.ci_low <= ours.diff <= ours.ci_high and ours.confidence == 0.95
    assert ours.diff == pytest.approx(np.mean(SE_8_2_16) - np.mean(RESNET))


@pytest.mark.parametrize("seeds", [2, 3, 5])
def test_welch_interval_covers_at_least_95_percent_with_few_seeds_and_agrees_with_its_p_value(seeds: int) -> None:
    """No true difference, seed noise only: a 95% interval may exclude 0 in at most about 5% of
    studies (the bootstrap it replaced did in 33% with 2 seeds and 17% with 3), and exactly when
    p < 0.05. Welch is somewhat conservative with 2 seeds (about 2%), which errs on the safe side."""
    rng = np.random.default_rng(seeds)
    draws = rng.normal(91.2, 0.15, size=(4000, 2, seeds))
    results = [stats.welch_t_test(a, b) for a, b in draws]
    excluded = np.array([r.ci_low > 0 or r.ci_high < 0 for r in results])
    assert 0.01 <= excluded.mean() <= 0.06, excluded.mean()
    assert (excluded == np.array([r.p_value < 0.05 for r in results])).all()


def test_mcnemar_hand_computed_example() -> None:
    # b=10, c=2: p = 2 * P(X <= 2 | n=12, 1/2) = 2 * (1 + 12 + 66) / 4096.
    result = stats.mcnemar_exact_counts(10, 2)
    assert result.p_value == pytest.approx(2 * 79 / 4096)
    assert result.p_value == pytest.approx(0.0385742, abs=1e-7)
    assert (result.b, result.c, result.n) == (10, 2, 12)


@pytest.mark.parametrize(("b", "c"), [(10, 2), (2, 10), (0, 0), (5, 5), (0, 7), (31, 52), (400, 350)])
def test_mcnemar_matches_statsmodels(b: int, c: int) -> None:
    ref = sm_mcnemar([[100, b], [c, 50]], exact=True)
    assert stats.mcnemar_exact_counts(b, c).p_value == pytest.approx(ref.pvalue)


def test_mcnemar_from_paired_correctness() -> None:
    rng = np.random.default_rng(3)
    a = rng.random(10_000) < 0.915
    b = rng.random(10_000) < 0.91
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    ours = stats.mcnemar_exact(a, b)
    assert (ours.b, ours.c) == (table[0][1], table[1][0])
    assert ours.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue)


def test_mcnemar_rejects_unpaired_arrays() -> None:
    with pytest.raises(SeratioError, match="equal length"):
        stats.mcnemar_exact(np.ones(5, bool), np.ones(6, bool))


def test_holm_matches_statsmodels_and_keeps_nan() -> None:
    p = [0.01, 0.04, 0.03, 0.5, 0.002]
    expected = multipletests(p, method="holm")[1]
    assert stats.holm(p) == pytest.approx(list(expected))
    with_nan = stats.holm([0.01, math.nan, 0.04])
    assert math.isnan(with_nan[1])
    assert [with_nan[0], with_nan[2]] == pytest.approx(list(multipletests([0.01, 0.04], method="holm")[1]))


def test_pooled_std_adds_each_groups_squared_deviations_and_skips_single_values() -> None:
    std, df = stats.pooled_std([SE_8_2_16, SE_8_8_8, [90.0], RESNET])
    squares = sum(((np.asarray(g) - np.mean(g)) ** 2).sum() for g in (SE_8_2_16, SE_8_8_8, RESNET))
    assert (std, df) == (pytest.approx(math.sqrt(squares / 6)), 6)
    assert math.isnan(stats.pooled_std([[0.9], [0.8]])[0]) and stats.pooled_std([[0.9]])[1] == 0


@pytest.mark.parametrize(("diff", "std", "seeds"), [(0.36, 0.15, 3), (0.2, 0.2, 5), (1.0, 0.3, 2), (0.05, 0.2, 40)])
def test_t_test_power_matches_statsmodels(diff: float, std: float, seeds: int) -> None:
    expected = TTestIndPower().power(effect_size=diff / std, nobs1=seeds, alpha=0.05, ratio=1, alternative="two-sided")
    assert stats.t_test_power(diff, std, seeds) == pytest.approx(expected, rel=1e-9)
    assert stats.t_test_power(-diff, std, seeds) == pytest.approx(expected, rel=1e-9)


@pytest.mark.parametrize(("diff", "std"), [(0.36, 0.15), (0.36, 0.2), (0.1, 0.2), (0.05, 0.3)])
def test_seeds_needed_is_the_first_whole_number_of_seeds_at_80_percent_power(diff: float, std: float) -> None:
    exact = TTestIndPower().solve_power(effect_size=diff / std, power=0.8, alpha=0.05)
    assert stats.seeds_needed(diff, std) == math.ceil(exact)
    assert stats.seeds_needed(diff, std) == stats.seeds_needed(-diff, std)


def test_seeds_needed_gives_up_beyond_the_largest_study() -> None:
    assert stats.seeds_needed(1e-6, 0.01) is None and stats.seeds_needed(0.0, 0.01) is None
    assert stats.seeds_needed(5.0, 0.1) == 2  # a large gap: two seeds already find it


@pytest.mark.parametrize("seeds", [2, 3, 5, 10])
def test_detectable_difference_is_where_power_reaches_80_percent(seeds: int) -> None:
    exact = 0.15 * TTestIndPower().solve_power(nobs1=seeds, power=0.8, alpha=0.05)
    assert stats.detectable_difference(seeds, 0.15) == pytest.approx(exact, rel=1e-6)


@pytest.mark.parametrize(("call", "message"), [
    (lambda: stats.summarize([0.91, 0.92], confidence=95), "confidence 95 must lie strictly between 0 and 1"),
    (lambda: stats.welch_t_test([0.91, 0.92], [0.90, 0.91], confidence=0), "confidence 0 must lie"),
    (lambda: stats.seeds_needed(0.0036, 0.0015, power=1.5), "power 1.5 must lie"),
    (lambda: stats.seeds_needed(0.0036, 0.0015, alpha=0), "alpha 0 must lie"),
    (lambda: stats.seeds_needed(0.0036, stats.summarize([0.91]).std), "deviation nan must be a positive number"),
    (lambda: stats.seeds_needed(0.0036, 0.0), "deviation 0.0 must be a positive number"),
    (lambda: stats.detectable_difference(4, 0.0), "deviation 0.0 must be a positive number"),
    (lambda: stats.holm([1.5, -0.1]), r"p-values \[1.5, -0.1\] must lie from 0 to 1"),
    (lambda: stats.mcnemar_exact(np.array([3, 0, 7]), np.array([3, 1, 2])), "correct_a holds values other than 0 and 1"),
])
def test_values_a_test_cannot_mean_are_refused_by_name(call: object, message: str) -> None:
    """A percent for a fraction, one seed's NaN spread or class predictions gave quiet wrong answers before."""
    with pytest.raises(SeratioError, match=message):
        call()  # type: ignore[operator]


def test_zero_one_correctness_is_read_as_truth_values() -> None:
    assert stats.mcnemar_exact(np.array([1, 0, 1]), np.array([0, 0, 1])) == stats.mcnemar_exact_counts(1, 0)
