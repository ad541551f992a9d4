"""Several trials at once on one device, each in its own process: the library form of `--trials-per-device K`.

Why processes: on a CPU two single-threaded trials waste less time in thread synchronisation than
one trial on two threads, and a batch-32 step of a small CIFAR ResNet leaves most of a GPU idle.
Separate processes keep every run exactly what `train_run` makes of it alone: its own RNG, model,
optimizer and run directory, so K concurrent runs equal K sequential ones (bit for bit on CPU at
the same thread count). On a GPU the processes share the device by time slicing, which
does not fill it: on an H100, 4 batch-32 trials trained 0.93x the images/s of one alone
(benchmarks/RESULTS.md, "GPU"). With an NVIDIA MPS daemon running (`nvidia-cuda-mps-control -d`)
their kernels overlap: on an H200, 4 compiled batch-32 trials trained 2.06x the images/s of one in
fp32 and 2.52x in bf16 (RESULTS.md, "GPU, third lease"). So K > 1 on a GPU without MPS gets a warning.

Processes are spawned, never forked: a forked child inherits torch's thread pools and CUDA state
in an unusable condition.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from seratio.config import RunConfig, resolve_device
from seratio.errors import SeratioError, print_to_stderr
from seratio.runtime import set_threads

T = TypeVar("T")


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask, where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def threads_per_trial(trials_per_device: int, cores: int | None = None) -> int:
    """An equal share of the cores for each concurrent trial, at least one."""
    total = cores if cores is not None else available_cores()
    return max(1, total // trials_per_device)


MPS_PIPE_DEFAULT = "/tmp/nvidia-mps"
"""Where CUDA clients look for the MPS control daemon unless CUDA_MPS_PIPE_DIRECTORY says otherwise."""


def _mps_control(environ: Mapping[str, str]) -> Path:
    """The control socket of the MPS daemon that this process's CUDA clients would use."""
    return Path(environ.get("CUDA_MPS_PIPE_DIRECTORY", MPS_PIPE_DEFAULT)) / "control"


def mps_daemon_running(environ: Mapping[str, str] = os.environ) -> bool:
    return _mps_control(environ).exists()


def gpu_sharing_warning(device_type: str, trials_per_device: int, environ: Mapping[str, str] = os.environ) -> str | None:
    """Why K trials on one GPU may train no faster than one, or None where they can overlap."""
    if device_type != "cuda" or trials_per_device < 2 or mps_daemon_running(environ):
        return None
    return (
        f"{trials_per_device} trials per GPU, but no NVIDIA MPS daemon listens at {_mps_control(environ)}: the trials' "
        "kernels will take turns on the GPU (4 trials on an H100 trained 0.93x the images/s of one). Start one "
        "with `nvidia-cuda-mps-control -d` first (under MPS, 4 trials on an H200 trained 2.1x in fp32, 2.5x in bf16)"
    )


def run_in_processes(
    target: Callable[..., T], calls: Sequence[tuple[Any, ...]], processes: int, threads: int | None = None
) -> list[T]:
    """`[target(*args) for args in calls]`, at most `processes` at a time, in order of `calls`.

    `target` and the arguments must be picklable (a module-level function, plain data). Each
    process runs torch with `threads` intra-op threads (None: torch's default). The first error
    raised by a call is re-raised here after the others finish.
    """
    if processes < 1:
        raise SeratioError(f"trials per device {processes!r} must be an integer >= 1")
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(processes, mp_context=context, initializer=set_threads, initargs=(threads,)) as pool:
        futures = [pool.submit(target, *args) for args in calls]
        return [future.result() for future in futures]


def train_concurrently(
    jobs: Sequence[tuple[RunConfig, str | Path]], trials_per_device: int, threads: int | None = None
) -> list[dict[str, Any]]:
    """Train each (config, out_dir) job with `train_run`, `trials_per_device` at a time on one device.

    Returns the result dicts in job order. `threads` defaults to an equal share of the cores.
    A finished run directory is read back, an unfinished one resumed, as `train_run` does alone.
    """
    on_gpu = any(resolve_device(config.device).type == "cuda" for config, _ in jobs)
    warning = gpu_sharing_warning("cuda" if on_gpu else "cpu", trials_per_device)
    if warning is not None:
        print_to_stderr(f"warning: {warning}")
    share = threads if threads is not None else threads_per_trial(trials_per_device)
    calls = [(config, str(out_dir)) for config, out_dir in jobs]
    return run_in_processes(_train_one, calls, trials_per_device, share)


def _train_one(config: RunConfig, out_dir: str) -> dict[str, Any]:
    """Each child's lines carry its run directory: K runs write to one stderr."""
    from seratio.train import train_run

    return train_run(config, out_dir, resume=True, log=lambda message: print_to_stderr(f"{out_dir}: {message}"))
