"""Storage URLs, patience with an unreachable database, and the SQLite one-process rule."""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import optuna
import pytest
import sqlalchemy.exc

from seratio.cli import main
from seratio.commands.signals import sigterm_as_ctrl_c
from seratio.config import RunConfig
from seratio.errors import SeratioError
from seratio.store import Patience, _rdb_url, open_storage, retrying, sqlite_worker_lock
from study_fakes import TINY, FakeTrainer, create, table3_accuracy, work

QUICK = Patience(seconds=2.0, first_wait=0.01, max_wait=0.05)


def _flaky(failures: list[BaseException]):  # type: ignore[no-untyped-def]
    calls = []

    def call() -> str:
        calls.append(1)
        if failures:
            raise failures.pop(0)
        return "ok"

    return call, calls


def test_unreachable_storage_is_retried_with_backoff_until_it_answers() -> None:
    lost = sqlalchemy.exc.OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    call, calls = _flaky([optuna.exceptions.StorageInternalError("commit failed"), lost])
    messages: list[str] = []
    assert retrying(call, QUICK, messages.append) == "ok"
    assert len(calls) == 3 and all("unreachable" in m for m in messages)


def test_errors_that_are_not_about_the_connection_are_not_retried() -> None:
    call, calls = _flaky([ValueError("bad data")])
    with pytest.raises(ValueError):
        retrying(call, QUICK, lambda m: None)
    assert len(calls) == 1


def test_patience_runs_out_with_a_clear_message() -> None:
    def down() -> None:
        raise optuna.exceptions.StorageInternalError("could not connect to server")

    with pytest.raises(SeratioError, match="unreachable for 0s, giving up"):
        retrying(down, Patience(seconds=0.2, first_wait=0.05, max_wait=0.05), lambda m: None)


def test_postgresql_urls_use_the_installed_driver() -> None:
    assert _rdb_url("postgresql://u@h:5432/db").startswith("postgresql+psycopg2://")
    assert _rdb_url("sqlite:///x.db") == "sqlite:///x.db"


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("redis://localhost", "not understood"),
        ("study.db", "not understood"),
        ("journal:", "names no journal file"),
        ("journal:{tmp}/missing.log", "does not exist"),
        ("sqlite:///{tmp}/missing.db", "does not exist"),
    ],
)
def test_bad_or_missing_storage_is_refused(tmp_path: Path, url: str, message: str) -> None:
    with pytest.raises(SeratioError, match=message):
        open_storage(url.format(tmp=tmp_path), create=False, patience=QUICK, log=lambda m: None)


