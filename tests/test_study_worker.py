"""Worker guarantees in one process, with a fake trainer: exactly-once, stale retry, reruns, refusals."""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path

import pytest
from optuna.trial import TrialState

from seratio import strategies
from seratio.errors import SeratioError
from seratio.heartbeat import StaleWatch
from seratio.ledger import Ledger, TrialView
from seratio.store import StudyStore
from seratio.study import DEFINITION_ATTR, create_or_join, run_name
from study_fakes import TINY, FakeTrainer, create, work


def _url(tmp_path: Path) -> str:
    return f"journal:{tmp_path / 'study.log'}"


def _interrupted(config, out_dir, **hooks):  # type: ignore[no-untyped-def]
    """A trainer stopped by Ctrl-C before its first epoch."""
    raise KeyboardInterrupt


def _unit_attrs(tmp_path: Path, rr: tuple, seed: int = 0) -> tuple[dict, dict]:
    run_dir = (tmp_path / "runs" / run_name(rr, seed)).resolve()
    params = {f"r{i + 1}": r for i, r in enumerate(rr)}
    return params, {"rr": list(rr), "seed": seed, "phase": "constant", "run_dir": str(run_dir)}


def test_a_run_enqueued_twice_by_racing_workers_is_trained_once(tmp_path: Path) -> None:
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,), baseline=(2, 2, 2))
    for _ in range(3):  # what three workers planning at the same instant would do
        store.enqueue(*_unit_attrs(tmp_path, (2, 2, 2)))
    trainer = FakeTrainer()
    work(_url(tmp_path), "s", trainer)
    assert trainer.calls == [((2, 2, 2), 0)]
    views = Ledger(store.trials()).views
    assert [v.state for v in views] == [TrialState.COMPLETE, TrialState.FAIL, TrialState.FAIL]
    assert [v.duplicate_of for v in views] == [None, 0, 0]


def test_a_trial_whose_worker_died_is_failed_as_stale_and_resumed(tmp_path: Path) -> None:
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,), baseline=(2, 2, 2))
    store.enqueue(*_unit_attrs(tmp_path, (2, 2, 2)))
    dead = store.trials()[0]
    assert store.claim(dead._trial_id)  # claimed by a worker that then vanished: no heartbeat ever
    trainer = FakeTrainer()
    work(_url(tmp_path), "s", trainer, stale_after=1.0)
    views = Ledger(store.trials()).views
    assert views[0].state == TrialState.FAIL and views[0].fail_kind == "stale"
    assert "no heartbeat" in views[0].attrs["fail_reason"]
    assert views[1].state == TrialState.COMPLETE and views[1].attrs["run_dir"] == views[0].attrs["run_dir"]
    assert trainer.calls == [((2, 2, 2), 0)]


def test_a_study_rerun_after_completion_trains_nothing(tmp_path: Path) -> None:
    create(_url(tmp_path), "s", "greedy", tmp_path / "runs", candidates=(2, 4))
    work(_url(tmp_path), "s", FakeTrainer())
    store, _ = create(_url(tmp_path), "s", "greedy", tmp_path / "runs", candidates=(2, 4))
    before = len(store.trials())
    again = FakeTrainer()
    work(_url(tmp_path), "s", again)
    assert again.calls == [] and len(store.trials()) == before


def test_joining_with_a_different_definition_is_refused_naming_the_keys(tmp_path: Path) -> None:
    create(_url(tmp_path), "s", "greedy", tmp_path / "runs", candidates=(2, 4))
    with pytest.raises(SeratioError, match=r"different definition.*candidates.*epochs"):
        create(_url(tmp_path), "s", "greedy", tmp_path / "runs", candidates=(2, 8), run=dataclasses.replace(TINY, epochs=2))


def test_a_different_code_version_warns_but_joins(tmp_path: Path) -> None:
    store, definition = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,))
    store.set_user_attr(DEFINITION_ATTR, {**definition, "code_version": "0.0.1+gold"})
    _, warnings = create_or_join(store, definition, None)
    assert warnings and "0.0.1+gold" in warnings[0]


def test_joining_with_another_artifacts_folder_warns_that_the_runs_split(tmp_path: Path) -> None:
    store, definition = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,))
    assert create_or_join(store, definition, tmp_path / "runs") == ((tmp_path / "runs").resolve(), [])
    root, warnings = create_or_join(store, definition, tmp_path / "other")
    assert root == (tmp_path / "other").resolve()
    assert warnings == [f"the study keeps its runs in {(tmp_path / 'runs').resolve()}; this worker trains under {root} "
                        "(--artifacts), which is right only where that is the same folder mounted elsewhere: "
                        "reports read the runs where the study keeps them"]


