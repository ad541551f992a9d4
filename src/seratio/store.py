"""Where a study lives: an Optuna storage named by a URL, reached with patience.

One spelling per deployment:

    sqlite:///study.db          one process on one machine (the default)
    journal:PATH                Optuna's journal file: several processes on one machine
    postgresql://user@host/db   any number of machines (a cluster's workers)

Optuna's storages are the distributed engine; seratio adds no queue of its
own. Every read and write a worker makes goes through `StudyStore`, which
retries with exponential backoff while the database is unreachable, so a
restarted PostgreSQL pauses the workers instead of killing days of training.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import math
import os
import random
import sqlite3
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

import optuna
import sqlalchemy.engine
import sqlalchemy.exc
from optuna.storages.journal import JournalFileSymlinkLock
from optuna.trial import FrozenTrial, TrialState

from seratio import interrupts
from seratio.errors import SeratioError
from seratio.runlock import Lock, lock_or_warn
from seratio.study_choices import DEFAULT_STORAGE, STORAGE_HELP

JOURNAL_PREFIX = "journal:"
HEARTBEAT_ATTR = "seratio_heartbeat"
T = TypeVar("T")
Log = Callable[[str], None]


@dataclass(frozen=True)
class Patience:
    """How long to keep retrying an unreachable storage before giving up."""

    seconds: float = 900.0
    first_wait: float = 0.5
    max_wait: float = 30.0


def _sqlite_error(error: BaseException) -> sqlite3.Error | None:
    """The SQLite driver's error under Optuna's and SQLAlchemy's wrappers, if that is what failed."""
    for layer in (error, error.__cause__):
        if isinstance(getattr(layer, "orig", None), sqlite3.Error):
            return layer.orig
    return None


def _is_transient(error: BaseException) -> bool:
    """Connection trouble that a later attempt may not meet; data errors are not retried.

    A SQLite file is never unreachable, only busy: a malformed, read-only or foreign file fails
    the same way on every attempt, so only "locked" and "busy" are retried there.
    """
    sqlite_error = _sqlite_error(error)
    if sqlite_error is not None:
        return any(word in str(sqlite_error) for word in ("locked", "busy"))
    if isinstance(error, optuna.exceptions.StorageInternalError):
        return True
    if isinstance(error, (sqlalchemy.exc.OperationalError, sqlalchemy.exc.InterfaceError)):
        # libpq refuses a connection option it cannot parse ("invalid sslmode value", "invalid port
        # number") on every attempt; an outage reads "connection to server ... failed" and the like.
        return not str(getattr(error, "orig", "")).startswith("invalid ")
    return isinstance(error, sqlalchemy.exc.DBAPIError) and error.connection_invalidated


def retrying(call: Callable[[], T], patience: Patience, log: Log) -> T:
    """`call()`, retried with jittered exponential backoff while the storage is unreachable. A stop
    signal that arrived during an attempt ends the loop even where the driver swallowed its
    KeyboardInterrupt and raised a connection error instead."""
    deadline = time.monotonic() + patience.seconds
    wait = patience.first_wait
    while True:
        stops = interrupts.received()
        try:
            return call()
        except Exception as error:
            if interrupts.received() != stops:
                raise KeyboardInterrupt from error
            if not _is_transient(error):
                sqlite_error = _sqlite_error(error)
                if sqlite_error is not None:
                    raise SeratioError(f"SQLite study storage failed: {sqlite_error}") from error
                raise
            if time.monotonic() + wait > deadline:
                raise SeratioError(
                    f"study storage unreachable for {patience.seconds:.0f}s, giving up: {_cause(error)}"
                ) from error
            limit = "for ever" if math.isinf(patience.seconds) else f"for up to {patience.seconds:.0f}s"
            hint = "" if wait > patience.first_wait else (
                f" ({limit}, --db-patience; a wrong host or port never answers: stop with Ctrl-C)"
            )
            log(f"storage unreachable ({_cause(error)}); retrying in {wait:.1f}s{hint}")
            time.sleep(wait * random.uniform(0.8, 1.2))
            wait = min(wait * 2, patience.max_wait)


def _cause(error: BaseException) -> str:
    """The driver's message on one line, without SQLAlchemy's link to its error catalogue."""
    root = error.__cause__ or error
    return " ".join(str(root).split("(Background on this error")[0].split())[:200]


