"""One training run: model + recipe + data + seed -> metrics, checkpoints, result.

The run directory is the unit of durability. A checkpoint holds everything
that decides the rest of the run (weights, optimizer, the data generator and
the metric history), so a resumed run ends bit-identical to an uninterrupted
one on CPU, and a kill loses at most the current epoch.
"""

from __future__ import annotations

import contextlib
import functools
import math
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from seratio import rundir, runlock, runtime
from seratio.architecture import count_macs, count_params, format_rr, se_hidden
from seratio.augment import augment_batch, to_float, view_batch
from seratio.config import RunConfig, code_version, environment, resolve_device
from seratio.cpu_compile import CompiledForward, forget_compiled_graphs
from seratio.cuda_step import GraphedStep
from seratio.data import CifarData, Split, load_cifar
from seratio.errors import SeratioError
from seratio.interrupts import stop_signals_held
from seratio.models import build_model, kernel_parameters, set_bn_momentum
from seratio.progress import EpochProgress
from seratio.recipes import TTA_VIEWS, Recipe, View

# Evaluation batch per device type. CPU: 250, which beats 100 by 10-18% under tcmalloc (fp32 and
# bf16, eager and compiled) and by 4-5% in bf16 under glibc; only fp32 under glibc is 10-15% slower
# (benchmarks/RESULTS.md). One batch for every allocator, because the batch sets the summation order
# of the evaluation: a run resumed in a process with another allocator still ends bit-identical.
# CUDA: large, so a split is a few launches.
EVAL_BATCH = {"cpu": 250, "cuda": 5000}
# channels_last on CPU: oneDNN's NHWC convolutions for 16-64 channels are faster than NCHW here.
CPU_CHANNELS_LAST = True
# torch.compile on CPU (training and evaluation forward) for runs that train on at least this many
# images in all (epochs x training images). Counted in images, not steps, because a step's cost
# grows with its batch: the `fast` recipe's 9k batch-256 steps are as much work as 70k batch-32
# ones. A cold compile takes 60-80 s; the slowest case (fp32, batch 32, +22%) repays it after
# about 100k images, so 250k compiles only where it clearly pays. Tests and the demo (7.5k
# images) stay eager; `fast` (2.25M) and a paper run (9M) compile.
CPU_COMPILE_MIN_IMAGES = 250_000
EpochCallback = Callable[[dict[str, Any]], None]
CHECKPOINT_KEYS = ("epoch", "history", "seconds", "model", "optimizer", "generator", "torch_rng", "test_predictions")
"""What `_snapshot` writes, and every seratio checkpoint has held."""


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
    graphed: GraphedStep | None = None
    compiled: CompiledForward | None = None
    compiled_eval: CompiledForward | None = None


def train_run(
    config: RunConfig,
    out_dir: str | Path,
    *,
    resume: bool = False,
    show_progress: bool = False,
    log: Callable[[str], None] = lambda message: None,
    on_epoch: EpochCallback | None = None,
    wait_for_lock: bool = False,
) -> dict[str, Any]:
    """Train (or finish, or just read back) the run that `config` defines in `out_dir`.

    One process at a time writes a run directory: another writer makes this call refuse, or with
    `wait_for_lock` wait until that writer stops (then read back or resume what it left).
    """
    out = Path(out_dir)
    finished = _finished_result(config, out)
    if finished is not None:
        return _reused(finished, out, log)
    created = [path for path in (out, *out.parents) if not path.exists()]
    rundir.make_dir(out, f"run directory {out}", "; choose another --out")
    with runlock.hold(out, wait=wait_for_lock, log=log):
        finished = _finished_result(config, out)  # the writer this call waited for may have finished it
        if finished is not None:
            return _reused(finished, out, log)
        try:
            return _train(config, out, resume=resume, show_progress=show_progress, log=log, on_epoch=on_epoch)
        except (SeratioError, OSError):  # refused, or the system refused (an unreadable data file)
            _remove_unused(created)
            raise


def _remove_unused(created: list[Path]) -> None:
    """Take back the directories (run directory first) that this call created for a run refused
    before it wrote anything, so a typo leaves no trace. Only under the lock, and only while the run
    directory holds nothing but the lock and temp files: a directory that existed before, or that
    holds a run, is never touched."""
    if not created or not _holds_no_run(created[0]):
        return
    for path in created[0].iterdir():
        path.unlink()
    with contextlib.suppress(OSError):  # a parent that something else has meanwhile put files into stays
        for path in created:
            path.rmdir()


