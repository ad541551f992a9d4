"""Each strategy visits the configurations it should, with a fake trainer (no real training)."""

from __future__ import annotations

import collections
import dataclasses
import itertools
import json
from pathlib import Path
from typing import Any

import optuna
import pytest
from optuna.trial import TrialState

from seratio import strategies
from seratio.cli import main
from seratio.config import RunConfig
from seratio.errors import SeratioError
from seratio.ledger import Ledger
from seratio.overview import progress, trial_row
from seratio.records import load_study
from seratio.report.content import build_content
from seratio.store import Patience
from seratio.study import pruner, run_name
from study_fakes import TABLE3, TINY, FakeTrainer, _result, create, smooth_accuracy, table3_accuracy, work


def _study(tmp_path: Path, strategy: str, trainer: FakeTrainer, **request: object) -> tuple[Ledger, strategies.Plan]:
    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", strategy, tmp_path / "runs", **request)
    work(url, "s", trainer)
    ledger = Ledger(store.trials())
    return ledger, strategies.plan(definition, ledger)


def _complete(ledger: Ledger) -> set[tuple]:
    return {v.rr for v in ledger.views if v.state == TrialState.COMPLETE}


def test_paper_preset_on_table3_visits_its_13_configurations_and_picks_8_2_16(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    trainer = FakeTrainer(table3_accuracy)
    ledger, plan = _study(tmp_path, "paper", trainer)
    assert _complete(ledger) == set(TABLE3)  # 13 SE configurations + the plain ResNet
    assert sorted(trainer.calls, key=str) == sorted(((rr, 0) for rr in TABLE3), key=str)
    assert plan.done and plan.best == (8, 2, 16)
    phases = {v.rr: v.phase for v in ledger.views}
    assert phases[(8, 8, 8)] == "constant" and phases[(8, 2, 16)] == "stage3" and phases[(None,) * 3] == "baseline"
    # the throughput benchmark projects concurrent trials from these phase sizes (the baseline
    # takes the first slot that the constants free)
    monkeypatch.syspath_prepend(str(Path(__file__).parents[1] / "benchmarks"))
    from train_throughput import PAPER_PHASE_RUNS

    runs = collections.Counter(phases.values())
    assert (runs["constant"], runs["stage1"] + runs["baseline"], runs["stage2"], runs["stage3"]) == PAPER_PHASE_RUNS


def test_constant_drops_ratios_whose_se_width_would_be_zero(tmp_path: Path) -> None:
    ledger, plan = _study(tmp_path, "constant", FakeTrainer())
    assert _complete(ledger) == {(r, r, r) for r in (2, 4, 8, 16)} | {(None, None, None)}
    assert plan.done


def test_grid_trains_every_combination(tmp_path: Path) -> None:
    ledger, plan = _study(tmp_path, "grid", FakeTrainer(), candidates=(2, 4), baseline=(8, 8, 8))
    assert _complete(ledger) == set(itertools.product((2, 4), repeat=3)) | {(8, 8, 8)}
    assert plan.best == (4, 2, 4)  # smooth_accuracy's optimum (4, 2, 16) restricted to {2, 4}


def test_greedy_fixes_each_stage_in_turn_and_reuses_measured_configurations(tmp_path: Path) -> None:
    trainer = FakeTrainer(smooth_accuracy)
    ledger, plan = _study(tmp_path, "greedy", trainer)
    constant = {(r, r, r) for r in (2, 4, 8, 16)}  # 32 would leave stage 1 (16 channels) no SE unit
    stage1 = {(r, 4, 4) for r in (2, 4, 8, 16)}
    stage2 = {(4, r, 4) for r in (2, 4, 8, 16, 32)}
    stage3 = {(4, 2, r) for r in (2, 4, 8, 16, 32)}
    assert _complete(ledger) == constant | stage1 | stage2 | stage3 | {(None, None, None)}
    assert len(trainer.calls) == len(set(trainer.calls)) == 16
    assert plan.best == (4, 2, 16)


def test_seeds_replicate_every_configuration_and_decisions_use_the_mean(tmp_path: Path) -> None:
    def accuracy(rr: tuple, seed: int) -> float:
        # seed 0 alone would pick (2, 2, 2); the mean over seeds picks (4, 4, 4)
        table = {(2, 2, 2): (0.95, 0.80), (4, 4, 4): (0.90, 0.90)}
        return table.get(rr, (0.5, 0.5))[seed]

    trainer = FakeTrainer(accuracy)
    ledger, plan = _study(tmp_path, "greedy", trainer, candidates=(2, 4), seeds=2)
    assert (2, 4, 4) in _complete(ledger) and (4, 2, 2) not in _complete(ledger)
    assert {seed for _, seed in trainer.calls} == {0, 1}
    assert sorted(trainer.calls, key=str) == sorted({(rr, s) for rr in _complete(ledger) for s in (0, 1)}, key=str)


def test_tpe_draws_n_trials_and_never_retrains_a_configuration(tmp_path: Path) -> None:
    trainer = FakeTrainer()
    ledger, plan = _study(tmp_path, "tpe", trainer, n_trials=12, seeds=2)
    draws = [v for v in ledger.views if v.slot is not None and v.rr is not None]
    assert len({v.slot for v in draws}) == 12
    stage_lists = ([2, 4, 8, 16], [2, 4, 8, 16, 32], [2, 4, 8, 16, 32])
    assert all(r in allowed for v in draws for r, allowed in zip(v.rr, stage_lists))
    assert len(trainer.calls) == len(set(trainer.calls))
    assert set(trainer.calls) == {(v.rr, s) for v in draws for s in (0, 1)} | {((None, None, None), s) for s in (0, 1)}
    reused = [v for v in ledger.views if v.reused_from is not None]
    assert all(v.state == TrialState.COMPLETE and v.value is not None for v in reused)
    assert plan.done


def test_halving_starts_every_configuration_and_prunes_the_weak(tmp_path: Path) -> None:
    trainer = FakeTrainer(epochs=9)
    run = dataclasses.replace(TINY, epochs=9)
    ledger, plan = _study(tmp_path, "halving", trainer, candidates=(2, 4, 8), halving_min_epochs=1, run=run)
    started = {rr for rr, _ in trainer.calls}
    assert started == set(itertools.product((2, 4, 8), repeat=3)) | {(None, None, None)}
    states = {v.state for v in ledger.views}
    assert TrialState.PRUNED in states
    assert plan.done and plan.best is not None


def test_diverged_run_fails_with_its_reason_and_the_search_goes_on(tmp_path: Path) -> None:
    from seratio.train import TrainingDiverged

    base = FakeTrainer()

    def trainer(config, out_dir, **hooks):  # type: ignore[no-untyped-def]
        if config.rr == (2, 2, 2):
            base.calls.append((config.rr, config.seed))
            raise TrainingDiverged("training diverged: train loss is nan in epoch 1")
        return base(config, out_dir, **hooks)

    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "greedy", tmp_path / "runs", candidates=(2, 4))
    work(url, "s", trainer)  # type: ignore[arg-type]
    ledger = Ledger(store.trials())
    failed = [v for v in ledger.views if v.state == TrialState.FAIL]
    assert [v.rr for v in failed] == [(2, 2, 2)]
    assert "diverged" in failed[0].attrs["fail_reason"]
    assert base.calls.count(((2, 2, 2), 0)) == 1  # a divergence is final: never retried
    assert strategies.plan(definition, ledger).done


