"""The report directory: refused when it holds anything but an earlier report, replaced whole.

A report is built in a hidden sibling of `--out` and renamed into place only once every file is
written, so a failed, interrupted or killed report never leaves a half-written or mixed directory
and never loses the previous one. A marker file says that a directory is a seratio report: only
then, and only when it holds nothing a report does not write, may a new report replace it, because
`--out mysite/` must not delete a user's own files.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import functools
import glob
import json
import os
import re
import secrets
import shutil
import socket
import stat
from collections.abc import Callable, Iterator
from fnmatch import fnmatch
from pathlib import Path

from seratio import __version__
from seratio.errors import SeratioError

MARKER = ".seratio-report.json"
REPORT_FILES = ("table.md", "table.csv", "table.json", "table.tex", "curves.png", "curves.svg",
                "confusion_*.png", "pareto.png", "index.html", MARKER)
"""Every name a report writes: a directory holding anything else is not only a report."""


def marker_text(study: str) -> str:
    return json.dumps({"generated_by": f"seratio {__version__}", "study": study}, indent=2) + "\n"


def _label(out: Path) -> str:
    return f"--out {str(out)!r}"


def check_out(out: Path) -> None:
    """Refuse an unusable `--out` before the study is read, creating nothing: a refused report
    must leave no directory behind."""
    label = _label(out)
    if out.exists() and not out.is_dir():
        raise SeratioError(f"{label} is a file, not a directory")
    if not out.exists():
        ancestor = next(p for p in Path(os.path.abspath(out)).parents if p.exists())
        if not ancestor.is_dir():
            raise SeratioError(f"cannot create {label}: Not a directory")
        return
    try:
        names = sorted(p.name for p in out.iterdir())
    except OSError as error:
        raise SeratioError(f"cannot read {label}: {error.strerror or error}") from error
    if not names:
        return
    advice = "choose an empty or new directory, or delete it first"
    if not _holds_report(out):
        raise SeratioError(f"{label} is not empty and holds no seratio report; {advice}")
    foreign = [name for name in names if not any(fnmatch(name, pattern) for pattern in REPORT_FILES)]
    if foreign:
        raise SeratioError(f"{label} holds a seratio report but also {foreign[0]!r}, which a report "
                           f"does not write; {advice}")


def _holds_report(out: Path) -> bool:
    """The marker, or the table.json of a report written before the marker existed."""
    for name in (MARKER, "table.json"):
        try:
            document = json.loads((out / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(document, dict) and str(document.get("generated_by", "")).startswith("seratio "):
            return True
    return False


def _host() -> str:
    """This machine in a staging name (with the process id), so a later report can tell a killed
    report's leftovers from one still being written, here or on another machine sharing the disk."""
    return re.sub(r"[^A-Za-z0-9-]", "-", socket.gethostname()) or "host"


def _sibling(target: Path, kind: str, owner: str) -> Path:
    """The report being built ("new") or the one being replaced ("old"), hidden beside `target`."""
    return target.parent / f".{target.name}.seratio-{kind}.{owner}"


@contextlib.contextmanager
def staged(out: Path) -> Iterator[Path]:
    """A fresh hidden directory beside `out` to build the report in; on leaving without an error
    it replaces `out`, on any error (Ctrl-C included) it is removed and `out` is left as it was."""
    target = Path(os.path.realpath(out))  # a symlinked --out keeps its link; the report goes where it points
    created = _make_parents(target.parent, out)
    owner = f"{_host()}-{os.getpid()}.{secrets.token_hex(4)}"
    stage = _sibling(target, "new", owner)
    try:
        stage.mkdir()
        yield stage
        check_out(out)  # again: something may have been put there while the report was built
        _keep_access(target, stage)
        _swap(stage, target, _sibling(target, "old", owner))
    except BaseException as error:
        _delete(stage)
        for directory in reversed(created):
            _remove_if_empty(directory)
        if isinstance(error, OSError):
            raise SeratioError(f"cannot write the report to {_label(out)}: {error.strerror or error}") from error
        raise
    _remove_leftovers(target)


