"""What a finished run directory holds for its readers, each value checked.

result.json, metrics.jsonl and the test predictions may come from anywhere (copied, edited, cut
short by a full disk), so every value a report or comparison uses is checked where it is read: a
damaged file is one message that names it, not a crash in a figure or a test. `resume` reads a
finished run through here too before reusing it, so that damage shows while a checkpoint can
still write the files anew.
"""

from __future__ import annotations

import io
import json
import shlex
from pathlib import Path
from typing import Any

import numpy as np

from seratio import rundir
from seratio.errors import SeratioError, int_in


def _need(run_dir: Path | str, name: str) -> Path:
    path = Path(run_dir) / name
    if not path.is_file():
        raise SeratioError(f"{path} not found (run directory missing or incomplete on this machine)")
    return path


MAX_COUNT = 10**9
"""Largest confusion count accepted: no test set holds a billion images, and pooling seeds must not overflow."""


def _shown(value: Any) -> str:
    """A damaged value as it can appear in a one-line message."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_count(value: Any) -> bool:
    return int_in(value, 0, MAX_COUNT)


PAIR_HINT = "give two run directories made by 'seratio train' or a study, or two folders of them"


def need_finished(run_dir: Path) -> None:
    """A run still training (or stopped) has a config but no result yet; saying so beats naming
    the first missing file, which reads like damage."""
    if (run_dir / rundir.CONFIG).is_file() and not (run_dir / rundir.RESULT).exists():
        raise SeratioError(
            f"run {str(run_dir)!r} has not finished: it has no {rundir.RESULT} yet; read it once it has "
            f"(continue a stopped run with: seratio train --resume --out {shlex.quote(str(run_dir))})"
        )


def finished_runs(path: Path | str) -> list[Path]:
    """A run directory, or the runs in a folder; an unfinished run in a folder is named, since
    leaving it out silently would compare fewer seeds than the user thinks. A run copied without
    its config.json counts: it is compared on the files it has."""
    path = rundir.need_run_dir(Path(path), PAIR_HINT)
    runs = [path] if _is_run(path) else sorted(child for child in path.iterdir() if child.is_dir() and _is_run(child))
    if not runs:
        raise SeratioError(f"{path} is neither a run directory (no {rundir.CONFIG} or {rundir.RESULT}) nor a folder of runs")
    for run in runs:
        need_finished(run)
    return runs


def _is_run(path: Path) -> bool:
    return (path / rundir.CONFIG).exists() or (path / rundir.RESULT).exists()


def need_two(a: Path | str, b: Path | str) -> tuple[Path, Path]:
    """A run compared with itself agrees on every image: a typo, not a finding."""
    a, b = Path(a), Path(b)
    if a.resolve() == b.resolve():
        raise SeratioError(f"{a} and {b} are the same run directory; give two different runs")
    return a, b


def read_result(run_dir: Path | str) -> dict[str, Any]:
    """The run's final evaluation (`result.json`), with every value a report or comparison reads
    checked here, so that a damaged file is one message naming it rather than a crash where it is used."""
    need_finished(Path(run_dir))
    path = _need(run_dir, rundir.RESULT)
    result = rundir.read_result(Path(run_dir))
    problem = _result_problem(result)
    if problem:
        raise SeratioError(f"{path} has {problem}; it is not the result of a finished seratio run")
    return result


def _result_problem(result: dict[str, Any]) -> str | None:
    """What is wrong with the fields beyond rundir's checks, in words, or None."""
    rr, seed, names = result.get("rr"), result.get("seed"), result.get("class_names")
    if rr is not None and not (isinstance(rr, list) and all(
            r is None or (isinstance(r, int) and not isinstance(r, bool) and r >= 1) for r in rr)):
        return f"rr {_shown(rr)}, not a list of reduction ratios (integers >= 1 or null)"
    if seed is not None and not (isinstance(seed, int) and not isinstance(seed, bool)):
        return f"seed {_shown(seed)}, not an integer"
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        return f"class_names {_shown(names)}, not a list of strings"
    matrix = result.get("confusion_matrix")
    if not matrix:  # absent or empty: the report draws no confusion figure for this run
        return None
    k = len(matrix) if isinstance(matrix, list) else 0
    if not (k and all(isinstance(row, list) and len(row) == k and all(map(_is_count, row)) for row in matrix)):
        return (f"confusion_matrix {_shown(matrix)}, not a square matrix of counts "
                f"(whole numbers from 0 to {MAX_COUNT:,})")
    if names is not None and len(names) != k:
        return f"{len(names)} class_names for a {k}x{k} confusion_matrix"
    return None


