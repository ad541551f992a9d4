"""Liveness of running trials, for every storage (Optuna's journal storage has no heartbeats).

A worker stamps its running trial every `interval` seconds. Another worker
declares the trial stale when it has seen the stamp stay unchanged for
`after` seconds by its *own* monotonic clock, so machines need no synchronised
clocks. A watcher that could not look for a while (it was training, or the
storage was down for everyone) starts its observations afresh: it cannot tell a
dead worker from one that was cut off just like itself. A stale trial is failed
with a reason and its run is retried from the run directory's last checkpoint.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from seratio.ledger import TrialView
from seratio.store import StudyStore


class Heartbeat:
    """A background thread that stamps one trial; `abandoned` is set if someone else ended the trial."""

    def __init__(self, store: StudyStore, trial_id: int, interval: float, log: Callable[[str], None]) -> None:
        self.abandoned = threading.Event()
        self._store, self._trial_id, self._interval, self._log = store, trial_id, interval, log
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}", daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        complained = False
        while True:
            try:
                if not self._store.beat(self._trial_id):
                    self.abandoned.set()
                    return
                complained = False
            except Exception as error:  # an unreachable storage must not kill training; the next beat retries
                if not complained:
                    self._log(f"heartbeat not recorded ({type(error).__name__}); retrying every {self._interval:g}s")
                complained = True
            if self._stop.wait(self._interval):
                return


class StaleWatch:
    """Remembers when each running trial's heartbeat last changed, as this process observed it."""

    def __init__(self, after: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.after = after
        self._clock = clock
        self._seen: dict[int, tuple[Any, float]] = {}
        self._last_look: float | None = None

    def stale(self, running: list[TrialView], own: set[int]) -> list[TrialView]:
        now = self._clock()
        if self._last_look is not None and now - self._last_look > self.after / 2:
            self._seen = {}
        self._last_look = now
        seen: dict[int, tuple[Any, float]] = {}
        stale = []
        for view in running:
            last = self._seen.get(view.trial_id)
            if last is None or last[0] != view.heartbeat:
                last = (view.heartbeat, now)
            seen[view.trial_id] = last
            if view.trial_id not in own and now - last[1] >= self.after:
                stale.append(view)
        self._seen = seen
        return stale
