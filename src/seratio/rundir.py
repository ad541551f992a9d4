"""Crash-safe files of one run directory.

Every write goes to a temporary file, is fsynced and then renamed, so a kill
at any instant leaves either the old or the new file, never half of one.
Checkpoints carry a SHA-256 of their payload and the previous one is kept, so
a checkpoint damaged on disk is detected and the run falls back instead of
loading garbage.
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from seratio.errors import SeratioError

CONFIG = "config.json"
METRICS = "metrics.jsonl"
CHECKPOINT = "checkpoint.pt"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"
RESULT = "result.json"
PREDICTIONS = "test_predictions.npy"
LABELS = "test_labels.npy"
_MAGIC = b"SERATIO-CKPT-1\n"


class CorruptCheckpoint(Exception):
    """A checkpoint file whose checksum or structure does not verify."""


_DISK_FULL = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded"}
TEMP_PATTERN = ".*.tmp"
"""How `write_atomic` names its temporary files: `.NAME.XXXXXXXX.tmp` beside the target."""


def write_atomic(path: Path, data: bytes) -> None:
    """Write via temp file + fsync + rename; a full disk or any other I/O error becomes a clear SeratioError."""
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if error.errno in _DISK_FULL:
            raise SeratioError(f"{_DISK_FULL[error.errno]} while writing {path}") from error
        raise SeratioError(f"cannot write {path}: {error.strerror or error}") from error


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


def write_json(path: Path, payload: Any) -> None:
    write_atomic(path, (json.dumps(payload, indent=2, sort_keys=True) + "\n").encode())


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as error:
        raise SeratioError(f"cannot read {path}: {error}") from error


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
    buffer = io.BytesIO()
    torch.save(state, buffer)
    payload = buffer.getvalue()
    digest = hashlib.sha256(payload).hexdigest().encode()
    current = run_dir / CHECKPOINT
    if current.exists():
        os.replace(current, run_dir / PREVIOUS_CHECKPOINT)
    write_atomic(current, _MAGIC + digest + b"\n" + payload)


def _read_checkpoint(path: Path) -> dict[str, Any]:
    blob = path.read_bytes()
    header_end = len(_MAGIC) + 65
    if not blob.startswith(_MAGIC) or len(blob) < header_end:
        raise CorruptCheckpoint(f"{path} has no seratio checkpoint header")
    digest, payload = blob[len(_MAGIC) : header_end - 1], blob[header_end:]
    if hashlib.sha256(payload).hexdigest().encode() != digest:
        raise CorruptCheckpoint(f"{path} fails its SHA-256 check (truncated or corrupted)")
    return torch.load(io.BytesIO(payload), map_location="cpu", weights_only=True)


def load_checkpoint(run_dir: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """The newest checkpoint that verifies, plus notes on any that did not."""
    notes: list[str] = []
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        path = run_dir / name
        if not path.exists():
            continue
        try:
            return _read_checkpoint(path), notes
        except CorruptCheckpoint as error:
            notes.append(str(error))
    return None, notes
