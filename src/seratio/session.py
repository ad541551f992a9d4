"""A run's session: what it holds in memory while it trains, and how that is built.

The device, the data on it, the model, the precision and memory layout, the optimizer and the step
(eager, compiled, CUDA-graphed or both) are decided together here, fresh or continuing a checkpoint as
the run started, so that `train` only runs epochs and writes what they give.
"""

from __future__ import annotations

import contextlib
import functools
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from seratio import rundir, runtime
from seratio.augment import to_float
from seratio.config import RunConfig, resolve_device
from seratio.compiled_forward import CompiledForward
from seratio.cuda_step import GraphedStep
from seratio.data import CifarData, load_cifar
from seratio.models import build_model, kernel_parameters, set_bn_momentum
from seratio.recipes import Recipe

# Evaluation batch per device type. CPU: 250, which beats 100 by 10-18% under tcmalloc (fp32 and
# bf16, eager and compiled) and by 4-5% in bf16 under glibc; only fp32 under glibc is 10-15% slower
# (benchmarks/RESULTS.md). One batch for every allocator, because the batch sets the summation order
# of the evaluation: a run resumed in a process with another allocator still ends bit-identical.
# CUDA: large, so a split is a few launches.
EVAL_BATCH = {"cpu": 250, "cuda": 5000}
# channels_last on CPU: oneDNN's NHWC convolutions for 16-64 channels are faster than NCHW here.
CPU_CHANNELS_LAST = True
# torch.compile of the forward for runs that train on at least this many images in all (epochs x
# training images), per device type. Counted in images, not steps, because a step's cost grows
# with its batch: the `fast` recipe's 9k batch-256 steps are as much work as 70k batch-32 ones.
# CPU (training and evaluation forward): a cold compile takes 60-80 s; the slowest case (fp32,
# batch 32, +22%) repays it after about 100k images, so 250k compiles only where it clearly pays.
# Tests and the demo (7.5k images) stay eager; `fast` (2.25M) and a paper run (9M) compile.
# CUDA (training forward only, inside the CUDA graph): measured at the paper's batch of 32 only,
# where it saves 47 us an image in fp32 (38-55 in bf16) on an H100; a cold compile took a minute
# or two there, repaid after 1.1-3.2M images, so 5M compiles where it clearly pays: a paper run
# (9-10M) does, tests and `fast` (2.25M) do not. Larger batches do not compile there: at batch
# 128 a paper run trains in 15 minutes, so a compile would need a 10% gain, which nobody measured.
# Evaluation there stays eager: in batches of 5,000 it runs at 82k images/s, 0.1 s an epoch.
COMPILE_MIN_IMAGES = {"cpu": 250_000, "cuda": 5_000_000}
CUDA_COMPILE_MAX_BATCH = 32


@dataclass
class Session:
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


def session_for(
    config: RunConfig, out: Path, checkpoint: dict[str, Any] | None, log: Callable[[str], None]
) -> Session:
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


def _warned(session: Session, log: Callable[[str], None]) -> Session:
    forwards = [forward for forward in (session.compiled, session.compiled_eval) if forward is not None]

    def failed(reason: str) -> None:
        """The compiler that failed one forward would fail the other: a forward not yet compiled is
        not tried, and the run says it once. One that already runs compiled stays so: a run must
        not change kernels mid-way, or a resumed run would no longer end as an uninterrupted one."""
        for forward in forwards:
            if forward.calls == 0:
                forward.compiled = None
        compiled = any(forward.compiled is not None for forward in forwards)
        goes_on = "its evaluation runs uncompiled, slower; training stays compiled" if compiled else \
            "this run goes on uncompiled, slower"
        log(f"warning: torch.compile failed ({reason}); {goes_on}")

    for forward in forwards:
        forward.on_failure = failed
    if forwards:
        what = "training and evaluation forwards" if len(forwards) == 2 else "training forward"
        log(f"notice: this run compiles its {what} with torch.compile in its first steps, which takes a "
            "minute or two once per start and makes the epochs after it faster")
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


def precision_name(session: Session) -> str:
    """The precision the run trained in, resolved: `auto` is bf16 for `fast` on CUDA and fp32 on a
    CPU, so two runs of one recipe can differ in it, and a study must not average them unawares."""
    return "fp32" if session.autocast_dtype is None else "bf16"


def start_session(
    config: RunConfig, *, compile_forward: bool | None = None, precision: str | None = None,
) -> Session:
    """Data on the run's device and a fresh session; `compile_forward` and `precision` as in `build_session`."""
    device = resolve_device(config.device)
    if device.type == "cuda" and device.index is not None:
        # Before any CUDA work: whatever uses "the current device" (a context, cuDNN, cuBLAS) must
        # use this one, not create a second context on GPU 0.
        torch.cuda.set_device(device)
    data = load_cifar(
        config.dataset, config.data_dir, val_size=config.val_size,
        train_subset=config.train_subset, test_subset=config.test_subset, split_seed=config.split_seed, device=device,
    )
    return build_session(config, data, device, compile_forward=compile_forward, precision=precision)


