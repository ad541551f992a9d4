"""Would trials stacked into one model fill a GPU? K SE-ResNet-52s trained as one vmapped step.

    python3 benchmarks/stacked_models.py [--device auto|cpu|cuda] [--models 1,2,4,8] [--json out.json]

Why: on an H100 a batch-32 step of one SE-ResNet-52 is about 900 small kernels and 5.8 ms, 1% of
the GPU's arithmetic, and four trials in four processes trained 0.93x one (benchmarks/RESULTS.md).
`torch.func.vmap` over K stacked copies of the model turns each convolution into one convolution
over K times the channels, so a step of K models launches about as many kernels as one model's,
each K times wider. This measures whether that pays before the study worker is built around it:
training images/s per model and over all K, through seratio's CUDA-graph step (`GraphedStep`) on
CUDA, and the paper study's projected hours at each K.

Before timing, it checks on the device that the stacked step trains each model as a separate step
would: K=2 small models from two seeds, 4 steps on the same batches, in fp32 (TF32 off), per-model
losses against the same models trained alone. A stacked step that mixed the models up would be
fast and useless.

What this leaves out, and a study worker would need: every stacked model here has the ratios
(8, 2, 16), so their parameters have one shape. A study's models differ in their SE widths (a
fraction of a percent of the arithmetic): padded to the widest with zero weights, the extra units
output 0 and get zero gradients, so each model would still train exactly its own width. The no-SE
baseline has other parameters and would train alone. All K models see the same batches, as the
paper study's runs do (they all use seed 0).

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
from bench_cli import at_least, emit
from torch import nn
from torch.func import functional_call, stack_module_state, vmap
from train_throughput import DEPTH, PAPER, RR, environment, timed

from seratio.architecture import ModelConfig
from seratio.augment import augment_batch, to_float
from seratio.config import resolve_device
from seratio.cuda_step import GraphedStep
from seratio.errors import SeratioError
from seratio.models import build_model, kernel_parameters
from seratio.recipes import get_recipe

PAPER_PHASES = (4, 2, 3, 4)
"""New runs per phase of the paper's greedy search (Table 3): the constant ratios 2, 4, 8, 16; stage
1 at 2 and 4; stage 2 at 2, 4 and 16; stage 3 at 2, 4, 16 and 32. A phase waits for the one before,
so at most its width can be stacked; the no-SE baseline depends on nothing and joins any phase."""
RECIPE = get_recipe("paper")
CHECK_TOLERANCE = 1e-3
"""Largest relative gap allowed between a stacked model's and its lone twin's per-step losses."""


class Stack:
    """K models' parameters and buffers stacked on a leading dimension, and one step that trains all K."""

    def __init__(self, models: list[nn.Module], device: torch.device, precision: str) -> None:
        self.params, self.buffers = stack_module_state([m.to(device) for m in models])
        self.base = copy.deepcopy(models[0]).to("meta")
        self.autocast = precision == "bf16"
        self.channels_last = device.type == "cuda" and self.autocast
        self.optimizer = _optimizer(models[0], self.params, device)
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


def _optimizer(model: nn.Module, params: dict[str, torch.Tensor], device: torch.device) -> torch.optim.Optimizer:
    """The paper recipe's fused Adam over `params` (stacked or not), decay on kernels only as in
    `seratio.train`; capturable, with its rate in a device tensor, on CUDA."""
    kernel_ids = {id(p) for p in kernel_parameters(model)}
    kernels = {name for name, p in model.named_parameters() if id(p) in kernel_ids}
    graphs = device.type == "cuda"
    groups = [{"params": [p for n, p in params.items() if n in kernels], "weight_decay": RECIPE.weight_decay},
              {"params": [p for n, p in params.items() if n not in kernels], "weight_decay": 0.0}]
    lr = torch.tensor(RECIPE.lr, device=device) if graphs else RECIPE.lr
    return torch.optim.Adam(groups, lr=lr, eps=RECIPE.adam_eps, fused=True, capturable=graphs)


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


def models(count: int, depth: int) -> list[nn.Module]:
    out = []
    for seed in range(count):
        torch.manual_seed(seed)
        out.append(build_model(ModelConfig(depth=depth, rr=RR)))
    return out


