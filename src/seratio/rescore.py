"""A run's saved weights, read again: scored with test-time augmentation it did not use when it
trained (`seratio evaluate`), or loaded as a model to look inside.

Why: the views change no training, so a run trained before they existed, or with a recipe that
has none (`paper`), need not be retrained to learn what they add. The run directory is only read:
its result.json stays what the run measured.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

from seratio import rundir
from seratio.config import RunConfig, resolve_device
from seratio.datasets import ENV_VAR, dataset_info
from seratio.errors import SeratioError
from seratio.models import CifarResNet, build_model
from seratio.recipes import TTA_VIEWS
from seratio.resume import CHECKPOINT_KEYS
from seratio.runlock import LOCK_FILE
from seratio.session import start_session
from seratio.train import load_weights, score

def _need_recorded_device(run_dir: Path, device: str) -> None:
    """The device in config.json is only the default; name it, and the way out, when this machine lacks it."""
    try:
        resolve_device(device)
    except SeratioError:
        raise SeratioError(
            f"{run_dir} was trained on device {device!r} (its config.json), which this machine lacks; "
            "pass --device cpu or --device auto"
        ) from None


def rescore_run(
    run_dir: Path | str, tta: str | None = None, *, data_dir: str | None = None, device: str | None = None,
) -> dict[str, Any]:
    """Validation and test loss and accuracy of the newest checkpoint in `run_dir` under `tta`.

    `tta` None means the run's own recipe's views. `data_dir` and `device` replace the recorded
    ones, since a run is often scored on another machine than the one that trained it.
    """
    run_dir = Path(run_dir)
    config, recorded_epochs = _recorded_config(run_dir)
    config = dataclasses.replace(config, **{k: v for k, v in {"data_dir": data_dir, "device": device}.items() if v})
    config, moved = _data_here(config, data_dir, run_dir)
    if device is None:
        _need_recorded_device(run_dir, config.device)
    views = config.resolved_recipe().tta if tta is None else tta
    if views not in TTA_VIEWS:
        raise SeratioError(f"test-time augmentation {views!r} is not one of {', '.join(TTA_VIEWS)}")
    checkpoint, notes = rundir.load_checkpoint(run_dir, CHECKPOINT_KEYS)
    if checkpoint is None:
        raise SeratioError(f"{run_dir} holds no usable checkpoint to score{_because(notes)}")
    session = start_session(config, compile_forward=False)
    load_weights(session.model, session.config, checkpoint, run_dir)
    scores = score(session, views)
    return {
        "run": str(run_dir),
        "rr": list(config.rr),
        "seed": config.seed,
        "epoch": checkpoint["epoch"],
        "epochs": recorded_epochs or session.recipe.epochs,
        "tta": views,
        "views": len(TTA_VIEWS[views]),
        "val_images": len(session.data.val),
        "val_loss": scores["val_loss"],
        "val_accuracy": scores["val_accuracy"],
        "test_images": len(session.data.test),
        "test_loss": scores["test_loss"],
        "test_accuracy": scores["test_accuracy"],
        "recorded_test_accuracy": _logged_test_accuracy(checkpoint),
        "seconds": scores["seconds"],
        "warnings": moved + [f"{note}; scored the previous checkpoint instead" for note in notes],
    }


def load_model(run_dir: Path | str, device: str = "cpu") -> CifarResNet:
    """The network a run trained, with the weights of its newest checkpoint (the final ones once it
    has finished), in eval mode: for looking at its SE gates or features from a notebook. It takes
    float images in [0, 1], (B, 3, 32, 32), as `to_float` makes them from the uint8 pixels; training
    normalised nothing else."""
    run_dir = Path(run_dir)
    config, _ = _recorded_config(run_dir)
    checkpoint, notes = rundir.load_checkpoint(run_dir, ("epoch", "model"))
    if checkpoint is None:
        raise SeratioError(f"{run_dir} holds no usable checkpoint to load{_because(notes)}")
    model = build_model(config.model_config())
    load_weights(model, config, checkpoint, run_dir)
    return model.to(resolve_device(device)).eval()


def _data_here(config: RunConfig, data_dir: str | None, run_dir: Path) -> tuple[RunConfig, list[str]]:
    """The run's recorded data directory, or $SERATIO_DATA where that one is not on this machine: a
    run is often scored elsewhere than it trained, and the split depends only on its seeds.
    Without either, the error says where the missing path came from: the user never typed it."""
    recorded = config.data_dir
    if data_dir or recorded is None or Path(recorded).expanduser().exists():
        return config, []
    if not os.environ.get(ENV_VAR):
        raise SeratioError(
            f"the run's data directory {recorded} (recorded in {run_dir / rundir.CONFIG}) is not on this machine; "
            f"pass --data-dir / data_dir or set ${ENV_VAR} to where {dataset_info(config.dataset).title} is here"
        )
    note = f"the run's data directory {recorded} is not on this machine; reading CIFAR from ${ENV_VAR}"
    return dataclasses.replace(config, data_dir=None), [note]


def _recorded_config(run_dir: Path) -> tuple[RunConfig, int | None]:
    """The run's configuration and the epochs its recipe had when it trained: a recipe can change
    later (`fast` went from 40 to 50 epochs), and the run's own length is what it was."""
    rundir.need_run_dir(run_dir, rundir.RUN_HINT)
    path = run_dir / rundir.CONFIG
    if not path.exists():
        if (run_dir / LOCK_FILE).exists():
            raise SeratioError(f"{run_dir} holds no {rundir.CONFIG}, only a lock file: a run starting now, or one "
                               "stopped before it wrote its configuration; nothing to score")
        raise SeratioError(f"{run_dir} holds no {rundir.CONFIG}, so it is not a seratio run; {rundir.RUN_HINT}")
    config, record = rundir.read_run_config(run_dir)
    recipe = record.get("recipe")
    return config, recipe.get("epochs") if isinstance(recipe, dict) else None


def _logged_test_accuracy(checkpoint: dict[str, Any]) -> float | None:
    """The one-view test accuracy the run logged after the scored epoch, so the views' gain shows
    beside it. The checkpoint carries the metric history that metrics.jsonl is written from, so
    its rows end exactly at the epoch of these weights."""
    rows = checkpoint["history"]
    return rows[-1]["test_accuracy"] if rows and rows[-1]["epoch"] == checkpoint["epoch"] else None


def _because(notes: list[str]) -> str:
    return f" ({'; '.join(notes)})" if notes else " (it has not finished an epoch yet)"
