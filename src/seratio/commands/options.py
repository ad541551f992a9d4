"""Options shared across commands: the run options of every command that trains (`train`, `study run`,
`study worker`), the CPU threads of every command that runs a model, and the study name and storage
patience of every command that reads a study."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from seratio.architecture import parse_rr
from seratio.config import PRECISIONS, RunConfig
from seratio.errors import SeratioError
from seratio.recipes import RECIPES


def add_run_options(parser: argparse.ArgumentParser, *, with_rr: bool = True, with_seed: bool = True) -> None:
    group = parser.add_argument_group("model and training")
    if with_rr:
        group.add_argument("--rr", default="none", help="reduction ratio per stage, e.g. 8,2,16; one value for all stages; 'none' = no SE (default: none)")
    group.add_argument("--depth", type=int, default=50, help="6n+2 layers; 50 is the paper's 'ResNet-52' (n = 8) (default: 50)")
    group.add_argument("--dataset", default="cifar10", help="cifar10 or cifar100 (default: cifar10)")
    group.add_argument("--recipe", default="paper", help=f"training recipe: {', '.join(RECIPES)} (default: paper)")
    group.add_argument("--epochs", type=int, help="override the recipe's epochs; a shorter paper schedule scales its LR boundaries")
    group.add_argument("--batch-size", type=int, help="override the recipe's batch size")
    group.add_argument("--lr", type=float, help="override the recipe's initial learning rate")
    if with_seed:
        group.add_argument("--seed", type=int, default=0, help="fixes init, data order and augmentation (default: 0)")
    group.add_argument("--precision", default="auto", help=f"{', '.join(PRECISIONS)}; auto = the recipe's (bf16 for fast on CUDA) (default: auto)")
    data = parser.add_argument_group("data")
    data.add_argument("--data-dir", type=path_text, help="directory with cifar-10-batches-py/ or the official tar.gz (default: $SERATIO_DATA, then $XDG_CACHE_HOME/seratio or ~/.cache/seratio)")
    data.add_argument("--train-subset", type=int, help="train on a stratified subset of N images (for quick runs)")
    data.add_argument("--test-subset", type=int, help="evaluate on a stratified subset of N test images (for quick runs; not comparable with full-test-set accuracies)")
    data.add_argument("--val-size", type=int, help=f"validation images held out from train, stratified; 0 allowed (default: {RunConfig.val_size}; 0 for 'study run paper', which trains on all 50,000 as the paper did)")
    data.add_argument("--split-seed", type=int, default=0, help="fixes the validation split and the subsets (default: 0)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (default: auto)")


def run_config_from_args(args: argparse.Namespace, **overrides: object) -> RunConfig:
    values = {
        "rr": getattr(args, "rr", "none"),
        "depth": args.depth,
        "dataset": args.dataset,
        "recipe": args.recipe,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": getattr(args, "seed", 0),
        "train_subset": args.train_subset,
        "test_subset": args.test_subset,
        "val_size": RunConfig.val_size if args.val_size is None else args.val_size,
        "split_seed": args.split_seed,
        "precision": args.precision,
        "device": args.device,
        "data_dir": args.data_dir,
    }
    values.update(overrides)
    if isinstance(values["rr"], str):
        values["rr"] = parse_rr(values["rr"])  # parsed as typed, so an error quotes the user's text
    return RunConfig(**values)


READ_PATIENCE_SECONDS = 30.0
"""How long a read (status, export, report) waits for an unreachable database: it is interactive,
unlike a worker that should outlast a database restart."""


def add_read_patience_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--db-patience", type=float, default=READ_PATIENCE_SECONDS,
        help=f"seconds to keep retrying an unreachable storage before giving up (default: {READ_PATIENCE_SECONDS:g})",
    )


THREADS_HELP = (
    "CPU threads for torch (default: torch's, one per physical core); give a run that shares the CPU "
    "with other work its share, because two processes with a thread per core each slow both down"
)


def add_threads_option(parser: argparse.ArgumentParser, help: str = THREADS_HELP) -> None:
    parser.add_argument("--threads", type=int, help=help)


def need_positive(flag: str, value: int, hint: str = "") -> int:
    """Counts (threads, workers, trials) are checked here, not by argparse, so the message can say why."""
    if value < 1:
        raise SeratioError(f"{flag} {value} must be >= 1{f' ({hint})' if hint else ''}")
    return value


def need_cpu_count(flag: str, value: int) -> int:
    """Threads and processes per machine: at most 8 per logical CPU, because more only oversubscribes,
    and tens of thousands of OpenMP threads crash the process without a message."""
    cpus = os.cpu_count() or 1
    hint = f"this machine has {cpus} logical CPUs"
    if need_positive(flag, value, hint) > 8 * cpus:
        raise SeratioError(f"{flag} {value} must be <= {8 * cpus}, 8 per logical CPU ({hint})")
    return value


def checked_threads(args: argparse.Namespace) -> int | None:
    return None if args.threads is None else need_cpu_count("--threads", args.threads)


def path_text(text: str) -> str:
    """An option that names a file or directory; argparse would pass '' on, and Path('') means '.'."""
    if not text.strip():
        raise argparse.ArgumentTypeError(f"{text!r} names no file or directory; give a path")
    return text


def path_arg(text: str) -> Path:
    return Path(path_text(text))


def study_name(text: str) -> str:
    """A study's name is also the folder of its runs (./seratio-runs/NAME) and a word in every log
    line, so it must be one plain folder name on one line."""
    if (not text.strip() or text in (".", "..") or "/" in text or "\\" in text or len(text.encode()) > 255
            or not text.isprintable()):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a study name; use a non-empty name of at most 255 bytes without '/', '\\' or "
            "control characters (a newline, a tab) that is not '.' or '..'"
        )
    return text
