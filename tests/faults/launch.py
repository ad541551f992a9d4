"""Run `seratio ARGS...` and SIGKILL this very process at one exact instant of a file write.

    python launch.py FILE:STEP:N ARGS...

A real SIGKILL, not an exception: nothing in seratio gets to clean up, exactly as
when the OOM killer or a pre-empting scheduler strikes. An outside timer can only
hit a write of a few milliseconds by luck; hooking the write makes the worst
instants reproducible. FILE is a run-directory file name (e.g. checkpoint.pt);
the kill happens the Nth time (1-based) this process reaches STEP for it:

  partial  half of the temporary file's bytes are on disk, the rest never arrive
  fsync    the temporary file is complete but not yet renamed over FILE
  rotate   FILE was just renamed to its backup (checkpoint.prev.pt), no new FILE yet
  renamed  the new FILE is in place; whatever the run writes next never happens

`-` instead of FILE:STEP:N runs seratio unhooked (outside timers do the killing).
"""

from __future__ import annotations

import os
import signal
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

STEPS = ("partial", "fsync", "rotate", "renamed")


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def _temp_of(fd: int, name: str) -> bool:
    """Whether `fd` is an open temporary file of `name` as rundir.write_atomic names them."""
    target = Path(os.readlink(f"/proc/self/fd/{fd}")).name
    return target.startswith(f".{name}.") and target.endswith(".tmp")


def install(name: str, step: str, nth: int) -> None:
    """Patch os.fsync / os.replace, the two calls every atomic write of seratio goes through."""
    if step not in STEPS:
        raise SystemExit(f"unknown step {step!r}; one of {', '.join(STEPS)}")
    seen = 0

    def reached() -> bool:
        nonlocal seen
        seen += 1
        return seen == nth

    real_fsync: Callable[[int], None] = os.fsync
    real_replace: Callable[..., None] = os.replace

    def fsync(fd: int) -> None:
        if step in ("partial", "fsync") and _temp_of(fd, name) and reached():
            if step == "partial":
                os.ftruncate(fd, os.fstat(fd).st_size // 2)
            _die()
        real_fsync(fd)

    def replace(src: Any, dst: Any, **kwargs: Any) -> None:
        real_replace(src, dst, **kwargs)
        rotated = step == "rotate" and Path(src).name == name
        renamed = step == "renamed" and Path(dst).name == name
        if (rotated or renamed) and reached():
            _die()

    os.fsync = fsync
    os.replace = replace


def main(argv: list[str]) -> int:
    point, args = argv[0], argv[1:]
    if point != "-":
        name, step, nth = point.split(":")
        install(name, step, int(nth))
    from seratio.__main__ import run as seratio_command

    # Exactly as the `seratio` command starts: from sys.argv, so whatever the command does first
    # (e.g. re-executing itself with another allocator, which replays this launcher) happens here too.
    sys.argv = ["seratio", *args]
    return seratio_command()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
