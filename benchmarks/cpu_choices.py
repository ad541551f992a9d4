"""Each CPU speed choice of `seratio.train`, measured one at a time on SE-ResNet-52 (rr 8,2,16).

    .venv/bin/python benchmarks/cpu_choices.py [--rounds 3] [--quick] [--only PART] [--json out.json]

Why a second script: `train_throughput.py` measures the tool as it runs; this one justifies each
setting by switching one knob at a time (layout, optimizer implementation, torch.compile and its
inductor options, threads, autocast, evaluation batch size and mode, allocator). The variants of
one group run interleaved, round by round, so a burst of load from another process hits all of
them alike; each number is the median over --rounds rounds. Allocators and inter-op threads can
only be chosen at process start (and inductor bakes the thread count into the kernels it
compiles), so those variants run in child processes of this script. The children of a group stay
alive side by side and take turns, one round each, so they are interleaved too.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from bench_cli import at_least, emit

from seratio.architecture import ModelConfig
from seratio.augment import augment_batch, to_float
from seratio.compiled_forward import COMPILE_OPTIONS, allow_compiled_models
from seratio.models import build_model, kernel_parameters
from seratio.runtime import allocator, cpu_has_bf16, find_tcmalloc, reexec_with_tcmalloc

MODEL = ModelConfig(depth=50, rr=(8, 2, 16))
JEMALLOC = "/usr/lib/x86_64-linux-gnu/libjemalloc.so.2"
Run = Callable[[], int]


def train_variant(
    batch: int, steps: int, *, channels_last: bool = True, optimizer: str = "fused",
    compiled: bool = False, bf16: bool = False, options: dict[str, Any] | None = None,
) -> Run:
    """`steps` paper training steps (batched augmentation, coupled L2) with the given knobs.

    `options` are inductor options for the compiled variant; none means torch.compile's defaults.
    """
    torch.manual_seed(0)
    model = build_model(MODEL)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, dynamic=False, options=options) if compiled else model
    kernels = kernel_parameters(model)
    ids = {id(p) for p in kernels}
    groups = [
        {"params": kernels, "weight_decay": 2e-4},
        {"params": [p for p in model.parameters() if id(p) not in ids], "weight_decay": 0.0},
    ]
    flags = {"loop": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}[optimizer]
    adam = torch.optim.Adam(groups, lr=1e-3, eps=1e-7, **flags)
    generator = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (batch * steps, 3, 32, 32), dtype=torch.uint8, generator=generator)
    labels = torch.randint(0, 10, (batch * steps,), generator=generator)
    layout = torch.channels_last if channels_last else torch.contiguous_format

    def run() -> int:
        for i in range(steps):
            rows = slice(i * batch, (i + 1) * batch)
            x = to_float(augment_batch(images[rows], generator)).contiguous(memory_format=layout)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16, cache_enabled=False):
                loss = F.cross_entropy(forward(x).float(), labels[rows])
            adam.zero_grad(set_to_none=True)
            loss.backward()
            adam.step()
        return batch * steps

    return run


def eval_variant(
    batch: int, images_count: int, *, channels_last: bool = True, mode: str = "inference_mode",
    compiled: bool = False, bf16: bool = False,
) -> Run:
    model = build_model(MODEL).eval()
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    forward = torch.compile(model, dynamic=False, options=COMPILE_OPTIONS) if compiled else model
    images = torch.randint(0, 256, (images_count, 3, 32, 32), dtype=torch.uint8)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    context = torch.inference_mode if mode == "inference_mode" else torch.no_grad

    def run() -> int:
        with context(), torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            for start in range(0, images_count, batch):
                x = to_float(images[start : start + batch]).contiguous(memory_format=layout)
                forward(x).float().argmax(1)
        return images_count

    return run


def without_bf16(
    variants: dict[str, dict[str, Callable[[], Run]]],
) -> dict[str, dict[str, Callable[[], Run]]]:
    """The fp32 variants only, for a CPU without bf16 kernels: its bf16 convolutions fall back to
    reference code about 10x slower than fp32, so they would take most of the run and prove nothing."""
    kept = {
        group: {name: make for name, make in rows.items() if "bf16" not in name}
        for group, rows in variants.items() if "bf16" not in group
    }
    return {group: rows for group, rows in kept.items() if rows}


def groups(quick: bool) -> dict[str, dict[str, Callable[[], Run]]]:
    """Variant factories per group; the first of each group is its reference."""
    s32, s128, s256, n_eval = (3, 1, 1, 500) if quick else (12, 4, 2, 2000)
    aggressive = COMPILE_OPTIONS  # what the tool compiles with: inductor's aggressive fusion
    all_groups = {
        "train fp32 bs 32": {
            "NCHW, fused Adam": lambda: train_variant(32, s32, channels_last=False),
            "channels_last, fused Adam": lambda: train_variant(32, s32),
            "channels_last, foreach Adam": lambda: train_variant(32, s32, optimizer="foreach"),
            "channels_last, for-loop Adam": lambda: train_variant(32, s32, optimizer="loop"),
            "channels_last, fused, compiled": lambda: train_variant(32, s32, compiled=True),
            "channels_last, fused, compiled, aggressive fusion": lambda: train_variant(
                32, s32, compiled=True, options=aggressive),
        },
        "train bf16 autocast bs 128": {
            "fp32, channels_last": lambda: train_variant(128, s128),
            "bf16, NCHW": lambda: train_variant(128, s128, channels_last=False, bf16=True),
            "bf16, channels_last": lambda: train_variant(128, s128, bf16=True),
            "bf16, channels_last, compiled": lambda: train_variant(128, s128, bf16=True, compiled=True),
            "bf16, channels_last, compiled, aggressive fusion": lambda: train_variant(
                128, s128, bf16=True, compiled=True, options=aggressive),
        },
        "train bf16 autocast bs 256 (the fast recipe's batch)": {
            "channels_last, eager": lambda: train_variant(256, s256, bf16=True),
            "channels_last, compiled, aggressive fusion": lambda: train_variant(
                256, s256, bf16=True, compiled=True, options=aggressive),
        },
        "eval fp32": {
            "bs 1000, channels_last": lambda: eval_variant(1000, n_eval),
            "bs 500": lambda: eval_variant(500, n_eval),
            "bs 250": lambda: eval_variant(250, n_eval),
            "bs 100": lambda: eval_variant(100, n_eval),
            "bs 100, NCHW": lambda: eval_variant(100, n_eval, channels_last=False),
            "bs 100, no_grad": lambda: eval_variant(100, n_eval, mode="no_grad"),
            "bs 100, compiled": lambda: eval_variant(100, n_eval, compiled=True),
            "bs 250, compiled": lambda: eval_variant(250, n_eval, compiled=True),
            "bs 100, bf16": lambda: eval_variant(100, n_eval, bf16=True),
            "bs 250, bf16": lambda: eval_variant(250, n_eval, bf16=True),
            "bs 100, bf16, compiled": lambda: eval_variant(100, n_eval, bf16=True, compiled=True),
            "bs 250, bf16, compiled": lambda: eval_variant(250, n_eval, bf16=True, compiled=True),
        },
    }
    return all_groups if cpu_has_bf16() else without_bf16(all_groups)


def measure_round(runs: dict[str, Run]) -> dict[str, float]:
    """Images/s of one call of each run, one after another."""
    rates = {}
    for name, run in runs.items():
        started = time.perf_counter()
        images = run()
        rates[name] = images / (time.perf_counter() - started)
    return rates


def warmed_up(variants: dict[str, Callable[[], Run]]) -> dict[str, Run]:
    """Each variant built and called once, so compiling never lands in a timed round."""
    runs = {name: make() for name, make in variants.items()}
    for run in runs.values():
        run()
    return runs


def measure_group(variants: dict[str, Callable[[], Run]], rounds: int) -> dict[str, list[float]]:
    """Images/s per variant: one warm-up call each (compiles), then `rounds` interleaved rounds."""
    runs = warmed_up(variants)
    rates: dict[str, list[float]] = {name: [] for name in runs}
    for _ in range(rounds):
        for name, rate in measure_round(runs).items():
            rates[name].append(rate)
    return rates


class Child:
    """This script's `--child` mode in a process of its own (allocator, threads), measuring on request.

    It warms up (compiles) at start, then runs one round per line it reads, so the children of a
    group can take turns round by round instead of one running all its rounds after the other.
    """

    def __init__(self, label: str, args: list[str], env: dict[str, str]) -> None:
        self.label = label
        self.process = subprocess.Popen(
            [sys.executable, __file__, "--child", *args], env=env, stdin=subprocess.PIPE,
            stdout=subprocess.PIPE, text=True,
        )

    def _reply(self) -> str:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"child process '{self.label}' exited with {self.process.wait()} (its stderr is above)")
        return line

    def wait_ready(self) -> None:
        """Anything a library prints while the child compiles comes before 'ready' and is skipped."""
        while self._reply() != "ready\n":
            pass

    def measure(self) -> dict[str, float]:
        assert self.process.stdin is not None
        self.process.stdin.write("round\n")
        self.process.stdin.flush()
        return json.loads(self._reply())

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait()

    def kill(self) -> None:
        """After another child failed: no reason to wait for this one's warm-up (minutes of compiling)."""
        self.process.kill()
        self.process.wait()


