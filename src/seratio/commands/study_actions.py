"""What `seratio study run|worker|status|export` do: searches over stage ratios on Optuna storage.

Imported only when a study command runs (see `commands/study.py`, which holds the parsers).
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import optuna
from rich.console import Console
from rich.table import Table

from seratio.__main__ import INTERRUPTED
from seratio.architecture import format_rr, is_integer_text, parse_rr
from seratio.commands.console import stdout_console
from seratio.commands.options import checked_threads, need_cpu_count, run_config_from_args
from seratio.commands.signals import sigterm_as_ctrl_c
from seratio.concurrent import gpu_sharing_warning, threads_per_trial
from seratio.config import resolve_device
from seratio.datasets import resolve_data_dir
from seratio.errors import SeratioError
from seratio.interrupts import stop_signals_held
from seratio.overview import Progress, progress, status_record, time_left, trial_row
from seratio.rundir import write_atomic
from seratio.runtime import threads_for
from seratio.store import (
    Patience, StudyStore, check_url, check_writable, is_sqlite, open_storage, read_patience, sqlite_parallel_message,
    redact_url, sqlite_worker_lock, storage_file,
)
from seratio.strategies import DONE
from seratio.study import StudyRequest, build_definition, code_warnings, create_or_join, load_definition, stored_definition
from seratio.study_choices import DEFAULT_STORAGE

TEST_LABEL = "selected on the TEST set, as the paper did"
MAX_DURATION = 7 * 24 * 3600.0
"""A week, far beyond any useful heartbeat; at 1e10 s the heartbeat thread's clock arithmetic overflowed."""
err = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
out = stdout_console()


def _log(message: str) -> None:
    err.print(f"[{os.getpid()}] {message}", markup=False)


def _candidates(text: str | None) -> tuple[int, ...] | None:
    if text is None:
        return None
    tokens = [token.strip() for token in text.split(",")]
    try:
        if not all(map(is_integer_text, tokens)):
            raise ValueError(text)
        return tuple(int(token) for token in tokens)
    except ValueError:  # also a number too long for int()
        raise SeratioError(f"--candidates {text!r} must be comma-separated integers, e.g. 2,4,8,16,32") from None


def _check_worker_args(args: argparse.Namespace, *, create: bool) -> None:
    """Refuse a bad worker option before any storage is touched, not in every trial or after creating the study."""
    check_url(args.storage, create=create)
    check_writable(args.storage)
    if not 0 < args.heartbeat_interval <= MAX_DURATION:
        raise SeratioError(f"--heartbeat-interval {args.heartbeat_interval:g} must be > 0 and at most {MAX_DURATION:g} s")
    if not 3 * args.heartbeat_interval <= args.stale_after <= MAX_DURATION:
        raise SeratioError(
            f"--stale-after {args.stale_after:g} must be at least 3 heartbeats (--heartbeat-interval "
            f"{args.heartbeat_interval:g}) and at most {MAX_DURATION:g} s"
        )
    read_patience(args.db_patience)
    resolve_device(args.device)
    if args.artifacts is not None:
        _check_artifacts(args.artifacts)


def _check_artifacts(artifacts: Path) -> None:
    try:
        artifacts.resolve()
    except RuntimeError as error:  # pathlib's symlink loop, found before a study is created around it
        raise SeratioError(f"--artifacts {str(artifacts)!r} cannot be resolved: {error}") from None
    if artifacts.exists() and not artifacts.is_dir():
        raise SeratioError(f"--artifacts {str(artifacts)!r} is a file, not a directory")
    where = next(path for path in (artifacts.absolute(), *artifacts.absolute().parents) if path.exists())
    if not os.access(where, os.W_OK | os.X_OK):  # else the study is created and every trial fails on it
        raise SeratioError(f"--artifacts {str(artifacts)!r} cannot hold the study's runs: {where} is not writable")


