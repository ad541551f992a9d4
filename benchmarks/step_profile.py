"""Where an fp32 training step's time goes: the convolutions against everything else, eager and compiled.

    .venv/bin/python benchmarks/step_profile.py [--rounds 4] [--steps 6]

Why: `conv_kernels.py` times the convolutions alone, and a step is more than the sum of its
kernels (cache misses, threads waking). This profiles `cpu_choices.train_variant` (SE-ResNet-52,
rr 8,2,16, batch 32, channels_last, fused Adam) with `torch.profiler`, eager and compiled in
alternating order round by round, and reports the medians per step. The profiler adds a little
per operator, so the shares of the many small non-convolution operators come out slightly high.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from collections.abc import Callable

from bench_cli import at_least
from cpu_choices import train_variant
from torch.profiler import ProfilerActivity, profile

from seratio.compiled_forward import COMPILE_OPTIONS, allow_compiled_models
from seratio.runtime import reexec_with_tcmalloc

CONVOLUTIONS = {"backward": "aten::convolution_backward", "forward": "aten::mkldnn_convolution"}


def profiled_ms(run: Callable[[], int], steps: int) -> dict[str, float]:
    """Milliseconds per step: the two convolution operators and the sum of every operator's own time."""
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        run()
    events = {event.key: event.self_cpu_time_total for event in prof.key_averages()}
    per_step = {name: events.get(key, 0.0) / steps / 1e3 for name, key in CONVOLUTIONS.items()}
    per_step["step"] = sum(events.values()) / steps / 1e3
    return per_step


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=at_least(1), default=4, help="alternating rounds (median reported)")
    parser.add_argument("--steps", type=at_least(1), default=6, help="training steps per profile")
    args = parser.parse_args(argv)
    reexec_with_tcmalloc()
    allow_compiled_models(2)
    runs = {"eager": train_variant(32, args.steps),
            "compiled": train_variant(32, args.steps, compiled=True, options=COMPILE_OPTIONS)}
    for run in runs.values():
        run()  # compiles
    rows: dict[str, list[dict[str, float]]] = {name: [] for name in runs}
    for index in range(args.rounds):
        for name in runs if index % 2 == 0 else list(runs)[::-1]:
            rows[name].append(profiled_ms(runs[name], args.steps))
    print(f"ms per batch-32 step under torch.profiler, medians of {args.rounds} alternating rounds of {args.steps} steps")
    print(f"{'':<10}{'conv bwd':>10}{'conv fwd':>10}{'all ops':>10}{'conv share':>12}")
    for name, profiles in rows.items():
        median = {key: statistics.median(p[key] for p in profiles) for key in ("backward", "forward", "step")}
        share = (median["backward"] + median["forward"]) / median["step"]
        print(f"{name:<10}{median['backward']:>10.1f}{median['forward']:>10.1f}{median['step']:>10.1f}{share:>12.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
