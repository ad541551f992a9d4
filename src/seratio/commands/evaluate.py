"""`seratio evaluate RUN_DIR`: score a run's saved weights again, e.g. with test-time augmentation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seratio.recipes import TTA_VIEWS
from seratio.rescore import rescore_run

TTA_HELP = (
    "test-time augmentation: none (one view), flip (and mirrored), flip-shift (mirrored or not, "
    "shifted by (0,0), (1,1), (-1,-1) pixels: 6 views) (default: the run's recipe's)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score a run's saved weights again on its validation and test images, e.g. with test-time augmentation",
        description=(
            "Load the newest checkpoint of a run directory and evaluate it on the run's validation and test "
            "split. Nothing in the run directory is written: its result.json stays what the run measured."
        ),
    )
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory made by 'seratio train' or a study")
    parser.add_argument("--tta", choices=tuple(TTA_VIEWS), help=TTA_HELP)
    parser.add_argument("--data-dir", help="CIFAR directory on this machine (default: the run's, then $SERATIO_DATA)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:K (default: the run's)")
    parser.add_argument("--json", action="store_true", help="print the scores as JSON")
    parser.set_defaults(func=run)


def _print(scores: dict[str, Any]) -> None:
    console = Console(highlight=False)
    for warning in scores["warnings"]:
        console.print(f"warning: {warning}; scored the previous checkpoint instead")
    rr = ",".join("none" if r is None else str(r) for r in scores["rr"])
    console.print(f"{scores['run']}: rr {rr}, seed {scores['seed']}, weights after epoch {scores['epoch']} "
                  f"of {scores['epochs']}")
    table = Table(title=f"{scores['tta']} ({scores['views']} view{'s' if scores['views'] > 1 else ''})")
    for column in ("split", "images", "loss", "accuracy (%)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("val", "test"):
        loss, accuracy = scores[f"{split}_loss"], scores[f"{split}_accuracy"]
        table.add_row(split, f"{scores[f'{split}_images']:,}", "-" if loss is None else f"{loss:.4f}",
                      "-" if accuracy is None else f"{100 * accuracy:.2f}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    scores = rescore_run(args.run_dir, args.tta, data_dir=args.data_dir, device=args.device)
    if args.json:
        print(json.dumps(scores, indent=2))
    else:
        _print(scores)
    return 0
