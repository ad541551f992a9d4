"""Two configurations, each trained with several seeds: is the gap between them larger than seed noise?

McNemar's test on two single runs compares two trained networks and says nothing about a rerun
with another seed. With a folder of runs per configuration (the seeds of one configuration, as
`train --seed` or a study leaves them) the comparison is Welch's t-test over seeds, with the
seed-noise arithmetic of a report: what these seeds can find, and what the gap would need.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seratio import stats
from seratio.errors import SeratioError
from seratio.finished_run import (
    finished_runs,
    need_same_test_images,
    need_two,
    read_correctness,
    read_result,
)
from seratio.report.pair import run_settings, setting_differences
from seratio.report.seed_noise import SeedNoise, noise_of


@dataclass(frozen=True)
class Group:
    path: Path
    rr: tuple[int | None, ...] | None
    seeds: tuple[int | None, ...]
    accuracies: tuple[float, ...]  # recomputed from each run's stored predictions
    summary: stats.Summary


@dataclass(frozen=True)
class GroupComparison:
    a: Group
    b: Group
    welch: stats.WelchResult
    noise: SeedNoise | None
    differences: tuple[str, ...]  # settings besides the ratios and seeds, e.g. "epochs 3 vs 5"


def compare_seeds(folder_a: Path | str, folder_b: Path | str) -> GroupComparison:
    """Two folders of seeds, one configuration each (the runs of `train --seed`, or a study's
    artifacts folder): what `seratio compare A B` does with two folders."""
    a, b = need_two(folder_a, folder_b)
    return compare_groups(finished_runs(a), finished_runs(b), a, b)


def compare_groups(runs_a: list[Path], runs_b: list[Path], path_a: Path, path_b: Path) -> GroupComparison:
    """Welch over the seeds of `runs_a` (found in `path_a`) against those of `runs_b`."""
    a, labels, settings_a = _group(path_a, runs_a)
    b, labels_b, settings_b = _group(path_b, runs_b)
    need_same_test_images(path_a, path_b, labels, labels_b)
    for group in (a, b):
        if len(group.accuracies) < 2:
            raise SeratioError(
                f"{group.path} holds 1 finished run; Welch's test over seeds needs at least 2 per side (or give "
                "two single run directories for McNemar's test on their test images)")
    welch = stats.welch_t_test(a.accuracies, b.accuracies)
    noise = noise_of([list(a.accuracies), list(b.accuracies)], min(len(a.accuracies), len(b.accuracies)), welch.diff)
    return GroupComparison(a, b, welch, noise, setting_differences(settings_a, settings_b))


def _group(path: Path, runs: list[Path]) -> tuple[Group, np.ndarray, dict[str, Any]]:
    """The seeds of one configuration, with its labels and settings: the runs must differ in nothing
    but the seed, or the spread between them is not seed noise."""
    accuracies: list[float] = []
    seeds: list[int | None] = []
    labels: np.ndarray | None = None
    first = read_result(runs[0])
    settings = run_settings(runs[0], first)
    for run in runs:
        result = read_result(run)
        predictions, run_labels = read_correctness(run)
        if labels is not None:
            need_same_test_images(runs[0], run, labels, run_labels)
        labels = run_labels
        differences = (setting_differences(settings, run_settings(run, result))
                       + _rr_difference(first.get("rr"), result.get("rr")))
        if differences:
            raise SeratioError(f"{runs[0].name} and {run.name} in {path} differ in {'; '.join(differences)}; a folder to "
                               "compare holds the seeds of one configuration")
        seeds.append(result.get("seed"))
        accuracies.append(float((predictions == run_labels).mean()))
    if len(set(seeds)) < len(seeds):
        raise SeratioError(f"{path} holds two runs of the same seed; each seed counts once")
    rr = first.get("rr")
    group = Group(path, None if rr is None else tuple(rr), tuple(seeds), tuple(accuracies), stats.summarize(accuracies))
    return group, labels, settings  # type: ignore[return-value]  # runs is never empty


def _rr_difference(a: object, b: object) -> tuple[str, ...]:
    return () if a == b else (f"rr {a} vs {b}",)