def _quiet_optuna() -> None:
    """Optuna's INFO lines would interleave with ours; its warnings still show."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def run(args: argparse.Namespace) -> int:
    with threads_for(checked_threads(args)), sigterm_as_ctrl_c():  # pre-empted: the trial stays resumable
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    _quiet_optuna()
    _check_worker_args(args, create=True)
    workers = _local_workers(args)
    paper_split = {"val_size": 0} if args.strategy == "paper" and args.val_size is None else {}
    request = StudyRequest(
        strategy=args.strategy, run=run_config_from_args(args, rr="none", seed=0, **paper_split),
        candidates=_candidates(args.candidates), seeds=args.seeds, baseline=parse_rr(args.baseline),
        select_on=args.select_on, n_trials=args.n_trials, halving_min_epochs=args.halving_min_epochs,
    )
    definition = build_definition(request)
    resolve_data_dir(args.data_dir, request.run.dataset)
    patience = Patience(seconds=args.db_patience)
    with sqlite_worker_lock(args.storage, create=True, log=_log) as sole:
        storage = open_storage(args.storage, create=True, patience=patience, log=_log)
        store = StudyStore.create_or_join(storage, args.name, patience, _log)
        artifacts, warnings = create_or_join(store, definition, args.artifacts)
        for warning in warnings:
            _log(f"warning: {warning}")
        if workers == 1:
            _work(store, definition, args, artifacts, sole)
        else:
            threads = args.threads or threads_per_trial(workers)
            _spawn_workers(args, artifacts, _devices(args.device, workers), threads)
    _print_progress(store.name, args.storage, definition, progress(definition, store.trials()))
    return 0


def _local_workers(args: argparse.Namespace) -> int:
    """`--workers W` as given, or `--trials-per-device K` as `_trials_on_devices` counts it."""
    if args.trials_per_device is not None:
        return _trials_on_devices(args)
    workers = 1 if args.workers is None else need_cpu_count("--workers", args.workers)
    _refuse_parallel_sqlite(args.storage, workers, f"--workers {args.workers}")
    return workers


def _trials_on_devices(args: argparse.Namespace) -> int:
    """K trials on each device that `--device` names (every GPU for `auto`), in `study run` and `study worker` alike."""
    trials = need_cpu_count("--trials-per-device", args.trials_per_device) * _device_count(args.device)
    _refuse_parallel_sqlite(args.storage, trials, f"--trials-per-device {args.trials_per_device}")
    warning = gpu_sharing_warning(resolve_device(args.device).type, args.trials_per_device)
    if warning is not None:
        _log(f"warning: {warning}")
    return trials


def _refuse_parallel_sqlite(storage: str, workers: int, asked: str) -> None:
    if workers > 1 and is_sqlite(storage):
        raise SeratioError(sqlite_parallel_message(storage, f"{asked} asks for {workers} parallel workers"))


def _device_count(device: str) -> int:
    return max(_gpu_count(), 1) if device == "auto" else 1


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count()


def worker(args: argparse.Namespace) -> int:
    with threads_for(checked_threads(args)), sigterm_as_ctrl_c():
        return _worker(args)


def _worker(args: argparse.Namespace) -> int:
    trials = 1 if args.trials_per_device is None else _trials_on_devices(args)
    _check_worker_args(args, create=False)
    _quiet_optuna()
    patience = Patience(seconds=args.db_patience)
    with sqlite_worker_lock(args.storage, create=False, log=_log) as sole:
        store = StudyStore(open_storage(args.storage, create=False, patience=patience, log=_log), args.name, patience, _log)
        definition, artifacts = load_definition(store)
        resolve_data_dir(args.data_dir, definition["dataset"])
        for warning in code_warnings(definition):
            _log(f"warning: {warning}")
        if trials == 1:
            _work(store, definition, args, args.artifacts or artifacts, sole)
        else:
            _spawn_workers(args, args.artifacts or artifacts, _devices(args.device, trials),
                           args.threads or threads_per_trial(trials))
    return 0


def _work(store: StudyStore, definition: dict[str, Any], args: argparse.Namespace, artifacts: Path, sole: bool) -> None:
    from seratio.worker import Worker, WorkerOptions

    options = WorkerOptions(
        artifacts=artifacts, device=args.device, data_dir=args.data_dir,
        heartbeat_interval=args.heartbeat_interval, stale_after=args.stale_after, sole=sole,
    )
    summary = Worker(store, definition, options, log=_log).run()
    _log(
        f"worker done: {summary.trained} trained, {summary.read_back} read back from finished runs, "
        f"{summary.pruned} pruned, {summary.reused} reused, "
        f"{summary.duplicates} duplicate claims dropped"
    )


def _spawn_workers(args: argparse.Namespace, artifacts: Path, devices: list[str], threads: int) -> None:
    """One independent `study worker` process per entry of `devices`, each with `threads` torch threads.

    The threads are an equal share of the cores unless given, so W workers do not oversubscribe the CPU.

    Each worker gets its own session, so a Ctrl-C reaches only this process, which passes exactly
    one SIGINT to each worker; a second one could cut short a worker marking its trial resumable.
    """
    common = [
        sys.executable, "-m", "seratio", "study", "worker", "--name", args.name, "--storage", args.storage,
        "--artifacts", str(artifacts), "--threads", str(threads),
        "--heartbeat-interval", str(args.heartbeat_interval), "--stale-after", str(args.stale_after),
        "--db-patience", str(args.db_patience),
    ] + (["--data-dir", args.data_dir] if args.data_dir else [])
    processes: list[subprocess.Popen[bytes]] = []
    try:
        with stop_signals_held():  # an interrupt mid-spawn would orphan the workers started so far
            processes = [subprocess.Popen(common + ["--device", device], start_new_session=True) for device in devices]
        codes = [p.wait() for p in processes]
    except KeyboardInterrupt:
        with stop_signals_held():  # a second Ctrl-C must not leave a worker without its SIGINT
            for p in processes:
                if p.poll() is None:
                    p.send_signal(signal.SIGINT)
        for p in processes:
            p.wait()
        raise
    _check_worker_codes(codes)


def _check_worker_codes(codes: list[int]) -> None:
    """A worker interrupted on its own is not a failure: the others take its trial over and finish."""
    failed = [c for c in codes if c not in (0, INTERRUPTED)]
    if failed:
        raise SeratioError(f"{len(failed)} of {len(codes)} workers failed (exit codes {codes}); see their messages above")
    interrupted = codes.count(INTERRUPTED)
    if interrupted == len(codes):
        raise KeyboardInterrupt
    if interrupted:
        _log(f"warning: {interrupted} of {len(codes)} workers were interrupted; the others finished the study")


def _devices(device: str, workers: int) -> list[str]:
    """One device per worker: with several GPUs and --device auto, worker i gets GPU i mod count."""
    count = _device_count(device)
    if count == 1:
        return [device] * workers
    return [f"cuda:{index % count}" for index in range(workers)]


def _open_existing(args: argparse.Namespace) -> tuple[StudyStore, dict[str, Any]]:
    patience = read_patience(args.db_patience)
    store = StudyStore(open_storage(args.storage, create=False, patience=patience, log=_log), args.name, patience, _log)
    return store, stored_definition(store.user_attrs(), args.name)


def status(args: argparse.Namespace) -> int:
    _quiet_optuna()
    store, definition = _open_existing(args)
    state = progress(definition, store.trials())
    if args.json:
        print(json.dumps(status_record(store.name, definition, state), indent=2, allow_nan=False))
    else:
        _print_progress(store.name, args.storage, definition, state)
    return 0


def _print_progress(name: str, storage: str, definition: dict[str, Any], state: Progress) -> None:
    metric = f"{definition['select_on']} accuracy"
    label = f" ({TEST_LABEL})" if definition["select_on"] == "test" else ""
    out.print(f"study {name}: {definition['strategy']}, {definition['seeds']} seed(s){label}")
    out.print(f"phase: {state.phase}")
    table = Table(title="trials")  # the phase stands above: eight count columns fit 80 characters
    for key in state.counts:
        table.add_column(key, justify="right")
    table.add_row(*(str(v) for v in state.counts.values()))
    out.print(table)
    mean = " (mean over seeds)" if definition["seeds"] > 1 else ""
    if state.best is not None:
        done = state.phase == DONE
        out.print(f"{'best' if done else 'best so far'}: rr {format_rr(state.best)}, {metric} "
                  f"{state.best_score:.2%}{mean}{label}")
        if done:
            where = "" if storage == DEFAULT_STORAGE else f" --storage {redact_url(storage)}"
            interval = ", a 95% interval over its seeds" if definition["seeds"] > 1 else ""
            out.print(f"its test accuracy{interval} and tests against the baseline: "
                      f"seratio report --name {name}{where} --out DIR")
    if state.baseline_score is not None:
        baseline = tuple(definition["baseline"])
        named = "the plain ResNet (rr none)" if all(r is None for r in baseline) else f"rr {format_rr(baseline)}"
        out.print(f"baseline, {named}: {metric} {state.baseline_score:.2%}{mean}")
    out.print(_plan_line(state, definition["strategy"]))


def _plan_line(state: Progress, strategy: str) -> str:
    """How far the study is and, from the runs finished so far, how much training is left: the
    paper preset is 14 runs of 200 epochs, and a user should know that before waiting on it."""
    whole = "" if state.most == state.planned else f"; the whole search trains at most {state.most}"
    line = f"runs: {state.ended} of the {state.planned} planned so far have ended{whole}"
    if state.phase == DONE:
        return line.replace(" so far", "")
    left = time_left(state, strategy)
    if left is None:
        return line + "; a time estimate follows the first finished run"
    basis = f"at {_duration(left.per_run)} per finished run (mean of {left.finished_runs})"
    if left.halving_epochs is not None and state.epoch_seconds is not None:
        basis = (f"if the runs to come stop where the {len(state.run_epochs)} ended ones did ({left.halving_epochs:.1f} "
                 f"epochs on average, at {_duration(state.epoch_seconds)} an epoch); at most {_duration(left.uncut)} "
                 "if halving cuts none")
    whole_left = "" if state.most == state.planned else f", at most {_duration(left.search)} for the whole search"
    return (f"{line}\nabout {_duration(left.plan)} of training left for the plan{whole_left}, {basis}; workers "
            "training at once divide it")


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def export(args: argparse.Namespace) -> int:
    suffix = args.out.suffix.lower()
    if suffix not in (".csv", ".json"):
        raise SeratioError(f"--out {str(args.out)!r} must be a file name ending in .csv or .json, e.g. trials.csv")
    if (args.out.exists() or args.out.is_symlink()) and not (args.force and args.out.is_file()):
        what = "a file; pass --force to replace it" if args.out.is_file() else "not a file"
        raise SeratioError(f"--out {str(args.out)!r} already exists and is {what}")
    if not args.out.absolute().parent.is_dir():  # a typo must not create folders (once one at the filesystem root)
        raise SeratioError(f"--out {str(args.out)!r}: its folder {str(args.out.absolute().parent)!r} does not exist "
                           "or is not a folder")
    stored = storage_file(args.storage)
    if stored is not None and stored.exists() and args.out.exists() and args.out.samefile(stored):
        raise SeratioError(f"--out {str(args.out)!r} is the file the study itself lives in (--storage "
                           f"{args.storage!r}); writing the export there would destroy the study")
    _quiet_optuna()
    store, definition = _open_existing(args)
    rows = [trial_row(t) for t in store.trials()]
    for row in rows:
        row["select_on"] = definition["select_on"]
    target = args.out.resolve() if args.out.is_symlink() else args.out  # --force writes through a link, as `>` does
    text = json.dumps(rows, indent=2, allow_nan=False) + "\n" if suffix == ".json" else _csv(rows)
    write_atomic(target, text.encode())
    out.print(f"wrote {len(rows)} trials to {args.out}")
    return 0


def _csv(rows: list[dict[str, Any]]) -> str:
    text = io.StringIO(newline="")
    writer = csv.DictWriter(text, fieldnames=list(rows[0]) if rows else ["number"])
    writer.writeheader()
    writer.writerows(rows)
    return text.getvalue()
