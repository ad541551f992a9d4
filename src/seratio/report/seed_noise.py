"""How much runs vary from seed to seed, and what that lets a study's own tests see.

The paper's gap of 0.36 points came from single runs. With several seeds a study measures the
noise that such a gap must beat; from it follow the smallest difference its tests find reliably
and the seeds per configuration that the gap it reports would need. Both use the equal-variance
t-test's power (80% at the 5% level, two-sided, before Holm's adjustment), which Welch's test
shares when the configurations vary alike.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from seratio import stats

if TYPE_CHECKING:  # `compare` uses this module too, and must not load optuna through `records`
    from seratio.records import RR, Aggregate, ConfigResult

ALPHA = 0.05
POWER = 0.8


@dataclass(frozen=True)
class SeedNoise:
    std: float  # pooled seed-to-seed standard deviation of test accuracy, a fraction
    df: int
    configurations: int  # those with two or more seeds, which the pooled value comes from
    seeds: int  # per configuration, as the study ran
    detectable: float  # the true difference found with POWER at these seeds
    gap: float | None  # best found minus baseline, mean test accuracy; None without both
    needed: int | None  # seeds per configuration to find `gap` with POWER; None beyond stats.MOST_SEEDS

    def record(self) -> dict[str, float | int | None]:
        return {"pooled_std": self.std, "df": self.df, "configurations": self.configurations, "seeds": self.seeds,
                "alpha": ALPHA, "power": POWER, "detectable_difference": self.detectable, "gap": self.gap,
                "seeds_needed": self.needed}


def seed_noise(agg: Aggregate, seeds: int, found: ConfigResult | None, baseline_rr: RR) -> SeedNoise | None:
    """A study's noise, and the gap from its baseline to its best found."""
    base = agg.configs.get(baseline_rr)
    gap = None if found is None or base is None or found is base else found.test_accuracy.mean - base.test_accuracy.mean
    return noise_of([[t.test_accuracy for t in c.runs] for c in agg.configs.values()], seeds, gap)  # type: ignore[misc]


def noise_of(groups: list[list[float]], seeds: int, gap: float | None) -> SeedNoise | None:
    """The noise pooled over `groups` (one configuration's seeds each), at `seeds` per configuration.
    None with one seed (McNemar's tests see test-set sampling only) and where the seeds never
    differed (no spread to scale a difference by)."""
    std, df = stats.pooled_std(groups)
    if seeds < 2 or df == 0 or std == 0:
        return None
    return SeedNoise(
        std=std, df=df, configurations=sum(len(g) >= 2 for g in groups), seeds=seeds,
        detectable=stats.detectable_difference(seeds, std, ALPHA, POWER), gap=gap,
        needed=None if gap is None else stats.seeds_needed(gap, std, ALPHA, POWER),
    )


def noise_note(noise: SeedNoise, gap_is: str = "The best found is {gap} points from the baseline",
               holds: str = "this study has them", adjusted: bool = True) -> str:
    """`adjusted` where the test is one of several that Holm's method adjusts (a report's table);
    `compare` makes one test, and there the remark would promise an adjustment that never comes."""
    holm = ", before Holm's adjustment" if adjusted else ""
    text = (f"Seed noise: test accuracy varies by {100 * noise.std:.2f} points from seed to seed (pooled standard "
            f"deviation over {noise.configurations} configurations, {noise.df} degrees of freedom). With "
            f"{noise.seeds} seeds per configuration, a t-test at the 5% level (two-sided{holm}) "
            f"finds a true difference of {100 * noise.detectable:.2f} points {POWER:.0%} of the time.")
    if noise.gap is None or noise.gap == 0:
        return text
    takes = (f"more than {stats.MOST_SEEDS:,} seeds per configuration" if noise.needed is None
             else f"{noise.needed} seeds per configuration")
    have = f"; {holds}" if noise.needed is not None and noise.needed <= noise.seeds else ""
    return (text + " " + gap_is.format(gap=f"{100 * noise.gap:+.2f}") + f": finding a true difference that large "
            f"{POWER:.0%} of the time takes {takes}{have}.")