def test_sqlite_with_parallel_workers_is_refused_up_front(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    db = tmp_path / "s.db"
    code = main(["study", "run", "greedy", "--name", "s", "--storage", f"sqlite:///{db}", "--workers", "2"])
    message = capsys.readouterr().err
    assert code == 2 and "journal:" in message and "postgresql://" in message
    assert not db.exists()


def test_a_second_worker_on_one_sqlite_file_is_refused(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    with sqlite_worker_lock(url, create=True, log=print):
        with pytest.raises(SeratioError, match="another seratio worker"):
            with sqlite_worker_lock(url, create=True, log=print):
                pass


def test_a_study_run_on_a_sqlite_file_in_use_is_refused_before_it_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    with sqlite_worker_lock(f"sqlite:///{db}", create=True, log=print):
        code = main(["study", "run", "constant", "--name", "s", "--storage", f"sqlite:///{db}", "--epochs", "1"])
    assert code == 2 and "another seratio worker is already using it" in capsys.readouterr().err
    assert not db.exists()


def test_status_and_export_read_a_finished_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "p", "paper", tmp_path / "runs")
    work(url, "p", FakeTrainer(table3_accuracy))
    assert main(["study", "status", "--name", "p", "--storage", url]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "done" in shown and "rr 8,2,16" in shown and "test accuracy 91.53%" in shown and "selected on the TEST set, as the paper did" in shown
    assert "best: rr 8,2,16" in shown and "best so far" not in shown  # the search has decided
    assert "baseline, the plain ResNet (rr none): test accuracy 90.97%" in shown  # in percent, as the report and the paper give it
    assert f"its test accuracy and tests against the baseline: seratio report --name p --storage {url} --out DIR" in shown
    assert "interval" not in shown  # one seed: the report has no interval to give
    assert "runs: 14 of the 14 planned have ended" in shown and "left" not in shown  # no time estimate once done
    assert main(["study", "status", "--name", "p", "--storage", url, "--json"]) == 0
    record = json.loads(capsys.readouterr().out)
    assert (record["done"], record["best"], record["seconds_left"]) == (True, {"rr": [8, 2, 16], "score": 0.9153}, None)
    assert record["select_on"] == "test" and record["counts"]["done"] == 14
    assert main(["study", "export", "--name", "p", "--storage", url, "--out", str(tmp_path / "t.json")]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert len(rows) == 14 and {r["state"] for r in rows} == {"COMPLETE"}
    assert all(r["started"].endswith("+00:00") and r["finished"] >= r["started"] for r in rows)  # UTC, zone said
    assert main(["study", "export", "--name", "p", "--storage", url, "--out", str(tmp_path / "t.csv")]) == 0
    assert len((tmp_path / "t.csv").read_text().splitlines()) == 15


def test_status_of_a_study_with_seeds_points_to_the_report_s_interval(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "c", "constant", tmp_path / "runs", candidates=(2, 8), seeds=2)
    work(url, "c", FakeTrainer(table3_accuracy))
    assert main(["study", "status", "--name", "c", "--storage", url]) == 0
    shown = " ".join(capsys.readouterr().out.split())
    assert "its test accuracy, a 95% interval over its seeds and tests against the baseline: seratio report" in shown


def test_export_keeps_an_existing_file_unless_forced(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "p", "paper", tmp_path / "runs")
    work(url, "p", FakeTrainer(table3_accuracy))
    out = tmp_path / "result.json"
    out.write_text('{"test_accuracy": 0.9}\n')
    out.chmod(0o604)
    export = ["study", "export", "--name", "p", "--storage", url, "--out", str(out)]
    assert main(export) == 2
    assert "already exists and is a file; pass --force to replace it" in capsys.readouterr().err
    assert json.loads(out.read_text()) == {"test_accuracy": 0.9}
    assert main([*export, "--force"]) == 0
    assert len(json.loads(out.read_text())) == 14
    assert out.stat().st_mode & 0o777 == 0o604  # replaced, not re-permissioned
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left
    link = tmp_path / "latest.json"
    link.symlink_to(out.name)
    out.write_text("[]\n")
    assert main(["study", "export", "--name", "p", "--storage", url, "--out", str(link), "--force"]) == 0
    assert link.is_symlink() and len(json.loads(out.read_text())) == 14  # written through the link, which stays


def test_export_writes_a_damaged_nan_attribute_as_empty_in_strict_json_and_csv(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'study.db'}"
    create(url, "p", "paper", tmp_path / "runs")
    work(url, "p", FakeTrainer(table3_accuracy))
    damaged = {"rr": [8, 8, 8], "seed": 9, "phase": "constant", "test_accuracy": float("nan"), "seconds": float("inf")}
    optuna.load_study(study_name="p", storage=url).add_trial(
        optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs=damaged))
    export = ["study", "export", "--name", "p", "--storage", url, "--out"]
    assert main([*export, str(tmp_path / "t.json")]) == 0
    rows = json.loads((tmp_path / "t.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert (rows[-1]["seed"], rows[-1]["test_accuracy"], rows[-1]["seconds"]) == (9, None, None)
    assert main([*export, str(tmp_path / "t.csv")]) == 0
    assert (tmp_path / "t.csv").read_text().splitlines()[-1].count("nan") == 0


def test_a_journal_cut_off_mid_record_is_repaired_before_anything_appends(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A crash mid-write leaves a record without its newline; appending after it made the journal unreadable."""
    journal = tmp_path / "study.log"
    url = f"journal:{journal}"
    create(url, "p", "paper", tmp_path / "runs")
    work(url, "p", FakeTrainer(table3_accuracy))
    whole = journal.read_bytes()
    cut = b'{"op_code":5,"worker_id":"x","trial_id":3,"us'
    journal.write_bytes(whole + cut)
    assert main(["study", "status", "--name", "p", "--storage", url]) == 0
    assert f"ended in a partial record ({len(cut)} bytes" in " ".join(capsys.readouterr().err.split())
    assert journal.read_bytes() == whole
    [aside] = tmp_path.glob("study.log.partial-*")
    assert aside.read_bytes() == cut
    create(url, "q", "constant", tmp_path / "runs-q", candidates=(2,))  # appends to the repaired journal
    assert main(["study", "status", "--name", "p", "--storage", url]) == 0
    assert "91.53%" in capsys.readouterr().out
    storage = open_storage(url, create=False, patience=Patience(), log=print)
    assert [summary.study_name for summary in optuna.get_all_study_summaries(storage)] == ["p", "q"]


def test_a_file_that_is_not_a_journal_is_refused_and_left_as_it_was(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    notes = tmp_path / "notes.txt"
    notes.write_bytes(b"my notes\nline two, no newline")
    assert main(["study", "status", "--name", "p", "--storage", f"journal:{notes}"]) == 2
    assert "is not an Optuna journal" in capsys.readouterr().err
    assert notes.read_bytes() == b"my notes\nline two, no newline"
    assert list(tmp_path.iterdir()) == [notes]


def test_a_journal_cut_off_in_its_first_record_holds_no_study_and_keeps_the_bytes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    journal = tmp_path / "study.log"
    create(f"journal:{journal}", "p", "paper", tmp_path / "runs")
    cut = journal.read_bytes()[:40]
    journal.write_bytes(cut)
    assert main(["study", "status", "--name", "p", "--storage", f"journal:{journal}"]) == 2
    assert "no study named 'p' in this storage; studies there: none" in capsys.readouterr().err
    assert journal.read_bytes() == b"" and [p.read_bytes() for p in tmp_path.glob("study.log.partial-*")] == [cut]


def test_a_journal_damaged_mid_file_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    journal = tmp_path / "study.log"
    create(f"journal:{journal}", "p", "paper", tmp_path / "runs")
    first, rest = journal.read_bytes().split(b"\n", 1)
    journal.write_bytes(first + b"\n" + first[:30] + rest)  # a cut record glued to the next, as appends once did
    assert main(["study", "status", "--name", "p", "--storage", f"journal:{journal}"]) == 2
    assert "holds a damaged record that Optuna cannot replay" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["status", "worker"])
def test_a_study_definition_edited_by_hand_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str
) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "p", "constant", tmp_path / "runs", candidates=(2,))
    storage = open_storage(url, create=False, patience=Patience(), log=print)
    storage.set_study_user_attr(storage.get_study_id_from_name("p"), "seratio_definition", {"strategy": "constant"})
    assert main(["study", command, "--name", "p", "--storage", url]) == 2
    assert "study 'p' has a damaged seratio definition (missing: seeds, baseline" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("key", "value", "reason"),
    [
        ("seeds", "x", "--seeds 'x' must be an integer from 1 to 1000"),
        ("strategy", 1.5, "unknown strategy 1.5"),
        ("phases", None, "phases None should be {'constant': [2], "),
        ("stage_candidates", [1], "stage_candidates [1] should be [[2], [2], [2]]"),
        ("depth", "8", "depth"),
        ("baseline", 4, "baseline 4 is not a list of three ratios"),
    ],
)
@pytest.mark.parametrize("command", ["status", "worker"])
def test_a_definition_value_of_the_wrong_type_is_refused_in_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, key: str, value: object, reason: str
) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    _, definition = create(url, "p", "greedy", tmp_path / "runs", candidates=(2,))
    storage = open_storage(url, create=False, patience=Patience(), log=print)
    storage.set_study_user_attr(storage.get_study_id_from_name("p"), "seratio_definition", {**definition, key: value})
    assert main(["study", command, "--name", "p", "--storage", url]) == 2
    err = capsys.readouterr().err
    assert err.startswith("seratio: error: study 'p' has an invalid seratio definition (") and reason in err
    assert "Traceback" not in err and not (tmp_path / "runs").exists()


def test_a_study_stored_before_test_subsets_existed_is_still_read_and_worked(tmp_path: Path) -> None:
    """`test_subset` joined the definition later: a definition without it means the whole test set."""
    url = f"journal:{tmp_path / 'study.log'}"
    _, definition = create(url, "p", "constant", tmp_path / "runs", run=replace(TINY, test_subset=None), candidates=(2,))
    older = {key: value for key, value in definition.items() if key != "test_subset"}
    storage = open_storage(url, create=False, patience=Patience(), log=print)
    storage.set_study_user_attr(storage.get_study_id_from_name("p"), "seratio_definition", older)
    assert main(["study", "status", "--name", "p", "--storage", url]) == 0
    configs: list[RunConfig] = []
    def recording(config: RunConfig, out_dir: Path, **kwargs: Any) -> dict[str, Any]:
        configs.append(config)
        return FakeTrainer()(config, out_dir, **kwargs)
    work(url, "p", recording)  # type: ignore[arg-type]
    assert [config.test_subset for config in configs] == [None, None]  # (2, 2, 2) and the no-SE baseline


def test_a_damaged_sqlite_file_fails_at_once_instead_of_being_retried_as_unreachable(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    db = tmp_path / "s.db"
    create(f"sqlite:///{db}", "p", "paper", tmp_path / "runs")
    db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    started = time.monotonic()
    assert main(["study", "status", "--name", "p", "--storage", f"sqlite:///{db}", "--db-patience", "60"]) == 2
    assert time.monotonic() - started < 20
    assert (f"SQLite file '{db}' from --storage 'sqlite:///{db}' is damaged (database disk image is malformed)"
            in " ".join(capsys.readouterr().err.split()))


def test_export_carries_the_test_time_augmentation_accuracies_of_a_fast_study(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "f", "constant", tmp_path / "runs", run=replace(TINY, recipe="fast"), candidates=(2, 4))
    work(url, "f", FakeTrainer())
    assert main(["study", "export", "--name", "f", "--storage", url, "--out", str(tmp_path / "t.json")]) == 0
    rows = json.loads((tmp_path / "t.json").read_text())
    assert len(rows) == 3 and all(r["state"] == "COMPLETE" for r in rows)  # 2, 4 and the no-SE baseline
    assert all(r["tta_test_accuracy"] == pytest.approx(r["test_accuracy"] + 0.01) for r in rows)
    assert all(r["tta_val_accuracy"] == pytest.approx(r["val_accuracy"] + 0.02) for r in rows)


def test_status_of_an_unknown_study_names_the_ones_there(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "real", "constant", tmp_path / "runs", candidates=(2,))
    assert main(["study", "status", "--name", "typo", "--storage", url]) == 2
    assert "studies there: real" in capsys.readouterr().err


def test_a_study_on_sqlite_runs_in_one_process(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    create(url, "s", "greedy", tmp_path / "runs", candidates=(2, 4))
    trainer = FakeTrainer()
    work(url, "s", trainer)
    assert len(trainer.calls) == len(set(trainer.calls)) == 6  # 2 constants + 1 new per stage + plain ResNet


def test_a_stop_signal_that_a_driver_swallows_still_ends_the_retries() -> None:
    """A driver that catches the KeyboardInterrupt of a SIGTERM mid-connect and reports the lost
    connection instead must not keep the loop retrying for its whole patience."""
    def connect_swallowing_the_interrupt() -> None:
        try:
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(1)  # the handler raises here
        except KeyboardInterrupt:
            pass
        raise sqlalchemy.exc.OperationalError("connect", {}, Exception("connection refused"))

    started = time.monotonic()
    with sigterm_as_ctrl_c(), pytest.raises(KeyboardInterrupt):
        retrying(connect_swallowing_the_interrupt, Patience(seconds=30, first_wait=0.05, max_wait=0.05), lambda m: None)
    assert time.monotonic() - started < 5