def _holds_no_run(out: Path) -> bool:
    """Empty, or only the lock and the temp file of a first write that a kill interrupted."""
    return all(rundir.is_temp_file(path) or path.name == runlock.LOCK_FILE for path in out.iterdir())


def _reused(finished: dict[str, Any], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    log(f"{out} already holds the finished run; nothing retrained or overwritten{_other_code(finished)}")
    return finished


def _train(
    config: RunConfig, out: Path, *, resume: bool, show_progress: bool, log: Callable[[str], None],
    on_epoch: EpochCallback | None,
) -> dict[str, Any]:
    checkpoint = _checkpoint_to_resume(config, out, resume, log)
    forget_compiled_graphs()
    session = _session_for(config, out, checkpoint, log)
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


def _finished_result(config: RunConfig, out: Path) -> dict[str, Any] | None:
    if not (out / rundir.RESULT).exists():
        return None
    stored, _ = rundir.read_run_config(out)
    difference = _difference(stored, config)
    if difference:
        raise SeratioError(f"{out} holds a finished run of a different configuration ({difference}); choose another --out")
    return rundir.read_result(out)


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


def _checkpoint_to_resume(
    config: RunConfig, out: Path, resume: bool, log: Callable[[str], None]
) -> dict[str, Any] | None:
    if not (out / rundir.CONFIG).exists():
        if not _holds_no_run(out):
            raise SeratioError(f"{out} is not empty and holds no seratio run; choose another --out")
        return None
    stored, record = rundir.read_run_config(out)
    difference = _difference(stored, config)
    if difference:
        raise SeratioError(f"cannot continue {out}: its configuration differs ({difference})")
    checkpoints = (out / rundir.CHECKPOINT, out / rundir.PREVIOUS_CHECKPOINT)
    if not any(path.exists() for path in checkpoints):
        if resume:
            log(f"{out} holds no checkpoint yet (the run stopped before its first one was written); "
                "training from epoch 0")
        return None
    if not resume:
        raise SeratioError(f"{out} holds an unfinished run; pass --resume to continue it or choose another --out")
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
            "or train into another --out"
        )


def _session_for(
    config: RunConfig, out: Path, checkpoint: dict[str, Any] | None, log: Callable[[str], None]
) -> _Session:
    """A fresh session, or one that continues a checkpoint as the run started where that can differ:
    the precision is kept, and a changed CPU thread count, which changes the last bits, is said."""
    if checkpoint is None:
        return _warned(start_session(config), log)
    _, record = rundir.read_run_config(out)
    started = _precision_started(config, record)
    session = start_session(config, precision=started)
    if started is not None and session.autocast_dtype != _autocast_dtype(config, session.recipe, session.device):
        log(f"notice: this run started in {started} under --precision auto and keeps it, although auto picks "
            f"the other precision on {session.device}")
    runtime_record = record.get("runtime")
    threads = runtime_record.get("threads") if isinstance(runtime_record, dict) else None
    on_cpu = session.device.type == "cpu" and record.get("device") == "cpu"
    if on_cpu and isinstance(threads, int) and threads != torch.get_num_threads():
        log(f"notice: this run's last session used {threads} torch thread(s) and this one uses "
            f"{torch.get_num_threads()}; sums split differently, so the run will differ in the last bits from an "
            f"uninterrupted one (--threads {threads} keeps it bit-identical)")
    return _warned(session, log)


def _warned(session: _Session, log: Callable[[str], None]) -> _Session:
    if session.device.type == "cpu" and session.autocast_dtype == torch.bfloat16 and not runtime.cpu_has_bf16():
        log("warning: this CPU has no bf16 instructions (AVX512-BF16 or AMX), so bf16 convolutions run on slow "
            "fallback kernels, about 10x slower than fp32 here; --precision fp32 trains faster")
    return session


def _precision_started(config: RunConfig, record: dict[str, Any]) -> str | None:
    """The precision a resumed `--precision auto` run started in, which it keeps: auto picks bf16 for
    `fast` on CUDA and fp32 on a CPU, so a run resumed on another device type would otherwise train
    partly in each."""
    if config.precision != "auto":
        return None
    return {None: "fp32", str(torch.bfloat16): "bf16"}.get(record.get("autocast"))


