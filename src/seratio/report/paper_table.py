"""The paper's Table 3 beside a study that trained as the paper did, and what the study's seeds say of it.

A reproduction is judged against the paper's numbers, and the paper's are single runs: a study
with several seeds can say how far one run of a configuration strays, and so whether a paper
number is one such run or lies beyond them. A study on a subset, another depth, recipe or
schedule gets no paper column, since its numbers measure something else.
"""

from __future__ import annotations

import math

from seratio import stats
from seratio.records import RR, Aggregate, StudyDefinition
from seratio.report.labels import ratios_text
from seratio.strategies import ratio_order

TABLE3: dict[RR, float] = {
    (None, None, None): 0.9097,
    (2, 2, 2): 0.9086, (4, 4, 4): 0.9112, (8, 8, 8): 0.9117, (16, 16, 16): 0.9106,
    (2, 8, 8): 0.9078, (4, 8, 8): 0.9078,
    (8, 2, 8): 0.9131, (8, 4, 8): 0.9118, (8, 16, 8): 0.9102,
    (8, 2, 2): 0.9139, (8, 2, 4): 0.9088, (8, 2, 16): 0.9153, (8, 2, 32): 0.9122,
}
"""Last-epoch test accuracy (a fraction) of each single run in the paper's Table 3."""

PAPER_TRAINING_IMAGES = 50_000


def paper_accuracies(definition: StudyDefinition) -> dict[RR, float] | None:
    """Table 3's accuracy per configuration, where the study trained SE-ResNet-52 on the whole of
    CIFAR-10 with the paper's recipe, schedule and fp32 (`auto` is fp32 for `paper`); None where
    it did not."""
    d = definition
    same = (d.dataset == "cifar10" and d.depth == 50 and d.recipe == "paper" and d.epochs == 200
            and d.batch_size in (None, 32) and d.lr in (None, 1e-3) and d.train_subset is None and d.test_subset is None
            and d.precision in (None, "auto", "fp32"))
    return dict(TABLE3) if same else None


def one_run_range(values: stats.Summary) -> tuple[float, float]:
    """Where one more run of the configuration lands 95% of the time: the t prediction interval,
    mean ± t · s · √(1 + 1/n), wider than the interval of the mean by the new run's own noise."""
    from scipy import stats as sps

    half = float(sps.t.ppf(0.975, values.n - 1)) * values.std * math.sqrt(1 + 1 / values.n)
    return values.mean - half, values.mean + half


def paper_note(agg: Aggregate, paper: dict[RR, float], val_size: int | None) -> str | None:
    """How the study's numbers stand against Table 3's, in words; None where they share no
    configuration. Every shared configuration is in it: those whose seeds vary are placed against
    the range of one run, the rest (one seed, or seeds that all scored alike) by their gap."""
    shared = [(rr, agg.configs[rr].test_accuracy, paper[rr]) for rr in sorted(paper, key=ratio_order)
              if rr in agg.configs]
    if not shared:
        return None
    seeded = [(rr, p, one_run_range(s)) for rr, s, p in shared if s.n >= 2 and s.std > 0]
    gaps = [s.mean - p for _, s, p in shared if not (s.n >= 2 and s.std > 0)]
    parts = []
    if seeded:
        outside = [(rr, p, (low, high)) for rr, p, (low, high) in seeded if not low <= p <= high]
        parts.append(f"the paper's accuracy lies within this study's 95% range for one run of the same configuration "
                     f"(mean ± t·s·√(1 + 1/n) over its seeds) for {len(seeded) - len(outside)} of {len(seeded)} "
                     "configurations" + ("" if not outside else "; outside: " + "; ".join(
                         f"{ratios_text(rr)} {100 * p:.2f}% against [{100 * low:.2f}, {100 * high:.2f}]"
                         for rr, p, (low, high) in outside)))
    if gaps:
        which = "configurations both have" if not seeded else "other configurations (one seed, or no spread)"
        parts.append(f"over the {len(gaps)} {which}, this study is {100 * sum(gaps) / len(gaps):+.2f} points from "
                     f"the paper on average (from {100 * min(gaps):+.2f} to {100 * max(gaps):+.2f})")
    text = "Against the paper's single runs (Table 3): " + "; ".join(parts) + "."
    if not seeded:
        text += (" One run of a configuration varies with its seed, and the 10,000 test images alone add about "
                 "0.29 points (1 sd); several seeds would say which gaps are more than that.")
    if val_size:
        text += (f" This study trained on {PAPER_TRAINING_IMAGES - val_size:,} images, holding {val_size:,} out for "
                 f"validation; the paper trained on all {PAPER_TRAINING_IMAGES:,}.")
    return text
