"""`seratio evaluate RUN_DIR...`: score saved weights again, e.g. with test-time augmentation."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from seratio.architecture import format_rr
from seratio.commands.console import stdout_console
from seratio.commands.options import add_threads_option, checked_threads, path_arg, path_text
from seratio.config import resolve_device
from seratio.errors import SeratioError, user_message
from seratio.recipes import TTA_VIEWS
from seratio.rundir import find_runs
from seratio.runtime import threads_for

TTA_HELP = (
    "test-time augmentation: none (one view), flip (and mirrored), flip-shift (mirrored or not, "
    "shifted by (0,0), (1,1), (-1,-1) pixels: 6 views) (default: each run's recipe's)"
)


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="score saved weights again on their run's validation and test images, e.g. with test-time augmentation",
        description=(
            "Load the newest checkpoint of each run directory and evaluate it on the run's validation and test "
            "split. Nothing in a run directory is written: its result.json stays what the run measured. With "
            "several runs, one that cannot be scored is skipped with its reason, and the exit code is 1."
        ),
    )
    parser.add_argument(
        "run_dirs", nargs="+", type=path_arg, metavar="RUN_DIR",
        help="a run directory made by 'seratio train' or a study, or a folder of them (e.g. a study's artifacts)",
    )
    parser.add_argument("--tta", choices=tuple(TTA_VIEWS), help=TTA_HELP)
    parser.add_argument("--data-dir", type=path_text, help="CIFAR directory on this machine (default: the run's, then $SERATIO_DATA)")
    parser.add_argument("--device", help="auto, cpu, cuda or cuda:K (default: the run's)")
    add_threads_option(parser)
    parser.add_argument("--json", action="store_true", help="print each run's scores as one JSON object per line")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    threads = checked_threads(args)
    if args.device:
        resolve_device(args.device)  # once, not once per run
    found: dict[Path, Path] = {}  # a run named twice (as itself and inside its folder) is scored once
    for path in args.run_dirs:
        for run_dir in find_runs(path):
            found.setdefault(run_dir.resolve(), run_dir)
    runs = list(found.values())
    with threads_for(threads):
        if len(runs) == 1:
            _show_one(_rescore(runs[0], args), args.json)
            return 0
        return _score_many(runs, args)


def _rescore(run_dir: Path, args: argparse.Namespace) -> dict[str, Any]:
    from seratio.rescore import rescore_run

    return rescore_run(run_dir, args.tta, data_dir=args.data_dir, device=args.device)


def _show_one(scores: dict[str, Any], as_json: bool) -> None:
    if as_json:
        print(json.dumps(scores))
        return
    console = stdout_console()
    for warning in scores["warnings"]:
        console.print(f"warning: {warning}")
    console.print(f"{scores['run']}: rr {_rr(scores)}, seed {scores['seed']}, weights after epoch {scores['epoch']} "
                  f"of {scores['epochs']}")
    table = Table(title=f"{scores['tta']} ({_views(scores)})")
    for column in ("split", "images", "loss", "accuracy (%)"):
        table.add_column(column, justify="left" if column == "split" else "right")
    for split in ("val", "test"):
        loss, accuracy = scores[f"{split}_loss"], scores[f"{split}_accuracy"]
        table.add_row(split, f"{scores[f'{split}_images']:,}", "-" if loss is None else f"{loss:.4f}", _percent(accuracy))
    console.print(table)
    if scores["recorded_test_accuracy"] is not None:
        console.print(f"logged after epoch {scores['epoch']} during training (one view): test {_percent(scores['recorded_test_accuracy'])}%")


def _score_many(runs: list[Path], args: argparse.Namespace) -> int:
    """One run after another; JSON lines print as each finishes, so a long batch shows its progress
    and an interrupted one keeps what it scored."""
    notes = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # a path stays whole
    scored, skipped = [], 0
    for index, run_dir in enumerate(runs, 1):
        notes.print(f"[{index}/{len(runs)}] {run_dir}")
        try:
            scores = _rescore(run_dir, args)
        except (SeratioError, OSError) as error:
            notes.print(f"skipped {run_dir}: {user_message(error)}")
            skipped += 1
            continue
        for warning in scores["warnings"]:
            notes.print(f"warning: {run_dir}: {warning}")
        if args.json:
            print(json.dumps(scores), flush=True)
        scored.append(scores)
    if not args.json:
        stdout_console().print(_table(scored))
    if skipped:
        notes.print(f"{skipped} of {len(runs)} runs skipped")
    return 1 if skipped else 0


def _table(scored: list[dict[str, Any]]) -> Table:
    table = Table(title="scored again (test: one view as logged during training, and with the views)")
    for column in ("run", "rr", "seed", "epoch", "views", "val (%)", "test, logged (%)", "test (%)", "gain (pp)"):
        table.add_column(column, justify="left" if column in ("run", "rr") else "right")
    for s in scored:
        logged = s["recorded_test_accuracy"]
        gain = "-" if logged is None else f"{100 * (s['test_accuracy'] - logged):+.2f}"
        table.add_row(Path(s["run"]).name, _rr(s), str(s["seed"]), f"{s['epoch']}/{s['epochs']}", str(s["views"]),
                      _percent(s["val_accuracy"]), _percent(logged), _percent(s["test_accuracy"]), gain)
    return table


def _rr(scores: dict[str, Any]) -> str:
    return format_rr(scores["rr"])


def _views(scores: dict[str, Any]) -> str:
    return f"{scores['views']} view{'s' if scores['views'] > 1 else ''}"


def _percent(accuracy: float | None) -> str:
    return "-" if accuracy is None else f"{100 * accuracy:.2f}"