def _precision_name(session: _Session) -> str:
    """The precision the run trained in, resolved: `auto` is bf16 for `fast` on CUDA and fp32 on a
    CPU, so two runs of one recipe can differ in it, and a study must not average them unawares."""
    return "fp32" if session.autocast_dtype is None else "bf16"


def start_session(config: RunConfig, *, compile_cpu: bool | None = None, precision: str | None = None) -> _Session:
    """Data on the run's device and a fresh session; `compile_cpu` and `precision` as in `build_session`."""
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is not None:
        # Before any CUDA work: whatever uses "the current device" (a context, cuDNN, cuBLAS) must
        # use this one, not create a second context on GPU 0.
        torch.cuda.set_device(device)
    data = load_cifar(
        config.dataset, config.data_dir, val_size=config.val_size,
        train_subset=config.train_subset, test_subset=config.test_subset, split_seed=config.split_seed, device=device,
    )
    return build_session(config, data, device, compile_cpu=compile_cpu, precision=precision)


def build_session(
    config: RunConfig, data: CifarData, device: torch.device, *, compile_cpu: bool | None = None,
    precision: str | None = None,
) -> _Session:
    """Model, optimizer and step for `config` on loaded `data`; benchmarks reuse it on synthetic data.

    `compile_cpu` None decides by the run's length (`compiles_on_cpu`); `precision` ("fp32" or
    "bf16") replaces what `--precision auto` would pick on this device.
    """
    recipe = config.resolved_recipe()
    torch.manual_seed(config.seed)
    model_config = config.model_config(data.num_classes)
    autocast_dtype = _autocast_dtype(config, recipe, device, precision)
    channels_last = _channels_last(recipe, device, autocast_dtype)
    model = build_model(model_config).to(device)
    set_bn_momentum(model, recipe.bn_momentum_for(recipe.steps_per_epoch(len(data.train))))
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    generator = torch.Generator(device=device)
    generator.manual_seed(config.seed)
    session = _Session(
        config=config, recipe=recipe, device=device, data=data, model=model,
        optimizer=_optimizer(model, recipe, device), generator=generator,
        autocast_dtype=autocast_dtype, channels_last=channels_last,
    )
    session.graphed = _graphed_step(session)
    if compile_cpu is None:
        compile_cpu = compiles_on_cpu(recipe, len(data.train))
    if device.type == "cpu" and compile_cpu:
        session.compiled = CompiledForward(model, recipe.batch_size)
        session.compiled_eval = CompiledForward(model, EVAL_BATCH["cpu"])
    return session


def compiles_on_cpu(recipe: Recipe, train_images: int) -> bool:
    """Whether a CPU run of `recipe` on `train_images` images is long enough to compile its forward.

    Decided from the whole run, never from the epochs left, so a resumed run computes exactly what
    the uninterrupted one did.
    """
    return recipe.epochs * train_images >= CPU_COMPILE_MIN_IMAGES


def _channels_last(recipe: Recipe, device: torch.device, autocast_dtype: torch.dtype | None) -> bool:
    """A layout choice only; on CUDA NHWC is what bf16 tensor-core convolutions want."""
    if device.type == "cuda":
        return recipe.cuda_channels_last or autocast_dtype is not None
    return CPU_CHANNELS_LAST


def _autocast_dtype(
    config: RunConfig, recipe: Recipe, device: torch.device, precision: str | None = None
) -> torch.dtype | None:
    precision = precision or config.precision
    if precision == "bf16" or (precision == "auto" and recipe.cuda_bf16 and device.type == "cuda"):
        return torch.bfloat16
    return None


def _optimizer(
    model: nn.Module, recipe: Recipe, device: torch.device | None = None, *, for_graphs: bool | None = None
) -> torch.optim.Optimizer:
    """Weight decay on conv/FC kernels only: Keras L2 never touched BN parameters or biases."""
    kernels = kernel_parameters(model)
    kernel_ids = {id(p) for p in kernels}
    others = [p for p in model.parameters() if id(p) not in kernel_ids]
    return recipe_optimizer(kernels, others, recipe, device, for_graphs=for_graphs)