def build_session(
    config: RunConfig, data: CifarData, device: torch.device, *, compile_forward: bool | None = None,
    precision: str | None = None,
) -> Session:
    """Model, optimizer and step for `config` on loaded `data`; benchmarks reuse it on synthetic data.

    `compile_forward` None decides by the run's length (`compiles`); `precision` ("fp32" or
    "bf16") replaces what `--precision auto` would pick on this device.
    """
    recipe = config.resolved_recipe()
    _seed_torch(config.seed, device)
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
    session = Session(
        config=config, recipe=recipe, device=device, data=data, model=model,
        optimizer=optimizer_for(model, recipe, device), generator=generator,
        autocast_dtype=autocast_dtype, channels_last=channels_last,
    )
    attach_compiled_forwards(session, compile_forward)
    session.graphed = _graphed_step(session)
    return session


def attach_compiled_forwards(session: Session, compile_forward: bool | None) -> None:
    """The training forward and, on a CPU, the evaluation one, compiled where the run is long
    enough (`compile_forward` None: `compiles`). On CUDA the training forward runs inside the CUDA
    graph, captured after the compile in its warm-up steps, so the graph replays inductor's fused
    kernels; evaluation stays eager there (see `COMPILE_MIN_IMAGES`). Creating them compiles
    nothing yet: that happens at the first full batch."""
    if compile_forward is None:
        compile_forward = compiles(session.recipe, len(session.data.train), session.device)
    if not compile_forward:
        return
    session.compiled = CompiledForward(session.model, session.recipe.batch_size)
    if session.device.type == "cpu":
        session.compiled_eval = CompiledForward(session.model, EVAL_BATCH["cpu"])


def _seed_torch(seed: int, device: torch.device) -> None:
    """The CPU generator, from which the model's weights are drawn, and the run's own CUDA device,
    as `torch.manual_seed` seeds them. Not every GPU of the machine, as it does: `train_run` gives
    back the generators a run reseeds, and another GPU's belongs to whatever else uses it."""
    torch.random.default_generator.manual_seed(seed)
    if device.type == "cuda":
        with torch.cuda.device(device):
            torch.cuda.manual_seed(seed)


def compiles(recipe: Recipe, train_images: int, device: torch.device) -> bool:
    """Whether a run of `recipe` on `train_images` images on `device` is long enough to compile its
    forward (`COMPILE_MIN_IMAGES`), at a batch where that was measured to pay.

    Decided from the whole run, never from the epochs left, so a resumed run computes exactly what
    the uninterrupted one did.
    """
    least = COMPILE_MIN_IMAGES.get(device.type)
    if least is None or (device.type == "cuda" and recipe.batch_size > CUDA_COMPILE_MAX_BATCH):
        return False
    return recipe.epochs * train_images >= least


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


def optimizer_for(
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
    """The recipe's optimizer, decaying `kernels` and not `others`; apart from `optimizer_for` for
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


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    """A device-tensor learning rate is filled in place: a captured CUDA graph reads it by address."""
    for group in optimizer.param_groups:
        if isinstance(group["lr"], torch.Tensor):
            group["lr"].fill_(lr)
        else:
            group["lr"] = lr


_DEVICE_OPTIONS = ("foreach", "fused", "capturable")


def portable_optimizer_state(optimizer: torch.optim.Optimizer, saved: dict[str, Any]) -> dict[str, Any]:
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


def autocast(session: Session) -> contextlib.AbstractContextManager[Any]:
    """bf16 autocast when asked for. The weight-cast cache is off: a forward casts each weight once
    anyway, and CUDA graph capture forbids the cache."""
    if session.autocast_dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(session.device.type, dtype=session.autocast_dtype, cache_enabled=False)


def prepare(session: Session, images: torch.Tensor) -> torch.Tensor:
    batch = to_float(images)
    return batch.contiguous(memory_format=torch.channels_last) if session.channels_last else batch


def eager_step(session: Session, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """One update: forward (under autocast), loss, backward, optimizer step; returns (loss, logits)."""
    forward = session.compiled or session.model
    with autocast(session):
        logits = forward(images)
        loss = F.cross_entropy(logits.float(), labels, label_smoothing=session.recipe.label_smoothing)
    session.optimizer.zero_grad(set_to_none=True)
    loss.backward()
    session.optimizer.step()
    return loss.detach(), logits.detach()


def _graphed_step(session: Session) -> GraphedStep | None:
    """A CUDA graph of the step on CUDA when the optimizer reads nothing from the host; None means eager steps."""
    if session.device.type != "cuda" or not capturable(session.optimizer):
        return None
    # A weak reference: the session owns the graphed step, and a strong one back would keep a
    # finished run's GPU memory (data, optimizer state, graph pool) alive until a garbage collection.
    eager = functools.partial(eager_step, weakref.proxy(session))
    return GraphedStep(eager, session.optimizer, session.recipe.batch_size, session.device)


def capturable(optimizer: torch.optim.Optimizer) -> bool:
    """Adam when built capturable (its step count on the device); SGD when fused with a tensor
    learning rate: its one kernel reads the rate and the momentum buffers on the device, while
    foreach SGD turns a tensor rate into a host number, which a capture forbids."""
    groups = optimizer.param_groups
    if isinstance(optimizer, torch.optim.Adam):
        return all(group["capturable"] for group in groups)
    return all(group["fused"] and isinstance(group["lr"], torch.Tensor) for group in groups)
