"""Wall seconds of `seratio` commands that neither train nor draw, as a user's shell starts them.

    .venv/bin/python benchmarks/startup.py [--repeats 5] [--json out.json]

Why: `seratio --help`, a mistyped option and `study status` are what a user runs most often, and
until 2026-11-27 each paid 3-5 s for importing torch, scipy and matplotlib that it never used.
Each command runs as `python -m seratio`, so the tcmalloc re-exec is counted as it is for a user;
the study it asks about is a real journal study created once beforehand (no training), and every
number is the median of --repeats runs, the commands taking turns.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from bench_cli import at_least, emit


def commands(tmp: Path) -> dict[str, list[str]]:
    storage = f"journal:{tmp / 'study.log'}"
    return {
        "seratio --help": ["--help"],
        "seratio train --help": ["train", "--help"],
        "seratio study run --help": ["study", "run", "--help"],
        "seratio train --no-such-option": ["train", "--no-such-option"],
        "seratio study status (one study)": ["study", "status", "--name", "s", "--storage", storage],
        "seratio study export (one study)": ["study", "export", "--name", "s", "--storage", storage,
                                             "--out", str(tmp / "trials.csv")],
        "seratio report (a study that is missing)": ["report", "--name", "nope", "--storage", storage,
                                                     "--out", str(tmp / "report")],
        "seratio info --rr 8,2,16": ["info", "--rr", "8,2,16"],
    }


def create_study(tmp: Path) -> None:
    """A real journal study with one planned run and no trial, made through the Python API, since
    `study run` would go on to train."""
    from seratio.config import RunConfig
    from seratio.store import Patience, StudyStore, open_storage
    from seratio.study import StudyRequest, build_definition, create_or_join

    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    patience = Patience(seconds=30)
    storage = open_storage(f"journal:{tmp / 'study.log'}", create=True, patience=patience, log=lambda m: None)
    store = StudyStore.create_or_join(storage, "s", patience, lambda m: None)
    run = RunConfig(depth=8, epochs=1, train_subset=200, test_subset=500, val_size=100)
    definition = build_definition(StudyRequest(strategy="constant", run=run, candidates=(4,)))
    create_or_join(store, definition, tmp / "runs")


def seconds(argv: list[str]) -> float:
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "seratio", *argv], capture_output=True, check=False)
    return time.perf_counter() - started


def format_table(result: dict[str, Any]) -> str:
    lines = [f"seratio startup: median wall seconds of {result['repeats']} runs each, `python -m seratio`", ""]
    for name, values in result["seconds"].items():
        runs = ", ".join(f"{v:.2f}" for v in values)
        lines.append(f"  {name:<56}{statistics.median(values):>7.2f} s   {runs}")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeats", type=at_least(1), default=5, help="runs per command (median reported)")
    parser.add_argument("--json", type=Path, help="also write the results here as JSON")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as name:
        tmp = Path(name)
        create_study(tmp)
        runs = commands(tmp)
        times: dict[str, list[float]] = {label: [] for label in runs}
        for _ in range(args.repeats):
            for label, command in runs.items():
                times[label].append(seconds(command))
    result = {"repeats": args.repeats, "seconds": times, "command": " ".join([Path(sys.executable).name, *sys.argv])}
    return emit(format_table, result, args.json)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
