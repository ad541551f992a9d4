"""The training forward through `torch.compile`, for runs long enough to repay compiling.

Why, on a CPU: between its oneDNN convolutions an SE-ResNet step is batch norm, ReLU, SE scaling
and residual additions, each a full pass over memory in eager mode, about half of a CPU step.
Inductor fuses them into a few C++ loops: measured here +22% training images/s in fp32 at batch
32 and +38% in bf16 at batch 128, +15% / +8% evaluation images/s (benchmarks/RESULTS.md).
Inductor's `aggressive_fusion` also merges loops that share no buffer, so a step has fewer
parallel regions: +0.5 to +3.2% bf16 training at batch 128 in four A/B runs, fp32 unchanged,
about 10% longer to compile cold.

Why, on CUDA: a CUDA graph removes the launch cost of a batch-32 step's ~900 kernels, not the
kernels themselves. Inductor fuses the same passes into Triton kernels, and the graph, captured
after the compile in its eager warm-up steps, replays the fused ones: +35% in fp32 and +34-49% in
bf16 at batch 32 on an H100; in fp32 it followed the eager step's loss trajectory (bf16 not
checked yet; benchmarks/RESULTS.md).

Compiling costs a minute or more per process (less with inductor's warm on-disk cache), so only
long runs compile; see `session.COMPILE_MIN_IMAGES`. The compiled CPU kernels are deterministic
at a fixed thread count, so a seeded run still reproduces bit for bit and a resumed run, which
compiles the same graph again, still ends identical. Only full batches use the compiled forward
(a new batch shape would mean compiling again); the last, partial batch of an epoch runs eagerly
on the same parameters. Evaluation on a CPU has its own instance, for its own batch size (dynamo
compiles the eval-mode, inference-mode graph separately).
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from collections.abc import Callable, Iterator

import torch
from torch import nn


COMPILE_OPTIONS = {"aggressive_fusion": True}
TF32_ADVICE = "TensorFloat32 tensor cores for float32 matrix multiplication available but not enabled"
"""Inductor's advice, printed once per process when it first compiles on a GPU with TF32. The
tool keeps matmuls in full fp32 on purpose: its only matmuls are the small SE and classifier
layers, and the convolutions, where the time goes, already run in TF32 (torch's default). A
study's log should not tell its reader to change a setting the project chose."""


def forget_compiled_graphs() -> None:
    """Drop every graph dynamo has compiled in this process, before a run compiles its own.

    Why: dynamo keeps the graphs of one code object in one cache, and every model's forward is the
    same `ResNet.forward`. Once that cache holds `recompile_limit` graphs (8), dynamo runs the
    frame eagerly for good, with only a log warning. A study worker trains trial after trial in
    one process, two graphs each (training and evaluation), so from its fifth trial on every trial
    silently lost the compile's speed. A run never uses another run's graphs; inductor's on-disk
    cache still makes compiling the same graph again take seconds.
    """
    dynamo = sys.modules.get("torch._dynamo")  # not imported: nothing compiled, and importing costs a second
    if dynamo is not None:
        dynamo.reset()


def allow_compiled_models(count: int) -> None:
    """Let `count` compiled models live side by side in this process, for the benchmarks, which
    time many compiled variants in interleaved rounds and so cannot forget any of them."""
    import torch._dynamo

    config = torch._dynamo.config
    config.recompile_limit = max(config.recompile_limit, 2 * count)
    config.accumulated_recompile_limit = max(config.accumulated_recompile_limit, 2 * count)


class CompiledForward:
    """`model(images)` through torch.compile for batches of `batch_size`, eager otherwise.

    If compiling fails (no C++ compiler or Triton, an unsupported platform), the first call falls back to
    eager for good: compiling happens before the graph runs, so the failed call changed nothing.
    That holds for the backward too, which the first call compiles as well (`_first_compile`).
    The run goes on, slower, so the reason is kept in `failure` and handed to `on_failure` (the
    session's, which logs it): a researcher who finds a run twice as slow as the README says should
    find out why in its log.
    """

    def __init__(self, model: nn.Module, batch_size: int) -> None:
        self.model = model
        self.batch_size = batch_size
        self.compiled: nn.Module | None = torch.compile(model, dynamic=False, options=COMPILE_OPTIONS)
        self.calls = 0
        self.failure: str | None = None
        self.on_failure: Callable[[str], None] | None = None

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.compiled is None or images.shape[0] != self.batch_size:
            return self.model(images)
        self.calls += 1
        if self.calls > 1:
            return self.compiled(images)
        try:
            with _first_compile():
                return self.compiled(images)
        except Exception as error:  # noqa: BLE001 - any compiler failure means: train eagerly instead
            self.compiled = None
            self.failure = compile_failure(error)
            if self.on_failure is not None:
                self.on_failure(self.failure)
            return self.model(images)


@contextlib.contextmanager
def _first_compile() -> Iterator[None]:
    """The first compiled call, where compiling happens. torch compiles a training graph's backward
    lazily, at the first `backward()`, outside the call that could fall back to eager: a backward
    that fails to compile (a Triton or ptxas error on a GPU) would end the run. Here it compiles
    with the forward, where a failure is caught. Inductor's TF32 advice is left out (`TF32_ADVICE`).
    """
    import torch._functorch.config as functorch_config

    with contextlib.ExitStack() as stack, warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=TF32_ADVICE)
        if hasattr(functorch_config, "force_non_lazy_backward_lowering"):  # else lazily, as torch does
            stack.enter_context(functorch_config.patch(force_non_lazy_backward_lowering=True))
        yield


def compile_failure(error: Exception) -> str:
    """The reason in one line. torch wraps a backend's error as "backend='inductor' raised:" and
    the reason on the next line, so the wrapped error, where there is one, says it."""
    inner = getattr(error, "inner_exception", None)
    cause = inner if isinstance(inner, BaseException) else error
    lines = [line.strip() for line in str(cause).splitlines() if line.strip()]
    return f"{type(cause).__name__}: {lines[0]}" if lines else type(cause).__name__
