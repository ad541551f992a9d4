"""`seratio train`: one run into one directory, resumable."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rich.console import Console

from seratio.commands.options import (
    add_run_options, add_threads_option, checked_threads, path_text, run_config_from_args,
)
from seratio.commands.signals import sigterm_as_ctrl_c
from seratio.rundir import CONFIG, RESULT_KEYS
from seratio.runtime import threads_for

SUMMARY_KEYS = RESULT_KEYS  # every finished result.json holds them, so a reused run's summary reads like a new one's
# Only runs of a recipe with test-time augmentation have these.
TTA_KEYS = ("tta", "tta_test_accuracy", "tta_test_loss", "tta_val_accuracy", "tta_val_loss", "tta_seconds")


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="train and evaluate one (SE-)ResNet",
        description="Train one (SE-)ResNet on CIFAR and write config, metrics, checkpoints and the result to --out.",
    )
    add_run_options(parser)
    add_threads_option(parser)
    parser.add_argument("--out", required=True, type=path_text, help="run directory (created; a finished one is never overwritten)")
    parser.add_argument("--resume", action="store_true", help="continue an interrupted run from its last checkpoint")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (notices still print)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from seratio.train import train_run

    config = run_config_from_args(args)
    console = Console(stderr=True, highlight=False, soft_wrap=True)  # a log line stays one line when piped
    if args.resume and not (Path(args.out) / CONFIG).exists():  # a mistyped --out would start afresh unnoticed
        console.print(f"notice: {args.out} holds no run to resume; starting a new one")
    with threads_for(checked_threads(args)), sigterm_as_ctrl_c():  # pre-empted: stop at once, resumable
        result = train_run(config, args.out, resume=args.resume, show_progress=not args.quiet, log=console.print)
    summary = {key: result[key] for key in SUMMARY_KEYS} | {key: result[key] for key in TTA_KEYS if key in result}
    print(json.dumps(summary, indent=2))
    return 0