def _make_parents(directory: Path, out: Path) -> list[Path]:
    """Create the missing parents of `--out`, returning them, so that a failure can remove them again."""
    missing = [p for p in (directory, *directory.parents) if not p.exists()]
    for parent in reversed(missing):
        try:
            parent.mkdir()
        except OSError as error:
            for made in missing[missing.index(parent) + 1:]:
                _remove_if_empty(made)
            raise SeratioError(f"cannot create {_label(out)}: {error.strerror or error}") from error
    return list(reversed(missing))


def _remove_if_empty(directory: Path) -> None:
    try:
        directory.rmdir()
    except OSError:
        pass  # not empty (someone else wrote there) or already gone: either way not ours to delete


def _keep_access(target: Path, stage: Path) -> None:
    """The replaced report's group and folder mode on the new one: a report shared with a group, or
    served from a web folder, must stay shared when it is written again, not become the staging
    folder's. The files take the folder's group too; their own modes stay the user's umask."""
    if not target.is_dir():
        return
    group = target.stat().st_gid
    for path in (stage, *stage.iterdir()):
        with contextlib.suppress(OSError):  # a group the user is not in: the report stays the user's own
            os.chown(path, -1, group)
    shutil.copymode(target, stage)


def _delete(directory: Path) -> None:
    """Remove a replaced report or a leftover staging folder, even one whose mode (kept from the
    report it replaced, say 555) forbids deleting its files. Never through a link: a link named like
    a staging folder is not one, and its target is not this report's to change."""
    if directory.is_symlink() or not directory.is_dir():
        return
    with contextlib.suppress(OSError):
        os.chmod(directory, stat.S_IRWXU)
    shutil.rmtree(directory, ignore_errors=True)


def _swap(stage: Path, target: Path, aside: Path) -> None:
    """New report in, old one deleted. One atomic exchange where the system has it, so no instant
    exists without `--out`; elsewhere two renames, and should the second fail, the old one goes back."""
    if not target.exists():
        os.rename(stage, target)
        return
    if _exchange(stage, target):
        _delete(stage)  # it now holds the old report
        return
    try:
        os.rename(target, aside)
        os.rename(stage, target)
    except BaseException:  # decided by what is on disk, since a Ctrl-C may land between the renames
        if aside.exists() and not target.exists():
            os.rename(aside, target)
        raise
    _delete(aside)


RENAME_EXCHANGE = 2
AT_FDCWD = -100
NO_EXCHANGE = (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP)
"""What renameat2 answers where the kernel or the filesystem (some network ones) cannot exchange."""


@functools.cache
def _renameat2() -> Callable[..., int] | None:
    """Linux's renameat2 from the C library (glibc 2.28 on), or None on systems without it."""
    try:
        return getattr(ctypes.CDLL(None, use_errno=True), "renameat2")
    except (OSError, AttributeError):
        return None


def _exchange(first: Path, second: Path) -> bool:
    """Swap two directories in one step, or say False where this system cannot."""
    renameat2 = _renameat2()
    if renameat2 is None:
        return False
    if renameat2(AT_FDCWD, os.fsencode(first), AT_FDCWD, os.fsencode(second), RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in NO_EXCHANGE:
        return False
    raise OSError(code, os.strerror(code), str(second))


def _remove_leftovers(target: Path) -> None:
    """Delete staging directories of this `--out` left by reports killed on this machine (SIGKILL
    gives no chance to clean up); those of live processes or other machines are left alone."""
    pattern = re.compile(rf"\.{re.escape(target.name)}\.seratio-(?:new|old)\.(.+)-(\d{{1,7}})\.[0-9a-f]+")
    host = _host()
    for path in target.parent.glob(f".{glob.escape(target.name)}.seratio-*"):
        match = pattern.fullmatch(path.name)
        if match and match[1] == host and not _alive(int(match[2])):
            _delete(path)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by another user
        pass
    return True
