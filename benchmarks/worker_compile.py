"""Trial after trial in one study worker: does every trial still train compiled?

    .venv/bin/python benchmarks/worker_compile.py [--epochs 2] [--train-subset 1600] [--json out.json]

Why: until 2026-11-26 a study worker ran every trial from its fifth on without torch.compile.
Dynamo keeps the graphs of `ResNet.forward` in one cache, and once it holds `recompile_limit` of
them (8, two per trial) it runs the frame eagerly for good. `tests/test_speed_equivalence.py`
shows that each run compiles again; this script shows what that is worth in seconds. It runs a
real `seratio study run constant` of six SE-ResNet-52 trials in one worker process, twice, each
time in a fresh process: once as the tool runs, and once with dynamo's cache kept from trial to
trial (the behaviour before the fix). The trials are short, so the script lowers the tool's
compile threshold to make them compile as paper-length trials do. It prints, per trial, the
seconds of its last epoch (training and evaluating the 10k test images) and how many graphs dynamo
compiled during the study.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench_cli import at_least, emit

from seratio.runtime import allocator, reexec_with_tcmalloc

CANDIDATES = "1,2,4,8,16"
"""With the plain baseline, six trials: two more than the four that compiled before the fix."""
MODES = {
    "as the tool runs (dynamo's cache emptied per trial)": "reset",
    "before the fix (cache kept across trials)": "keep",
}


def child_main(mode: str, epochs: int, train_subset: int, data_dir: str) -> dict[str, Any]:
    """One study in this process; `mode` 'keep' disables the per-run reset, as the code was before."""
    import torch._dynamo
    from torch._dynamo.utils import counters

    from seratio import session, train
    from seratio.cli import main

    session.COMPILE_MIN_IMAGES["cpu"] = 0  # short trials compile like paper-length ones
    if mode == "keep":
        train.forget_compiled_graphs = lambda: None
    with tempfile.TemporaryDirectory(prefix="worker-compile-") as tmp:
        runs = Path(tmp) / "runs"
        code = main([
            "study", "run", "constant", "--candidates", CANDIDATES, "--baseline", "none", "--name", "w",
            "--storage", f"sqlite:///{tmp}/study.db", "--artifacts", str(runs), "--epochs", str(epochs),
            "--batch-size", "32", "--train-subset", str(train_subset), "--val-size", "0", "--select-on", "test",
            "--data-dir", data_dir,
        ])
        if code != 0:
            raise SystemExit(f"the study exited with {code}")
        finished = sorted(runs.glob("*/result.json"), key=lambda path: path.stat().st_mtime)
        trials = [{"run": path.parent.name, "epoch_seconds": _last_epoch_seconds(path.parent)} for path in finished]
    return {
        "trials": trials,
        "graphs": counters["stats"]["unique_graphs"],
        "recompile_limit": torch._dynamo.config.recompile_limit,
    }


def _last_epoch_seconds(run: Path) -> float:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return rows[-1]["seconds"]


def run_mode(mode: str, args: argparse.Namespace) -> dict[str, Any]:
    """A fresh process per mode: each starts with an empty dynamo cache, as a new worker does."""
    command = [sys.executable, __file__, "--child", mode, "--epochs", str(args.epochs),
               "--train-subset", str(args.train_subset), "--data-dir", args.data_dir]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the '{mode}' study process exited with {done.returncode} (its stderr is above)")
    return json.loads(done.stdout.strip().splitlines()[-1])


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"seratio worker compile: {len(CANDIDATES.split(',')) + 1} SE-ResNet-52 trials in one `study run` process,"
        f" batch 32, fp32, {result['epochs']} epochs of {result['train_subset']} images | allocator {result['allocator']}"
        f" | {result['threads']} threads",
        "seconds of each trial's last epoch (training, then evaluating 10k test images), in training order",
    ]
    for label, mode in MODES.items():
        measured = result["modes"][mode]
        seconds = [trial["epoch_seconds"] for trial in measured["trials"]]
        first = statistics.median(seconds[:4])
        later = statistics.median(seconds[4:])
        lines += [
            "",
            f"{label}: {measured['graphs']} graphs compiled (recompile_limit {measured['recompile_limit']})",
            "  " + "  ".join(f"{index + 1}: {value:.1f}" for index, value in enumerate(seconds)),
            f"  trials 5-6 against trials 1-4 (medians): {later:.1f} / {first:.1f} s = {later / first:.2f}x",
        ]
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--epochs", type=at_least(2), default=2,
                        help="epochs per trial, >= 2: the first holds the compile, the last is timed (default: 2)")
    parser.add_argument("--train-subset", type=at_least(1), default=1600, help="training images per epoch (default: 1600)")
    parser.add_argument("--data-dir", default=os.environ.get("SERATIO_DATA", "../shared/data/cifar10"),
                        help="CIFAR-10 (default: $SERATIO_DATA)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    parser.add_argument("--child", choices=sorted(set(MODES.values())), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child_main(args.child, args.epochs, args.train_subset, args.data_dir)))
        return 0
    reexec_with_tcmalloc()  # the children inherit the allocator the `seratio` command uses
    import torch

    result = {
        "epochs": args.epochs, "train_subset": args.train_subset, "allocator": allocator(),
        "threads": torch.get_num_threads(), "modes": {mode: run_mode(mode, args) for mode in MODES.values()},
    }
    return emit(format_table, result, args.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