def interleaved_children(children: list[Child], rounds: int) -> dict[str, list[float]]:
    """Rows 'variant | child label': the children measure in turn, in reversed order every other round."""
    try:
        for child in children:
            child.wait_ready()
        rates: dict[str, list[float]] = {}
        for index in range(rounds):
            for child in children if index % 2 == 0 else children[::-1]:
                for variant, rate in child.measure().items():
                    rates.setdefault(f"{variant} | {child.label}", []).append(rate)
    except BaseException:
        for child in children:
            child.kill()
        raise
    for child in children:
        child.close()
    variants = list(dict.fromkeys(name.split(" | ")[0] for name in rates))
    return {f"{v} | {c.label}": rates[f"{v} | {c.label}"] for v in variants for c in children}


def process_groups(rounds: int, quick: bool) -> dict[str, dict[str, list[float]]]:
    """Allocators and inter-op threads, each variant in its own process (chosen at process start)."""
    base = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    base["SERATIO_NO_TCMALLOC"] = "1"
    jemalloc = JEMALLOC if os.path.exists(JEMALLOC) else None
    allocators = {"glibc": None, "tcmalloc": find_tcmalloc(), "jemalloc": jemalloc}
    extra = ["--quick"] if quick else []
    by_allocator = interleaved_children([
        Child(name, ["allocator", *extra], dict(base, **({"LD_PRELOAD": library} if library else {})))
        for name, library in allocators.items() if name == "glibc" or library is not None
    ], rounds)
    cores, interop = torch.get_num_threads(), torch.get_num_interop_threads()
    env = dict(base, **({"LD_PRELOAD": allocators["tcmalloc"]} if allocators["tcmalloc"] else {}))
    threads = interleaved_children([
        Child(f"{intra} intra-op, {inter} inter-op", ["threads", str(intra), str(inter), *extra], env)
        for intra, inter in ((cores, interop), (1, interop), (cores, 1))
    ], rounds)
    return {
        "allocator (LD_PRELOAD; child processes, interleaved)": by_allocator,
        "threads (child processes, interleaved, tcmalloc)": threads,
    }


