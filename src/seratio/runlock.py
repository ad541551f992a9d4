"""One writer per run directory, across processes and machines that share the directory.

Why: a study worker whose trial was wrongly declared stale (its database link dropped while it
kept training) goes on until its next epoch ends, while the retry resumes the same run directory
elsewhere. Atomic writes keep every file whole, but two writers would interleave epochs. The lock
is an exclusive `flock` on a file inside the run directory: the kernel (or the NFS lock manager)
drops it when its holder dies, so a SIGKILLed run never leaves a stale lock behind. A filesystem
that cannot lock at all (NFS without its lock manager, some FUSE mounts) gets a warning and the
run goes on unguarded, rather than no run at all.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO

from seratio.errors import SeratioError

LOCK_FILE = ".seratio.lock"
"""Inside the run directory; never deleted (deleting a lock file races with its next holder), except
with the directory itself by a `train` that created it and was refused before it wrote a run: a
process that was waiting on that lock then fails to write, and loses nothing."""
POLL_SECONDS = 1.0
REMIND_SECONDS = 60.0


@contextlib.contextmanager
def hold(run_dir: Path, *, wait: bool, log: Callable[[str], None]) -> Iterator[None]:
    """Hold `run_dir`'s lock for the body. Busy: refuse at once, or (`wait`) poll until it is free.

    A person starting a second `seratio train` on a busy directory wants to know now; a study
    worker retrying a trial wants the previous writer to notice it was replaced and stop first.
    """
    path = run_dir / LOCK_FILE
    try:
        handle = open(path, "a+")
    except OSError as error:
        raise SeratioError(f"cannot open the lock file {path} for writing: {error.strerror or error}") from None
    with handle:
        unguarded = f"going on without the one-writer guard; make sure no other seratio process writes {run_dir}"
        if lock_or_warn(handle, path, log, unguarded) is Lock.BUSY:
            if not wait:
                raise SeratioError(
                    f"{run_dir} is being written by another seratio process ({_holder(handle)}); "
                    "wait for it to finish or stop it, or choose another --out"
                )
            _wait_for(handle, run_dir, log)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()} on {socket.gethostname()}\n")
        handle.flush()
        yield


class Lock(enum.Enum):
    HELD = "held"
    BUSY = "busy"  # another process holds it
    UNSUPPORTED = "unsupported"  # the filesystem cannot lock; the caller goes on unguarded


def lock_or_warn(handle: IO[str], path: Path, log: Callable[[str], None], unguarded: str) -> Lock:
    """Try the exclusive lock once. A filesystem that cannot lock at all is not refused, after a
    warning that says what is `unguarded` now: refusing there would mean no run at all."""
    try:
        return Lock.HELD if _try_lock(handle) else Lock.BUSY
    except OSError as error:
        log(f"warning: cannot lock {path} ({error.strerror or error}): this filesystem does not support "
            f"file locks, so {unguarded}")
        return Lock.UNSUPPORTED


def _try_lock(handle: IO[str]) -> bool:
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    return True


def _holder(handle: IO[str]) -> str:
    handle.seek(0)
    return handle.read().strip() or "holder unknown"


def _wait_for(handle: IO[str], run_dir: Path, log: Callable[[str], None]) -> None:
    """Poll rather than block, so Ctrl-C and SIGTERM still stop a waiting worker at once."""
    started = time.monotonic()
    reminded = -REMIND_SECONDS
    while not _try_lock(handle):
        waited = time.monotonic() - started
        if waited - reminded >= REMIND_SECONDS:
            log(f"waiting for {_holder(handle)} to stop writing {run_dir} ({waited:.0f}s so far)")
            reminded = waited
        time.sleep(POLL_SECONDS)
