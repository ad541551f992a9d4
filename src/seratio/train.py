"""One training run: model + recipe + data + seed -> metrics, checkpoints, result.

The run directory is the unit of durability. A checkpoint holds everything
that decides the rest of the run (weights, optimizer, the data generator and
the metric history), so a resumed run ends bit-identical to an uninterrupted
one on CPU, and a kill loses at most the current epoch.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from seratio import rundir, runlock, runtime
from seratio.architecture import count_macs, count_params, format_rr, se_hidden
from seratio.augment import augment_batch, view_batch
from seratio.config import RunConfig, environment, resolve_device
from seratio.compiled_forward import forget_compiled_graphs
from seratio.data import Split
from seratio.errors import SeratioError, print_to_stderr
from seratio.interrupts import stop_signals_held
from seratio.progress import EpochProgress
from seratio.recipes import TTA_VIEWS, View
from seratio.resume import ELSEWHERE, checkpoint_to_resume, finished_result, remove_unused, reused
from seratio.session import (
    EVAL_BATCH, Session, autocast, eager_step, portable_optimizer_state, precision_name, prepare, session_for, set_lr,
)

EpochCallback = Callable[[dict[str, Any]], None]


class TrainingDiverged(SeratioError):
    """The loss became NaN or infinite; the run cannot recover by itself."""


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = False,
    log: Callable[[str], None] = print_to_stderr,
    on_epoch: EpochCallback | None = None,
    wait_for_lock: bool = False,
) -> dict[str, Any]:
    """Train (or finish, or just read back) the run that `config` defines in `out_dir`, and return
    its result.json. A finished run is read back, never retrained or overwritten.

    One process at a time writes a run directory: another writer makes this call refuse, or with
    `wait_for_lock` wait until that writer stops (then read back or resume what it left). `log`
    gets the per-epoch lines and every warning (on stderr unless given); `on_epoch` gets each
    epoch's metrics row as it is recorded.
    """
    if not isinstance(config, RunConfig):
        raise SeratioError(f"config {config!r} is not a RunConfig; make one with RunConfig(rr=..., ...)")
    if on_epoch is not None and not callable(on_epoch):  # else it fails after an epoch has trained
        raise SeratioError(f"on_epoch {on_epoch!r} is not callable; give a function of one metrics row, or None")
    out = Path(out_dir)
    finished = finished_result(config, out, log)
    if finished is not None:
        return reused(finished, out, log)
    created = [path for path in (out, *out.parents) if not path.exists()]
    rundir.make_dir(out, f"run directory {out}", f"; {ELSEWHERE}")
    lock_created = not (out / runlock.LOCK_FILE).exists()
    with runlock.hold(out, wait=wait_for_lock, log=log):
        finished = finished_result(config, out, log)  # the writer this call waited for may have finished it
        if finished is not None:
            return reused(finished, out, log)
        try:
            with torch.random.fork_rng(devices=_reseeded_cuda(config)):  # a caller's random state is its own
                return _train(config, out, resume=resume, show_progress=show_progress, log=log, on_epoch=on_epoch)
        except (SeratioError, OSError):  # refused, or the system refused (an unreadable data file)
            remove_unused(out, created, lock_created)
            raise


def _reseeded_cuda(config: RunConfig) -> list[int]:
    """The CUDA device whose generator the run reseeds (`session._seed_torch`) and so must give back;
    the CPU's always is."""
    device = resolve_device(config.device)
    if device.type != "cuda":
        return []
    return [device.index if device.index is not None else torch.cuda.current_device()]


def _train(
    config: RunConfig, out: Path, *, resume: bool, show_progress: bool, log: Callable[[str], None],
    on_epoch: EpochCallback | None,
) -> dict[str, Any]:
    checkpoint = checkpoint_to_resume(config, out, resume, log)
    forget_compiled_graphs()
    session = session_for(config, out, checkpoint, log)
    state = _restore(session, checkpoint, out, log) if checkpoint else {"epoch": 0, "history": [], "seconds": 0.0}
    rundir.write_json(out / rundir.CONFIG, _config_record(session))
    with EpochProgress(enabled=show_progress) as progress:
        while state["epoch"] < session.recipe.epochs:
            row = _run_epoch(session, state, progress)
            with stop_signals_held():  # a SIGTERM here used to lose the epoch just trained
                rundir.write_metrics(out / rundir.METRICS, state["history"])
                rundir.save_checkpoint(out, _snapshot(session, state))
            if show_progress:
                log(_epoch_line(row, session.recipe.epochs))
            if on_epoch is not None:
                on_epoch(row)
    return _finish(session, state, out)


