"""A per-epoch progress bar with loss, accuracy and throughput.

Reading a running loss forces a host sync, so the bar refreshes its numbers
only every REFRESH_STEPS steps; in between the training loop never waits.

The bar is drawn on stderr, and only on a terminal or in a notebook: stdout carries `seratio
train`'s JSON summary, and a log file has no use for a bar (rich wrote a stray empty line there
when it closed one). While it is drawn, plain writes to stderr appear above it.
"""

from __future__ import annotations

import time
from types import TracebackType

import torch
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

REFRESH_STEPS = 50


class EpochProgress:
    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self._progress: Progress | None = None
        self._task = None
        self._images = 0
        self._steps = 0
        self._started = 0.0

    def __enter__(self) -> EpochProgress:
        console = Console(stderr=True)
        if self.enabled and (console.is_terminal or console.is_jupyter):
            self._progress = Progress(
                TextColumn("epoch {task.fields[epoch]}"),
                BarColumn(),
                MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"),
                TimeRemainingColumn(),
                console=console,
                transient=True,
            )
            self._progress.__enter__()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        if self._progress is not None:
            self._progress.__exit__(kind, error, trace)

    def start_epoch(self, epoch: int, steps: int) -> None:
        self._images, self._steps, self._started = 0, steps, time.perf_counter()
        if self._progress is not None:
            if self._task is not None:
                self._progress.remove_task(self._task)
            self._task = self._progress.add_task("train", total=steps, epoch=epoch, stats="")

    def advance(self, step: int, batch: int, loss_sum: torch.Tensor, correct: torch.Tensor) -> None:
        self._images += batch
        if self._progress is None or (step % REFRESH_STEPS and step != self._steps):
            return
        rate = self._images / max(time.perf_counter() - self._started, 1e-9)
        stats = (
            f"loss {loss_sum.item() / self._images:.4f} acc {correct.item() / self._images:.4f} "
            f"{rate:,.0f} img/s"
        )
        self._progress.update(self._task, completed=step, stats=stats)