def child_main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("what", choices=["allocator", "threads"])
    parser.add_argument("threads", nargs="*", type=int, help="intra-op and inter-op threads")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    allow_compiled_models(16)
    s32, s128, n_eval = (3, 1, 500) if args.quick else (12, 4, 2000)
    if args.what == "threads":
        # Before anything compiles: inductor bakes the thread count into its kernels.
        torch.set_num_threads(args.threads[0])
        torch.set_num_interop_threads(args.threads[1])
        variants = {"train bs 32 compiled": lambda: train_variant(32, s32, compiled=True, options=COMPILE_OPTIONS)}
    else:
        variants = {
            "train bs 32 eager": lambda: train_variant(32, s32),
            "train bs 32 compiled": lambda: train_variant(32, s32, compiled=True, options=COMPILE_OPTIONS),
            "eval bs 100": lambda: eval_variant(100, n_eval),
            "eval bs 250": lambda: eval_variant(250, n_eval),
            "eval bs 250 compiled": lambda: eval_variant(250, n_eval, compiled=True),
            "eval bs 1000": lambda: eval_variant(1000, n_eval),
        }
        if cpu_has_bf16():
            variants["train bs 128 bf16 compiled"] = lambda: train_variant(
                128, s128, bf16=True, compiled=True, options=COMPILE_OPTIONS)
    runs = warmed_up(variants)
    print("ready", flush=True)
    for _ in sys.stdin:
        print(json.dumps(measure_round(runs)), flush=True)


