"""Statistics for comparing configurations: summaries over seeds and paired tests.

The paper's best gap (0.36 points, single runs) is close to the test set's own
sampling noise (about 0.29 points, 1 sd, at 91% on 10k images), so every claim
in a report needs a test behind it. Each function takes plain numbers and
returns a small frozen dataclass so the report can show every ingredient, not
only a p-value. Undefined quantities (a spread from one value, a test without
variance) are NaN, never a made-up number.

scipy (a second to import) is imported by the functions that need a distribution, not by
the module: `study status` and every command's `--help` import this module without using them.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from seratio.errors import SeratioError


@dataclass(frozen=True)
class Summary:
    """Mean, sample standard deviation (ddof=1) and a t-based CI of the mean over `n` values."""

    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float
    confidence: float


@dataclass(frozen=True)
class WelchResult:
    """Welch's unequal-variance t-test of mean(a) - mean(b), and the t-interval of that difference
    with the same degrees of freedom: it excludes 0 exactly when p < 1 - confidence."""

    diff: float
    statistic: float
    df: float
    p_value: float
    ci_low: float
    ci_high: float
    confidence: float


@dataclass(frozen=True)
class McNemarResult:
    """McNemar's exact test on paired per-image correctness.

    `b` counts images only A gets right, `c` images only B gets right. Under the
    null both kinds of disagreement are equally likely, so min(b, c) is binomial
    with n = b + c and p = 0.5; the two-sided p-value doubles its lower tail.
    """

    b: int
    c: int
    n: int
    p_value: float


def summarize(values: Sequence[float], confidence: float = 0.95) -> Summary:
    """Summarise replicate runs of one configuration; needs at least one value."""
    from scipy import stats as sps

    _check_level("confidence", confidence)
    x = np.asarray(values, dtype=float)
    if x.size == 0:
        raise SeratioError("summarize needs at least one value")
    mean = float(x.mean())
    if x.size < 2:
        return Summary(1, mean, math.nan, math.nan, math.nan, confidence)
    std = math.sqrt(_variance(x))
    half = float(sps.t.ppf(0.5 + confidence / 2, x.size - 1)) * std / math.sqrt(x.size)
    return Summary(int(x.size), mean, std, mean - half, mean + half, confidence)


def _variance(x: np.ndarray) -> float:
    """Sample variance (ddof=1), exactly 0 for equal values: the mean of three 0.905s is
    0.9049999999999999, and the variance of ~1e-32 that rounding leaves made a Welch test of seeds
    that all scored the same 'significant' at p = 1e-28."""
    if float(np.ptp(x)) <= 1e-12 * max(1.0, float(np.abs(x).max())):
        return 0.0
    return float(x.var(ddof=1))


def welch_t_test(a: Sequence[float], b: Sequence[float], confidence: float = 0.95) -> WelchResult:
    """Welch's t-test: seeds of two configurations need not share a variance.

    The interval is the test's own (t quantile at the Welch-Satterthwaite df). A percentile
    bootstrap over 2-5 seeds was used before and covered only 67-90% instead of 95%: resampling a
    handful of values underestimates their spread, so it excluded 0 where the test saw noise.
    """
    from scipy import stats as sps

    _check_level("confidence", confidence)
    x, y = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if x.size < 2 or y.size < 2:
        raise SeratioError(f"Welch's t-test needs at least 2 values per group, got {x.size} and {y.size}")
    diff = float(x.mean() - y.mean())
    vx, vy = _variance(x) / x.size, _variance(y) / y.size
    se2 = vx + vy
    if se2 == 0:
        return WelchResult(diff, math.nan, math.nan, math.nan, math.nan, math.nan, confidence)
    statistic = diff / math.sqrt(se2)
    df = se2**2 / (vx**2 / (x.size - 1) + vy**2 / (y.size - 1))
    p_value = float(2 * sps.t.sf(abs(statistic), df))
    half = float(sps.t.ppf(0.5 + confidence / 2, df)) * math.sqrt(se2)
    return WelchResult(diff, float(statistic), float(df), p_value, diff - half, diff + half, confidence)


def mcnemar_exact_counts(b: int, c: int) -> McNemarResult:
    """Exact two-sided McNemar from the discordant counts (no mid-p correction)."""
    from scipy import stats as sps

    if b < 0 or c < 0:
        raise SeratioError(f"discordant counts must be non-negative, got b={b}, c={c}")
    n = b + c
    p_value = 1.0 if n == 0 else min(1.0, 2.0 * float(sps.binom.cdf(min(b, c), n, 0.5)))
    return McNemarResult(b, c, n, p_value)


def mcnemar_exact(correct_a: np.ndarray, correct_b: np.ndarray) -> McNemarResult:
    """McNemar on two runs' per-image correctness over the same test images, in the same order:
    True where a run got the image right. Class predictions are refused, not read as truth values."""
    x, y = _correctness(correct_a, "correct_a"), _correctness(correct_b, "correct_b")
    if x.shape != y.shape or x.ndim != 1:
        raise SeratioError(f"paired correctness must be two 1-D arrays of equal length, got {x.shape} and {y.shape}")
    return mcnemar_exact_counts(int(np.sum(x & ~y)), int(np.sum(~x & y)))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm step-down adjusted p-values: a report tests many configurations against one baseline.

    NaN entries (tests that could not run) are kept as NaN and do not count as tests.
    """
    p = np.asarray(p_values, dtype=float)
    if np.any((p < 0) | (p > 1)):
        raise SeratioError(f"p-values {list(p_values)!r} must lie from 0 to 1 (NaN for a test that could not run)")
    adjusted = np.full(p.shape, math.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = order.size
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return [float(v) for v in adjusted]


MOST_SEEDS = 10_000
"""Where `seeds_needed` stops looking: beyond it a difference is too small to chase with seeds."""


def pooled_std(groups: Sequence[Sequence[float]]) -> tuple[float, int]:
    """The seed-to-seed standard deviation shared by several configurations, and its degrees of
    freedom: each group with two or more values adds its squared deviations from its own mean.
    NaN with 0 df when no group has two values."""
    squares, df = 0.0, 0
    for group in groups:
        x = np.asarray(group, dtype=float)
        if x.size >= 2:
            squares += _variance(x) * (x.size - 1)
            df += x.size - 1
    return (math.sqrt(squares / df), df) if df else (math.nan, 0)


def t_test_power(diff: float, std: float, seeds: int, alpha: float = 0.05) -> float:
    """Probability that a two-sided two-sample t-test at level `alpha`, `seeds` runs per side,
    finds a true difference `diff` between means when runs vary by `std` (noncentral t). Welch's
    test, which a report runs, has about this power when both sides vary alike."""
    from scipy import stats as sps

    if seeds < 2:
        raise SeratioError(f"a t-test needs at least 2 seeds per side, got {seeds}")
    _check_level("alpha", alpha)
    _check_std(std)
    df = 2 * seeds - 2
    shift = abs(diff) / (std * math.sqrt(2 / seeds))
    if shift > 40:  # certain to be found, and beyond where scipy's noncentral t is accurate
        return 1.0
    critical = float(sps.t.ppf(1 - alpha / 2, df))
    return float(sps.nct.sf(critical, df, shift) + sps.nct.cdf(-critical, df, shift))


def seeds_needed(diff: float, std: float, alpha: float = 0.05, power: float = 0.8) -> int | None:
    """The fewest seeds per configuration at which the t-test reaches `power` for `diff`; None
    when even MOST_SEEDS do not (or `diff` is 0). Power grows with seeds: doubling brackets the
    answer, and a bisection inside the bracket finds it."""
    _check_level("power", power)
    _check_std(std)
    if diff == 0:
        return None
    low, high = 2, 2
    while t_test_power(diff, std, high, alpha) < power:
        if high >= MOST_SEEDS:
            return None
        low, high = high + 1, min(2 * high, MOST_SEEDS)
    while low < high:
        middle = (low + high) // 2
        low, high = (low, middle) if t_test_power(diff, std, middle, alpha) >= power else (middle + 1, high)
    return low


def detectable_difference(seeds: int, std: float, alpha: float = 0.05, power: float = 0.8) -> float:
    """The smallest true difference that `seeds` runs per configuration find with `power`."""
    from scipy.optimize import brentq

    _check_level("power", power)
    high = std  # t_test_power, called at once, refuses a std that is NaN or not positive
    while t_test_power(high, std, seeds, alpha) < power:
        high *= 2
    return float(brentq(lambda diff: t_test_power(diff, std, seeds, alpha) - power, 0.0, high, xtol=std * 1e-9))


def _check_level(name: str, value: float) -> None:
    """Levels are fractions: a confidence of 95 meant as percent would give NaN intervals silently."""
    if not 0 < value < 1:
        raise SeratioError(f"{name} {value!r} must lie strictly between 0 and 1 (e.g. 0.95, 0.05, 0.8)")


def _check_std(std: float) -> None:
    """A power calculation divides by the seed noise: one seed's NaN spread or a zero one has no answer."""
    if not (math.isfinite(std) and std > 0):
        raise SeratioError(f"seed-to-seed standard deviation {std!r} must be a positive number; "
                           "it takes at least two seeds that differ to measure")


def _correctness(values: np.ndarray | Sequence[bool], name: str) -> np.ndarray:
    x = np.asarray(values)
    if x.dtype != bool and not np.isin(x, (0, 1)).all():
        raise SeratioError(f"{name} holds values other than 0 and 1; give per-image correctness "
                           "(predictions == labels), not class predictions")
    return x.astype(bool)
