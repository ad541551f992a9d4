"""Process-level speed settings and facts: the memory allocator, the CPU thread count, bf16 support.

Why an allocator: a training step on CPU allocates and frees hundreds of activation tensors of
0.1-8 MB. glibc malloc hands blocks that large back to the kernel with munmap, so every step pays
for fresh, zero-filled pages again. tcmalloc keeps them: measured here +4-5% compiled training,
+7% compiled evaluation at the tool's batch of 250, and nearly double at batch 1000
(benchmarks/RESULTS.md). An allocator can only be chosen before the process starts, so the
`seratio` command re-executes itself once with LD_PRELOAD.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

OPT_OUT_ENV = "SERATIO_NO_TCMALLOC"
"""Set to 1 to keep the system allocator (e.g. to compare, or under a memory debugger); 0, false or no keep tcmalloc."""
GUARD_ENV = "_SERATIO_PRELOAD_TRIED"
"""Set in the re-executed process, so a preload that did not take effect never loops."""
TCMALLOC_PATHS = (
    "/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib/x86_64-linux-gnu/libtcmalloc.so.4",
    "/usr/lib/aarch64-linux-gnu/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc_minimal.so.4",
    "/usr/lib64/libtcmalloc.so.4",
)
# tcmalloc reports every allocation above 1 GiB on stderr by default; a CIFAR split is not news.
_QUIET_LARGE_ALLOCS = {"TCMALLOC_LARGE_ALLOC_REPORT_THRESHOLD": str(1 << 40)}


def allocator() -> str:
    """The malloc this process runs on: 'tcmalloc', 'jemalloc' or 'glibc'."""
    try:
        maps = Path("/proc/self/maps").read_text()
    except OSError:
        return "unknown"
    for name in ("tcmalloc", "jemalloc"):
        if f"lib{name}" in maps:
            return name
    return "glibc"


def find_tcmalloc() -> str | None:
    """Path of an installed tcmalloc (Debian/Ubuntu or RHEL layout), or None.

    A fixed list, not `ctypes.util.find_library`, which runs `ldconfig` on every command start.
    """
    return next((path for path in TCMALLOC_PATHS if os.path.exists(path)), None)


def preload_env(environ: dict[str, str], library: str) -> dict[str, str]:
    """`environ` with `library` first in LD_PRELOAD and the re-exec guard set."""
    env = dict(environ)
    env["LD_PRELOAD"] = ":".join(p for p in (library, environ.get("LD_PRELOAD", "")) if p)
    env[GUARD_ENV] = "1"
    for key, value in _QUIET_LARGE_ALLOCS.items():
        env.setdefault(key, value)
    return env


def should_reexec(environ: dict[str, str], current_allocator: str, library: str | None) -> bool:
    """Re-exec only on Linux, once, when tcmalloc exists, is not loaded yet, and nobody opted out."""
    return (
        sys.platform.startswith("linux")
        and library is not None
        and current_allocator == "glibc"
        and environ.get(OPT_OUT_ENV, "").strip().lower() in ("", "0", "false", "no")
        and GUARD_ENV not in environ
    )


def reexec_with_tcmalloc() -> None:
    """Replace this process by the same command with tcmalloc preloaded; return if that is not wanted.

    `sys.orig_argv` replays the exact interpreter invocation (`seratio ...` or `python -m
    seratio ...`). Call it first thing in the command-line entry only, never from a library
    function: exec replaces the whole process.
    """
    library = find_tcmalloc()
    if not should_reexec(dict(os.environ), allocator(), library):
        return
    assert library is not None
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, [sys.executable, *sys.orig_argv[1:]], preload_env(dict(os.environ), library))


def set_threads(threads: int | None) -> None:
    """Intra-op threads for this process (None keeps torch's default of one per physical core).

    Used when several trials share a CPU: each gets its share of the cores, because two processes
    that each start one thread per core only fight over them.
    """
    import torch

    if threads is not None:
        torch.set_num_threads(max(1, threads))


@contextmanager
def threads_for(threads: int | None) -> Iterator[None]:
    """`set_threads` for one block, then torch's previous count again: a command called in-process
    (a test, a notebook) leaves the caller's threads as it found them."""
    import torch

    before = torch.get_num_threads()
    set_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def describe() -> dict[str, str | int]:
    """What a run's epoch seconds depend on beyond the code: recorded beside the versions in config.json."""
    import torch

    return {"allocator": allocator(), "threads": torch.get_num_threads()}


def cpu_has_bf16() -> bool:
    """Whether oneDNN has bf16 kernels for this CPU (AVX512-BF16 or AMX). Without them a bf16
    convolution falls back to torch's reference im2col kernel: on this project's AVX2-only AMD EPYC,
    eager SE-ResNet-52 training at batch 32 ran at 10 images/s in bf16 against 96-113 in fp32."""
    import torch

    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
