"""SE-ResNet-52 (rr 8,2,16) training and evaluation throughput, against a plain reference, in one run.

    .venv/bin/python benchmarks/train_throughput.py [--quick] [--json out.json] [--device auto|cpu|cuda]

Prints one table: training images/s at batch 32 and 128 in fp32 and bf16 autocast through
`seratio.train`'s own step, evaluation images/s, the same for an intentionally plain reference
measured in the same process, the ratios, the fraction of the device's peak (large matmuls timed in
the same run), K concurrent trials on the device, and the projected wall time of the paper's study.

Every number is the median of --repeats (default 3) timed repeats after one untimed warm-up. A
repeat is a fixed number of steps (not an epoch), so the whole script takes a few minutes on a
2-core CPU and well under 8 minutes on a GPU. Images are synthetic uint8 tensors of CIFAR's
shape: throughput does not depend on pixel values, and the script needs no data set.

The plain reference is what a straightforward port of the paper's Keras script looks like: a
per-sample Python augmentation loop on the host, the default NCHW layout, torch's default Adam (no
foreach/fused flags), fp32, and `.item()` on the loss and accuracy after every step; evaluation
in batches of 32 under `no_grad`, like Keras's `evaluate`.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from seratio.concurrent import run_in_processes, threads_per_trial
from seratio.config import RunConfig, resolve_device
from seratio.data import CifarData, Split
from seratio.models import ModelConfig, build_model, count_macs, kernel_parameters
from seratio.progress import EpochProgress
from seratio.runtime import allocator, find_tcmalloc, reexec_with_tcmalloc
from seratio.recipes import get_recipe
from seratio.train import EVAL_BATCH, build_session, compiles_on_cpu, evaluate

RR = (8, 2, 16)
DEPTH = 50
PAPER = {"models": 14, "epochs": 200, "train_images": 45_000, "eval_images": 15_000}
"""The paper's study: 14 networks x 200 epochs; 45k training images (5k held out for validation),
then evaluation of val (5k) and test (10k) after every epoch."""


@dataclass(frozen=True)
class Plan:
    """How much work one timed repeat does, per device; --quick shrinks it for a smoke run."""

    steps_bs32: int
    steps_bs128: int
    eval_images: int
    matmul_n: int
    matmul_reps_fp32: int
    matmul_reps_bf16: int
    concurrent: int


PLANS = {
    "cpu": Plan(steps_bs32=30, steps_bs128=8, eval_images=2000, matmul_n=2048,
                matmul_reps_fp32=3, matmul_reps_bf16=10, concurrent=2),
    "cuda": Plan(steps_bs32=200, steps_bs128=100, eval_images=10_000, matmul_n=8192,
                 matmul_reps_fp32=10, matmul_reps_bf16=50, concurrent=4),
}
QUICK = {"cpu": Plan(4, 2, 256, 1024, 2, 4, 2), "cuda": Plan(20, 10, 2000, 4096, 4, 10, 2)}
CONCURRENT = {"cpu": ((32, "fp32"), (128, "bf16")), "cuda": ((32, "fp32"), (32, "bf16"))}
"""(batch, precision) of the concurrent-trials rows: the paper's batch on both devices, and on CPU
bf16 at the batch where it pays most."""


@dataclass
class Row:
    """One measured configuration; `ips` is the median images/s over `runs` timed repeats."""

    kind: str  # train | eval | concurrent
    impl: str  # plain | seratio
    batch: int
    precision: str
    ips: float
    runs: list[float]
    allocator: str = ""
    setup: str = ""
    ratio: float | None = None
    gflops: float | None = None
    peak_fraction: float | None = None
    epoch_seconds: float | None = None


# ------------------------------------------------------------------ timing


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], None], repeats: int, device: torch.device) -> list[float]:
    """Seconds of each of `repeats` calls of `run`, after one untimed warm-up call."""
    run()
    _sync(device)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        _sync(device)
        seconds.append(time.perf_counter() - started)
    return seconds


def rates(images: int, seconds: list[float]) -> list[float]:
    return [images / s for s in seconds]


# ------------------------------------------------------------------ peak


def matmul_peak(dtype: torch.dtype, n: int, reps: int, repeats: int, device: torch.device) -> float:
    """GFLOP/s of an n x n x n matmul: the device's practical peak, measured in this run."""
    a = torch.randn(n, n, device=device).to(dtype)
    b = torch.randn(n, n, device=device).to(dtype)

    def run() -> None:
        for _ in range(reps):
            torch.mm(a, b)

    seconds = timed(run, repeats, device)
    return statistics.median(2 * n**3 * reps / s / 1e9 for s in seconds)