@pytest.mark.parametrize("strategy", ["constant", "greedy"])
def test_phase_labels_are_the_contract_names(tmp_path: Path, strategy: str) -> None:
    ledger, _ = _study(tmp_path, strategy, FakeTrainer(), candidates=(2, 4))
    allowed = {"baseline", "constant", "stage1", "stage2", "stage3"}
    assert {v.phase for v in ledger.views} <= allowed


def test_a_baseline_that_is_also_a_candidate_competes_in_its_phase(tmp_path: Path) -> None:
    """`--baseline 8,8,8`: the search, status and report must all see (8, 8, 8) as a constant."""
    def accuracy(rr: tuple, seed: int) -> float:
        return {(8, 8, 8): 0.95, (2, 2, 2): 0.90, (4, 4, 4): 0.91}.get(rr, 0.5)

    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "greedy", tmp_path / "runs", candidates=(2, 4, 8), baseline=(8, 8, 8))
    work(url, "s", FakeTrainer(accuracy))
    ledger = Ledger(store.trials())
    assert strategies.plan(definition, ledger).best == (8, 8, 8)
    assert {v.rr: v.phase for v in ledger.views}[(8, 8, 8)] == "constant"
    assert progress(definition, store.trials()).best == (8, 8, 8)
    content = build_content(load_study("s", url, Patience(seconds=30)))
    roles = {role: h.config.rr for h in content.highlights for role in h.roles}
    assert roles == {"baseline": (8, 8, 8), "best constant": (8, 8, 8), "best found": (8, 8, 8)}


