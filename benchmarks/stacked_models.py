"""Would trials stacked into one model fill a GPU? K SE-ResNet-52s trained as one vmapped step.

    python3 benchmarks/stacked_models.py [--device auto|cpu|cuda] [--models 1,2,4,8] [--json out.json]

Why: on an H100 a batch-32 step of one SE-ResNet-52 is about 900 small kernels and 5.8 ms, 1% of
the GPU's arithmetic, and four trials in four processes trained 0.93x one without NVIDIA MPS
(benchmarks/RESULTS.md; under MPS, 2.06x on an H200, which is what the tool uses instead).
`torch.func.vmap` over K stacked copies of the model turns each convolution into one convolution
over K times the channels, so a step of K models launches about as many kernels as one model's,
each K times wider. This measures whether that pays before the study worker is built around it:
training images/s per model and over all K, through seratio's CUDA-graph step (`GraphedStep`) on
CUDA, and the paper study's projected hours at each K.

A study's models differ in their SE widths, so the stack pads each model to the widest SE block of
each stage with zero weights. The timed stacks cycle through the paper study's widest phase,
(8, 2, 16), (8, 2, 2), (8, 2, 4) and (8, 2, 32); the no-SE baseline has other parameters and would
train alone. All K models see the same batches, as the paper study's runs do (they all use seed 0).

Before timing, it checks on the device that stacking trains each model as it would train alone:
three small models whose ratios differ in every stage, padded and stacked, 4 steps against the
same models trained alone, in fp32 (TF32 off). Their per-step losses must agree and every padding
weight must still be exactly 0. A stacked step that mixed the models up would be fast and useless.

A CPU is bound by arithmetic, not launches: there stacking gained nothing (0.95-1.04x at K = 2 and
4, benchmarks/RESULTS.md), so on a CPU this is a smoke run of the script and its check.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_cli import at_least, emit, log
from cuda_equivalence import largest_gap
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from train_throughput import DEPTH, PAPER, _sync, environment, synthetic_data, timed

from seratio.architecture import ModelConfig, Ratios
from seratio.augment import augment_batch, to_float
from seratio.config import resolve_device
from seratio.cuda_step import GraphedStep
from seratio.errors import SeratioError
from seratio.models import build_model, kernel_parameters
from seratio.recipes import get_recipe
from seratio.session import recipe_optimizer

PAPER_PHASES = (4, 2, 3, 4)
"""New runs per phase of the paper's greedy search (Table 3): the constant ratios 2, 4, 8, 16; stage
1 at 2 and 4; stage 2 at 2, 4 and 16; stage 3 at 2, 4, 16 and 32. A phase waits for the one before,
so at most its width can be stacked; the no-SE baseline depends on nothing and joins any phase."""
PHASE_3 = ((8, 2, 16), (8, 2, 2), (8, 2, 4), (8, 2, 32))
"""The paper study's widest phase (stage 3 of Table 3), which a stack of K models cycles through;
(8, 2, 16) first, so that K = 1 is the benchmarks' usual model."""
CHECKED = ((8, 2, 16), (2, 8, 8), (16, 16, 16))
"""Ratios that differ in every stage, for the check: each stacked model is padded in every stage."""
RECIPE = get_recipe("paper")
CHECK_TOLERANCE = 1e-3
"""Largest relative gap allowed between a stacked model's and its lone twin's per-step losses."""


