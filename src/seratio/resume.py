"""What a run directory already holds decides what `train` does: reuse a finished run, resume an
unfinished one, start afresh, or refuse.

A run directory is identified by its resolved configuration, so a rerun never retrains or
overwrites a finished run, never continues another configuration's checkpoint, and never
continues one under a recipe that this code would train differently.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from seratio import rundir, runlock
from seratio.config import RunConfig, code_version
from seratio.errors import SeratioError
from seratio.finished_run import read_correctness, read_metrics, read_result

ELSEWHERE = "choose another --out (in a study: another --artifacts)"
"""The way out of a refusal: `train` writes to --out, a study's workers under --artifacts."""

CHECKPOINT_KEYS = ("epoch", "history", "seconds", "model", "optimizer", "generator", "torch_rng", "test_predictions")
"""What `train._snapshot` writes, and every seratio checkpoint has held."""


def remove_unused(out: Path, created: list[Path], lock_created: bool) -> None:
    """Take back what this call made for a run refused before it wrote anything, so a typo leaves no
    trace. Only under the lock: the directories it created (run directory first) while they hold
    nothing but the lock and temp files; in a directory that existed before, only the lock file it
    added, and only while no run lives there. Nothing else is ever touched."""
    if not created:
        if lock_created and not (out / rundir.CONFIG).exists():
            (out / runlock.LOCK_FILE).unlink(missing_ok=True)
        return
    if not _holds_no_run(created[0]):
        return
    for path in created[0].iterdir():
        path.unlink()
    with contextlib.suppress(OSError):  # a parent that something else has meanwhile put files into stays
        for path in created:
            path.rmdir()


def _holds_no_run(out: Path) -> bool:
    """Empty, or only the lock and the temp file of a first write that a kill interrupted."""
    return all(rundir.is_temp_file(path) or path.name == runlock.LOCK_FILE for path in out.iterdir())