def test_status_names_the_searchs_pick_when_configurations_tie(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "greedy", tmp_path / "runs", candidates=(2, 4, 8))
    work(url, "s", FakeTrainer(lambda rr, seed: 0.5))
    assert strategies.plan(definition, Ledger(store.trials())).best == (2, 2, 2)
    assert progress(definition, store.trials()).best == (2, 2, 2)  # it used to be any of the tied ones


def test_halving_never_prunes_a_finished_run_nor_lets_the_baseline_compete(tmp_path: Path) -> None:
    """Cuts at epochs 1, 3 and 9 of 9: a run that reaches epoch 9 has a result, which is kept; the
    plain baseline trains to the end unreported, so it neither sets the bar nor is cut."""
    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "halving", tmp_path / "runs", candidates=(2, 4, 8), halving_min_epochs=1,
                               run=dataclasses.replace(TINY, epochs=9))
    work(url, "s", FakeTrainer(smooth_accuracy, epochs=9))
    trials = store.trials()
    pruned = [t for t in trials if t.state == TrialState.PRUNED]
    assert pruned and all(max(t.intermediate_values) < 9 for t in pruned)
    for trial in pruned:  # the export says where each was cut, and at what accuracy
        row = trial_row(trial)
        assert row["value"] is None and row["last_reported_epoch"] in (1, 3)
        assert row["last_reported_value"] == trial.intermediate_values[row["last_reported_epoch"]]
    (baseline,) = [t for t in trials if t.user_attrs["rr"] == [None, None, None]]
    assert baseline.state == TrialState.COMPLETE and baseline.intermediate_values == {}
    assert strategies.plan(definition, Ledger(trials)).done


def test_halving_lets_a_baseline_in_its_grid_train_past_a_cut_but_not_win(tmp_path: Path) -> None:
    """(4, 4, 4) is the baseline and a candidate, worst until its last epoch and then best: the
    first cut would stop it. It trains to the end, for the comparisons, but the pick is another."""
    late = (4, 4, 4)
    base = FakeTrainer(lambda rr, seed: 0.95 if rr == late else smooth_accuracy(rr, seed), epochs=9)

    def trainer(config, out_dir, *, on_epoch=None, **hooks):  # type: ignore[no-untyped-def]
        def slow_start(row: dict[str, Any]) -> None:
            early = config.rr == late and row["epoch"] < 9
            on_epoch(row | {"val_accuracy": 0.05, "test_accuracy": 0.05} if early else row)
        return base(config, out_dir, on_epoch=slow_start if on_epoch else None, **hooks)

    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "halving", tmp_path / "runs", candidates=(2, 4), halving_min_epochs=1,
                               baseline=late, run=dataclasses.replace(TINY, epochs=9))
    work(url, "s", trainer)  # type: ignore[arg-type]
    trials = store.trials()
    (baseline,) = [t for t in trials if tuple(t.user_attrs["rr"]) == late]
    assert baseline.state == TrialState.COMPLETE and baseline.value == 0.95
    assert baseline.user_attrs["halving_cut"] == 1 and set(baseline.intermediate_values) == {1}  # reported no more
    assert trial_row(baseline)["halving_cut"] == 1
    plan = strategies.plan(definition, Ledger(trials))
    finished = {tuple(t.user_attrs["rr"]): t.value for t in trials if t.state == TrialState.COMPLETE}
    assert plan.done and plan.best == max((rr for rr in finished if rr != late), key=lambda rr: finished[rr])
    assert progress(definition, trials).best == plan.best
    content = build_content(load_study("s", url, Patience(seconds=30)))
    assert late not in [row.config.rr for _, rows in content.phases for row in rows if row.winner]
    assert [h.config.rr for h in content.highlights if "best found" in h.roles] == [plan.best]
    note = ("SE-ResNet-8 (4, 4, 4), the study's baseline, is in the halving grid: it trained every epoch for the "
            "comparisons, but a cut would have stopped it (at epoch 1), so it could not win.")
    assert note in content.notes
    other = build_content(load_study("s", url, Patience(seconds=30)), (2, 2, 2))  # another baseline in the report
    assert late not in [h.config.rr for h in other.highlights if "best found" in h.roles] and note in other.notes


