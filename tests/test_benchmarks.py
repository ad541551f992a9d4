"""The GPU checks' scripts run here on the CPU first: a lent GPU has minutes, and a script that
crashes there loses them. Only what holds on any device is asserted, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_stacked_models_train_each_model_as_alone_in_one_step_of_as_many_kernels(tmp_path: Path) -> None:
    """The stacking benchmark's premise: K stacked models, padded to the widest SE blocks, learn what
    each would learn alone, and a step launches as many kernels whatever K, more than one plain
    model's but not twice as many."""
    out = tmp_path / "stacked.json"
    command = [sys.executable, str(REPO / "benchmarks" / "stacked_models.py"), "--device", "cpu", "--depth", "8",
               "--steps", "4", "--models", "1,2", "--precision", "fp32", "--repeats", "1", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    checked = result["check"]
    assert checked["same"] and checked["max_relative_gap"] < 1e-5 and checked["padding_max"] == 0.0
    assert checked["ratios"] == [[8, 2, 16], [2, 8, 8], [16, 16, 16]]  # other SE widths in every stage
    rows = {row["models"]: row for row in result["rows"]}
    assert set(rows) == {1, 2} and all(row["how"] == "eager" for row in rows.values())
    assert (rows[1]["stacks"], rows[2]["stacks"]) == (14, 7)
    assert rows[1]["kernels"] == rows[2]["kernels"]
    assert result["lone_kernels"] < rows[1]["kernels"] < 2 * result["lone_kernels"]
    for row in rows.values():
        assert row["ips_all"] == pytest.approx(row["models"] * row["ips_per_model"]) and row["ips_all"] > 0
        assert 0 < row["projected_hours"] < 10_000
    assert "check: 3 models padded and stacked vs alone" in done.stdout and ": same" in done.stdout


def test_throughput_table_keeps_the_compiled_candidate_apart_from_the_tool_s_own_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On CUDA the benchmark times an inductor-compiled graphed step beside the tool's graphed one.
    Both are seratio, fp32, batch 32: if the derivation keyed them alike, one would overwrite the
    other's projection and the GPU's answer would be lost. The arithmetic is checked by hand."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_throughput as bench

    def row(kind: str, impl: str, batch: int, ips: float, setup: str = "") -> Any:
        return bench.Row(kind, impl, batch, "fp32", ips, [ips, ips], setup=setup)

    rows = [
        row("train", "plain", 32, 500.0), row("train", "plain", 128, 1000.0), row("eval", "plain", 32, 2000.0),
        row("train", "seratio", 32, 5000.0, "NHWC, Adam, CUDA graph"),
        row("compiled", "seratio", 32, 8000.0, "NHWC, Adam, compiled, CUDA graph"),
        row("eval", "seratio", 5000, 80_000.0),
    ]
    rows.sort(key=bench._table_order)
    assert [(r.impl, r.kind) for r in rows][3:] == [("seratio", "train"), ("seratio", "compiled"), ("seratio", "eval")]
    bench._derive(rows, {"fp32": 100_000.0}, 0.5)
    compiled = next(r for r in rows if r.kind == "compiled")
    assert compiled.ratio == pytest.approx(16.0) and compiled.peak_fraction == pytest.approx(0.04)
    assert compiled.epoch_seconds == pytest.approx(50_000 / 8000 + 10_000 / 80_000)
    hours = bench._projection(rows)
    assert hours["seratio fp32 compiled"] == pytest.approx(14 * 200 * (50_000 / 8000 + 10_000 / 80_000) / 3600)
    assert hours["seratio fp32"] == pytest.approx(14 * 200 * (50_000 / 5000 + 10_000 / 80_000) / 3600)
    result = {
        "environment": {"device": "cuda: test", "torch": "2", "threads": 1, "interop_threads": 1, "allocator": "glibc",
                        "amx": False, "fp32_peak_math": "tf32", "load_average_start": 0.0, "load_average_end": 0.0},
        "repeats": 2, "gflop_per_training_image": 0.5, "peak_gflops": {"fp32": 100_000.0},
        "rows": [vars(r) for r in rows], "concurrent_trials": 4, "projection_hours": hours, "fast_recipe_minutes": None,
        "left_out": ["seratio compiled at batch 32 in bf16: RuntimeError: no compiler"],
    }
    table = bench.format_table(result)
    assert "seratio train, compiled (candidate)     32  fp32" in table and "NHWC, Adam, compiled, CUDA graph" in table
    assert "seratio fp32 compiled" in table
    assert "not measured, left out: seratio compiled at batch 32 in bf16: RuntimeError: no compiler" in table


def test_a_candidate_row_whose_compile_fails_says_so_instead_of_timing_the_uncompiled_step(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its images/s would be the tool's own graphed step's, under the candidate's name."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import torch
    import train_throughput as bench
    from seratio import cpu_compile

    def broken(model: Any, **kwargs: Any) -> Any:
        def fail(images: Any) -> Any:
            raise RuntimeError("no compiler")

        return fail

    monkeypatch.setattr(bench, "DEPTH", 8)
    monkeypatch.setattr(cpu_compile.torch, "compile", broken)
    timer = bench._compiled_cuda_timer(torch.device("cpu"), 2, "fp32")
    assert timer.failure is None
    timer.warm()
    assert timer.failure == "RuntimeError: no compiler"