def reused(finished: dict[str, Any], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    """A finished run is read back, never retrained: say so, since the command returns at once."""
    log(f"{out} already holds the finished run; nothing retrained or overwritten{_other_code(finished)}")
    return finished


def finished_result(config: RunConfig, out: Path, log: Callable[[str], None]) -> dict[str, Any] | None:
    """The stored result when `out` holds this very run finished; None when it holds no finished run."""
    if not (out / rundir.RESULT).exists():
        return None
    stored, _ = rundir.read_run_config(out)
    difference = _difference(stored, config)
    if difference:
        raise SeratioError(f"{out} holds a finished run of a different configuration ({difference}); {ELSEWHERE}")
    try:
        result = read_result(out)
        _check_companions(out, result)
    except SeratioError as error:
        if not _can_rewrite(config, out):
            raise
        raise SeratioError(f"{error}; the last checkpoint can write the result files anew: delete "
                           f"{rundir.RESULT} and resume the run (train --resume, or run the study again)") from error
    except DamagedCompanion as error:
        if _can_rewrite(config, out):
            raise SeratioError(f"{error}; the last checkpoint can write it anew: delete {rundir.RESULT} and "
                               "resume the run (train --resume, or run the study again)") from error
        log(f"warning: {error}; the result stands, but report and compare cannot use the file "
            "(no usable checkpoint of this code's recipe is left to write it anew)")
    return result


def _can_rewrite(config: RunConfig, out: Path) -> bool:
    """Whether deleting result.json and resuming would write the result files anew: a checkpoint
    that loads, under the recipe this code trains. Advice that then fails would have cost the
    user an intact result.json, or a full retraining."""
    checkpoint, _ = rundir.load_checkpoint(out, CHECKPOINT_KEYS)
    if checkpoint is None:
        return False
    try:
        _check_same_recipe(config, rundir.read_run_config(out)[1], out)
    except SeratioError:
        return False
    return True


class DamagedCompanion(Exception):
    """A finished run's metrics or predictions are damaged while its result.json is intact."""


def _check_companions(out: Path, result: dict[str, Any]) -> None:
    """A study reads a finished run back instead of retraining it, so damage to the files that
    report and compare need must show up here, while the checkpoint can still rewrite them, not
    days later in a report."""
    trained = result["epochs"]
    if not isinstance(trained, int) or isinstance(trained, bool):
        raise SeratioError(f"{out / rundir.RESULT} has epochs {trained!r}, not a whole number; it is not the result "
                           "of a finished seratio run")
    try:
        epochs = [row["epoch"] for row in read_metrics(out)]
        predictions, labels = read_correctness(out)
    except SeratioError as error:
        raise DamagedCompanion(str(error)) from error
    if epochs != list(range(1, trained + 1)):
        shown = f"{len(epochs)} epoch(s)" if len(epochs) != trained else "other epoch numbers"
        raise DamagedCompanion(f"{out / rundir.METRICS} records {shown}, but {rundir.RESULT} says the run "
                               f"trained epochs 1 to {trained}")
    problem = _predictions_problem(predictions, labels, result)
    if problem:
        raise DamagedCompanion(f"{out / rundir.PREDICTIONS} and {out / rundir.LABELS} {problem}")


def _predictions_problem(predictions: np.ndarray, labels: np.ndarray, result: dict[str, Any]) -> str | None:
    """What makes the stored predictions not the ones result.json was computed from, or None."""
    matrix = result.get("confusion_matrix") or []
    if matrix and labels.size != sum(map(sum, matrix)):
        return f"hold {labels.size:,} test images, but the confusion matrix counts {sum(map(sum, matrix)):,}"
    classes = len(matrix) or len(result.get("class_names") or [])
    if classes and (min(predictions.min(), labels.min()) < 0 or max(predictions.max(), labels.max()) >= classes):
        return f"hold class indices outside 0 to {classes - 1}"
    stored, recomputed = result.get("test_accuracy"), float((predictions == labels).mean())
    if stored is not None and abs(recomputed - stored) > 1e-9:
        return f"give {100 * recomputed:.2f}% test accuracy, but {rundir.RESULT} says {100 * stored:.2f}%"
    return None


def _other_code(result: dict[str, Any]) -> str:
    """A reused result from other code is still the same configuration, but a reader should know."""
    stored, current = result.get("code_version"), code_version()
    if stored == current:
        return ""
    return f" (warning: trained by code {stored}, this is {current}; delete the directory to retrain)"


def _difference(stored: RunConfig, wanted: RunConfig) -> str:
    """What makes `wanted` another run than `stored`; empty when it is the same run."""
    a, b = _resolved_identity(stored), _resolved_identity(wanted)
    return ", ".join(f"{k}: stored {a[k]!r}, asked {b[k]!r}" for k in a if a[k] != b[k])


def _resolved_identity(config: RunConfig) -> dict[str, Any]:
    """The identity with the recipe's own epochs, batch size and lr where no override was given:
    `--batch-size 32` on the paper recipe trains exactly the run that leaving it out trains (and a
    study always stores them resolved), so the two must count as one run."""
    recipe = config.resolved_recipe()
    return config.identity() | {"epochs": recipe.epochs, "batch_size": recipe.batch_size, "lr": recipe.lr}


def checkpoint_to_resume(
    config: RunConfig, out: Path, resume: bool, log: Callable[[str], None]
) -> dict[str, Any] | None:
    if not (out / rundir.CONFIG).exists():
        if not _holds_no_run(out):
            raise SeratioError(f"{out} is not empty and holds no seratio run; {ELSEWHERE}")
        return None
    stored, record = rundir.read_run_config(out)
    difference = _difference(stored, config)
    if difference:
        raise SeratioError(f"cannot continue {out}: its configuration differs ({difference})")
    checkpoints = (out / rundir.CHECKPOINT, out / rundir.PREVIOUS_CHECKPOINT)
    if not any(path.exists() for path in checkpoints):
        _start_over(out, resume, log)
        return None
    if not resume:
        raise SeratioError(f"{out} holds an unfinished run; pass --resume (resume=True from Python) to continue it or choose another --out")
    _check_same_recipe(config, record, out)
    for path in checkpoints:
        if path.exists() and not path.is_file():  # checked before training: the epoch's checkpoint goes there
            raise SeratioError(f"{path} is not a file, so the run cannot write its checkpoints; move it away and resume")
    checkpoint, notes = rundir.load_checkpoint(out, CHECKPOINT_KEYS)
    for note in notes:
        log(f"warning: {note}; falling back")
    if checkpoint is None:
        log(f"no usable checkpoint in {out}; restarting the run from epoch 0")
    else:
        log(f"resuming {out} after epoch {checkpoint['epoch']}")
    return checkpoint


def _start_over(out: Path, resume: bool, log: Callable[[str], None]) -> None:
    """A run without a checkpoint trains from epoch 0 and rewrites metrics.jsonl. Epochs recorded
    there (a kill during the first checkpoint's write, or checkpoints deleted since) would be lost,
    so only --resume may do that, and it says so."""
    metrics = out / rundir.METRICS
    text = metrics.read_text(errors="replace") if metrics.is_file() else ""
    epochs = sum(1 for line in text.splitlines() if line.strip())
    if epochs and not resume:
        raise SeratioError(
            f"{out} holds an unfinished run whose metrics.jsonl records {epochs} epoch(s) but no checkpoint to "
            "continue from; pass --resume (resume=True from Python) to train it again from epoch 0 (replacing those metrics) or choose "
            "another --out"
        )
    if resume:
        log(f"{out} holds no checkpoint (the run stopped before its first one was written, or it was removed); "
            "training from epoch 0")


def _check_same_recipe(config: RunConfig, record: dict[str, Any], out: Path) -> None:
    """A checkpoint continues only under the recipe it started with (`record`: its config.json):
    code whose recipe changed (its hash) would switch schedules mid-run, and the result would show
    no trace of it."""
    stored, current = record.get("recipe_hash"), config.resolved_recipe().fingerprint()
    if stored is not None and stored != current:
        versions = record.get("versions")
        started_by = versions.get("code_version") if isinstance(versions, dict) else None
        raise SeratioError(
            f"cannot continue {out}: this code trains recipe {config.recipe!r} differently (hash {current}) than "
            f"the run started with (hash {stored}, code {started_by or 'unrecorded'}); finish it with that code "
            f"or {ELSEWHERE}"
        )