def _train_epoch(session: Session, epoch: int, progress: EpochProgress) -> tuple[float, float]:
    """One pass over the shuffled training split; metrics stay on the device until the end."""
    recipe, split = session.recipe, session.data.train
    session.model.train()
    count = len(split)
    order = torch.randperm(count, generator=session.generator, device=session.device)
    steps = recipe.steps_per_epoch(count)
    loss_sum = torch.zeros((), device=session.device)
    correct = torch.zeros((), device=session.device, dtype=torch.long)
    progress.start_epoch(epoch + 1, steps)
    set_lr(session.optimizer, recipe.lr_at(epoch))
    train_step = session.graphed or functools.partial(eager_step, session)
    for step in range(steps):
        index = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        images = augment_batch(
            split.images[index], session.generator, flip_p=recipe.flip_p, max_shift=recipe.max_shift
        )
        labels = split.labels[index]
        if recipe.steps_lr_within_epoch():
            set_lr(session.optimizer, recipe.step_lr(epoch, step, steps))
        loss, logits = train_step(prepare(session, images), labels)
        loss_sum += loss * len(index)
        correct += (logits.argmax(1) == labels).sum()
        progress.advance(step + 1, len(index), loss_sum, correct)
    return loss_sum.item() / count, correct.item() / count


@torch.inference_mode()
def evaluate(session: Session, split: Split, tta: str = "none") -> tuple[float, float, torch.Tensor]:
    """Loss, accuracy and predictions in large batches; the host waits for the device only at the end.

    With test-time augmentation the prediction is the mean of the views' softmax, and the loss is
    that mean's negative log-likelihood; with one view the loss is exactly the plain cross-entropy.
    """
    session.model.eval()
    if len(split) == 0:
        return math.nan, math.nan, torch.empty(0, dtype=torch.long)
    loss_sum = torch.zeros((), device=session.device)
    predictions = []
    batch = EVAL_BATCH[session.device.type]
    for start in range(0, len(split), batch):
        log_probs = _view_log_probs(session, split.images[start : start + batch], TTA_VIEWS[tta])
        loss_sum += F.nll_loss(log_probs, split.labels[start : start + batch], reduction="sum")
        predictions.append(log_probs.argmax(1))
    predicted = torch.cat(predictions).cpu()
    correct = (predicted == split.labels.cpu()).sum().item()
    return loss_sum.item() / len(split), correct / len(split), predicted


def _view_log_probs(session: Session, images: torch.Tensor, views: tuple[View, ...]) -> torch.Tensor:
    """Log of the views' mean softmax, via log-sum-exp so that confident views do not underflow."""
    forward = session.compiled_eval or session.model
    per_view = []
    for flip, dy, dx in views:
        shown = images if (flip, dy, dx) == (False, 0, 0) else view_batch(images, flip, dy, dx)
        with autocast(session):
            logits = forward(prepare(session, shown))
        per_view.append(F.log_softmax(logits.float(), dim=1))
    if len(per_view) == 1:
        return per_view[0]
    return torch.logsumexp(torch.stack(per_view), dim=0) - math.log(len(per_view))


def _nullable(value: float) -> float | None:
    """JSON has no NaN or infinity: an empty split's loss and accuracy, and a diverged run's test
    loss, are recorded as null."""
    return value if math.isfinite(value) else None


def _run_epoch(session: Session, state: dict[str, Any], progress: EpochProgress) -> dict[str, Any]:
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
        "lr": session.recipe.mean_lr(epoch, session.recipe.steps_per_epoch(len(session.data.train))),
        "train_loss": train_loss,
        "train_accuracy": train_accuracy,
        "val_loss": _nullable(val_loss),
        "val_accuracy": _nullable(val_accuracy),
        "test_loss": _nullable(test_loss),
        "test_accuracy": test_accuracy,
        "seconds": seconds,
    }
    state["epoch"] = epoch + 1
    state["history"].append(row)
    state["seconds"] += seconds
    return row


