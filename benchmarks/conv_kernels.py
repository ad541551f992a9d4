"""oneDNN convolution kernels alone, for every conv shape of the CIFAR ResNet: forward, input
gradient and weight gradient, fp32 and bf16, NHWC, at batch 32 and 128.

Why: on CPU the convolutions are most of a training step, and no setting of ours changes how fast
oneDNN runs them. This shows how much of the step they set, and which gradient is slow (in bf16
the weight gradient of a 64-channel conv takes about 4x its forward).

    .venv/bin/python benchmarks/conv_kernels.py [--rounds 3]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from bench_cli import at_least

from seratio.runtime import cpu_has_bf16, reexec_with_tcmalloc

BLOCKS = 8
"""Residual blocks per stage of SE-ResNet-52 (depth 50 = 6 x 8 + 2), the benchmarked model."""
SHAPES = {  # (in channels, out channels, input side, kernel, stride) -> how many the model has
    (3, 16, 32, 3, 1): 1,
    (16, 16, 32, 3, 1): 2 * BLOCKS,
    (16, 32, 32, 3, 2): 1,
    (16, 32, 32, 1, 2): 1,
    (32, 32, 16, 3, 1): 2 * BLOCKS - 1,
    (32, 64, 16, 3, 2): 1,
    (32, 64, 16, 1, 2): 1,
    (64, 64, 8, 3, 1): 2 * BLOCKS - 1,
}
FIRST = (3, 16, 32, 3, 1)
"""The stem conv: its input is the image, so a training step never computes its input gradient."""


def milliseconds(run: Callable[[], object], reps: int, rounds: int) -> float:
    """Median over `rounds` of the mean time of `reps` calls, after 3 untimed calls."""
    for _ in range(3):
        run()
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(reps):
            run()
        times.append((time.perf_counter() - started) / reps * 1e3)
    return statistics.median(times)


def measure(shape: tuple[int, ...], batch: int, dtype: torch.dtype, rounds: int) -> tuple[float, float, float, float]:
    """(forward ms, input-gradient ms, weight-gradient ms, forward GFLOP/s) for one conv shape."""
    c_in, c_out, side, kernel, stride = shape
    x = torch.randn(batch, c_in, side, side, dtype=dtype).to(memory_format=torch.channels_last)
    w = torch.randn(c_out, c_in, kernel, kernel, dtype=dtype).to(memory_format=torch.channels_last)
    pad = kernel // 2
    y = F.conv2d(x, w, None, stride, pad)
    grad = torch.randn_like(y)
    args = (grad, x, w, None, [stride, stride], [pad, pad], [1, 1], False, [0, 0], 1)
    backward = torch.ops.aten.convolution_backward
    forward = milliseconds(lambda: F.conv2d(x, w, None, stride, pad), 10, rounds)
    dgrad = milliseconds(lambda: backward(*args, [True, False, False]), 10, rounds)
    wgrad = milliseconds(lambda: backward(*args, [False, True, False]), 10, rounds)
    flops = 2 * batch * c_out * (side // stride) ** 2 * c_in * kernel * kernel
    return forward, dgrad, wgrad, flops / forward / 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=at_least(1), default=3, help="timed rounds per number (median reported)")
    args = parser.parse_args(argv)
    reexec_with_tcmalloc()
    dtypes = ((torch.float32, "fp32"), (torch.bfloat16, "bf16")) if cpu_has_bf16() else ((torch.float32, "fp32"),)
    bf16 = "" if cpu_has_bf16() else " | fp32 only: no bf16 instructions, bf16 convs would run reference code"
    print(f"torch {torch.__version__} | {torch.get_num_threads()} threads | NHWC | median of {args.rounds} rounds{bf16}")
    print(f"{'dtype':<6}{'batch':>6}  {'conv (in>out, side, k, stride)':<32}{'fwd ms':>8}{'dgrad ms':>10}"
          f"{'wgrad ms':>10}{'wgrad/fwd':>11}{'fwd GFLOP/s':>13}")
    totals = []
    for dtype, name in dtypes:
        for batch in (32, 128):
            step = 0.0
            for shape, count in SHAPES.items():
                forward, dgrad, wgrad, gflops = measure(shape, batch, dtype, args.rounds)
                step += count * (forward + wgrad + (0.0 if shape == FIRST else dgrad))
                label = f"{shape[0]}>{shape[1]}, {shape[2]}, {shape[3]}x{shape[3]}, s{shape[4]}"
                print(f"{name:<6}{batch:>6}  {label:<32}{forward:>8.2f}{dgrad:>10.2f}{wgrad:>10.2f}"
                      f"{wgrad / forward:>11.1f}{gflops:>13.0f}")
            totals.append(f"{name} batch {batch}: {step:.1f} ms per step, at most {1e3 * batch / step:,.0f} images/s")
    print(f"all convolutions of one SE-ResNet-52 training step ({sum(SHAPES.values())} convs), nothing else:")
    print("\n".join(f"  {line}" for line in totals))
    return 0


if __name__ == "__main__":
    sys.exit(main())