class Stack:
    """K models' parameters and buffers stacked on a leading dimension, and one step that trains all K."""

    def __init__(self, models: list[nn.Module], device: torch.device, precision: str) -> None:
        wide = build_model(ModelConfig(depth=models[0].config.depth, rr=widest([m.config.rr for m in models])))
        self.params, self.buffers = stack_module_state([padded(m, wide).to(device) for m in models])
        self.base = wide.to("meta")
        self.autocast = precision == "bf16"
        self.channels_last = device.type == "cuda" and self.autocast
        self.optimizer = _optimizer(wide, self.params, device)
        self.losses = vmap(self._loss, in_dims=(0, 0, None, None))
        self.device = device

    def _loss(self, params: dict[str, torch.Tensor], buffers: dict[str, torch.Tensor],
              images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(functional_call(self.base, (params, buffers), (images,)).float(), labels)

    def step(self, images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The K models' losses as both outputs: `GraphedStep` wants (loss, logits), and nothing reads logits."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast, cache_enabled=False):
            losses = self.losses(self.params, self.buffers, images, labels)
        self.optimizer.zero_grad(set_to_none=True)
        losses.sum().backward()
        self.optimizer.step()
        return losses.detach(), losses.detach()


def widest(ratios: list[Ratios]) -> Ratios:
    """Per stage the smallest ratio of the stack: the widest SE block, which every model fits in."""
    return tuple(min(stage) for stage in zip(*ratios))


def padded(model: nn.Module, wide: nn.Module) -> nn.Module:
    """`model` in `wide`'s shapes. The SE units it lacks get zero weights and biases: they output 0
    and receive zero gradients (ReLU'(0) = 0 in torch), and Adam and weight decay keep a zero at
    zero, so the padded model trains exactly as `model` alone."""
    out = copy.deepcopy(wide)
    state = {}
    for name, value in model.state_dict().items():
        target = torch.zeros_like(out.state_dict()[name])
        target[tuple(slice(0, n) for n in value.shape)] = value
        state[name] = target
    out.load_state_dict(state)
    return out


def _optimizer(model: nn.Module, params: dict[str, torch.Tensor], device: torch.device) -> torch.optim.Optimizer:
    """The paper recipe's optimizer as `seratio.train` builds it, over `params` (stacked or not),
    which carry the names of `model`'s parameters."""
    kernel_ids = {id(p) for p in kernel_parameters(model)}
    kernels = {name for name, p in model.named_parameters() if id(p) in kernel_ids}
    return recipe_optimizer([p for n, p in params.items() if n in kernels],
                            [p for n, p in params.items() if n not in kernels], RECIPE, device)


def lone_step(model: nn.Module, device: torch.device) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
    """One model's eager step with the same optimizer, the yardstick for a stack: (images, labels) -> loss."""
    model = model.to(device)
    optimizer = _optimizer(model, dict(model.named_parameters()), device)

    def step(images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        loss = F.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss.detach()

    return step


def models(ratios: tuple[Ratios, ...], depth: int) -> list[nn.Module]:
    """One model per ratios, the i-th initialised from seed i."""
    out = []
    for seed, rr in enumerate(ratios):
        torch.manual_seed(seed)
        out.append(build_model(ModelConfig(depth=depth, rr=rr)))
    return out


def stack_ratios(count: int) -> tuple[Ratios, ...]:
    return tuple(PHASE_3[i % len(PHASE_3)] for i in range(count))


def batches(count: int, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """`count` batches of the throughput benchmark's synthetic images."""
    split = synthetic_data(count * batch, 0, device).train
    return [(split.images[i * batch:(i + 1) * batch], split.labels[i * batch:(i + 1) * batch]) for i in range(count)]


# ------------------------------------------------------------------ the check


def check(device: torch.device, steps: int = 4) -> dict[str, Any]:
    """Three models of other SE widths, stacked, against the same three trained alone: the largest
    relative gap between per-step losses, and the largest weight in any model's padding (exactly 0
    if the padding trains as it should; a loss gap alone would miss a small leak)."""
    data = batches(steps, 32, device)
    with _tf32(False):
        stack = Stack(models(CHECKED, 8), device, "fp32")
        stacked = [stack.step(to_float(images), labels)[0].tolist() for images, labels in data]
        lone_models = models(CHECKED, 8)
        lone = [lone_step(model, device) for model in lone_models]
        alone = [[step(to_float(images), labels).item() for images, labels in data] for step in lone]
    gap = max(largest_gap([losses[k] for losses in stacked], alone[k]) for k in range(len(CHECKED)))
    leak = padding_leak(stack, lone_models)
    return {"steps": steps, "ratios": [list(rr) for rr in CHECKED], "max_relative_gap": gap,
            "tolerance": CHECK_TOLERANCE, "padding_max": leak, "same": gap <= CHECK_TOLERANCE and leak == 0.0}


def padding_leak(stack: Stack, lone_models: list[nn.Module]) -> float:
    """The largest magnitude in the stacked parameters outside each model's own shapes."""
    largest = 0.0
    for k, model in enumerate(lone_models):
        for name, param in model.named_parameters():
            outside = stack.params[name][k].detach().clone()
            outside[tuple(slice(0, n) for n in param.shape)] = 0
            largest = max(largest, outside.abs().max().item())
    return largest


@contextlib.contextmanager
def _tf32(enabled: bool) -> Iterator[None]:
    """True fp32 on CUDA for the check: TF32 convolutions pick other algorithms for grouped and lone
    convolutions, and the gap would measure TF32 rounding instead of the stacking."""
    saved = torch.backends.cudnn.allow_tf32
    torch.backends.cudnn.allow_tf32 = enabled
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32 = saved


# ------------------------------------------------------------------ timing


class Timer:
    """`steps` training steps of one stack per call: augmentation of the shared batch, then the step."""

    def __init__(self, count: int, precision: str, depth: int, batch: int, steps: int, device: torch.device) -> None:
        self.count, self.precision, self.batch, self.steps, self.device = count, precision, batch, steps, device
        self.stack = Stack(models(stack_ratios(count), depth), device, precision)
        self.data = batches(8, batch, device)
        self.generator = torch.Generator(device).manual_seed(0)
        self.how = "eager"
        self.run: Callable[[torch.Tensor, torch.Tensor], Any] = self.stack.step
        if device.type == "cuda":
            self.run = GraphedStep(self.stack.step, self.stack.optimizer, batch, device)
            self.how = "CUDA graph"
        self.seconds: list[float] = []
        self.kernels: int | None = None

    def __call__(self) -> None:
        for step in range(self.steps):
            images, labels = self.data[step % len(self.data)]
            self.run(to_float(augment_batch(images, self.generator, flip_p=0.5, max_shift=3)), labels)

    def warm(self, log: Callable[[str], None]) -> None:
        """One untimed call; a CUDA graph that cannot capture this step leaves eager steps, and says why."""
        try:
            timed(self, 0, self.device)
        except Exception as error:  # noqa: BLE001 - the table shows the eager rate and the reason instead
            if self.how == "eager":
                raise
            log(f"K={self.count} {self.precision}: capture failed ({type(error).__name__}: {error}); timing eager steps")
            self.run, self.how = self.stack.step, f"eager (capture failed: {type(error).__name__})"
            timed(self, 0, self.device)

    def row(self) -> dict[str, Any]:
        step = statistics.median(self.seconds) / self.steps
        return {"models": self.count, "precision": self.precision, "batch": self.batch, "how": self.how,
                "step_ms": 1000 * step, "kernels": self.kernels, "ips_per_model": self.batch / step,
                "ips_all": self.count * self.batch / step,
                "runs_step_ms": [1000 * s / self.steps for s in self.seconds]}


VIEW_OPS = frozenset({
    "aten::view", "aten::_unsafe_view", "aten::_reshape_alias", "aten::reshape", "aten::as_strided", "aten::alias",
    "aten::expand", "aten::permute", "aten::movedim", "aten::transpose", "aten::t", "aten::unsqueeze",
    "aten::squeeze", "aten::select", "aten::slice", "aten::narrow", "aten::unbind", "aten::split", "aten::detach",
    "aten::empty", "aten::empty_strided", "aten::empty_like", "aten::resize_", "aten::lift_fresh",
})
"""Ops that only make tensor metadata or allocate: on a CPU they launch nothing that computes."""


def kernels_per_step(step: Callable[[], Any], device: torch.device) -> int:
    """Kernels one eager step launches: CUDA kernels on a GPU; on a CPU, the innermost aten ops
    that compute (no view or allocation). On a launch-bound GPU this count, not K, sets a step's time."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CUDA] if device.type == "cuda" else [ProfilerActivity.CPU]
    step()
    with profile(activities=activities) as prof:
        step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
    events = prof.events()
    if device.type == "cuda":
        return sum(1 for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    return sum(1 for e in events if not e.cpu_children and e.name.startswith("aten::") and e.name not in VIEW_OPS)


def _seconds(run: Callable[[], None], device: torch.device) -> float:
    """One timed call, the device drained before and after."""
    _sync(device)
    started = time.perf_counter()
    run()
    _sync(device)
    return time.perf_counter() - started


def eval_ips(depth: int, precision: str, batch: int, device: torch.device) -> float:
    """One model's test-set rate, as `seratio.train.evaluate` runs it (inference mode, large batches)."""
    model = models(PHASE_3[:1], depth)[0].to(device).eval()
    images = torch.rand(batch, 3, 32, 32, device=device)
    if device.type == "cuda" and precision == "bf16":
        images = images.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            model(images)

    return batch / statistics.median(timed(run, 3, device))


def study_groups(models_at_once: int) -> int:
    """Stacks the paper study needs at K models per stack: each phase's runs, the baseline in the
    phase where it adds no stack if there is one."""
    def groups(widths: tuple[int, ...]) -> int:
        return sum(math.ceil(w / models_at_once) for w in widths)

    return min(groups(tuple(w + (i == j) for i, w in enumerate(PAPER_PHASES))) for j in range(len(PAPER_PHASES)))


def projected_hours(row: dict[str, Any], eval_rate: float) -> float:
    """The paper study (200 epochs of 50k images, the 10k test images after every epoch, each model
    evaluated on its own) with stacks of `row['models']` run one after another."""
    epoch = PAPER["train_images"] / row["ips_per_model"] + row["models"] * PAPER["eval_images"] / eval_rate
    return study_groups(row["models"]) * PAPER["epochs"] * epoch / 3600


def _count_kernels(timers: list[Timer], depth: int, device: torch.device, log: Callable[[str], None]) -> int | None:
    """Each stack's kernels per eager step (before any capture hides them from the profiler), and
    one plain model's, which is returned. A profiler that fails leaves the counts out, not the timings."""
    images, labels = batches(1, 32, device)[0]
    images = to_float(images)
    try:
        for timer in timers:
            timer.kernels = kernels_per_step(functools.partial(timer.stack.step, images, labels), device)
        lone = lone_step(models(PHASE_3[:1], depth)[0], device)
        return kernels_per_step(functools.partial(lone, images, labels), device)
    except Exception as error:  # noqa: BLE001 - on a lent GPU the timings matter more than the counts
        log(f"kernels not counted: the profiler failed ({type(error).__name__}: {error})")
        return None


def measure(device: torch.device, counts: list[int], precisions: list[str], depth: int, steps: int,
            repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    env = environment(device)
    log("checking that a stacked step trains each model as a lone step would ...")
    checked = check(device)
    log(f"  largest relative loss gap {checked['max_relative_gap']:.2e} (allowed {CHECK_TOLERANCE:g}), "
        f"largest padding weight {checked['padding_max']:g}")
    timers = [Timer(k, p, depth, 32, steps, device) for p in precisions for k in counts]
    lone_kernels = _count_kernels(timers, depth, device, log)
    for timer in timers:
        log(f"warming K={timer.count} {timer.precision} ...")
        timer.warm(log)
    for round_ in range(repeats):  # interleaved: a slow spell hits every K alike
        log(f"round {round_ + 1}/{repeats}")
        for timer in timers:
            timer.seconds.append(_seconds(timer, device))
    rows = [timer.row() for timer in timers]
    eval_rates = {p: eval_ips(depth, p, 5000 if device.type == "cuda" else 500, device) for p in precisions}
    for row in rows:
        one = next(r for r in rows if r["precision"] == row["precision"] and r["models"] == counts[0])
        row["x_first_k"] = row["ips_all"] / one["ips_all"]
        row["stacks"] = study_groups(row["models"])
        row["projected_hours"] = projected_hours(row, eval_rates[row["precision"]])
    env["load_average_end"] = os.getloadavg()[0]
    return {"environment": env, "depth": depth, "ratios": [list(rr) for rr in PHASE_3], "steps": steps, "repeats": repeats,
            "check": checked, "eval_ips": eval_rates, "lone_kernels": lone_kernels, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    env, checked = result["environment"], result["check"]
    first = result["rows"][0]["models"]
    verdict = "same" if checked["same"] else "DIFFERENT"
    lines = [
        f"stacked SE-ResNets (--depth {result['depth']}), K models cycling through rr "
        f"{' '.join(','.join(map(str, rr)) for rr in result['ratios'])}, batch 32 per model, "
        f"paper recipe's Adam | {env['device']} | torch {env['torch']} | median of {result['repeats']} rounds "
        f"of {result['steps']} steps",
        f"check: {len(checked['ratios'])} models padded and stacked vs alone, largest relative loss gap "
        f"{checked['max_relative_gap']:.1e} over {checked['steps']} steps (allowed {checked['tolerance']:g}), "
        f"largest padding weight {checked['padding_max']:g} (must be 0): {verdict}",
        "",
        f"{'K':>3}{'prec':>6}{'step ms':>9}{'img/s per model':>17}{'img/s all':>11}{f'x K={first}':>11}"
        f"{'kernels':>9}{'stacks':>8}{'study h':>9}  how",
    ]
    for r in result["rows"]:
        lines.append(f"{r['models']:>3}{r['precision']:>6}{r['step_ms']:>9.2f}{r['ips_per_model']:>17,.0f}"
                     f"{r['ips_all']:>11,.0f}{r['x_first_k']:>10.2f}x{_count(r['kernels']):>9}{r['stacks']:>8}"
                     f"{r['projected_hours']:>9.1f}  {r['how']}")
    rates = ", ".join(f"{p} {v:,.0f}" for p, v in result["eval_ips"].items())
    unit = "CUDA kernels" if env["device"].startswith("cuda") else "computing aten ops (CPU profiler)"
    lines += [
        "",
        f"kernels: {unit} in one eager step of the whole stack; one plain model's step: {_count(result['lone_kernels'])}.",
        "stacks: runs of K models one after another in the paper study's 4 phases (14 runs); study h: those",
        f"stacks x 200 epochs, each model evaluated alone after every epoch (eval img/s: {rates}).",
    ]
    return "\n".join(lines)


def _count(kernels: int | None) -> str:
    return "n/a" if kernels is None else f"{kernels:,}"


def _counts(text: str) -> list[int]:
    try:
        counts = [int(part) for part in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every count of models must be >= 1")
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    parser.add_argument("--models", type=_counts, default=[1, 2, 4, 8], help="models per stack to time (default: 1,2,4,8)")
    parser.add_argument("--precision", choices=("fp32", "bf16", "both"), default="both")
    parser.add_argument("--depth", type=at_least(8), default=DEPTH, help=f"network depth (default: {DEPTH}, SE-ResNet-52)")
    parser.add_argument("--steps", type=at_least(4), help="training steps per timed call (default: 100 on CUDA, 4 on a CPU)")
    parser.add_argument("--repeats", type=at_least(1), default=3, help="interleaved timed rounds (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
        ModelConfig(depth=args.depth, rr=PHASE_3[0])
    except SeratioError as error:
        parser.error(str(error))
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    steps = args.steps or (100 if device.type == "cuda" else 4)
    result = measure(device, args.models, precisions, args.depth, steps, args.repeats, log)
    status = emit(format_table, result, args.json)
    return status if result["check"]["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