def test_a_cut_baseline_read_back_by_its_retry_stays_cut_in_the_search_and_the_report(tmp_path: Path) -> None:
    """The cut trial crashes after its run finished; the retry reads the run back without training,
    so it reports nothing. Search and report both read the cut from the failed trial."""
    late = (4, 4, 4)
    base = FakeTrainer(lambda rr, seed: 0.95 if rr == late else smooth_accuracy(rr, seed), epochs=9)
    crashed: list[tuple[int | None, ...]] = []

    def trainer(config, out_dir, *, on_epoch=None, **hooks):  # type: ignore[no-untyped-def]
        def slow_start(row: dict[str, Any]) -> None:
            early = config.rr == late and row["epoch"] < 9
            on_epoch(row | {"val_accuracy": 0.05, "test_accuracy": 0.05} if early else row)
        result = base(config, out_dir, on_epoch=slow_start if on_epoch else None, **hooks)
        if config.rr == late and not crashed:
            crashed.append(config.rr)
            raise RuntimeError("worker lost before COMPLETE")
        return result

    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "halving", tmp_path / "runs", candidates=(2, 4), halving_min_epochs=1,
                               baseline=late, run=dataclasses.replace(TINY, epochs=9))
    with pytest.raises(SeratioError, match="worker lost before COMPLETE"):
        work(url, "s", trainer)  # type: ignore[arg-type]
    work(url, "s", trainer)  # type: ignore[arg-type]  # the study run again: the retry reads the run back
    trials = [t for t in store.trials() if tuple(t.user_attrs["rr"]) == late]
    assert [(t.state, t.user_attrs.get("halving_cut")) for t in trials] == [(TrialState.FAIL, 1), (TrialState.COMPLETE, None)]
    plan = strategies.plan(definition, Ledger(store.trials()))
    content = build_content(load_study("s", url, Patience(seconds=30)))
    assert plan.done and plan.best != late
    assert late not in [row.config.rr for _, rows in content.phases for row in rows if row.winner]
    assert [h.config.rr for h in content.highlights if "best found" in h.roles] == [plan.best]


def test_halving_judges_a_retried_run_once_at_a_cut_not_as_its_failed_trial_and_its_retry() -> None:
    """Run (2,2,2) passes the first cut alone and is interrupted; four other runs reach the cut, and
    its retry replays the same 0.8. Among five runs, the top third of five is the best one (0.9), so
    the retry is cut. Counting the failed trial as well made six values, whose top third (two) let
    0.8 through."""
    optuna_study = optuna.create_study(direction="maximize", pruner=pruner(
        {"strategy": "halving", "halving_min_epochs": 1}
    ))

    def arrive(rr: tuple, accuracy: float) -> tuple[optuna.trial.Trial, bool]:
        trial = optuna_study.ask()
        trial.set_user_attr("rr", list(rr))
        trial.set_user_attr("seed", 0)
        trial.report(accuracy, 1)
        return trial, trial.should_prune()

    first, cut = arrive((2, 2, 2), 0.8)
    assert not cut
    first.set_user_attr("fail_kind", "interrupted")
    optuna_study.tell(first, state=TrialState.FAIL)
    for rr, accuracy in [((4, 2, 2), 0.9), ((8, 2, 2), 0.4), ((2, 4, 2), 0.3), ((2, 8, 2), 0.2)]:
        arrive(rr, accuracy)
    _, cut = arrive((2, 2, 2), 0.8)
    assert cut