def _reference_key(name: str) -> str:
    """Rows named 'variant | option' compare with the first row of the same variant; others with the group's first."""
    return name.split(" | ")[0] if " | " in name else ""


def format_table(result: dict[str, Any]) -> str:
    env = result["environment"]
    lines = [
        f"seratio CPU choices, SE-ResNet-52 rr 8,2,16 | torch {env['torch']} | {env['threads']} threads"
        f" | allocator {env['allocator']} (children: as named) | bf16 {env['bf16']}"
        f" | load avg {env['load_start']:.2f} -> {env['load_end']:.2f}",
        f"median images/s of {result['rounds']} interleaved rounds after a warm-up (compiling) call; x: against the "
        "group's first row ('variant | option' rows: the variant's first row); paired: the median of the "
        "per-round ratios to that row",
    ]
    for group, rates in result["groups"].items():
        lines += ["", f"{group:<54}{'img/s':>9}{'x':>7}{'paired':>8}   rounds"]
        references: dict[str, list[float]] = {}
        for name, values in rates.items():
            reference = references.setdefault(_reference_key(name), values)
            paired = statistics.median(value / ref for value, ref in zip(values, reference))
            median = statistics.median(values)
            runs = ", ".join(f"{v:.0f}" for v in values)
            lines.append(f"  {name:<52}{median:>9.1f}{median / statistics.median(reference):>7.2f}{paired:>8.2f}   {runs}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if argv[:1] == ["--child"]:
        child_main(argv[1:])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=at_least(1), default=3, help="interleaved rounds per group (median reported)")
    parser.add_argument("--quick", action="store_true", help="a smoke run with tiny measurements")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument(
        "--only", choices=["in-process", "child-processes"],
        help="measure only the groups in this process (layout, optimizer, compile, autocast, evaluation) "
        "or only those in child processes (allocator, threads); default: both",
    )
    args = parser.parse_args(argv)
    reexec_with_tcmalloc()  # the in-process groups run on the allocator the `seratio` command uses
    allow_compiled_models(16)  # else the ninth compiled variant would silently time the eager forward
    env = {
        "torch": torch.__version__, "threads": torch.get_num_threads(), "allocator": allocator(),
        "bf16": "measured" if cpu_has_bf16() else "not measured (no bf16 instructions)",
        "load_start": os.getloadavg()[0],
    }
    results = {}
    if args.only != "child-processes":
        results = {name: measure_group(variants, args.rounds) for name, variants in groups(args.quick).items()}
    if args.only != "in-process":
        results.update(process_groups(args.rounds, args.quick))
    env["load_end"] = os.getloadavg()[0]
    command = " ".join([Path(sys.executable).name, *sys.argv])
    result = {"environment": env, "rounds": args.rounds, "groups": results, "command": command}
    return emit(format_table, result, args.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