def test_an_error_blocks_the_worker_and_a_rerun_resumes_the_run(tmp_path: Path) -> None:
    full = FakeTrainer()

    def disk_full(config, out_dir, **hooks):  # type: ignore[no-untyped-def]
        if config.rr == (4, 4, 4):
            raise SeratioError(f"no space left on device while writing {out_dir}/checkpoint.pt")
        return full(config, out_dir, **hooks)

    store, definition = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2, 4))
    with pytest.raises(SeratioError, match="cannot finish.*no space left"):
        work(_url(tmp_path), "s", disk_full)  # type: ignore[arg-type]
    failed = [v for v in Ledger(store.trials()).views if v.state == TrialState.FAIL]
    assert len(failed) == 1 and "no space left" in failed[0].attrs["fail_reason"]
    healthy = FakeTrainer()
    work(_url(tmp_path), "s", healthy)  # space freed: a fresh worker retries the failed run
    assert healthy.calls == [((4, 4, 4), 0)]
    assert strategies.plan(definition, Ledger(store.trials())).done


def test_ctrl_c_fails_the_trial_as_interrupted_and_the_next_worker_resumes_it(tmp_path: Path) -> None:
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,), baseline=(2, 2, 2))
    with pytest.raises(KeyboardInterrupt):
        work(_url(tmp_path), "s", _interrupted)  # type: ignore[arg-type]
    assert Ledger(store.trials()).views[0].fail_kind == "interrupted"
    trainer = FakeTrainer()
    work(_url(tmp_path), "s", trainer)
    assert trainer.calls == [((2, 2, 2), 0)]


def test_a_new_store_over_finished_runs_reads_them_back_and_says_so(tmp_path: Path) -> None:
    """What the message for a damaged SQLite file advises: a new store, the same run folder."""
    create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2, 4))
    work(_url(tmp_path), "s", FakeTrainer())
    fresh = f"journal:{tmp_path / 'fresh.log'}"
    create(fresh, "s", "constant", tmp_path / "runs", candidates=(2, 4))
    trainer = FakeTrainer()
    said: list[str] = []
    summary = work(fresh, "s", trainer, log=said.append).summary
    assert trainer.calls == []
    assert (summary.trained, summary.read_back) == (0, 3)
    assert not [line for line in said if "training in" in line]  # it trained nothing, and says so
    assert len([line for line in said if ": reading back the finished run in " in line]) == 3


def test_an_interrupted_run_is_taken_up_again_before_fresh_ones(tmp_path: Path) -> None:
    """It resumes from its checkpoint, so it finishes soonest; behind the fresh runs, a study whose
    workers are pre-empted again and again started every run and finished none."""
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2, 4, 8))
    with pytest.raises(KeyboardInterrupt):
        work(_url(tmp_path), "s", _interrupted)  # type: ignore[arg-type]
    (failed,) = [v for v in Ledger(store.trials()).views if v.state == TrialState.FAIL]
    trainer = FakeTrainer()
    work(_url(tmp_path), "s", trainer)
    assert trainer.calls[0] == (failed.rr, failed.seed)
    assert len(trainer.calls) == 4


def test_a_worker_trains_every_run_under_its_own_artifacts_root_whoever_planned_it(tmp_path: Path) -> None:
    """`study worker --artifacts DIR` says where the shared run folder is mounted on this machine: a
    run that a worker elsewhere enqueued must land there too, not at the path the planner had."""
    create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2, 4))
    with pytest.raises(KeyboardInterrupt):
        work(_url(tmp_path), "s", _interrupted)  # type: ignore[arg-type]  # plans all three runs, trains none
    mounted = tmp_path / "mounted-elsewhere"
    trainer = FakeTrainer()
    work(_url(tmp_path), "s", trainer, artifacts=mounted)
    assert len(trainer.calls) == 3
    expected = sorted(run_name(rr, 0) for rr in ((2, 2, 2), (4, 4, 4), (None, None, None)))
    assert sorted(path.parent.name for path in mounted.glob("*/result.json")) == expected
    assert not list((tmp_path / "runs").glob("*/result.json"))


def test_every_complete_trial_carries_the_contract_attributes(tmp_path: Path) -> None:
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,))
    work(_url(tmp_path), "s", FakeTrainer())
    for trial in store.trials():
        attrs = trial.user_attrs
        assert {"rr", "seed", "phase", "run_dir", "test_accuracy", "test_loss", "val_accuracy", "val_loss",
                "best_test_accuracy", "best_epoch", "params", "macs", "seconds", "epochs", "code_version",
                "recipe_hash", "tta_test_accuracy", "tta_val_accuracy"} <= set(attrs)
        assert attrs["tta_test_accuracy"] is None  # the paper recipe evaluates one view
        assert Path(attrs["run_dir"]).is_absolute() and trial.value == attrs["val_accuracy"]


def _running(heartbeat: float) -> list:  # type: ignore[type-arg]
    from optuna.trial import create_trial

    trial = create_trial(state=TrialState.RUNNING, system_attrs={"seratio_heartbeat": heartbeat})
    return [dataclasses.replace(TrialView.of(trial), trial_id=7)]