def _epoch_line(row: dict[str, Any], epochs: int) -> str:
    """Named as in metrics.jsonl (and a study worker's lines), so one grep finds a field in both."""
    val = "" if row["val_accuracy"] is None else f" val_accuracy {row['val_accuracy']:.4f}"
    return (
        f"epoch {row['epoch']}/{epochs} lr {row['lr']:.2e} train_loss {row['train_loss']:.4f} "
        f"train_accuracy {row['train_accuracy']:.4f}{val} test_accuracy {row['test_accuracy']:.4f} "
        f"({row['seconds']:.1f}s)"
    )


def _snapshot(session: Session, state: dict[str, Any]) -> dict[str, Any]:
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


def load_weights(model: torch.nn.Module, config: RunConfig, checkpoint: dict[str, Any], run_dir: Path) -> None:
    """The checkpoint's weights into the model that config.json describes. A config.json edited or
    copied from another run must end in one line, not in torch's page of size mismatches."""
    try:
        model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise SeratioError(
            f"the checkpoint in {run_dir} does not match {run_dir / rundir.CONFIG} (depth {config.depth}, "
            f"rr {format_rr(config.rr)}): they come from different runs"
        ) from error


def _restore(session: Session, checkpoint: dict[str, Any], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    load_weights(session.model, session.config, checkpoint, out)
    session.optimizer.load_state_dict(portable_optimizer_state(session.optimizer, checkpoint["optimizer"]))
    _restore_generator(session, checkpoint["generator"], checkpoint["epoch"], log)
    torch.set_rng_state(checkpoint["torch_rng"])
    keys = ("epoch", "history", "seconds", "test_predictions")
    return {key: checkpoint[key] for key in keys}


def _restore_generator(session: Session, state: torch.Tensor, epoch: int, log: Callable[[str], None]) -> None:
    """Continue the shuffling and augmentation stream, or a seeded new one across device types.

    A CPU generator's state and a CUDA generator's state differ in size and cannot be converted,
    yet a run may resume on another device type (the device is not part of a run's identity).
    """
    if state.numel() == session.generator.get_state().numel():
        session.generator.set_state(state)
        return
    session.generator.manual_seed(session.config.seed * 1_000_003 + epoch)
    log(
        f"notice: the checkpoint's shuffling/augmentation random state belongs to another device type than "
        f"{session.device}; epochs after {epoch} use a fresh stream seeded from the run's seed and the epoch, "
        "so they differ from an uninterrupted run's"
    )


def _config_record(session: Session) -> dict[str, Any]:
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
        "compiled": session.compiled is not None,
        "cuda_graph": session.graphed is not None,
        "versions": environment(),
        "runtime": runtime.describe(),
    }


def score(session: Session, tta: str) -> dict[str, Any]:
    """Validation and test loss and accuracy under the views `tta`, and the seconds they took: the
    end-of-run test-time augmentation and `seratio evaluate` score the same way."""
    started = time.perf_counter()
    val_loss, val_accuracy, _ = evaluate(session, session.data.val, tta)
    test_loss, test_accuracy, _ = evaluate(session, session.data.test, tta)
    return {
        "seconds": time.perf_counter() - started,
        "test_accuracy": test_accuracy,
        "test_loss": _nullable(test_loss),
        "val_accuracy": _nullable(val_accuracy),
        "val_loss": _nullable(val_loss),
    }


def _tta_result(session: Session) -> dict[str, Any]:
    """The recipe's test-time augmentation, once, on the final weights. Per-epoch rows stay one view
    (curves, pruning, best epoch), so the extra forward passes are paid once, not every epoch.
    Their time is `tta_seconds`, outside `seconds`, which stays the epochs' sum."""
    scores = score(session, session.recipe.tta)
    return {"tta": session.recipe.tta} | {f"tta_{key}": value for key, value in scores.items()}


def _finish(session: Session, state: dict[str, Any], out: Path) -> dict[str, Any]:
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
        "precision": precision_name(session),
        "code_version": environment()["code_version"],
    }
    if session.recipe.tta != "none":
        result |= _tta_result(session)
    rundir.remove_temp_files(out)  # what kills during earlier writes left behind; result.json comes last
    rundir.write_metrics(out / rundir.METRICS, history)  # the same rows; a finished run resumed to repair them
    rundir.write_array(out / rundir.PREDICTIONS, predictions.numpy().astype(np.int16))
    rundir.write_array(out / rundir.LABELS, labels.numpy().astype(np.int16))
    rundir.write_json(out / rundir.RESULT, result)
    return result