def recipe_optimizer(
    kernels: list[torch.Tensor], others: list[torch.Tensor], recipe: Recipe, device: torch.device | None = None,
    *, for_graphs: bool | None = None,
) -> torch.optim.Optimizer:
    """The recipe's optimizer, decaying `kernels` and not `others`; apart from `_optimizer` for
    parameters that no module holds (benchmarks/stacked_models.py stacks K models' tensors).

    `for_graphs` (default: on CUDA) builds the optimizer so that a CUDA graph can capture its step.
    """
    groups = [
        {"params": kernels, "weight_decay": recipe.weight_decay},
        {"params": others, "weight_decay": 0.0},
    ]
    if for_graphs is None:
        for_graphs = device is not None and device.type == "cuda"
    # For graphs the learning rate lives in a device tensor: the captured fused kernels read it at
    # each replay (float32: they read it as float).
    lr = torch.tensor(recipe.lr, dtype=torch.float32, device=device) if for_graphs else recipe.lr
    if recipe.optimizer == "adam":
        # Fused: one vectorised kernel instead of ~7 ops per tensor (CPU: 1.3 vs 3.7 ms per step).
        # Capturable for graphs: the step count stays on the device too.
        return torch.optim.Adam(groups, lr=lr, eps=recipe.adam_eps, fused=True, capturable=for_graphs)
    flags = {"fused": True} if for_graphs else {"foreach": True}
    return torch.optim.SGD(groups, lr=lr, momentum=recipe.momentum, nesterov=True, **flags)


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """A device-tensor learning rate is filled in place: a captured CUDA graph reads it by address."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


_DEVICE_OPTIONS = ("foreach", "fused", "capturable")


def _portable_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
    """`saved` with this optimizer's device-specific options, so a GPU checkpoint resumes on a CPU and back.

    Only how the update is computed changes (fused kernel, device step count, tensor lr), never its
    hyperparameters; the epoch's learning rate is set again before the next step anyway.
    """
    groups = []
    for saved_group, group in zip(saved["param_groups"], optimizer.param_groups, strict=True):
        merged = dict(saved_group)
        merged.update({key: group[key] for key in _DEVICE_OPTIONS if key in group})
        lr = float(saved_group["lr"])
        merged["lr"] = torch.tensor(lr, device=group["lr"].device) if isinstance(group["lr"], torch.Tensor) else lr
        groups.append(merged)
    return {**saved, "param_groups": groups}


def _autocast(session: _Session) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when asked for. The weight-cast cache is off: a forward casts each weight once
    anyway, and CUDA graph capture forbids the cache."""
    if session.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(session.device.type, dtype=session.autocast_dtype, cache_enabled=False)


def _prepare(session: _Session, images: torch.Tensor) -> torch.Tensor:
    batch = to_float(images)
    return batch.contiguous(memory_format=torch.channels_last) if session.channels_last else batch


