"""A paired comparison of two run directories: accuracies, McNemar's exact test, per-class differences.

Both runs must have been evaluated on the same test images in the same order;
the stored labels are compared to make sure, because pairing mismatched images
would give a meaningless test.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from seratio.config import RunConfig
from seratio.datasets import dataset_info
from seratio.errors import SeratioError
from seratio.finished_run import (
    finished_runs,
    need_same_test_images,
    need_two,
    read_correctness,
    read_result,
)
from seratio.rundir import read_run_config
from seratio.stats import McNemarResult, mcnemar_exact


@dataclass(frozen=True)
class RunSummary:
    path: Path
    rr: tuple[int | None, ...] | None
    seed: int | None
    accuracy: float  # recomputed from the stored predictions
    loss: float | None
    epochs: int | None


@dataclass(frozen=True)
class ClassDifference:
    name: str
    images: int
    accuracy_a: float
    accuracy_b: float


@dataclass(frozen=True)
class PairComparison:
    a: RunSummary
    b: RunSummary
    mcnemar: McNemarResult
    per_class: tuple[ClassDifference, ...]
    differences: tuple[str, ...]  # settings besides ratios and seed, e.g. "epochs 3 vs 5"


def _summary(path: Path, result: dict[str, Any], correct: np.ndarray) -> RunSummary:
    rr = result.get("rr")
    summary = RunSummary(
        path=path,
        rr=None if rr is None else tuple(rr),
        seed=result.get("seed"),
        accuracy=float(correct.mean()),
        loss=result.get("test_loss"),
        epochs=result.get("epochs"),
    )
    return summary


def run_settings(path: Path, result: dict[str, Any]) -> dict[str, Any]:
    """What besides the ratios and the seed shapes a run's accuracy. A run whose config.json cannot be
    read is still compared on its predictions, only without this list."""
    try:
        config, record = read_run_config(path)
    except SeratioError:
        config, record = None, {}
    recipe = record.get("recipe") if isinstance(record.get("recipe"), dict) else {}
    data = record.get("data") if isinstance(record.get("data"), dict) else {}
    return {
        "depth": result.get("depth"),
        "recipe": result.get("recipe"),
        "recipe settings (hash)": result.get("recipe_hash"),
        "epochs": result.get("epochs"),
        "batch size": recipe.get("batch_size"),
        "learning rate": recipe.get("lr"),
        "precision": result.get("precision"),
        "training images": _training_images(data.get("train"), config),
    }


def _training_images(count: Any, config: RunConfig | None) -> str | None:
    """Which images trained the run, not only how many: two draws of 1,000 images from different
    validation splits or split seeds share few of them. All of the training set is the same
    whatever the split seed; any draw depends on the seed and on what validation held out."""
    if not isinstance(count, int) or config is None:
        return None
    if count == dataset_info(config.dataset).train_count:
        return f"{count:,} (all)"
    return f"{count:,} (split seed {config.split_seed}, {config.val_size:,} held out for validation)"


def setting_differences(a: dict[str, Any], b: dict[str, Any]) -> tuple[str, ...]:
    """Settings known for both runs that differ: then A - B is not the ratios' and seeds' doing alone."""
    return tuple(f"{key} {a[key]} vs {b[key]}" for key in a
                 if a[key] is not None and b[key] is not None and a[key] != b[key])


def compare_runs(run_a: Path | str, run_b: Path | str) -> PairComparison:
    """Compare two finished runs image by image."""
    run_a, run_b = need_two(run_a, run_b)
    for path in (run_a, run_b):
        if finished_runs(path) != [path]:
            raise SeratioError(f"{path} is a folder of runs, not one run; compare_seeds compares two folders of seeds")
    pred_a, labels = read_correctness(run_a)
    pred_b, labels_b = read_correctness(run_b)
    need_same_test_images(run_a, run_b, labels, labels_b)
    correct_a, correct_b = pred_a == labels, pred_b == labels
    result_a, result_b = read_result(run_a), read_result(run_b)
    a, b = _summary(run_a, result_a, correct_a), _summary(run_b, result_b, correct_b)
    names = result_a.get("class_names")
    classes = np.unique(labels)
    per_class = tuple(
        ClassDifference(
            name=names[k] if names and k < len(names) else str(k),
            images=int((labels == k).sum()),
            accuracy_a=float(correct_a[labels == k].mean()),
            accuracy_b=float(correct_b[labels == k].mean()),
        )
        for k in (int(c) for c in classes)
    )
    differences = setting_differences(run_settings(run_a, result_a), run_settings(run_b, result_b))
    return PairComparison(a, b, mcnemar_exact(correct_a, correct_b), per_class, differences)
