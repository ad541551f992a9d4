"""How far rounding, and an update slightly off, move the equivalence check's loss trajectory.

    .venv/bin/python benchmarks/equivalence_yardstick.py [--device cpu] [--precision fp32] [--json out.json]

Why: `cuda_equivalence.py` asks whether the tool's fast step trains as the eager one does, over 32
steps from one seed. Training amplifies any difference, so the question is what size of gap
rounding alone makes and what size a real difference in the update makes. This runs the check's
sessions (`paper`, SE-ResNet-52 rr 8,2,16, 8 synthetic batches for 4 epochs) on one device and
compares each with an eager reference: a second eager session (the device's nondeterminism), the
starting weights moved by one fp32 ulp and by one rounding of the precision's convolutions on
CUDA (`ROUNDING`), the learning rate 2% and 10% higher, and the session as a full run trains on
the device (compiled on a CPU, compiled and graphed on CUDA). For each: the largest relative gap
per step, at step 1, and between epoch means. `cuda_equivalence.py`'s verdict rests on the last:
RESULTS.md, "A yardstick for the equivalence check", has this CPU's numbers.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import torch
from bench_cli import emit, log
from cuda_equivalence import BATCHES, ROUNDING, epoch_means, largest_gap, trajectory

from seratio.config import RunConfig, resolve_device
from seratio.errors import SeratioError

EPOCHS = 4
PAPER_LR = RunConfig(recipe="paper").resolved_recipe().lr
VARIANTS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("eager again", {}),
    ("weights moved by 1 fp32 ulp", {"perturb": 2.0 ** -24}),
    ("weights moved by 1 rounding", {"perturb": "rounding"}),
    ("learning rate x1.02", {"lr": 1.02 * PAPER_LR}),
    ("learning rate x1.1", {"lr": 1.1 * PAPER_LR}),
    ("as a full run trains", {"graphed": True}),
)
"""Each session against the eager one: rounding-sized changes first, then updates that differ;
"rounding" stands for the precision's `ROUNDING`."""


def measure(device: torch.device, precision: str) -> dict[str, Any]:
    reference = trajectory("paper", precision, False, EPOCHS, device)
    reference_means = epoch_means(reference)
    rows = []
    for name, change in VARIANTS:
        started = time.perf_counter()
        options = dict(change)
        if options.get("perturb") == "rounding":
            options["perturb"] = ROUNDING[precision]
        graphed = options.pop("graphed", False)
        losses = trajectory("paper", precision, graphed, EPOCHS, device, **options)
        rows.append({"session": name, "per_step": largest_gap(losses, reference),
                     "step_1": largest_gap(losses[:1], reference[:1]),
                     "epoch_means": largest_gap(epoch_means(losses), reference_means), "losses": losses})
        log(f"{name}: {time.perf_counter() - started:.0f} s")
    return {"device": str(device), "precision": precision, "torch": torch.__version__, "steps": BATCHES * EPOCHS,
            "rounding": ROUNDING[precision], "eager_losses": reference, "rows": rows}


def format_table(result: dict[str, Any]) -> str:
    lines = [
        f"gaps from an eager session: paper recipe, SE-ResNet-52 rr 8,2,16, {result['steps']} steps, "
        f"{result['precision']} | {result['device']} | torch {result['torch']}",
        f"{'session':<30}{'per step':>10}{'step 1':>10}{'epoch means':>13}",
    ]
    lines += [f"{r['session']:<30}{r['per_step']:>10.2e}{r['step_1']:>10.2e}{r['epoch_means']:>13.2e}" for r in result["rows"]]
    lines.append(f"1 rounding: {result['rounding']:.2e} relative (the precision's convolutions on CUDA); gaps are the "
                 "largest relative difference.")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu", help="auto, cpu, cuda or cuda:K")
    parser.add_argument("--precision", choices=sorted(ROUNDING), default="fp32", help="fp32 or bf16 autocast")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    try:
        device = resolve_device(args.device)
    except SeratioError as error:
        parser.error(str(error))
    return emit(format_table, measure(device, args.precision), args.json)


if __name__ == "__main__":
    sys.exit(main())
