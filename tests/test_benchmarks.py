"""The GPU checks' scripts run here on the CPU first: a lent GPU has minutes, and a script that
crashes there loses them. Only what holds on any device is asserted, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
import types
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


def test_throughput_table_derives_ratios_epochs_and_the_study_projection_from_its_rows(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The numbers a GPU lease exists to produce come from this arithmetic; it is checked by hand,
    with the concurrent trials' row kept apart from the one-trial row of the same batch."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_throughput as bench

    def row(kind: str, impl: str, batch: int, ips: float, setup: str = "") -> Any:
        return bench.Row(kind, impl, batch, "fp32", ips, [ips, ips], setup=setup)

    rows = [
        row("eval", "seratio", 5000, 80_000.0),
        row("concurrent", "seratio", 32, 6000.0, "4 processes"),
        row("train", "seratio", 32, 8000.0, "NCHW, Adam, compiled, CUDA graph"),
        row("train", "plain", 32, 500.0), row("train", "plain", 128, 1000.0), row("eval", "plain", 32, 2000.0),
    ]
    rows.sort(key=bench._table_order)
    assert [(r.impl, r.kind) for r in rows] == [("plain", "train"), ("plain", "train"), ("plain", "eval"),
                                                ("seratio", "train"), ("seratio", "eval"), ("seratio", "concurrent")]
    bench._derive(rows, {"fp32": 100_000.0}, 0.5)
    train = next(r for r in rows if (r.impl, r.kind) == ("seratio", "train"))
    assert train.ratio == pytest.approx(16.0) and train.peak_fraction == pytest.approx(0.04)
    assert train.epoch_seconds == pytest.approx(50_000 / 8000 + 10_000 / 80_000)
    train.startup_seconds = 90.0  # a compile, paid by each of the 14 runs
    next(r for r in rows if r.kind == "concurrent").startup_seconds = 100.0  # paid by each 4 runs at once
    hours = bench._projection(rows, 4)
    assert hours["seratio fp32"]["hours"] == pytest.approx((14 * 200 * (50_000 / 8000 + 10_000 / 80_000) + 14 * 90) / 3600)
    assert hours["seratio fp32"]["startup_hours"] == pytest.approx(14 * 90 / 3600)
    # 4 at once: the paper study's phases of 4, 3, 3 and 4 runs are 4 waves, each counted as 4 runs
    assert hours["seratio fp32 concurrent"]["hours"] == pytest.approx(
        (16 * 200 * (50_000 / 6000 + 10_000 / 80_000) + 4 * 100) / 3600)
    assert [bench.paper_waves(k) for k in (1, 2, 3, 4, 5)] == [14, 8, 6, 4, 4]
    assert hours["plain fp32"] == {"hours": pytest.approx(14 * 200 * (50_000 / 500 + 10_000 / 2000) / 3600),
                                   "startup_hours": 0.0}
    result = {
        "environment": {"device": "cuda: test", "torch": "2", "threads": 1, "interop_threads": 1, "allocator": "glibc",
                        "amx": False, "fp32_peak_math": "tf32", "mps": True, "load_average_start": 0.0, "load_average_end": 0.0},
        "repeats": 2, "rounds": 2, "stopped": None, "gflop_per_training_image": 0.5, "peak_gflops": {"fp32": 100_000.0},
        "rows": [vars(r) for r in rows], "concurrent_trials": 4, "projection_hours": hours, "fast_recipe_minutes": None,
    }
    table = bench.format_table(result)
    assert "seratio train                           32  fp32   8,000.0   16.00x" in table
    assert "NCHW, Adam, compiled, CUDA graph" in table and "seratio train, 4 trials at once" in table
    assert "| median of 2 interleaved rounds after warm-up\n" in table
    assert "| allocator glibc | AMX no | MPS yes | load avg 0.00 -> 0.00\n" in table
    assert f"  seratio fp32{hours['seratio fp32']['hours']:>32.1f} h, of which starting the runs 0.35 h" in table


def test_a_row_whose_compile_fails_says_so_and_times_the_uncompiled_step_as_the_tool_would_run_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its "how" would otherwise name a compile that did not happen."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import torch
    import train_throughput as bench
    from seratio import compiled_forward

    def broken(model: Any, **kwargs: Any) -> Any:
        def fail(images: Any) -> Any:
            raise RuntimeError("no compiler")

        return fail

    monkeypatch.setattr(bench, "DEPTH", 8)
    monkeypatch.setattr(compiled_forward.torch, "compile", broken)
    session = bench.seratio_session(32, "fp32", 2, 0, torch.device("cpu"))
    timer = bench.session_timer("train", 32, "fp32", 64, session, bench.train_epoch_run(session))
    assert timer.setup == "NHWC, Adam, compiled"
    timer.warm()
    assert timer.setup == "NHWC, Adam, compiled, compile failed: RuntimeError: no compiler"
    assert timer.once() > 0 and session.compiled.calls == 1  # trained on, uncompiled


def test_the_cuda_equivalence_check_builds_its_eager_sessions_and_knows_which_full_runs_compile(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its graphed sessions need a GPU; everything around them runs here: the eager, uncompiled
    session over the check's 8 batches with a full run's BN momentum, whose loss must fall, and the
    choice of which cases compile (the paper's batch-32 run does on CUDA, `fast` does not)."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import cuda_equivalence as check
    import torch

    monkeypatch.setattr(check, "DEPTH", 8)
    momenta: list[set[float]] = []

    def recorded(session: Any) -> None:
        set_momentum(session)
        momenta.append({m.momentum for m in session.model.modules() if isinstance(m, torch.nn.BatchNorm2d)})

    set_momentum = check.set_full_run_bn_momentum
    monkeypatch.setattr(check, "set_full_run_bn_momentum", recorded)
    losses = check.trajectory("paper", "fp32", False, 2, torch.device("cpu"))
    assert momenta == [{0.01}]  # Keras's 0.99 over a full epoch's 1,563 steps, not 8 batches'
    assert len(losses) == 2 * check.BATCHES and all(0 < loss < 10 for loss in losses)
    assert sum(losses[check.BATCHES:]) < sum(losses[:check.BATCHES])
    perturbed = check.trajectory("paper", "fp32", False, 2, torch.device("cpu"), perturb=check.ROUNDING["fp32"])
    assert 0 < check.largest_gap(perturbed[:1], losses[:1]) < 1e-3  # one TF32 rounding moves the first loss a little
    model = torch.nn.Linear(64, 64)
    before = model.weight.detach().clone()
    check.perturb_weights(model, 2.0 ** -8)
    ratio = model.weight.detach() / before
    assert torch.allclose((ratio - 1).abs(), torch.full_like(ratio, 2.0 ** -8), rtol=1e-3)
    assert 0.4 < (ratio > 1).float().mean() < 0.6  # both signs, from a fixed seed
    again = torch.nn.Linear(64, 64)
    with torch.no_grad():
        again.weight.copy_(before)
    check.perturb_weights(again, 2.0 ** -8)
    assert torch.equal(again.weight, model.weight)
    cuda = torch.device("cuda")
    assert check.full_run_compiles(cuda, "paper") and not check.full_run_compiles(cuda, "fast")


def test_the_equivalence_yardstick_moves_only_what_each_session_changes(monkeypatch: pytest.MonkeyPatch) -> None:
    """The calibration behind the check's verdict, at depth 8 and without its compiled session: a
    second eager session on a CPU repeats the first exactly, a learning rate acts only from the first
    update on, and moved weights change the very first loss."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import cuda_equivalence as check
    import equivalence_yardstick as yardstick
    import torch

    monkeypatch.setattr(check, "DEPTH", 8)
    monkeypatch.setattr(yardstick, "VARIANTS", yardstick.VARIANTS[:-1])
    monkeypatch.setattr(yardstick, "EPOCHS", 2)
    result = yardstick.measure(torch.device("cpu"), "fp32")
    rows = {row["session"]: row for row in result["rows"]}
    assert list(rows) == ["eager again", "weights moved by 1 fp32 ulp", "weights moved by 1 rounding",
                          "learning rate x1.02", "learning rate x1.1"]
    assert rows["eager again"]["per_step"] == 0.0 and rows["eager again"]["epoch_means"] == 0.0
    assert rows["learning rate x1.1"]["step_1"] == 0.0 < rows["learning rate x1.1"]["per_step"]
    assert 0.0 < rows["weights moved by 1 fp32 ulp"]["step_1"] < rows["weights moved by 1 rounding"]["step_1"] < 1e-3
    assert result["rounding"] == 2.0 ** -11 and len(result["eager_losses"]) == 16 == result["steps"]
    assert "learning rate x1.02" in yardstick.format_table(result)


