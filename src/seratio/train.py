"""One training run: model + recipe + data + seed -> metrics, checkpoints, result.

The run directory is the unit of durability. A checkpoint holds everything
that decides the rest of the run (weights, optimizer, the data generator and
the metric history), so a resumed run ends bit-identical to an uninterrupted
one on CPU, and a kill loses at most the current epoch.
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seratio import rundir
from seratio.augment import augment_batch, to_float
from seratio.config import RunConfig, environment, resolve_device
from seratio.data import CifarData, Split, load_cifar
from seratio.errors import SeratioError
from seratio.models import build_model, count_macs, count_params, kernel_parameters, se_hidden
from seratio.progress import EpochProgress
from seratio.recipes import Recipe

EVAL_BATCH = 1000
EpochCallback = Callable[[dict[str, Any]], None]


class TrainingDiverged(SeratioError):
    """The loss became NaN or infinite; the run cannot recover by itself."""


@dataclass
class _Session:
    """What one run needs in memory while it trains."""

    config: RunConfig
    recipe: Recipe
    device: torch.device
    data: CifarData
    model: nn.Module
    optimizer: torch.optim.Optimizer
    generator: torch.Generator
    autocast_dtype: torch.dtype | None
    channels_last: bool


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
    on_epoch: EpochCallback | None = None,
) -> dict[str, Any]:
    """Train (or finish, or just read back) the run that `config` defines in `out_dir`."""
    out = Path(out_dir)
    finished = _finished_result(config, out)
    if finished is not None:
        log(f"{out} already holds the finished run; nothing retrained or overwritten")
        return finished
    checkpoint = _checkpoint_to_resume(config, out, resume, log)
    session = _start_session(config)
    state = _restore(session, checkpoint) if checkpoint else {"epoch": 0, "history": [], "seconds": 0.0}
    rundir.write_json(out / rundir.CONFIG, _config_record(session))
    with EpochProgress(enabled=show_progress) as progress:
        while state["epoch"] < session.recipe.epochs:
            row = _run_epoch(session, state, progress)
            rundir.write_metrics(out / rundir.METRICS, state["history"])
            rundir.save_checkpoint(out, _snapshot(session, state))
            log(_epoch_line(row, session.recipe.epochs))
            if on_epoch is not None:
                on_epoch(row)
    return _finish(session, state, out)


def _finished_result(config: RunConfig, out: Path) -> dict[str, Any] | None:
    result_path = out / rundir.RESULT
    if not result_path.exists():
        return None
    stored = RunConfig.from_dict(rundir.read_json(out / rundir.CONFIG)["run"])
    if stored.identity() != config.identity():
        raise SeratioError(
            f"{out} holds a finished run of a different configuration "
            f"({_difference(stored, config)}); choose another --out"
        )
    return rundir.read_json(result_path)


def _difference(stored: RunConfig, wanted: RunConfig) -> str:
    a, b = stored.identity(), wanted.identity()
    return ", ".join(f"{k}: stored {a[k]!r}, asked {b[k]!r}" for k in a if a[k] != b[k])


def _make_run_dir(out: Path) -> None:
    """Fail before loading any data when `out` cannot be a run directory (a file, or under one)."""
    if out.exists() and not out.is_dir():
        raise SeratioError(f"run directory {out} is a file, not a directory; choose another --out")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SeratioError(f"cannot create run directory {out}: {error.strerror or error}") from None


def _checkpoint_to_resume(
    config: RunConfig, out: Path, resume: bool, log: Callable[[str], None]
) -> dict[str, Any] | None:
    _make_run_dir(out)
    if not (out / rundir.CONFIG).exists():
        if any(not rundir.is_temp_file(path) for path in out.iterdir()):
            raise SeratioError(f"{out} is not empty and holds no seratio run; choose another --out")
        return None  # empty, or only the temp file of a first write that a kill interrupted
    stored = RunConfig.from_dict(rundir.read_json(out / rundir.CONFIG)["run"])
    if stored.identity() != config.identity():
        raise SeratioError(f"cannot continue {out}: its configuration differs ({_difference(stored, config)})")
    has_state = (out / rundir.CHECKPOINT).exists() or (out / rundir.PREVIOUS_CHECKPOINT).exists()
    if not has_state:
        return None
    if not resume:
        raise SeratioError(f"{out} holds an unfinished run; pass --resume to continue it or choose another --out")
    checkpoint, notes = rundir.load_checkpoint(out)
    for note in notes:
        log(f"warning: {note}; falling back")
    if checkpoint is None:
        log(f"no usable checkpoint in {out}; restarting the run from epoch 0")
    else:
        log(f"resuming {out} after epoch {checkpoint['epoch']}")
    return checkpoint


def _start_session(config: RunConfig) -> _Session:
    recipe = config.resolved_recipe()
    device = resolve_device(config.device)
    data = load_cifar(
        config.dataset, config.data_dir, val_size=config.val_size,
        train_subset=config.train_subset, split_seed=config.split_seed, device=device,
    )
    torch.manual_seed(config.seed)
    model_config = config.model_config(data.num_classes)
    channels_last = device.type == "cuda" and recipe.cuda_channels_last
    model = build_model(model_config).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    return _Session(
        config=config, recipe=recipe, device=device, data=data, model=model,
        optimizer=_optimizer(model, recipe), generator=generator,
        autocast_dtype=_autocast_dtype(config, recipe, device), channels_last=channels_last,
    )


def _autocast_dtype(config: RunConfig, recipe: Recipe, device: torch.device) -> torch.dtype | None:
    if config.precision == "bf16" or (config.precision == "auto" and recipe.cuda_bf16 and device.type == "cuda"):
        return torch.bfloat16
    return None


def _optimizer(model: nn.Module, recipe: Recipe) -> torch.optim.Optimizer:
    """Weight decay on conv/FC kernels only: Keras L2 never touched BN parameters or biases."""
    kernels = kernel_parameters(model)
    kernel_ids = {id(p) for p in kernels}
    others = [p for p in model.parameters() if id(p) not in kernel_ids]
    groups = [
        {"params": kernels, "weight_decay": recipe.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    if recipe.optimizer == "adam":
        return torch.optim.Adam(groups, lr=recipe.lr, eps=recipe.adam_eps, foreach=True)
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True, foreach=True)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def _autocast(session: _Session) -> contextlib.AbstractContextManager[Any]:
    if session.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(session.device.type, dtype=session.autocast_dtype)


def _prepare(session: _Session, images: torch.Tensor) -> torch.Tensor:
    batch = to_float(images)
    return batch.contiguous(memory_format=torch.channels_last) if session.channels_last else batch


def _train_epoch(session: _Session, epoch: int, progress: EpochProgress) -> tuple[float, float]:
    """One pass over the shuffled training split; metrics stay on the device until the end."""
    recipe, split, model = session.recipe, session.data.train, session.model
    model.train()
    count = len(split)
    order = torch.randperm(count, generator=session.generator, device=session.device)
    steps = math.ceil(count / recipe.batch_size)
    loss_sum = torch.zeros((), device=session.device)
    correct = torch.zeros((), device=session.device, dtype=torch.long)
    progress.start_epoch(epoch + 1, steps)
    _set_lr(session.optimizer, recipe.lr_at(epoch))
    for step in range(steps):
        index = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        images = augment_batch(
            split.images[index], session.generator, flip_p=recipe.flip_p, max_shift=recipe.max_shift
        )
        labels = split.labels[index]
        if recipe.steps_lr_within_epoch():
            _set_lr(session.optimizer, recipe.lr_at(epoch, (step + 1) / steps))
        with _autocast(session):
            logits = model(_prepare(session, images))
            loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
        session.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        session.optimizer.step()
        loss_sum += loss.detach() * len(index)
        correct += (logits.argmax(1) == labels).sum()
        progress.advance(step + 1, len(index), loss_sum, correct)
    return loss_sum.item() / count, correct.item() / count


@torch.inference_mode()
def evaluate(session: _Session, split: Split) -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and predictions in large batches, with one host sync at the end."""
    session.model.eval()
    if len(split) == 0:
        return math.nan, math.nan, torch.empty(0, dtype=torch.long)
    loss_sum = torch.zeros((), device=session.device)
    predictions = []
    for start in range(0, len(split), EVAL_BATCH):
        images = split.images[start : start + EVAL_BATCH]
        labels = split.labels[start : start + EVAL_BATCH]
        with _autocast(session):
            logits = session.model(_prepare(session, images)).float()
        loss_sum += F.cross_entropy(logits, labels, reduction="sum")
        predictions.append(logits.argmax(1))
    predicted = torch.cat(predictions)
    accuracy = (predicted == split.labels).sum().item() / len(split)
    return loss_sum.item() / len(split), accuracy, predicted.cpu()