def _eager_step(session: _Session, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update: forward (under autocast), loss, backward, optimizer step; returns (loss, logits)."""
    forward = session.compiled or session.model
    with _autocast(session):
        logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=session.recipe.label_smoothing)
    session.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    session.optimizer.step()
    return loss.detach(), logits.detach()


def _graphed_step(session: _Session) -> GraphedStep | None:
    """A CUDA graph of the step on CUDA when the optimizer reads nothing from the host; None means eager steps."""
    if session.device.type != "cuda" or not _capturable(session.optimizer):
        return None
    # A weak reference: the session owns the graphed step, and a strong one back would keep a
    # finished run's GPU memory (data, optimizer state, graph pool) alive until a garbage collection.
    eager = functools.partial(_eager_step, weakref.proxy(session))
    return GraphedStep(eager, session.optimizer, session.recipe.batch_size, session.device)


def _capturable(optimizer: torch.optim.Optimizer) -> bool:
    """Adam when built capturable (its step count on the device); SGD when fused with a tensor
    learning rate: its one kernel reads the rate and the momentum buffers on the device, while
    foreach SGD turns a tensor rate into a host number, which a capture forbids."""
    groups = optimizer.param_groups
    if isinstance(optimizer, torch.optim.Adam):
        return all(group["capturable"] for group in groups)
    return all(group["fused"] and isinstance(group["lr"], torch.Tensor) for group in groups)


def _train_epoch(session: _Session, epoch: int, progress: EpochProgress) -> tuple[float, float]:
    """One pass over the shuffled training split; metrics stay on the device until the end."""
    recipe, split = session.recipe, session.data.train
    session.model.train()
    count = len(split)
    order = torch.randperm(count, generator=session.generator, device=session.device)
    steps = recipe.steps_per_epoch(count)
    loss_sum = torch.zeros((), device=session.device)
    correct = torch.zeros((), device=session.device, dtype=torch.long)
    progress.start_epoch(epoch + 1, steps)
    _set_lr(session.optimizer, recipe.lr_at(epoch))
    train_step = session.graphed or functools.partial(_eager_step, session)
    for step in range(steps):
        index = order[step * recipe.batch_size : (step + 1) * recipe.batch_size]
        images = augment_batch(
            split.images[index], session.generator, flip_p=recipe.flip_p, max_shift=recipe.max_shift
        )
        labels = split.labels[index]
        if recipe.steps_lr_within_epoch():
            _set_lr(session.optimizer, recipe.step_lr(epoch, step, steps))
        loss, logits = train_step(_prepare(session, images), labels)
        loss_sum += loss * len(index)
        correct += (logits.argmax(1) == labels).sum()
        progress.advance(step + 1, len(index), loss_sum, correct)
    return loss_sum.item() / count, correct.item() / count


@torch.inference_mode()
def evaluate(session: _Session, split: Split, tta: str = "none") -> tuple[float, float, torch.Tensor]:
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


def _view_log_probs(session: _Session, images: torch.Tensor, views: tuple[View, ...]) -> torch.Tensor:
    """Log of the views' mean softmax, via log-sum-exp so that confident views do not underflow."""
    forward = session.compiled_eval or session.model
    per_view = []
    for flip, dy, dx in views:
        shown = images if (flip, dy, dx) == (False, 0, 0) else view_batch(images, flip, dy, dx)
        with _autocast(session):
            logits = forward(_prepare(session, shown))
        per_view.append(F.log_softmax(logits.float(), dim=1))
    if len(per_view) == 1:
        return per_view[0]
    return torch.logsumexp(torch.stack(per_view), dim=0) - math.log(len(per_view))


def _nullable(value: float) -> float | None:
    """JSON has no NaN or infinity: an empty split's loss and accuracy, and a diverged run's test
    loss, are recorded as null."""
    return value if math.isfinite(value) else None


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


def load_weights(session: _Session, checkpoint: dict[str, Any], run_dir: Path) -> None:
    """The checkpoint's weights into the model that config.json describes. A config.json edited or
    copied from another run must end in one line, not in torch's page of size mismatches."""
    try:
        session.model.load_state_dict(checkpoint["model"])
    except (RuntimeError, TypeError, AttributeError) as error:
        raise SeratioError(
            f"the checkpoint in {run_dir} does not match {run_dir / rundir.CONFIG} (depth {session.config.depth}, "
            f"rr {format_rr(session.config.rr)}): they come from different runs"
        ) from error


def _restore(session: _Session, checkpoint: dict[str, Any], out: Path, log: Callable[[str], None]) -> dict[str, Any]:
    load_weights(session, checkpoint, out)
    session.optimizer.load_state_dict(_portable_optimizer_state(session.optimizer, checkpoint["optimizer"]))
    _restore_generator(session, checkpoint["generator"], checkpoint["epoch"], log)
    torch.set_rng_state(checkpoint["torch_rng"])
    keys = ("epoch", "history", "seconds", "test_predictions")
    return {key: checkpoint[key] for key in keys}


def _restore_generator(session: _Session, state: torch.Tensor, epoch: int, log: Callable[[str], None]) -> None:
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
        "runtime": runtime.describe(),
    }


def score(session: _Session, tta: str) -> dict[str, Any]:
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


def _tta_result(session: _Session) -> dict[str, Any]:
    """The recipe's test-time augmentation, once, on the final weights. Per-epoch rows stay one view
    (curves, pruning, best epoch), so the extra forward passes are paid once, not every epoch.
    Their time is `tta_seconds`, outside `seconds`, which stays the epochs' sum."""
    scores = score(session, session.recipe.tta)
    return {"tta": session.recipe.tta} | {f"tta_{key}": value for key, value in scores.items()}


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
        "precision": _precision_name(session),
        "code_version": environment()["code_version"],
    }
    if session.recipe.tta != "none":
        result |= _tta_result(session)
    rundir.remove_temp_files(out)  # what kills during earlier writes left behind; result.json comes last
    rundir.write_array(out / rundir.PREDICTIONS, predictions.numpy().astype(np.int16))
    rundir.write_array(out / rundir.LABELS, labels.numpy().astype(np.int16))
    rundir.write_json(out / rundir.RESULT, result)
    return result