def read_metrics(run_dir: Path | str) -> list[dict[str, Any]]:
    """Per-epoch metrics (`metrics.jsonl`), in epoch order, with the test accuracy that the
    report's curves read checked to be a fraction (or null)."""
    path = _need(run_dir, rundir.METRICS)
    rows = []
    for line_no, line in enumerate(rundir.read_text(path).splitlines(), start=1):
        if line.strip():
            try:
                row = json.loads(line)
            except json.JSONDecodeError as error:
                raise SeratioError(f"{path}:{line_no} is not valid JSON: {error}") from error
            if not isinstance(row, dict) or not isinstance(row.get("epoch"), int):
                raise SeratioError(f"{path}:{line_no} is not an object with an integer 'epoch'")
            accuracy = row.get("test_accuracy")
            if accuracy is not None and not (_is_number(accuracy) and 0 <= accuracy <= 1):
                raise SeratioError(f"{path}:{line_no} has test_accuracy {_shown(accuracy)}, "
                                   "not a fraction from 0 to 1 or null")
            rows.append(row)
    return sorted(rows, key=lambda row: row["epoch"])


def read_correctness(run_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """(predictions, labels) of the test set, checked to be paired one to one."""
    predictions = _read_classes(run_dir, rundir.PREDICTIONS)
    labels = _read_classes(run_dir, rundir.LABELS)
    if predictions.shape != labels.shape or predictions.ndim != 1:
        raise SeratioError(
            f"{run_dir}: test_predictions.npy {predictions.shape} and test_labels.npy {labels.shape} do not pair up"
        )
    return predictions, labels


def _read_classes(run_dir: Path, name: str) -> np.ndarray:
    """One class index per test image; never unpickled, since a run directory may come from anywhere."""
    path = _need(run_dir, name)
    data = rundir.read_bytes(path)
    try:
        array = np.load(io.BytesIO(data), allow_pickle=False)
    except (OSError, ValueError, EOFError) as error:
        raise SeratioError(f"{path} is not a .npy array of class indices ({error})") from error
    if not isinstance(array, np.ndarray) or array.ndim != 1 or not np.issubdtype(array.dtype, np.integer):
        shape = f"{array.dtype} {array.shape}" if isinstance(array, np.ndarray) else "an .npz archive"
        raise SeratioError(f"{path} holds {shape}, not a 1-D integer array of class indices")
    if array.size == 0:
        raise SeratioError(f"{path} holds no class indices; a finished run predicts every test image")
    return array


def paired_correctness(run_a: Path, run_b: Path) -> tuple[np.ndarray, np.ndarray]:
    """Per-image correctness of two runs on the same test images, for McNemar's test."""
    pred_a, labels_a = read_correctness(run_a)
    pred_b, labels_b = read_correctness(run_b)
    need_same_test_images(run_a, run_b, labels_a, labels_b)
    return pred_a == labels_a, pred_b == labels_b


def need_same_test_images(run_a: Path, run_b: Path, labels_a: np.ndarray, labels_b: np.ndarray) -> None:
    """Pairing needs image i to be the same image in both runs; the labels are the check we have.
    Different counts are the usual cause (a --test-subset run against a full one), so say them."""
    if np.array_equal(labels_a, labels_b):
        return
    sizes = (f" ({labels_a.size:,} and {labels_b.size:,} test images: was one run on a --test-subset?)"
             if labels_a.size != labels_b.size else "")
    raise SeratioError(f"{run_a} and {run_b} were evaluated on different test labels{sizes}; they cannot be paired")
