"""Crash-safe files of one run directory.

Every write goes to a temporary file, is fsynced and then renamed, so a kill
at any instant leaves either the old or the new file, never half of one.
Checkpoints carry a SHA-256 of their payload and the previous one is kept, so
a checkpoint damaged on disk is detected and the run falls back instead of
loading garbage.

torch is imported only where a checkpoint is saved or read: `study export` writes its file here
and should not wait two seconds for torch.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import stat
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from seratio.config import RunConfig
from seratio.errors import SeratioError
from seratio.runlock import LOCK_FILE

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
RESULT = "result.json"
PREDICTIONS = "test_predictions.npy"
LABELS = "test_labels.npy"
_MAGIC = b"SERATIO-CKPT-1\n"
RESULT_KEYS = ("test_accuracy", "test_loss", "best_test_accuracy", "best_epoch", "val_accuracy", "params", "macs",
               "epochs", "seconds")
"""Numbers (or null) that every finished run's result.json has held, and that a reused run prints."""


class CorruptCheckpoint(Exception):
    """A checkpoint file whose checksum or structure does not verify."""


_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
TEMP_PATTERN = ".*.tmp"
"""How `write_atomic` names its temporary files: `.NAME.XXXXXXXX.tmp` beside the target."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + rename; a full disk or any other I/O error becomes a clear SeratioError.

    The file gets the mode a plain `open` would give (mkstemp's is owner-only): the replaced file's
    mode, or the umask's for a new file, so results stay readable by whoever could read them before.
    Only a SIGKILL can leave the temp file behind.
    """
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        mode = _mode_for(path)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            os.fchmod(handle.fileno(), mode)
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
        _sync_directory(path.parent)
    except BaseException as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if not isinstance(error, OSError):
            raise
        if error.errno in _DISK_FULL:
            raise SeratioError(f"{_DISK_FULL[error.errno]} while writing {path}") from error
        raise SeratioError(f"cannot write {path}: {error.strerror or error}") from error


def _sync_directory(directory: Path) -> None:
    """A rename reaches the disk with its directory, not its file: without this, a power cut (a kill
    needs nothing) could bring back the old file, or for a new one no file at all."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    except OSError as error:
        if error.errno not in (errno.EINVAL, errno.ENOTSUP):  # a filesystem that cannot sync a directory
            raise
    finally:
        os.close(fd)


def _mode_for(path: Path) -> int:
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return 0o666 & ~_umask()


def _umask() -> int:
    """The process umask, read without setting it (os.umask would change it for every thread meanwhile)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    return 0o022


def is_temp_file(path: Path) -> bool:
    """A leftover of a write that a kill interrupted: never a run's data, safe to ignore or delete."""
    return path.match(TEMP_PATTERN)


def remove_temp_files(run_dir: Path) -> None:
    """Delete leftovers of interrupted writes, so a finished run dir holds only its real files."""
    for path in run_dir.glob(TEMP_PATTERN):
        path.unlink(missing_ok=True)


def make_dir(path: Path, label: str, hint: str = "") -> None:
    """Create an output directory up front, so a path that is (or lies under) a file fails in one
    line naming `label` before any data is loaded or study is read."""
    if path.exists() and not path.is_dir():
        raise SeratioError(f"{label} is a file, not a directory{hint}")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise SeratioError(f"cannot create {label}: {error.strerror or error}") from None


def need_run_dir(path: Path, hint: str) -> Path:
    """`path`, or a one-line error that says whether it is missing or a file, and what to give instead."""
    if not Path(path).is_dir():
        state = "is a file" if Path(path).exists() else "does not exist"
        raise SeratioError(f"run directory {str(path)!r} {state}; {hint}")
    return Path(path)


RUN_HINT = "give a run directory made by 'seratio train' or a study, or a folder that holds such directories"


def find_runs(path: Path) -> list[Path]:
    """`path` if it is a run directory, else the run directories directly inside it (a study's
    artifacts folder holds one per trial), by name. Found before anything is scored, so a typo in
    the tenth path fails at once, not after nine evaluations."""
    need_run_dir(path, RUN_HINT)
    if (path / CONFIG).exists():
        return [path]
    runs = sorted(child for child in path.iterdir() if _may_be_run(child))
    if not runs:
        raise SeratioError(f"{path} holds no {CONFIG}, so it is not a seratio run, and no run directories; {RUN_HINT}")
    return runs


def _may_be_run(child: Path) -> bool:
    """A directory that cannot be looked into, whose config.json is no file, or that holds only a
    run's lock (a trial killed before it wrote anything) stays in the batch, to be skipped with its
    reason rather than left out of the count unsaid."""
    try:
        return (child / CONFIG).exists() or (child / LOCK_FILE).exists()
    except OSError:
        return True


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def read_bytes(path: Path) -> bytes:
    """An unreadable run file (permissions, I/O error) is named like a damaged one."""
    try:
        return path.read_bytes()
    except OSError as error:
        raise SeratioError(f"cannot read {path}: {error.strerror or error}") from error