def _nullable(value: float) -> float | None:
    return None if math.isnan(value) else value


def _run_epoch(session: _Session, state: dict[str, Any], progress: EpochProgress) -> dict[str, Any]:
    epoch = state["epoch"]
    started = time.perf_counter()
    train_loss, train_accuracy = _train_epoch(session, epoch, progress)
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"training diverged: train loss is {train_loss} in epoch {epoch + 1}")
    val_loss, val_accuracy, _ = evaluate(session, session.data.val)
    test_loss, test_accuracy, state["test_predictions"] = evaluate(session, session.data.test)
    seconds = time.perf_counter() - started
    row = {
        "epoch": epoch + 1,
        "lr": session.recipe.lr_at(epoch),
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": _nullable(val_loss),
        "val_accuracy": _nullable(val_accuracy),
        "test_loss": test_loss,
        "test_accuracy": test_accuracy,
        "seconds": seconds,
    }
    state["epoch"] = epoch + 1
    state["history"].append(row)
    state["seconds"] += seconds
    return row


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    val = "" if row["val_accuracy"] is None else f" val_acc {row['val_accuracy']:.4f}"
    return (
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.2e} train_loss {row['train_loss']:.4f} "
        f"train_acc {row['train_accuracy']:.4f}{val} test_acc {row['test_accuracy']:.4f} "
        f"({row['seconds']:.1f}s)"
    )