_SCHEMA_RACE = frozenset({"23505", "42P07", "42710"})
"""PostgreSQL's unique_violation, duplicate_table, duplicate_object: what losing a CREATE race raises."""


def is_sqlite(url: str) -> bool:
    return url.startswith("sqlite:")


def _journal_path(url: str) -> Path:
    path = url.removeprefix(JOURNAL_PREFIX).removeprefix("//")
    if not path:
        raise SeratioError(f"--storage {url!r} names no journal file; write journal:PATH, e.g. journal:./study.log")
    return Path(path).expanduser()


def storage_file(url: str) -> Path | None:
    """The file a journal or SQLite storage lives in; None for a database server."""
    if url.startswith(JOURNAL_PREFIX):
        return _journal_path(url)
    if url.startswith("sqlite:///"):
        return Path(url.removeprefix("sqlite:///"))
    return None


def _rdb_url(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; use psycopg2 when only that driver is installed."""
    for prefix in ("postgresql://", "postgres://"):
        if url.startswith(prefix) and importlib.util.find_spec("psycopg") is None:
            return "postgresql+psycopg2://" + url.removeprefix(prefix)
    return url


def _check_file(kind: str, path: Path, url: str, *, create: bool) -> None:
    """A file store must exist to be joined, and its directory must exist to be created.

    Checked here because the drivers fail late and vaguely: SQLite's "unable to open database
    file" looks like an outage and would be retried for the whole --db-patience.
    """
    if path.exists() and not path.is_file():
        raise SeratioError(f"{kind} file {str(path)!r} from --storage {url!r} is not a regular file")
    if not create and not path.exists():
        raise SeratioError(
            f"{kind} file {str(path)!r} from --storage {url!r} does not exist{_absolute_hint(path, url)}"
            f"{_default_hint(url)}"
        )
    if create and not path.parent.is_dir():
        raise SeratioError(
            f"{kind} file {str(path)!r} from --storage {url!r}: its directory {str(path.parent)!r} "
            f"does not exist or is not a directory{_absolute_hint(path, url)}"
        )


def _absolute_hint(path: Path, url: str) -> str:
    """sqlite:///tmp/x.db names the relative path tmp/x.db; an absolute path needs a fourth slash,
    and where that one exists the slip is almost certain."""
    absolute = Path("/") / path
    if (not url.startswith("sqlite:///") or path.is_absolute() or len(path.parts) < 2
            or not (absolute.exists() or absolute.parent.is_dir())):  # a bare file name is a relative path on purpose
        return ""
    return (f" (sqlite:/// is followed by a relative path; for the absolute path {str(absolute)!r} "
            f"write sqlite:///{absolute})")


def _default_hint(url: str) -> str:
    """Forgetting --storage on status, export, report or a worker lands here: say that the file
    was only the default, not a store the user named."""
    if url != DEFAULT_STORAGE:
        return ""
    return ("; that is the default --storage: pass --storage with the URL the study was created with "
            "(e.g. journal:study.log or postgresql://...)")


def check_url(url: str, *, create: bool) -> None:
    """Refuse a storage that can never work before anything connects, creates a file or trains."""
    if url.startswith(JOURNAL_PREFIX):
        _check_file("journal", _journal_path(url), url, create=create)
        return
    path = storage_file(url)
    if path is not None:
        if str(path) == ":memory:":
            raise SeratioError(f"--storage {url!r} is an in-memory SQLite database, gone when the command ends "
                               "and invisible to every other command; name a file, e.g. sqlite:///study.db")
        _check_file("SQLite", path, url, create=create)
        _check_sqlite_header(path, url, create=create)
        return
    if not url.startswith(("postgresql:", "postgresql+", "postgres:")):
        raise SeratioError(f"--storage {redact_url(url)!r} is not understood; use {STORAGE_HELP}")
    _check_postgres_url(url)


def check_writable(url: str) -> None:
    """A worker writes to its store: a read-only SQLite or journal file (or its folder, where SQLite
    puts its rollback journal and Optuna its journal lock) would fail at the first write, mid-study,
    in words that do not name the file."""
    path = storage_file(url)
    if path is None:
        return
    for target, what in ((path, "file"), (path.parent, "folder")):
        if target.exists() and not os.access(target, os.W_OK):
            raise SeratioError(f"--storage {url!r}: the {what} {str(target)!r} is read-only, and a worker writes "
                               "to its study; status, export and report only read it")


def _check_postgres_url(url: str) -> None:
    """Refuse what the driver would end in a traceback (a port that is no number) or retry as an
    outage for the whole --db-patience (a port out of range)."""
    try:
        port = sqlalchemy.engine.make_url(url).port
    except (sqlalchemy.exc.ArgumentError, ValueError) as error:
        raise SeratioError(
            f"--storage {redact_url(url)!r} is not a valid PostgreSQL URL ({error}); "
            "write postgresql://USER[:PASSWORD]@HOST[:PORT]/DB"
        ) from error
    if port is not None and not 1 <= port <= 65535:
        raise SeratioError(f"--storage {redact_url(url)!r} names port {port}; a TCP port is 1 to 65535")


def redact_url(url: str) -> str:
    """Storage URLs can carry a database password; messages and reports show the URL without it."""
    try:
        parts = urlsplit(url)
        password = parts.password
    except ValueError:  # unparsable (an unclosed "[" of an IPv6 host): shown as typed, nothing to hide found
        return url
    if password is None:
        return url
    netloc = parts.netloc.replace(f":{password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))


SQLITE_HEADER = b"SQLite format 3\x00"


def _check_sqlite_header(path: Path, url: str, *, create: bool) -> None:
    """Refuse a file that SQLite would call "not a database" only on its first query, mid-traceback,
    and another program's database, into which Optuna would otherwise add its tables. An empty file
    is a new store only where a study may be created: reading one would write Optuna's tables into it."""
    if not path.is_file():
        return
    if path.stat().st_size == 0:
        if not create:
            raise SeratioError(f"SQLite file {str(path)!r} from --storage {url!r} is empty: it holds no study yet "
                               "(`seratio study run` creates one)")
        return
    with path.open("rb") as handle:
        header = handle.read(len(SQLITE_HEADER))
    if header != SQLITE_HEADER:
        journal = f"; it looks like an Optuna journal: use --storage journal:{path}" if header.startswith(b"{") else ""
        raise SeratioError(f"SQLite file {str(path)!r} from --storage {url!r} is not a SQLite database{journal}")
    tables = _sqlite_tables(path, url)
    if tables and "studies" not in tables:
        raise SeratioError(
            f"SQLite file {str(path)!r} from --storage {url!r} holds another program's tables "
            f"({', '.join(sorted(tables)[:5])}) and no Optuna study; give a new file or a study database"
        )


def _sqlite_tables(path: Path, url: str) -> set[str]:
    """Read-only, so looking never changes the file. Damage is refused here, naming the file, before
    any command reads or writes a study in it; a busy or locked file is left to the retry logic."""
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as connection:
            problems = [row[0] for row in connection.execute("PRAGMA quick_check")]
            if problems != ["ok"]:
                raise sqlite3.DatabaseError("; ".join(problems[:3]))
            return {row[0] for row in connection.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    except sqlite3.OperationalError:
        return set()
    except sqlite3.DatabaseError as error:
        raise SeratioError(
            f"SQLite file {str(path)!r} from --storage {url!r} is damaged ({error}); its finished runs are safe in "
            "the study's run folder: `study run` into a new --storage file with the same --artifacts reads them "
            "back instead of training them again"
        ) from error
    except sqlite3.Error:  # anything else the driver raises is left to the retry logic, as before
        return set()


def _prepare_journal(path: Path, url: str, log: Log) -> None:
    """Refuse a file that is not a journal, and make a journal safe to append to.

    Optuna writes whole records under its journal lock, so a last record without its newline can
    only be a write that a crash cut short. Its readers skip it, but the next append would glue a
    record onto it and leave a line that no reader can parse again. Nothing is moved before the
    file has shown it is a journal.
    """
    if not path.is_file() or path.stat().st_size == 0:
        return
    _check_journal_start(path, url)
    if _ends_in_partial_record(path):
        try:
            _move_partial_record_aside(path, log)
        except OSError as error:
            log(f"warning: journal {path} ends in a partial record that cannot be moved aside "
                f"({error.strerror or error}); it can be read, not written")


JOURNAL_RECORD_START = b'{"op_code":'
"""How every record Optuna writes begins, so a first record that a crash cut off is still recognised."""


def _check_journal_start(path: Path, url: str) -> None:
    with path.open("rb") as handle:
        first = handle.readline()
    if not first.endswith(b"\n"):
        whole = first.startswith(JOURNAL_RECORD_START)
    else:
        try:
            record = json.loads(first)
        except ValueError:
            record = None
        whole = isinstance(record, dict) and "op_code" in record
    if not whole:
        raise SeratioError(f"journal file {str(path)!r} from --storage {url!r} is not an Optuna journal")


def _ends_in_partial_record(path: Path) -> bool:
    with path.open("rb") as handle:
        handle.seek(-1, 2)
        return handle.read(1) != b"\n"


def _move_partial_record_aside(path: Path, log: Log) -> None:
    """Under Optuna's journal lock, so no worker appends meanwhile; the cut-off bytes are kept beside it."""
    lock = JournalFileSymlinkLock(str(path))
    lock.acquire()
    try:
        with path.open("rb+") as handle:
            data = handle.read()
            keep = data.rfind(b"\n") + 1
            if keep == len(data):
                return
            aside = path.with_name(f"{path.name}.partial-{time.time_ns()}")
            aside.write_bytes(data[keep:])
            handle.truncate(keep)
    finally:
        lock.release()
    log(f"warning: journal {path} ended in a partial record ({len(data) - keep} bytes, a write cut short by "
        f"a crash); moved it to {aside} and continued from the last whole record")


def _replay_journal(path: Path, url: str) -> optuna.storages.BaseStorage:
    """Optuna replays every record when it opens a journal; a damaged one must end in one line."""
    try:
        backend = optuna.storages.journal.JournalFileBackend(str(path))
    except OSError as error:
        raise SeratioError(f"cannot open journal file from --storage {url!r}: {error.strerror or error}") from None
    try:
        return optuna.storages.JournalStorage(backend)
    except (ValueError, KeyError, TypeError, AssertionError) as error:
        raise SeratioError(
            f"journal file {str(path)!r} from --storage {url!r} holds a damaged record that Optuna cannot replay "
            f"({type(error).__name__}: {error}); restore the file from a copy"
        ) from None


def open_storage(url: str, *, create: bool, patience: Patience, log: Log) -> optuna.storages.BaseStorage:
    """The Optuna storage behind `url`; `create=False` refuses to conjure an empty store from a typo."""
    check_url(url, create=create)
    if url.startswith(JOURNAL_PREFIX):
        _prepare_journal(_journal_path(url), url, log)
        return _replay_journal(_journal_path(url), url)

    def connect() -> optuna.storages.BaseStorage:
        try:
            rdb = optuna.storages.RDBStorage(_rdb_url(url), engine_kwargs={"pool_pre_ping": True})
        except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.ProgrammingError) as error:
            if getattr(error.orig, "pgcode", None) not in _SCHEMA_RACE:
                raise
            # Workers started together on a fresh database race to create Optuna's tables; a loser
            # finds them made on its next attempt.
            raise optuna.exceptions.StorageInternalError("another worker is creating the study tables") from None
        # Optuna's cached wrapper, as optuna.load_study would build: Trial objects require its trial index.
        return optuna.storages.get_storage(rdb)

    try:
        return retrying(connect, patience, log)
    except ImportError as error:
        raise SeratioError(
            f"no database driver for {redact_url(url)!r}: install psycopg2-binary (pip install seratio[postgres])"
        ) from error
    except sqlalchemy.exc.DBAPIError as error:  # refused for good, not unreachable: e.g. an unknown option
        raise SeratioError(f"--storage {redact_url(url)!r} cannot be used: {_cause(error)}") from error


@contextlib.contextmanager
def sqlite_worker_lock(url: str, *, create: bool, log: Log) -> Iterator[bool]:
    """Hold an exclusive lock beside a SQLite store so a second worker is refused, never 'database is locked'.

    Taken before the store is opened, so a refused second `study run` has not written to it either.
    On a filesystem that cannot lock, one worker still runs, with a warning that a second would not
    be refused. Yields whether this process is certainly the store's only worker (SQLite, locked):
    then a trial left running belongs to a worker that is gone.
    """
    if not url.startswith("sqlite:///"):
        yield False
        return
    check_url(url, create=create)
    lock_path = Path(url.removeprefix("sqlite:///") + ".lock")
    unguarded = (
        f"a second worker on {url} would not be refused; run one worker only, or use journal: or postgresql:// storage"
    )
    with open(lock_path, "a") as handle:
        state = lock_or_warn(handle, lock_path, log, unguarded)
        if state is Lock.BUSY:
            raise SeratioError(sqlite_parallel_message(url, "another seratio worker is already using it"))
        yield state is Lock.HELD


def read_patience(seconds: float) -> Patience:
    """A reader's `--db-patience`, refused when negative."""
    if not seconds >= 0:
        raise SeratioError(f"--db-patience {seconds:g} must be >= 0 seconds (inf: retry for ever)")
    return Patience(seconds=seconds)


def sqlite_parallel_message(url: str, why: str) -> str:
    return (
        f"SQLite store {url!r}: {why}. SQLite serves one process at a time; for parallel workers use "
        "--storage journal:./study.log (one machine) or --storage postgresql://... (many machines)"
    )


class StudyStore:
    """One study in one storage; every call retries while the storage is unreachable."""

    def __init__(self, storage: optuna.storages.BaseStorage, name: str, patience: Patience, log: Log) -> None:
        self.storage = storage
        self.name = name
        self.patience = patience
        self.log = log
        try:
            self.study_id = self.call(lambda: storage.get_study_id_from_name(name))
        except KeyError:
            names = sorted(s.study_name for s in self.call(storage.get_all_studies))
            raise SeratioError(
                f"no study named {name!r} in this storage; studies there: {', '.join(names) or 'none'}"
            ) from None

    @classmethod
    def create_or_join(
        cls, storage: optuna.storages.BaseStorage, name: str, patience: Patience, log: Log
    ) -> StudyStore:
        """Create the study, or join it if it exists; racing creators both end up joined."""
        retrying(
            lambda: optuna.create_study(study_name=name, storage=storage, direction="maximize", load_if_exists=True),
            patience, log,
        )
        return cls(storage, name, patience, log)

    def call(self, fn: Callable[[], T]) -> T:
        return retrying(fn, self.patience, self.log)

    def optuna_study(self, sampler: optuna.samplers.BaseSampler, pruner: optuna.pruners.BasePruner) -> optuna.Study:
        return self.call(
            lambda: optuna.load_study(study_name=self.name, storage=self.storage, sampler=sampler, pruner=pruner)
        )

    def user_attrs(self) -> dict[str, Any]:
        return self.call(lambda: self.storage.get_study_user_attrs(self.study_id))

    def set_user_attr(self, key: str, value: Any) -> None:
        self.call(lambda: self.storage.set_study_user_attr(self.study_id, key, value))

    def trials(self) -> list[FrozenTrial]:
        return self.call(lambda: self.storage.get_all_trials(self.study_id, deepcopy=False))

    def trial(self, trial_id: int) -> FrozenTrial:
        return self.call(lambda: self.storage.get_trial(trial_id))

    def enqueue(self, params: dict[str, Any], user_attrs: dict[str, Any]) -> None:
        """One WAITING trial, created with its params and attributes in a single atomic write."""
        template = optuna.trial.create_trial(
            state=TrialState.WAITING, system_attrs={"fixed_params": params}, user_attrs=user_attrs
        )
        self.call(lambda: self.storage.create_new_trial(self.study_id, template_trial=template))

    def claim(self, trial_id: int) -> bool:
        """WAITING -> RUNNING; the storage lets exactly one racing worker win."""
        try:
            return self.call(lambda: self.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False

    def set_trial_attr(self, trial_id: int, key: str, value: Any) -> bool:
        """False when the trial already finished (another worker failed it as stale)."""
        try:
            self.call(lambda: self.storage.set_trial_user_attr(trial_id, key, value))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def beat(self, trial_id: int) -> bool:
        """Record a heartbeat; False when the trial is no longer ours to run."""
        try:
            self.storage.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
        return True

    def finish(self, trial_id: int, state: TrialState, value: float | None = None) -> bool:
        """End a trial; False when someone else ended it first (so nothing is double-counted)."""
        values = None if value is None else [value]
        try:
            return self.call(lambda: self.storage.set_trial_state_values(trial_id, state=state, values=values))
        except optuna.exceptions.UpdateFinishedTrialError:
            return False
