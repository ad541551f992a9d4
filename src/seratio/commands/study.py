"""`seratio study run|worker|status|export`: the parsers; the actions are in `study_actions`.

The actions need optuna and SQLAlchemy, about half a second to import, so they are imported only
when one runs: `seratio --help` and every parse error build these parsers too.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable

from seratio.commands.options import (
    add_read_patience_option, add_run_options, add_threads_option, path_arg, path_text, study_name,
)
from seratio.study_choices import DEFAULT_STORAGE, SELECT_ON, STORAGE_HELP, STRATEGIES

STRATEGY_HELP = (
    "constant: the same r in all stages; greedy: the paper's search (best constant, then stage 1, 2, 3 in turn); "
    "grid: all combinations; tpe: Optuna's TPE for --n-trials draws; halving: all combinations under successive "
    "halving over epochs; paper: the paper's exact experiment (greedy over its per-phase candidates, paper recipe, "
    "plain ResNet baseline, all 50,000 training images and selection on the TEST set as the paper did)"
)
TRIALS_PER_DEVICE_HELP = (
    "trials trained at once on each device, each in its own worker process; K > 1 needs journal or PostgreSQL "
    "storage. On a CPU, K single-threaded trials beat one K-threaded trial; on a GPU, start an NVIDIA MPS daemon "
    "first (nvidia-cuda-mps-control -d): 4 trials under MPS trained 2.1x the images/s of one on an H200, and 0.93x "
    "without it on an H100"
)
TRIAL_THREADS_HELP = "CPU threads for torch in each trial (default: torch's; with K trials at once, the cores / K)"


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "study", help="search reduction ratios over many runs (Optuna storage, any number of workers)",
        description="Search per-stage reduction ratios. A study lives in Optuna storage; any number of workers share it.",
    )
    actions = parser.add_subparsers(dest="study_command", metavar="ACTION", required=True)
    _register_run(actions)
    _register_worker(actions)
    _register_status(actions)
    _register_export(actions)


def _add_store_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--name", required=True, type=study_name, help="study name; also the folder of its runs")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=STORAGE_HELP)


def _add_worker_options(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("workers")
    group.add_argument("--heartbeat-interval", type=float, default=15.0, help="seconds between a worker's heartbeats (default: 15)")
    group.add_argument("--stale-after", type=float, default=120.0, help="a running trial whose heartbeat has not changed for this many seconds is failed and retried from its checkpoint; at least 3 heartbeats; use the same values on every worker (default: 120)")
    group.add_argument("--db-patience", type=float, default=900.0, help="seconds to keep retrying an unreachable storage before giving up (default: 900)")


def _register_run(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "run", help="create (or rejoin) a study and work until its strategy is done",
        description="Create the study, or join it when its definition is the same, and train until the strategy is done.",
    )
    parser.add_argument("strategy", metavar="STRATEGY", choices=STRATEGIES, help=STRATEGY_HELP)
    _add_store_options(parser)
    parser.add_argument("--artifacts", type=path_arg, help="root of the run directories (default: ./seratio-runs/NAME, or the study's when joining)")
    parser.add_argument("--seeds", type=int, default=1, help="train every configuration with seeds 0..K-1; decisions use the mean (default: 1)")
    parser.add_argument("--candidates", help="candidate ratios, e.g. 2,4,8,16,32 (default); a ratio is dropped in a stage where c // r would be 0")
    parser.add_argument("--baseline", default="none", help="the comparison configuration, also trained: 'none' = plain ResNet (default) or ratios like 8,8,8")
    parser.add_argument("--select-on", choices=SELECT_ON, help="metric the search selects on: val (default) or test (paper practice; the default of 'paper')")
    parser.add_argument("--n-trials", type=int, help="tpe only: number of TPE draws (a draw of a measured configuration reuses its result)")
    parser.add_argument("--halving-min-epochs", type=int, help="halving only: epochs before the first cut, below --epochs; later cuts at 3x, 9x, ... before the last epoch (default: epochs // 27, at least 1)")
    local = parser.add_mutually_exclusive_group()
    local.add_argument("--workers", type=int, help="local worker processes in all; more than 1 needs journal or PostgreSQL storage (default: 1)")
    local.add_argument(
        "--trials-per-device", type=int,
        help=TRIALS_PER_DEVICE_HELP + "; with --device auto, on every visible GPU (default: one trial at a time)",
    )
    add_threads_option(parser, TRIAL_THREADS_HELP)
    add_run_options(parser, with_rr=False, with_seed=False)
    _add_worker_options(parser)
    parser.set_defaults(func=_action("run"))


def _register_worker(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "worker", help="join an existing study from any machine and work until nothing is left",
        description="Join an existing study and train its runs until the strategy is done. Start one per GPU.",
    )
    _add_store_options(parser)
    parser.add_argument("--artifacts", type=path_arg, help="root of the run directories as mounted here (default: the study's)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:K (pin one GPU) (default: auto)")
    parser.add_argument("--data-dir", type=path_text, help="CIFAR directory on this machine (default: $SERATIO_DATA, then $XDG_CACHE_HOME/seratio or ~/.cache/seratio)")
    add_threads_option(parser, TRIAL_THREADS_HELP)
    parser.add_argument(
        "--trials-per-device", type=int,
        help=TRIALS_PER_DEVICE_HELP + "; with --device auto, on every visible GPU (default: one trial at a time)",
    )
    _add_worker_options(parser)
    parser.set_defaults(func=_action("worker"))


def _register_status(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "status", help="phase, trial counts and best configuration so far",
        description="Where a study stands: its phase, trial counts, the best configuration so far, the runs ended of "
                    "those planned and the training time left. It changes nothing in the study.",
    )
    _add_store_options(parser)
    add_read_patience_option(parser)
    parser.add_argument("--json", action="store_true", help="print the same as one JSON object, for scripts")
    parser.set_defaults(func=_action("status"))


def _register_export(actions: argparse._SubParsersAction) -> None:
    parser = actions.add_parser(
        "export", help="write one row per trial to CSV or JSON",
        description="Write one row per trial (state, ratios, seed, accuracies, provenance, run directory) to a .csv "
                    "or .json file, for analysis outside seratio.",
    )
    _add_store_options(parser)
    add_read_patience_option(parser)
    parser.add_argument("--out", type=path_arg, required=True, help="output file, .csv or .json")
    parser.add_argument("--force", action="store_true", help="replace --out if it is an existing file (default: refuse)")
    parser.set_defaults(func=_action("export"))


def _action(name: str) -> Callable[[argparse.Namespace], int]:
    """`study_actions.<name>`, imported when the command runs."""

    def act(args: argparse.Namespace) -> int:
        from seratio.commands import study_actions

        return getattr(study_actions, name)(args)

    return act