def test_stale_means_an_unchanged_heartbeat_seen_for_the_whole_grace_period() -> None:
    now = [0.0]
    watch = StaleWatch(after=5.0, clock=lambda: now[0])
    for t, beat, stale in [(0, 1.0, False), (2, 2.0, False), (4, 2.0, False), (6, 2.0, False), (7.5, 2.0, True)]:
        now[0] = t
        assert bool(watch.stale(_running(beat), own=set())) == stale, t
    assert watch.stale(_running(2.0), own={7}) == []  # a worker never declares its own trial stale


def test_a_watcher_that_could_not_look_starts_afresh_instead_of_blaming_the_worker() -> None:
    now = [0.0]
    watch = StaleWatch(after=5.0, clock=lambda: now[0])
    watch.stale(_running(1.0), own=set())
    now[0] = 60.0  # the storage was down (or this worker was training) for a minute
    assert watch.stale(_running(1.0), own=set()) == []
    for t in (62.0, 64.0):
        now[0] = t
        assert watch.stale(_running(1.0), own=set()) == []
    now[0] = 65.5
    assert watch.stale(_running(1.0), own=set())


def test_a_worker_whose_trial_was_declared_stale_stops_training_it(tmp_path: Path) -> None:
    """A slow but living worker must not keep writing a run directory its trial's retry now owns."""
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,), baseline=(2, 2, 2))
    epochs_seen: list[int] = []
    finish = FakeTrainer()

    def trainer(config, out_dir, *, on_epoch, **hooks):  # type: ignore[no-untyped-def]
        if epochs_seen:  # the retry
            return finish(config, out_dir, on_epoch=on_epoch, **hooks)
        running = [t for t in store.trials() if t.state == TrialState.RUNNING][0]
        store.finish(running._trial_id, TrialState.FAIL)  # what a peer does to a trial it thinks is dead
        for epoch in (1, 2, 3):
            time.sleep(0.5)  # heartbeats run meanwhile and find the trial gone
            epochs_seen.append(epoch)
            on_epoch({"epoch": epoch, "val_accuracy": 0.5, "test_accuracy": 0.5})
        raise AssertionError("training went on after the trial was taken over")

    work(_url(tmp_path), "s", trainer)  # type: ignore[arg-type]
    assert epochs_seen == [1]
    assert [t.state for t in store.trials()] == [TrialState.FAIL, TrialState.COMPLETE]


def test_a_resumed_halving_trial_reports_its_earlier_epochs_to_the_pruner(tmp_path: Path) -> None:
    """The epochs a dead predecessor trained reach the new trial's history, as if it had trained them."""
    run = dataclasses.replace(TINY, epochs=6)
    store, _ = create(_url(tmp_path), "h", "halving", tmp_path / "runs", run=run, candidates=(2,), halving_min_epochs=1)
    run_dir = tmp_path / "runs" / run_name((2, 2, 2), 0)
    run_dir.mkdir(parents=True)
    earlier = [{"epoch": e, "val_accuracy": 0.1 + e / 100, "test_accuracy": 0.0} for e in (1, 2, 3)]
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in earlier))
    finish = FakeTrainer(epochs=6)
    trained: dict[int, float] = {}

    def resuming(config, out_dir, *, on_epoch, **hooks):  # type: ignore[no-untyped-def]
        """What train_run does from a checkpoint at epoch 2: epoch 3 again (metrics held it already), then 4-6."""
        def resumed(row: dict) -> None:
            if row["epoch"] >= 3:
                if config.rr == (2, 2, 2):  # the plain baseline trains too, never reported to the pruner
                    trained[row["epoch"]] = row["val_accuracy"]
                on_epoch(row)
        return finish(config, out_dir, on_epoch=resumed, **hooks)

    work(_url(tmp_path), "h", resuming)  # type: ignore[arg-type]
    (trial,) = [t for t in store.trials() if t.user_attrs["rr"] == [2, 2, 2]]
    assert trial.state == TrialState.COMPLETE and sorted(trial.intermediate_values) == [1, 2, 3, 4, 5, 6]
    assert [trial.intermediate_values[e] for e in (1, 2)] == pytest.approx([0.11, 0.12])  # replayed
    assert {e: trial.intermediate_values[e] for e in trained} == trained  # trained again: the new value


def test_a_worker_whose_first_read_predates_the_others_work_does_not_call_the_study_blocked(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its first snapshot is empty, but by its enqueue checks the others have enqueued (here: finished)
    every run. Judging 'blocked' on that snapshot made the third of three PostgreSQL workers quit in CI."""
    store, _ = create(_url(tmp_path), "s", "constant", tmp_path / "runs", candidates=(2,))
    work(_url(tmp_path), "s", FakeTrainer())
    real_trials, reads = StudyStore.trials, []

    def first_read_empty(self: StudyStore) -> list:  # type: ignore[type-arg]
        reads.append(None)
        return [] if len(reads) == 1 else real_trials(self)

    monkeypatch.setattr(StudyStore, "trials", first_read_empty)
    late = FakeTrainer()
    work(_url(tmp_path), "s", late)
    assert late.calls == [] and len(reads) > 2
    assert sum(t.state == TrialState.COMPLETE for t in store.trials()) == 2
