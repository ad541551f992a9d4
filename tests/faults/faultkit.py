"""Shared pieces of the fault suite: tiny runs, seratio subprocesses, and run-directory comparisons.

Every process here trains on ONE thread (OMP_NUM_THREADS=1 in subprocesses, `one_thread` in
process). CPU kernels may sum in a different order with another thread count, and "bit-identical
after a fault" is only a meaningful claim between runs that would be identical without one. It is
also the frugal choice on a small shared machine.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seratio.cli import main

HERE = Path(__file__).resolve().parent
LAUNCH = HERE / "launch.py"
EPOCHS = 3
TINY = ["--depth", "8", "--recipe", "paper", "--batch-size", "64", "--train-subset", "300", "--test-subset", "1000",
        "--val-size", "100"]
"""About 1 s per epoch on one thread, most of it the 1,000-image test evaluation."""
TINY_RUN = [*TINY, "--rr", "4,4,4", "--epochs", str(EPOCHS)]
TIMING_KEYS = {"seconds"}


Record = Callable[[str, int, int, int], None]
"""The `tally` fixture: (fault, tried, survived, lost)."""


def one_thread_env(**extra: str) -> dict[str, str]:
    """The environment for a seratio subprocess: one CPU thread, unbuffered output."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **extra}


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Train in this process on one thread, as the subprocesses do."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def main_in_process(argv: Sequence[str]) -> int:
    """`seratio ARGV` in this process on one thread, with log lines unwrapped so tests can match them.

    rich wraps at the terminal width, 80 columns under pytest's capture, which would split paths.
    """
    before = os.environ.get("COLUMNS")
    os.environ["COLUMNS"] = "1000"
    try:
        with one_thread():
            return main(list(argv))
    finally:
        if before is None:
            del os.environ["COLUMNS"]
        else:
            os.environ["COLUMNS"] = before


def seratio_command(*args: str, kill_at: str = "-") -> list[str]:
    """`seratio ARGS` through the kill-point launcher (`-`: unhooked)."""
    return [sys.executable, str(LAUNCH), kill_at, *args]


def train_argv(cifar_dir: Path, out: Path, *extra: str) -> list[str]:
    return ["train", *TINY_RUN, "--data-dir", str(cifar_dir), "--out", str(out), "--quiet", *extra]


def run_seratio(args: Sequence[str], *, timeout: float = 300, kill_at: str = "-") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        seratio_command(*args, kill_at=kill_at), capture_output=True, text=True, timeout=timeout, env=one_thread_env()
    )


def assert_no_traceback(*texts: str) -> None:
    for text in texts:
        assert "Traceback" not in text, text


def without_timing(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in TIMING_KEYS}


def run_outcome(run: Path) -> dict[str, Any]:
    """Everything a run's result depends on, wall-clock times left out: metrics, result, predictions."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {
        "metrics": [without_timing(row) for row in rows],
        "result": without_timing(json.loads((run / "result.json").read_text())),
        "predictions": np.load(run / "test_predictions.npy").tolist(),
    }


def assert_same_run(run: Path, reference: Path) -> None:
    """`run` ended bit-identical to `reference`: every metric of every epoch, the result and each prediction."""
    got, want = run_outcome(run), run_outcome(reference)
    assert got["metrics"] == want["metrics"]
    assert got["result"] == want["result"]
    assert got["predictions"] == want["predictions"]


def temp_files(run: Path) -> list[str]:
    """Leftovers of interrupted atomic writes (`.NAME.XXXX.tmp`)."""
    return sorted(p.name for p in run.glob(".*.tmp"))