# ------------------------------------------------------------------ plain reference


def plain_augment(image: torch.Tensor, rng: random.Random) -> torch.Tensor:
    """One image: flip with p 0.5, shift by -3..3 px with edge fill (same semantics as seratio's)."""
    x = image.float() / 255
    if rng.random() < 0.5:
        x = x.flip(2)
    dy, dx = rng.randint(-3, 3), rng.randint(-3, 3)
    padded = F.pad(x[None], (3, 3, 3, 3), mode="replicate")[0]
    return padded[:, 3 - dy : 35 - dy, 3 - dx : 35 - dx]


PLAIN_SETUP = "NCHW, per-sample aug, default Adam, .item()/step"


class PlainReference:
    """A straightforward implementation of the paper's training and evaluation, for comparison."""

    def __init__(self, device: torch.device) -> None:
        torch.manual_seed(0)
        self.device = device
        self.model = build_model(ModelConfig(depth=DEPTH, rr=RR)).to(device)
        kernels = kernel_parameters(self.model)
        ids = {id(p) for p in kernels}
        groups = [
            {"params": kernels, "weight_decay": 2e-4},
            {"params": [p for p in self.model.parameters() if id(p) not in ids], "weight_decay": 0.0},
        ]
        self.optimizer = torch.optim.Adam(groups, lr=1e-3, eps=1e-7)
        self.rng = random.Random(0)

    def train(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int) -> None:
        self.model.train()
        order = torch.randperm(len(labels))
        total_loss, correct = 0.0, 0
        for start in range(0, len(labels), batch_size):
            index = order[start : start + batch_size]
            x = torch.stack([plain_augment(images[i], self.rng) for i in index]).to(self.device)
            y = labels[index].to(self.device)
            out = self.model(x)
            loss = F.cross_entropy(out, y)
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            total_loss += loss.item() * len(index)
            correct += (out.argmax(1) == y).sum().item()

    @torch.no_grad()
    def evaluate(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.model.eval()
        correct = 0
        for start in range(0, len(labels), 32):
            x = (images[start : start + 32].float() / 255).to(self.device)
            y = labels[start : start + 32].to(self.device)
            correct += (self.model(x).argmax(1) == y).sum().item()


def plain_rows(device_name: str, plan: Plan, repeats: int) -> list[dict[str, Any]]:
    """The plain reference's training (bs 32 and 128) and evaluation rows, as plain dicts."""
    device = torch.device(device_name)
    plain = PlainReference(device)
    steps = {32: plan.steps_bs32, 128: plan.steps_bs128}
    data = synthetic_data(max(b * s for b, s in steps.items()), plan.eval_images, torch.device("cpu"))
    rows = []
    for batch, count in steps.items():
        images, labels = data.train.images[: batch * count], data.train.labels[: batch * count]
        seconds = timed(functools.partial(plain.train, images, labels, batch), repeats, device)
        rows.append(measured_row("train", "plain", batch, "fp32", rates(batch * count, seconds), PLAIN_SETUP))
    seconds = timed(functools.partial(plain.evaluate, data.test.images, data.test.labels), repeats, device)
    rows.append(measured_row("eval", "plain", 32, "fp32", rates(plan.eval_images, seconds), "NCHW, no_grad"))
    return [asdict(r) for r in rows]


@contextlib.contextmanager
def _system_allocator() -> Iterator[None]:
    """Child processes started inside start without the tcmalloc preload that seratio adds."""
    saved = os.environ.get("LD_PRELOAD")
    library = find_tcmalloc()
    kept = ":".join(p for p in (saved or "").split(":") if p and p != library)
    if kept:
        os.environ["LD_PRELOAD"] = kept
    else:
        os.environ.pop("LD_PRELOAD", None)
    try:
        yield
    finally:
        if saved is None:
            os.environ.pop("LD_PRELOAD", None)
        else:
            os.environ["LD_PRELOAD"] = saved


# ------------------------------------------------------------------ seratio's own path


def synthetic_data(train_images: int, eval_images: int, device: torch.device) -> CifarData:
    generator = torch.Generator().manual_seed(0)

    def split(count: int) -> Split:
        images = torch.randint(0, 256, (count, 3, 32, 32), dtype=torch.uint8, generator=generator)
        return Split(images.to(device), torch.randint(0, 10, (count,), generator=generator).to(device))

    return CifarData(
        train=split(train_images), val=split(0), test=split(eval_images), num_classes=10,
        class_names=[str(i) for i in range(10)], dataset="synthetic", root=Path("."),
    )


def paper_run_compiles(batch: int) -> bool:
    """Whether a full-length paper run at this batch size compiles its forward (CPU only)."""
    return compiles_on_cpu(get_recipe("paper", batch_size=batch), PAPER["train_images"])


def seratio_session(batch: int, precision: str, steps: int, eval_images: int, device: torch.device) -> Any:
    """A session set up exactly as a paper-length run's, on `steps` batches of synthetic data."""
    config = RunConfig(rr=RR, depth=DEPTH, recipe="paper", batch_size=batch, precision=precision, device=str(device))
    data = synthetic_data(batch * steps, eval_images, device)
    return build_session(config, data, device, compile_cpu=paper_run_compiles(batch))


def setup(session: Any) -> str:
    """How a session trains, in words, for the table."""
    parts = ["NHWC" if session.channels_last else "NCHW", type(session.optimizer).__name__]
    parts += ["compiled"] if session.compiled is not None else []
    parts += ["CUDA graph"] if session.graphed is not None else []
    return ", ".join(parts)


def seratio_train_seconds(session: Any, repeats: int) -> list[float]:
    """Each repeat is one `_train_epoch` over the synthetic split: exactly the tool's hot loop."""
    from seratio.train import _train_epoch

    progress = EpochProgress(enabled=False)
    return timed(lambda: _train_epoch(session, 0, progress), repeats, session.device)


def _concurrent_worker(
    batch: int, precision: str, steps: int, repeats: int, device: str, barrier: Any
) -> list[tuple[float, float]]:
    """One of K processes: train in lockstep with the others; (start, end) monotonic times per repeat."""
    from seratio.train import _train_epoch

    dev = torch.device(device)
    session = seratio_session(batch, precision, steps, 0, dev)
    progress = EpochProgress(enabled=False)
    _train_epoch(session, 0, progress)
    spans = []
    for _ in range(repeats):
        barrier.wait()
        started = time.monotonic()
        _train_epoch(session, 0, progress)
        spans.append((started, time.monotonic()))
    return spans


def concurrent_rates(k: int, batch: int, precision: str, steps: int, repeats: int, device: torch.device) -> list[float]:
    """Aggregate images/s of K processes training at once: all their images over the joint span."""
    import multiprocessing

    with multiprocessing.get_context("spawn").Manager() as manager:
        barrier = manager.Barrier(k)
        calls = [(batch, precision, steps, repeats, str(device), barrier)] * k
        spans = run_in_processes(_concurrent_worker, calls, k, threads_per_trial(k))
    result = []
    for r in range(repeats):
        start = min(s[r][0] for s in spans)
        end = max(s[r][1] for s in spans)
        result.append(k * batch * steps / (end - start))
    return result


# ------------------------------------------------------------------ the run


def environment(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
    else:
        name = _cpu_name()
    return {
        "device": f"{device.type}: {name}",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "threads": torch.get_num_threads(),
        "interop_threads": torch.get_num_interop_threads(),
        "allocator": allocator(),
        "amx": _cpu_has("amx_bf16"),
        "load_average_start": os.getloadavg()[0],
    }


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip() + f" ({os.cpu_count()} logical CPUs)"
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _cpu_has(flag: str) -> bool:
    try:
        return flag in Path("/proc/cpuinfo").read_text()
    except OSError:
        return False


def measure(device: torch.device, plan: Plan, repeats: int, log: Callable[[str], None]) -> dict[str, Any]:
    gflop_per_image = 3 * 2 * count_macs(ModelConfig(depth=DEPTH, rr=RR)) / 1e9
    env = environment(device)
    log(f"device {env['device']}; torch {env['torch']}; {env['threads']} threads; allocator {env['allocator']}")
    peak = {
        "fp32": matmul_peak(torch.float32, plan.matmul_n, plan.matmul_reps_fp32, repeats, device),
        "bf16": matmul_peak(torch.bfloat16, plan.matmul_n, plan.matmul_reps_bf16, repeats, device),
    }
    log(f"matmul peak: fp32 {peak['fp32']:.0f} GFLOP/s, bf16 {peak['bf16']:.0f} GFLOP/s")
    rows: list[Row] = []

    # The plain reference runs first, in a child process on the system allocator: it is what a plain
    # script gets, and seratio's own settings (tcmalloc, cudnn.benchmark) must not leak into it.
    with _system_allocator():
        (plain,) = run_in_processes(plain_rows, [(str(device), plan, repeats)], 1)
    rows.extend(Row(**fields) for fields in plain)
    for measured in rows:
        log(f"plain {measured.kind} bs {measured.batch}: {measured.ips:.1f} img/s ({measured.allocator})")

    for precision in ("fp32", "bf16"):
        rows += seratio_rows(precision, device, plan, repeats, log)
    for batch, precision in CONCURRENT[device.type]:
        steps = plan.steps_bs32 if batch == 32 else plan.steps_bs128
        ips = concurrent_rates(plan.concurrent, batch, precision, steps, repeats, device)
        rows.append(measured_row("concurrent", "seratio", batch, precision, ips, f"{plan.concurrent} processes"))
        log(f"seratio {plan.concurrent} concurrent trials bs {batch} {precision}: {rows[-1].ips:.1f} img/s in total")

    _derive(rows, peak, gflop_per_image)
    env["load_average_end"] = os.getloadavg()[0]
    return {
        "environment": env,
        "repeats": repeats,
        "gflop_per_training_image": gflop_per_image,
        "peak_gflops": peak,
        "rows": [asdict(row) for row in rows],
        "concurrent_trials": plan.concurrent,
        "projection_hours": _projection(rows),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }


def seratio_rows(
    precision: str, device: torch.device, plan: Plan, repeats: int, log: Callable[[str], None]
) -> list[Row]:
    """seratio's training at batch 32 and 128, then evaluation, in one precision."""
    rows = []
    for batch, count in ((32, plan.steps_bs32), (128, plan.steps_bs128)):
        session = seratio_session(batch, precision, count, plan.eval_images, device)
        seconds = seratio_train_seconds(session, repeats)
        rows.append(measured_row("train", "seratio", batch, precision, rates(batch * count, seconds), setup(session)))
        log(f"seratio train bs {batch} {precision}: {rows[-1].ips:.1f} img/s")
    test = session.data.test
    seconds = timed(functools.partial(evaluate, session, test), repeats, device)
    how = f"{'NHWC' if session.channels_last else 'NCHW'}, inference_mode"
    rows.append(measured_row("eval", "seratio", EVAL_BATCH[device.type], precision, rates(len(test), seconds), how))
    log(f"seratio eval {precision}: {rows[-1].ips:.1f} img/s")
    return rows


def measured_row(kind: str, impl: str, batch: int, precision: str, runs: list[float], how: str) -> Row:
    """A measured row: the median of `runs`, on this process's allocator."""
    return Row(kind, impl, batch, precision, statistics.median(runs), runs, allocator(), how)


def _find(rows: list[Row], kind: str, impl: str, batch: int | None = None, precision: str = "fp32") -> Row:
    matches = (r for r in rows if (r.kind, r.impl, r.precision) == (kind, impl, precision))
    return next(r for r in matches if batch in (None, r.batch))


def _derive(rows: list[Row], peak: dict[str, float], gflop_per_image: float) -> None:
    """Ratios to the plain reference, GFLOP/s and fraction of peak, and seconds per paper epoch."""
    for row in rows:
        if row.kind == "eval":
            row.ratio = row.ips / _find(rows, "eval", "plain").ips
            continue
        row.ratio = row.ips / _find(rows, "train", "plain", row.batch).ips
        row.gflops = row.ips * gflop_per_image
        row.peak_fraction = row.gflops / peak[row.precision]
        if row.kind == "concurrent":
            continue
        eval_row = _find(rows, "eval", row.impl, precision=row.precision)
        row.epoch_seconds = PAPER["train_images"] / row.ips + PAPER["eval_images"] / eval_row.ips


def _projection(rows: list[Row]) -> dict[str, float]:
    """Hours for the paper's study (14 models x 200 epochs at batch 32) at the measured rates.

    With concurrent trials, evaluation is counted as if it did not overlap training (conservative).
    """
    runs = PAPER["models"] * PAPER["epochs"]
    out = {}
    for row in rows:
        if row.batch != 32 or row.kind == "eval":
            continue
        eval_ips = _find(rows, "eval", row.impl, precision=row.precision).ips
        seconds = runs * (PAPER["train_images"] / row.ips + PAPER["eval_images"] / eval_ips)
        key = f"{row.impl} {row.precision}" + (" concurrent" if row.kind == "concurrent" else "")
        out[key] = seconds / 3600
    return out


def format_table(result: dict[str, Any]) -> str:
    env = result["environment"]
    peak = result["peak_gflops"]
    rr = ",".join(map(str, RR))
    load = f"{env['load_average_start']:.2f} -> {env['load_average_end']:.2f}"
    lines = [
        f"seratio throughput: SE-ResNet-52 (--depth {DEPTH}) rr {rr}, "
        f"{result['gflop_per_training_image']:.3f} GFLOP per training image",
        f"device {env['device']} | torch {env['torch']} | threads {env['threads']} (interop {env['interop_threads']})"
        f" | allocator {env['allocator']} | AMX {'yes' if env['amx'] else 'no'} | load avg {load}",
        f"peak (matmul): fp32 {peak['fp32']:,.0f} GFLOP/s, bf16 {peak['bf16']:,.0f} GFLOP/s"
        f" | median of {result['repeats']} repeats after warm-up",
        "",
        f"{'what':<34}{'batch':>6}{'prec':>6}{'img/s':>10}{'x plain':>9}{'GFLOP/s':>10}{'% peak':>8}{'epoch s':>9}"
        f"  {'alloc':<9}{'runs (img/s)':<20}how",
    ]
    k = result["concurrent_trials"]
    for r in result["rows"]:
        what = {"train": "train", "eval": "eval", "concurrent": f"train, {k} trials at once"}[r["kind"]]
        name = f"{r['impl']} {what}"
        ratio = f"{r['ratio']:.2f}x" if r["ratio"] is not None else ""
        gflops = f"{r['gflops']:,.0f}" if r["gflops"] is not None else ""
        frac = f"{100 * r['peak_fraction']:.1f}%" if r["peak_fraction"] is not None else ""
        epoch = f"{r['epoch_seconds']:.1f}" if r["epoch_seconds"] is not None else ""
        runs = ", ".join(f"{v:.0f}" for v in r["runs"])
        lines.append(
            f"{name:<34}{r['batch']:>6}{r['precision']:>6}{r['ips']:>10,.1f}{ratio:>9}{gflops:>10}{frac:>8}{epoch:>9}"
            f"  {r['allocator']:<9}{runs:<20}{r['setup']}"
        )
    lines += [
        "",
        "x plain: against the plain reference at the same batch size (eval: against plain eval at batch 32).",
        "GFLOP/s and % peak: images/s x GFLOP per training image, against the matmul peak of the same precision.",
        "epoch s: one paper epoch, 45k training images plus evaluating 15k (val + test) at the matching eval rate.",
        "projected paper study (14 models x 200 epochs, batch 32):",
    ]
    lines += [f"  {name:<34}{hours:>8.1f} h" for name, hours in result["projection_hours"].items()]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K")
    parser.add_argument("--quick", action="store_true", help="a smoke run with a few steps per measurement")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per number (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    reexec_with_tcmalloc()  # measure seratio as its command runs: on tcmalloc where installed
    device = resolve_device(args.device)
    plan = (QUICK if args.quick else PLANS)[device.type]
    result = measure(device, plan, args.repeats, lambda message: print(message, file=sys.stderr, flush=True))
    print(format_table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