def read_text(path: Path) -> str:
    try:
        return read_bytes(path).decode("utf-8")
    except UnicodeDecodeError as error:
        raise SeratioError(f"{path} is not UTF-8 text ({error.reason}); it was not written by seratio") from error


def read_json(path: Path) -> Any:
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise SeratioError(f"cannot read {path}: {error}") from error


def read_run_config(run_dir: Path) -> tuple[RunConfig, dict[str, Any]]:
    """The run's configuration and the whole config.json record, or one line naming the file:
    training into, resuming and scoring a run all trust this file, so damage must stop them cleanly."""
    path = run_dir / CONFIG
    record = read_json(path)
    if not isinstance(record, dict) or not isinstance(record.get("run"), dict):
        raise SeratioError(f"{path} has no 'run' section; it was not written by seratio")
    try:
        return RunConfig.from_dict(record["run"]), record
    except (SeratioError, TypeError, ValueError) as error:
        raise SeratioError(f"{path} has an invalid 'run' section: {error}") from error


def read_result(run_dir: Path) -> dict[str, Any]:
    """result.json, checked to hold what a finished run writes, so that reusing or comparing a
    damaged run ends in one line instead of a KeyError halfway through."""
    path = run_dir / RESULT
    result = read_json(path)
    if not isinstance(result, dict):
        raise SeratioError(f"{path} holds a JSON {type(result).__name__}, not an object; it was not written by seratio")
    missing = [key for key in RESULT_KEYS if key not in result]
    if missing:
        raise SeratioError(f"{path} lacks {', '.join(missing)}; it is not the result of a finished seratio run")
    wrong = [key for key in RESULT_KEYS if result[key] is not None and not isinstance(result[key], (int, float))]
    if wrong:
        raise SeratioError(f"{path} holds non-numbers in {', '.join(wrong)}; it is not the result of a finished seratio run")
    return result


def write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    """Rewrite the whole file from the checkpointed history, so a resume never duplicates lines."""
    write_atomic(path, "".join(json.dumps(row, sort_keys=True) + "\n" for row in rows).encode())


def read_metrics(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_array(path: Path, array: np.ndarray) -> None:
    buffer = io.BytesIO()
    np.save(buffer, array)
    write_atomic(path, buffer.getvalue())


def save_checkpoint(run_dir: Path, state: dict[str, Any]) -> None:
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    current = run_dir / CHECKPOINT
    if _intact(current):
        os.replace(current, run_dir / PREVIOUS_CHECKPOINT)
    write_atomic(current, _MAGIC + digest + b"\n" + payload)


def _intact(path: Path) -> bool:
    """Whether a checkpoint is worth keeping as the previous one. A resume that fell back past a
    damaged newest checkpoint must not rotate it over the good one it resumed from: a kill before
    the next save would then leave no usable checkpoint at all."""
    if not path.exists():
        return False
    try:
        _verified_payload(path)
    except CorruptCheckpoint:
        return False
    return True


def _verified_payload(path: Path) -> bytes:
    try:
        blob = path.read_bytes()
    except OSError as error:
        raise CorruptCheckpoint(f"cannot read {path} ({error.strerror or error})") from error
    header_end = len(_MAGIC) + 65
    if not blob.startswith(_MAGIC) or len(blob) < header_end:
        raise CorruptCheckpoint(f"{path} has no seratio checkpoint header")
    digest, payload = blob[len(_MAGIC) : header_end - 1], blob[header_end:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpoint(f"{path} fails its SHA-256 check (truncated or corrupted)")
    return payload


def _read_checkpoint(path: Path, needs: tuple[str, ...]) -> dict[str, Any]:
    import torch

    payload = _verified_payload(path)
    try:
        state = torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)
    except Exception as error:  # torch's parsers raise many types on a payload that is no torch file
        raise CorruptCheckpoint(f"{path} holds no readable torch payload ({type(error).__name__})") from error
    if not isinstance(state, dict):
        raise CorruptCheckpoint(f"{path} is not a seratio checkpoint (it holds a {type(state).__name__})")
    missing = [key for key in needs if key not in state]
    if missing:
        raise CorruptCheckpoint(f"{path} is not a seratio checkpoint (it lacks {', '.join(missing)})")
    return state


def load_checkpoint(run_dir: Path, needs: tuple[str, ...] = ()) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint that verifies and holds the keys the caller `needs`, plus notes on any
    that did not: one without them is as unusable as a corrupt one."""
    notes: list[str] = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            return _read_checkpoint(path, needs), notes
        except CorruptCheckpoint as error:
            notes.append(str(error))
    return None, notes