def test_a_row_s_startup_is_its_warm_up_less_a_timed_repeat(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a run pays once (compiling, capturing) must not vanish from the study's projection."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_throughput as bench

    timer = bench.Timer("train", "seratio", 32, "fp32", 6400, "NHWC, Adam", "glibc", lambda: None, lambda: 1.0,
                        seconds=[1.0, 1.2, 0.8], warm_seconds=61.0)
    assert timer.row().startup_seconds == pytest.approx(60.0)
    timer.warm_seconds = 0.5  # a warm-up faster than the repeats is no negative start-up
    assert timer.row().startup_seconds == 0.0


def test_rounds_stop_where_the_next_would_end_past_the_budget_and_a_stop_keeps_the_rounds_before_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A lent GPU's benchmark killed at its limit printed nothing; now it prints the rounds it has.
    Time is a fake clock that each timed repeat moves on by one second."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import train_throughput as bench

    clock = [0.0]

    def repeat(stop_at: int | None = None) -> Any:
        calls = [0]

        def once() -> float:
            calls[0] += 1
            if calls[0] == stop_at:
                raise KeyboardInterrupt
            clock[0] += 1.0
            return 1.0

        return once

    def timers(stop_at: int | None = None) -> list[Any]:
        return [bench.Timer("train", impl, 32, "fp32", 64, "", "glibc", lambda: None, once)
                for impl, once in (("plain", repeat()), ("seratio", repeat(stop_at)))]

    monkeypatch.setattr(bench, "time", types.SimpleNamespace(monotonic=lambda: clock[0]))
    logged: list[str] = []
    budgeted = timers()
    assert bench.time_rounds(budgeted, 5, 5.0, logged.append) == "the time budget ended them"
    assert [t.seconds for t in budgeted] == [[1.0, 1.0], [1.0, 1.0]]  # a third round would end at 6 s
    assert "the time budget ends before round 3 would; the table has 2 rounds" in logged
    assert bench.time_rounds(unlimited := timers(), 3, 1e9, logged.append) is None
    assert all(len(t.seconds) == 3 for t in unlimited)
    stopped = timers(stop_at=3)
    assert bench.time_rounds(stopped, 5, 1e9, logged.append) == "interrupted in round 3"
    assert [t.seconds for t in stopped] == [[1.0, 1.0], [1.0, 1.0]]  # round 3's plain repeat is dropped too
    with pytest.raises(KeyboardInterrupt):  # no complete round: nothing to print
        bench.time_rounds(timers(stop_at=1), 5, 1e9, logged.append)
    cut = {"rounds": 1, "repeats": 5, "stopped": "the time budget ended them"}
    assert bench._rounds_text(cut) == "median of 1 interleaved round after warm-up (5 asked; the time budget ended them)"


def test_the_equivalence_check_keeps_the_cases_finished_before_a_stop_and_takes_only_known_cases(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a lent GPU its call ran out of time during two cold compiles and reported nothing."""
    monkeypatch.syspath_prepend(str(REPO / "benchmarks"))
    import argparse

    import cuda_equivalence as check

    def case(recipe: str, precision: str, epochs: int, device: Any) -> tuple[str, dict[str, Any]]:
        if precision == "fp32":
            raise KeyboardInterrupt
        row = {"batch": 32, "compiled": True, "graphed_vs_eager": 0.01, "eager_vs_eager": 0.02,
               "perturbed_vs_eager": 0.015, "first_step_gap": 0.001, "epoch_mean_gap": 0.004, "allowed_epoch_gap": 0.005,
               "first_epoch_loss": 2.3, "last_epoch_loss": 1.9, "ok": True}
        return f"{recipe} {precision} compiled", row

    monkeypatch.setattr(check, "_case", case)
    monkeypatch.setattr(check.torch.cuda, "get_device_name", lambda device: "test GPU")
    logged: list[str] = []
    result = check.measure("cuda", 4, check.CASES, logged.append)
    assert list(result["cases"]) == ["paper bf16 compiled"] and result["stopped"] == "interrupted during paper fp32"
    assert logged[0] == ("paper bf16 compiled        32  1.00e-02  2.00e-02  1.50e-02 1.00e-03  4.00e-03  5.00e-03"
                         "        2.3000     1.9000  same")
    assert check.epoch_means([1.0] * 8 + [3.0] * 4 + [5.0] * 4) == [1.0, 4.0]
    row = result["cases"]["paper bf16 compiled"]
    assert check.same_update(row)
    assert not check.same_update(row | {"epoch_mean_gap": 0.006})  # an update 2% off moved epoch means 3x rounding's
    assert not check.same_update(row | {"last_epoch_loss": 2.3})  # a replay that did nothing: the loss stays
    assert "interrupted during paper fp32: the cases after it were not checked." in check.format_table(result)
    with pytest.raises(KeyboardInterrupt):  # nothing finished: nothing to print
        check.measure("cuda", 4, (("paper", "fp32"),), logged.append)
    assert check.case_list("fast-bf16, paper-bf16") == (("fast", "bf16"), ("paper", "bf16"))
    with pytest.raises(argparse.ArgumentTypeError, match="'paper-fp16' is not a case; the cases are paper-bf16, "):
        check.case_list("paper-fp16")