def _snapshot(session: _Session, state: dict[str, Any]) -> dict[str, Any]:
    return {
        "epoch": state["epoch"],
        "history": state["history"],
        "seconds": state["seconds"],
        "model": session.model.state_dict(),
        "optimizer": session.optimizer.state_dict(),
        "generator": session.generator.get_state(),
        "torch_rng": torch.get_rng_state(),
        "test_predictions": state["test_predictions"],
    }


def _restore(session: _Session, checkpoint: dict[str, Any]) -> dict[str, Any]:
    session.model.load_state_dict(checkpoint["model"])
    session.optimizer.load_state_dict(checkpoint["optimizer"])
    session.generator.set_state(checkpoint["generator"])
    torch.set_rng_state(checkpoint["torch_rng"])
    keys = ("epoch", "history", "seconds", "test_predictions")
    return {key: checkpoint[key] for key in keys}


def _config_record(session: _Session) -> dict[str, Any]:
    model_config = session.config.model_config(session.data.num_classes)
    return {
        "run": session.config.to_dict(),
        "recipe": session.recipe.__dict__,
        "recipe_hash": session.recipe.fingerprint(),
        "model": {
            "depth": model_config.depth,
            "rr": list(model_config.rr),
            "num_classes": model_config.num_classes,
            "se_hidden": se_hidden(model_config),
            "params": count_params(model_config),
            "macs": count_macs(model_config),
        },
        "data": {
            "dataset": session.data.dataset,
            "root": str(session.data.root),
            "train": len(session.data.train),
            "val": len(session.data.val),
            "test": len(session.data.test),
        },
        "device": str(session.device),
        "autocast": None if session.autocast_dtype is None else str(session.autocast_dtype),
        "versions": environment(),
    }


def _finish(session: _Session, state: dict[str, Any], out: Path) -> dict[str, Any]:
    """The result files from the last epoch's evaluation; result.json is written last and marks the run done."""
    predictions = state["test_predictions"]
    labels = session.data.test.labels.cpu()
    classes = session.data.num_classes
    confusion = torch.bincount(labels * classes + predictions, minlength=classes * classes).reshape(classes, classes)
    per_class = (confusion.diagonal().double() / confusion.sum(1).clamp(min=1).double()).tolist()
    history = state["history"]
    best = max(history, key=lambda row: row["test_accuracy"])
    model_config = session.config.model_config(classes)
    result = {
        "test_accuracy": history[-1]["test_accuracy"],
        "test_loss": history[-1]["test_loss"],
        "best_test_accuracy": best["test_accuracy"],
        "best_epoch": best["epoch"],
        "val_accuracy": history[-1]["val_accuracy"],
        "val_loss": history[-1]["val_loss"],
        "train_accuracy": history[-1]["train_accuracy"],
        "train_loss": history[-1]["train_loss"],
        "params": count_params(model_config),
        "macs": count_macs(model_config),
        "per_class_accuracy": per_class,
        "confusion_matrix": confusion.tolist(),
        "class_names": session.data.class_names,
        "epochs": state["epoch"],
        "seconds": state["seconds"],
        "rr": list(session.config.rr),
        "depth": session.config.depth,
        "seed": session.config.seed,
        "recipe": session.recipe.name,
        "recipe_hash": session.recipe.fingerprint(),
        "code_version": environment()["code_version"],
    }
    rundir.remove_temp_files(out)  # what kills during earlier writes left behind; result.json comes last
    rundir.write_array(out / rundir.PREDICTIONS, predictions.numpy().astype(np.int16))
    rundir.write_array(out / rundir.LABELS, labels.numpy().astype(np.int16))
    rundir.write_json(out / rundir.RESULT, result)
    return result