def _reuse_then_interrupt(url: str, runs: Path, finished: list[tuple], run: RunConfig) -> None:
    """Finished results of 600 s each for `finished` on disk; a worker reuses them, then its next
    training run is interrupted, so the study holds those runs and one stopped trial."""
    for rr in finished:
        directory = runs / run_name(rr, 0)
        directory.mkdir(parents=True)
        (directory / "result.json").write_text(json.dumps(_result(run, 0.5) | {"seconds": 600.0}))

    def interrupted(rr: tuple, seed: int) -> float:
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        work(url, "s", FakeTrainer(interrupted))


def test_status_counts_the_plan_and_estimates_the_training_left(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two of greedy's four first runs finished (600 s each), the third interrupted: the plan has 2 of
    4 ended, and the whole search trains at most 3 constants + 3 stages x 2 new + the baseline."""
    url = f"journal:{tmp_path / 'study.log'}"
    store, definition = create(url, "s", "greedy", tmp_path / "runs", candidates=(2, 4, 8))
    _reuse_then_interrupt(url, tmp_path / "runs", [(2, 2, 2), (4, 4, 4)], TINY)
    state = progress(definition, store.trials())
    assert (state.planned, state.ended, state.most, state.run_seconds) == (4, 2, 10, (600.0, 600.0))
    assert main(["study", "status", "--name", "s", "--storage", url]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "runs: 2 of the 4 planned so far have ended; the whole search trains at most 10" in out
    assert ("about 20 min of training left for the plan, at most 80 min for the whole search, at 10 min per "
            "finished run (mean of 2); workers") in out
    assert main(["study", "status", "--name", "s", "--storage", url, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)  # the same numbers, for a script that watches the study
    assert (record["phase"], record["done"], record["runs"]) == ("constant", False, {"planned": 4, "ended": 2, "most": 10})
    assert record["seconds_left"] == {"plan": 1200.0, "search": 4800.0, "per_run": 600.0, "if_none_cut": 1200.0,
                                     "from_finished_runs": 2, "halving_mean_epochs": None}
    assert record["counts"]["done"] + record["counts"]["reused"] == 2 and record["best"]["rr"] in ([2, 2, 2], [4, 4, 4])


class _MinuteEpochs(FakeTrainer):
    """Finished runs took a minute per epoch, so the status estimate has real durations to show."""

    def __call__(self, config: RunConfig, out_dir: Path, **kwargs: Any) -> dict[str, Any]:
        return super().__call__(config, out_dir, **kwargs) | {"seconds": 60.0 * self.epochs}


def test_status_under_halving_estimates_from_where_the_ended_runs_stopped(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Halving cuts most runs early, so a run to come costs the mean epochs the ended runs trained
    (cut ones included) at the finished runs' seconds per epoch, not a full run."""
    url = f"journal:{tmp_path / 'study.log'}"
    run = dataclasses.replace(TINY, epochs=9)
    store, definition = create(url, "s", "halving", tmp_path / "runs", candidates=(2, 4), halving_min_epochs=1, run=run)
    trained = []

    def until_six(rr: tuple, seed: int) -> float:
        if len(trained) == 6:
            raise KeyboardInterrupt
        trained.append(rr)
        return smooth_accuracy(rr, seed)

    with pytest.raises(KeyboardInterrupt):
        work(url, "s", _MinuteEpochs(until_six, epochs=9))
    state = progress(definition, store.trials())
    assert state.epoch_seconds == 60.0 and len(state.run_epochs) == 6 and state.ended == 6
    assert min(state.run_epochs) < 9 and max(state.run_epochs) == 9  # some were cut, some trained to the end
    assert main(["study", "status", "--name", "s", "--storage", url]) == 0
    out = " ".join(capsys.readouterr().out.split())
    epochs = sum(state.run_epochs) / 6
    left = (state.planned - 6) * epochs
    assert (f"about {left:.0f} min of training left for the plan, if the runs to come stop where the 6 ended ones "
            f"did ({epochs:.1f} epochs on average, at 60 s an epoch); at most {(state.planned - 6) * 9} min if "
            "halving cuts none; workers") in out
