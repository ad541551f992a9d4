"""`seratio train`: one run into one directory, resumable."""

from __future__ import annotations

import argparse
import json
import shlex
from pathlib import Path

from rich.console import Console

from seratio.commands.options import (
    add_run_options, add_threads_option, checked_threads, path_text, run_config_from_args,
)
from seratio.commands.signals import sigterm_as_ctrl_c
from seratio.errors import print_to_stderr
from seratio.rundir import CONFIG, RESULT_KEYS, read_run_config
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
    parser.register("action", None, StoreGiven)  # every plain option records that it was given
    add_run_options(parser)
    add_threads_option(parser)
    parser.add_argument("--out", required=True, type=path_text, help="run directory (created; a finished one is never overwritten)")
    parser.add_argument("--resume", action="store_true",
                        help="continue an interrupted run from its last checkpoint, with the configuration stored in "
                             "--out; options given must match it")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or per-epoch lines (notices still print)")
    parser.set_defaults(func=run)


class StoreGiven(argparse.Action):
    """argparse's plain store, noting the option in `given`: `--resume` takes what was not given
    from the stored run, and a default cannot be told from a value typed on the command line."""

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        setattr(namespace, self.dest, values)
        namespace.given = getattr(namespace, "given", frozenset()) | {self.dest}


STORED_OPTIONS = ("rr", "depth", "dataset", "recipe", "epochs", "batch_size", "lr", "seed", "train_subset",
                  "test_subset", "val_size", "split_seed", "precision")
"""What `--resume` takes from the stored run when not given: everything that makes the run itself.
The device and data folder belong to this machine, not to the run."""


def run(args: argparse.Namespace) -> int:
    from seratio.train import train_run

    console = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)  # a line stays whole, [x] too
    stored = Path(args.out) / CONFIG
    if args.resume and not stored.exists():  # a mistyped --out would start afresh unnoticed
        console.print(f"notice: {args.out} holds no run to resume; starting a new one")
    config = run_config_from_args(args, **(_stored_unless_given(args) if args.resume and stored.is_file() else {}))
    try:
        with threads_for(checked_threads(args)), sigterm_as_ctrl_c():  # pre-empted: stop at once, resumable
            # Plain writes to stderr: on a terminal the live bar catches them and prints them above itself,
            # where a rich console of its own would write past it, onto the bar's last line.
            result = train_run(config, args.out, resume=args.resume, show_progress=not args.quiet, log=print_to_stderr)
    except KeyboardInterrupt:
        if stored.is_file():
            console.print(f"to continue: {_resume_command(args.out, args.data_dir)}")
        raise
    summary = ({"rr": result.get("rr"), "seed": result.get("seed")} | {key: result[key] for key in SUMMARY_KEYS}
               | {key: result[key] for key in TTA_KEYS if key in result})  # which run it was, then how it did
    print(json.dumps(summary, indent=2))
    return 0


def _resume_command(out: str, data_dir: str | None = None) -> str:
    """The command that continues the run in `out`, ready to paste: the data folder is this
    machine's, not the run's, so one given to the interrupted command is given again."""
    data = "" if data_dir is None else f" --data-dir {shlex.quote(str(data_dir))}"
    return f"seratio train --resume --out {shlex.quote(str(out))}{data}"


def _stored_unless_given(args: argparse.Namespace) -> dict[str, object]:
    """`train --resume --out DIR` alone continues the run in DIR; an option given on the command
    line is kept, so one that differs from the stored run is still refused, naming both values.
    Merged before the configuration is checked: `--train-subset 45500` is valid beside the stored
    `--val-size 0`, not beside the default 5,000."""
    stored, _ = read_run_config(Path(args.out))
    given = getattr(args, "given", frozenset())
    return {name: getattr(stored, name) for name in STORED_OPTIONS if name not in given}