def batches(count: int, batch: int, device: torch.device) -> list[tuple[torch.Tensor, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, batch, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (count, batch), generator=generator)
    return [(images[i].to(device), labels[i].to(device)) for i in range(count)]


# ------------------------------------------------------------------ the check


def check(device: torch.device, steps: int = 4) -> dict[str, Any]:
    """Largest relative gap between a stacked model's per-step losses and its lone twin's."""
    data = batches(steps, 32, device)
    with _tf32(False):
        stack = Stack(models(2, 8), device, "fp32")
        stacked = [stack.step(to_float(images), labels)[0].tolist() for images, labels in data]
        lone = [lone_step(model, device) for model in models(2, 8)]
        alone = [[step(to_float(images), labels).item() for images, labels in data] for step in lone]
    gap = max(abs(stacked[s][k] - alone[k][s]) / abs(alone[k][s]) for s in range(steps) for k in range(2))
    return {"steps": steps, "max_relative_gap": gap, "tolerance": CHECK_TOLERANCE, "same": gap <= CHECK_TOLERANCE}


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
        self.stack = Stack(models(count, depth), device, precision)
        self.data = batches(8, batch, device)
        self.generator = torch.Generator(device).manual_seed(0)
        self.how = "eager"
        self.run: Callable[[torch.Tensor, torch.Tensor], Any] = self.stack.step
        if device.type == "cuda":
            self.run = GraphedStep(self.stack.step, self.stack.optimizer, batch, device)
            self.how = "CUDA graph"
        self.seconds: list[float] = []
        self.kernels = 0

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
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    started = time.perf_counter()
    run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def eval_ips(depth: int, precision: str, batch: int, device: torch.device) -> float:
    """One model's test-set rate, as `seratio.train.evaluate` runs it (inference mode, large batches)."""
    model = models(1, depth)[0].to(device).eval()
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


def _count_kernels(timers: list[Timer], depth: int, device: torch.device) -> int:
    """Each stack's kernels per eager step (before any capture hides them from the profiler), and
    one plain model's, which is returned."""
    images, labels = batches(1, 32, device)[0]
    images = to_float(images)
    for timer in timers:
        timer.kernels = kernels_per_step(functools.partial(timer.stack.step, images, labels), device)
    return kernels_per_step(functools.partial(lone_step(models(1, depth)[0], device), images, labels), device)


def measure(device: torch.device, counts: list[int], precisions: list[str], depth: int, steps: int,
            repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    env = environment(device)
    log("checking that a stacked step trains each model as a lone step would ...")
    checked = check(device)
    log(f"  largest relative loss gap {checked['max_relative_gap']:.2e} (allowed {CHECK_TOLERANCE:g})")
    timers = [Timer(k, p, depth, 32, steps, device) for p in precisions for k in counts]
    lone_kernels = _count_kernels(timers, depth, device)
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
    return {"environment": env, "depth": depth, "rr": list(RR), "steps": steps, "repeats": repeats,
            "check": checked, "eval_ips": eval_rates, "lone_kernels": lone_kernels, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    env, checked = result["environment"], result["check"]
    first = result["rows"][0]["models"]
    verdict = "same" if checked["same"] else "DIFFERENT"
    lines = [
        f"stacked SE-ResNet (--depth {result['depth']}) rr {','.join(map(str, result['rr']))}, batch 32 per model, "
        f"paper recipe's Adam | {env['device']} | torch {env['torch']} | median of {result['repeats']} rounds "
        f"of {result['steps']} steps",
        f"check: stacked vs lone steps, largest relative loss gap {checked['max_relative_gap']:.1e} over "
        f"{checked['steps']} steps (allowed {checked['tolerance']:g}): {verdict}",
        "",
        f"{'K':>3}{'prec':>6}{'step ms':>9}{'img/s per model':>17}{'img/s all':>11}{f'x K={first}':>11}"
        f"{'kernels':>9}{'stacks':>8}{'study h':>9}  how",
    ]
    for r in result["rows"]:
        lines.append(f"{r['models']:>3}{r['precision']:>6}{r['step_ms']:>9.2f}{r['ips_per_model']:>17,.0f}"
                     f"{r['ips_all']:>11,.0f}{r['x_first_k']:>10.2f}x{r['kernels']:>9,}{r['stacks']:>8}"
                     f"{r['projected_hours']:>9.1f}  {r['how']}")
    rates = ", ".join(f"{p} {v:,.0f}" for p, v in result["eval_ips"].items())
    unit = "CUDA kernels" if env["device"].startswith("cuda") else "computing aten ops (CPU profiler)"
    lines += [
        "",
        f"kernels: {unit} in one eager step of the whole stack; one plain model's step: {result['lone_kernels']:,}.",
        "stacks: runs of K models one after another in the paper study's 4 phases (14 runs); study h: those",
        f"stacks x 200 epochs, each model evaluated alone after every epoch (eval img/s: {rates}).",
    ]
    return "\n".join(lines)


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
        ModelConfig(depth=args.depth, rr=RR)
    except SeratioError as error:
        parser.error(str(error))
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    steps = args.steps or (100 if device.type == "cuda" else 4)
    result = measure(device, args.models, precisions, args.depth, steps, args.repeats,
                     lambda message: print(message, file=sys.stderr, flush=True))
    status = emit(format_table, result, args.json)
    return status if result["check"]["same"] else 1


if __name__ == "__main__":
    sys.exit(main())
