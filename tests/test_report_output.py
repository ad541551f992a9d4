"""Where `seratio report` writes: never over a user's files, replaced whole, never half-written,
and a damaged or unreadable run file is a note about that run, not the end of the report.

Every test drives the public CLI on a fake study (`fixtures.studies.make_study`), so nothing trains.
"""

from __future__ import annotations

import builtins
import contextlib
import ctypes
import errno
import html
import io
import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
import pytest

from fixtures.studies import NONE3, FixtureStudy, make_study
from seratio import rundir
from seratio.cli import main
from seratio.report import output
from seratio.report.output import MARKER

TABLE = [("baseline", NONE3, 0.90, 0.5), ("constant", (8, 8, 8), 0.91, 0.4)]


@pytest.fixture
def study(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FixtureStudy:
    monkeypatch.setenv("COLUMNS", "1000")  # rich would wrap long paths and notes at 80 columns
    return make_study(tmp_path / "study", table=TABLE)


def _report(study: FixtureStudy, out: Path, *extra: str, name: str | None = None) -> list[str]:
    return ["report", "--name", name or study.name, "--storage", study.storage, "--out", str(out), *extra]


def _snapshot(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def _leftovers(out: Path) -> list[str]:
    """Hidden staging directories of `out` still beside it."""
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("seratio: error: ") and err.count("\n") == 1, err
    return err


def _run_dir(study: FixtureStudy, rr: tuple[int | None, ...]) -> Path:
    return Path(study.stored[(rr, 0)]["run_dir"])


# -- 1. a directory that is not a report is refused ---------------------------------------------


def test_a_non_empty_directory_that_is_no_report_is_refused_untouched(
    study: FixtureStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    site = tmp_path / "mysite"
    site.mkdir()
    (site / "index.html").write_text("<p>my own page</p>")
    run = _run_dir(study, NONE3)
    run_files = _snapshot(run)
    for out in (site, run):
        assert main(_report(study, out)) == 2
        err = _one_line_error(capsys)
        assert f"--out {str(out)!r} is not empty and holds no seratio report" in err
        assert "choose an empty or new directory" in err
        assert _leftovers(out) == []
    assert (site / "index.html").read_text() == "<p>my own page</p>" and len(list(site.iterdir())) == 1
    assert _snapshot(run) == run_files


def test_a_report_holding_a_users_file_is_refused(
    study: FixtureStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    (out / "notes.md").write_text("my notes")
    before = _snapshot(out)
    capsys.readouterr()
    assert main(_report(study, out)) == 2
    assert "holds a seratio report but also 'notes.md'" in _one_line_error(capsys)
    assert _snapshot(out) == before


# -- 2. an earlier report is replaced whole, and only once the new one is complete -------------


def test_an_earlier_report_is_replaced_with_no_stale_file(study: FixtureStudy, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    assert {"index.html", "table.json", "confusion_resnet.png"} <= set(os.listdir(out))
    (out / "confusion_se_2_2_2.png").write_bytes(b"from a report of another study")
    assert main(_report(study, out, "--format", "md", "--baseline", "8,8,8")) == 0
    names = set(os.listdir(out))
    assert "table.md" in names and "pareto.png" in names
    assert not names & {"index.html", "table.json", "table.csv", "confusion_se_2_2_2.png"}
    assert _leftovers(out) == []


def test_a_report_from_before_the_marker_and_an_empty_directory_are_accepted(
    study: FixtureStudy, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out, "--format", "json")) == 0
    next(p for p in out.iterdir() if p.name.startswith(".seratio")).unlink()  # as an older seratio wrote it
    assert main(_report(study, out, "--format", "md")) == 0
    assert (out / "table.md").is_file() and not (out / "table.json").exists()
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(_report(study, empty)) == 0 and (empty / "index.html").is_file()


def _raise(error: BaseException) -> Callable[..., Any]:
    def draw(*args: Any) -> Any:
        raise error
    return draw


@pytest.mark.parametrize(("error", "code", "says"), [
    (KeyboardInterrupt(), 130, "seratio: interrupted"),
    (OSError(errno.EFBIG, "File too large"), 2, "cannot write the report to --out '{out}': File too large"),
], ids=["ctrl-c", "file too large"])
def test_a_failure_mid_report_leaves_the_earlier_report_as_it_was(
    study: FixtureStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    error: BaseException, code: int, says: str
) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    before = _snapshot(out)
    monkeypatch.setattr("seratio.report.writer.draw_pareto", _raise(error))  # after the tables and two figures
    capsys.readouterr()
    assert main(_report(study, out, "--baseline", "8,8,8")) == code
    assert says.format(out=out) in capsys.readouterr().err
    assert _snapshot(out) == before
    assert _leftovers(out) == []


KILL_MID_REPORT = """
import os, signal, sys
import seratio.report.writer
seratio.report.writer.draw_pareto = lambda content, out_dir: os.kill(os.getpid(), getattr(signal, sys.argv[1]))
from seratio.cli import main
sys.exit(main(sys.argv[2:]))
"""
"""Runs a report that sends itself the signal named by argv[1] after its tables and first figures."""


def _killed_report(study: FixtureStudy, out: Path, signal_name: str) -> int:
    argv = [sys.executable, "-c", KILL_MID_REPORT, signal_name, *_report(study, out, "--baseline", "8,8,8")]
    return subprocess.run(argv, capture_output=True, text=True, timeout=300).returncode


def test_sigterm_mid_report_stops_like_ctrl_c(study: FixtureStudy, tmp_path: Path) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    before = _snapshot(out)
    assert _killed_report(study, out, "SIGTERM") == 130
    assert _snapshot(out) == before
    assert _leftovers(out) == []


def test_a_report_killed_mid_write_leaves_the_old_one_and_does_not_block_the_next(
    study: FixtureStudy, tmp_path: Path
) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    before = _snapshot(out)
    assert _killed_report(study, out, "SIGKILL") == -9
    assert _snapshot(out) == before
    assert main(_report(study, out, "--format", "md")) == 0
    assert set(os.listdir(out)) >= {"table.md", "pareto.png"} and not (out / "index.html").exists()
    assert _leftovers(out) == []  # the killed report's staging directory is gone too


def test_a_link_named_like_a_dead_report_s_leftover_is_left_alone(study: FixtureStudy, tmp_path: Path) -> None:
    """Leftovers of reports killed on this machine are deleted, their mode forced if need be; a
    link with such a name is no leftover, and what it points to is not the report's to change."""
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o755)
    (elsewhere / "keep.txt").write_text("mine")
    dead = 2**22 + 1  # above Linux's default pid_max: no process has it
    link = tmp_path / f".r.seratio-old.{output._host()}-{dead}.0123abcd"
    link.symlink_to(elsewhere)
    assert main(_report(study, out, "--format", "md")) == 0
    assert link.is_symlink() and (elsewhere / "keep.txt").read_text() == "mine"
    assert os.stat(elsewhere).st_mode & 0o777 == 0o755


KILL_AT_RENAME = """
import os, signal, sys
real_rename = os.rename
def rename(source, destination):
    if os.path.basename(source) == sys.argv[1]:  # the old report set aside: the moment without --out
        os.kill(os.getpid(), signal.SIGKILL)
    real_rename(source, destination)
os.rename = rename
from seratio.cli import main
sys.exit(main(sys.argv[2:]))
"""


def test_no_instant_of_the_swap_leaves_the_output_directory_missing(study: FixtureStudy, tmp_path: Path) -> None:
    """The new report is exchanged for the old in one step (Linux renameat2), so even a SIGKILL at
    the point where two renames would have moved the old report aside finds a report in place."""
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    argv = [sys.executable, "-c", KILL_AT_RENAME, out.name, *_report(study, out, "--format", "md")]
    assert subprocess.run(argv, capture_output=True, text=True, timeout=300).returncode == 0
    assert set(os.listdir(out)) >= {"table.md", MARKER} and not (out / "index.html").exists()
    assert _leftovers(out) == []


def test_where_the_filesystem_cannot_exchange_two_renames_replace_the_report(
    study: FixtureStudy, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    refusals: list[int] = []
    def cannot_exchange(*args: Any) -> int:
        refusals.append(errno.EINVAL)
        ctypes.set_errno(errno.EINVAL)
        return -1
    monkeypatch.setattr("seratio.report.output._renameat2", lambda: cannot_exchange)
    assert main(_report(study, out, "--format", "md")) == 0
    assert refusals == [errno.EINVAL]
    assert set(os.listdir(out)) >= {"table.md", MARKER} and not (out / "index.html").exists()
    assert _leftovers(out) == []


# -- 3. a refused report leaves no --out ------------------------------------------------------


def test_a_refused_report_creates_no_output_directory(
    study: FixtureStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    optuna.create_study(storage=study.storage, study_name="plain")
    out = tmp_path / "new" / "deeper" / "r"
    refusals = [
        (_report(study, out, name="nope"), "no study named 'nope'"),
        (["report", "--name", "x", "--storage", f"sqlite:///{tmp_path / 'absent.db'}", "--out", str(out)],
         "does not exist"),
        (_report(study, out, name="plain"), "has no 'seratio_definition'"),
        (_report(study, out, "--format", "pdf"), "--format 'pdf': unknown format pdf"),
        (_report(study, out, "--baseline", "8,x,8"), "reduction ratio 'x' is not an integer"),
    ]
    for argv, says in refusals:
        assert main(argv) == 2
        assert says in _one_line_error(capsys)
        assert not (tmp_path / "new").exists()
    afile = tmp_path / "afile"
    afile.write_text("x")
    assert main(_report(study, afile)) == 2
    assert f"--out {str(afile)!r} is a file, not a directory" in _one_line_error(capsys)
    assert main(_report(study, afile / "r")) == 2
    assert f"cannot create --out {str(afile / 'r')!r}: Not a directory" in _one_line_error(capsys)
    assert afile.read_text() == "x"


# -- 4. an unreadable run file is a note --------------------------------------------------------


def _deny_reading(monkeypatch: pytest.MonkeyPatch, *paths: Path) -> None:
    """As a file without read permission would (tests may run as root, whom chmod does not stop)."""
    denied = {str(p) for p in paths}
    real_open = io.open

    def guarded(file: Any, *args: Any, **kwargs: Any) -> Any:
        if isinstance(file, (str, os.PathLike)) and os.fspath(file) in denied:
            raise PermissionError(errno.EACCES, "Permission denied", os.fspath(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", guarded)
    monkeypatch.setattr(io, "open", guarded)


def test_an_unreadable_run_file_is_a_note_and_the_report_is_written(
    study: FixtureStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    base, best = _run_dir(study, NONE3), _run_dir(study, (8, 8, 8))
    _deny_reading(monkeypatch, base / rundir.METRICS, best / rundir.PREDICTIONS, best / rundir.RESULT)
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"cannot read {base / rundir.METRICS}: Permission denied" in printed
    assert f"cannot read {best / rundir.RESULT}" in printed
    page = html.unescape((out / "index.html").read_text())
    assert f"not tested: cannot read {best / rundir.PREDICTIONS}: Permission denied" in page
    names = set(os.listdir(out))
    assert "curves.png" in names and "confusion_resnet.png" in names and "confusion_se_8_8_8.png" not in names


# -- 5. damaged values in run files: a note in a report, one line in compare -------------------


def _edit_json(path: Path, change: Callable[[dict[str, Any]], None]) -> None:
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _metrics_value(value: Any) -> Callable[[Path], str]:
    """Damage the third epoch's test accuracy; returns what the note must say."""
    def damage(run: Path) -> str:
        path = run / rundir.METRICS
        lines = path.read_text().splitlines()
        lines[2] = json.dumps(json.loads(lines[2]) | {"test_accuracy": value})
        path.write_text("\n".join(lines) + "\n")
        return f"{path}:3 has test_accuracy {value!r}, not a fraction from 0 to 1 or null"
    return damage


def _result_value(key: str, value: Any, says: str) -> Callable[[Path], str]:
    """Damage one field of result.json; returns what the note or error must say."""
    def damage(run: Path) -> str:
        _edit_json(run / rundir.RESULT, lambda record: record.update({key: value}))
        return f"{run / rundir.RESULT} has {says}"
    return damage


METRICS_DAMAGE = {
    "accuracy a string": _metrics_value("abc"),
    "accuracy an object": _metrics_value({"mean": 0.5}),
    "accuracy huge": _metrics_value(1e300),
}
RESULT_DAMAGE = {
    "confusion ragged": _result_value("confusion_matrix", [[5, 1], [2]], "confusion_matrix [[5, 1], [2]], not a square"),
    "confusion not numbers": _result_value("confusion_matrix", [["a", "b"], ["c", "d"]], "confusion_matrix [['a',"),
    "confusion huge": _result_value("confusion_matrix", [[1e300, 0], [0, 1e300]], "confusion_matrix [[1e+300, 0]"),
    "confusion negative": _result_value("confusion_matrix", [[-1, 0], [0, 3]], "confusion_matrix [[-1, 0], [0, 3]]"),
    "class_names a number": _result_value("class_names", 5, "class_names 5, not a list of strings"),
    "class_names too few": _result_value("class_names", ["cat", "dog"], "2 class_names for a 10x10 confusion_matrix"),
    "rr a number": _result_value("rr", 8, "rr 8, not a list of reduction ratios"),
}


@pytest.mark.parametrize("damage", [*METRICS_DAMAGE.values(), *RESULT_DAMAGE.values()],
                         ids=[*METRICS_DAMAGE, *RESULT_DAMAGE])
def test_a_damaged_value_in_a_run_file_is_a_note_in_the_report(
    study: FixtureStudy, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], str]
) -> None:
    base = _run_dir(study, NONE3)
    says = damage(base)
    out = tmp_path / "r"
    assert main(_report(study, out)) == 0
    printed = " ".join(capsys.readouterr().out.split())
    assert f"note: ResNet-50 seed 0 (trial #0): {says}" in printed
    assert says in html.unescape((out / "index.html").read_text())
    names = set(os.listdir(out))
    assert {"curves.png", "pareto.png", "confusion_se_8_8_8.png"} <= names
    if damage in RESULT_DAMAGE.values():
        assert "confusion_resnet.png" not in names


@pytest.mark.parametrize("damage", list(RESULT_DAMAGE.values()), ids=list(RESULT_DAMAGE))
def test_compare_of_a_damaged_result_is_one_line_naming_it(
    study: FixtureStudy, capsys: pytest.CaptureFixture[str], damage: Callable[[Path], str]
) -> None:
    base = _run_dir(study, NONE3)
    says = damage(base)
    assert main(["compare", str(_run_dir(study, (8, 8, 8))), str(base)]) == 2
    assert says in _one_line_error(capsys)


def test_a_trial_attribute_edited_into_nonsense_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fixture = make_study(tmp_path / "study", table=[("baseline", NONE3, 0.90, 0.5), ("constant", (8, 8, 8), 0.91, 0.4)])
    with contextlib.closing(sqlite3.connect(fixture.storage.removeprefix("sqlite:///"))) as database, database:
        database.execute(
            "UPDATE trial_user_attributes SET value_json = '\"abc\"' WHERE key = 'test_accuracy' "
            "AND trial_id = (SELECT trial_id FROM trials WHERE number = 1)"
        )
    assert main(["report", "--name", fixture.name, "--storage", fixture.storage, "--out", str(tmp_path / "r")]) == 2
    assert f"study {fixture.name!r}, trial 1: a stored attribute is damaged" in capsys.readouterr().err


def test_a_study_definition_with_values_of_the_wrong_type_is_one_line(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    fixture = make_study(tmp_path / "study", table=[("baseline", NONE3, 0.90, 0.5)])
    study = optuna.load_study(study_name=fixture.name, storage=fixture.storage)
    study.set_user_attr("seratio_definition", {**study.user_attrs["seratio_definition"], "seeds": "three"})
    assert main(["report", "--name", fixture.name, "--storage", fixture.storage, "--out", str(tmp_path / "r")]) == 2
    assert f"study {fixture.name!r} has a damaged seratio definition" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def _set_attr(fixture: FixtureStudy, number: int, key: str, value_json: str) -> None:
    with contextlib.closing(sqlite3.connect(fixture.storage.removeprefix("sqlite:///"))) as database, database:
        database.execute(
            "UPDATE trial_user_attributes SET value_json = ? WHERE key = ? "
            "AND trial_id = (SELECT trial_id FROM trials WHERE number = ?)", (value_json, key, number)
        )


@pytest.mark.parametrize(("stored", "shown"), [("NaN", "nan"), ("1e300", "1e+300"), ("-0.5", "-0.5")])
def test_a_stored_accuracy_that_is_not_a_fraction_is_excluded_with_its_reason(
    tmp_path: Path, stored: str, shown: str
) -> None:
    """1e300 once reached the seed-noise computation and ended in a traceback."""
    fixture = make_study(tmp_path / "study", table=TABLE)
    _set_attr(fixture, 1, "test_accuracy", stored)
    assert main(["report", "--name", fixture.name, "--storage", fixture.storage, "--out", str(tmp_path / "r")]) == 0
    document = json.loads((tmp_path / "r" / "table.json").read_text())
    assert [(e["trial"], e["reason"]) for e in document["excluded"]] == [
        (1, f"stores test accuracy {shown}, not an accuracy from 0 to 1; a damaged record")]
    assert "nan" not in document["conclusion"].lower()
    assert [tuple(r["rr"]) for r in document["rows"]] == [NONE3]


def test_mcnemar_refuses_predictions_that_are_not_the_stored_run(tmp_path: Path) -> None:
    """The difference shown comes from the stored accuracy, the counts from the run directory: if
    they disagree the directory holds another run, and a verdict would contradict its own row."""
    fixture = make_study(tmp_path / "study", table=TABLE)
    _set_attr(fixture, 1, "test_accuracy", "0.95")  # stored 95%, predictions on disk give 91%
    assert main(["report", "--name", fixture.name, "--storage", fixture.storage, "--out", str(tmp_path / "r")]) == 0
    row = next(r for r in json.loads((tmp_path / "r" / "table.json").read_text())["rows"] if r["rr"] == [8, 8, 8])
    assert row["vs_baseline_test"] == "none" and row["p_value"] is None
    assert (f"not tested: the predictions in {_run_dir(fixture, (8, 8, 8))} give 91.00% test accuracy, but "
            "trial #1 stored 95.00%; they are not the same run") in row["vs_baseline_detail"]


def test_best_found_rests_on_every_seed_not_on_one_that_survived_halving(tmp_path: Path) -> None:
    """Halving can prune one seed of a configuration and keep the other; the search scores only
    configurations with every seed, and so must the report's highlights."""
    table = [("baseline", NONE3, 0.90, 0.5), ("halving", (4, 2, 4), 0.99, 0.1), ("halving", (4, 2, 8), 0.91, 0.4)]
    fixture = make_study(tmp_path / "study", seeds=2, table=table)
    one_seed = fixture.stored[((4, 2, 4), 1)]["run_dir"]
    with contextlib.closing(sqlite3.connect(fixture.storage.removeprefix("sqlite:///"))) as database, database:
        database.execute(
            "UPDATE trials SET state = 'PRUNED' WHERE trial_id = (SELECT trial_id FROM trial_user_attributes "
            "WHERE key = 'run_dir' AND value_json = ?)", (json.dumps(one_seed),)
        )
    assert main(["report", "--name", fixture.name, "--storage", fixture.storage, "--out", str(tmp_path / "r")]) == 0
    rows = json.loads((tmp_path / "r" / "table.json").read_text())["rows"]
    assert {tuple(r["rr"]): r["n"] for r in rows} == {NONE3: 2, (4, 2, 4): 1, (4, 2, 8): 2}
    assert [tuple(r["rr"]) for r in rows if r["winner"]] == [(4, 2, 8)]  # the phase table marks the same one
    markdown = " ".join((tmp_path / "r" / "table.md").read_text().split())
    assert "The best found, SE-ResNet-50 (4, 2, 8)," in markdown
    assert "2 configuration(s) have 2 seeds: their 95% t-intervals have 1 degree of freedom" in markdown
    assert (tmp_path / "r" / "confusion_se_4_2_8.png").exists()
    assert not (tmp_path / "r" / "confusion_se_4_2_4.png").exists()  # one surviving seed at 99% is not the winner


@pytest.mark.parametrize("mode", [0o2750, 0o555], ids=["group-shared", "read-only"])
def test_a_replaced_report_keeps_its_group_and_mode_and_leaves_nothing_behind(
    study: FixtureStudy, tmp_path: Path, mode: int
) -> None:
    """A report shared with a group stays shared when written again, and one made read-only is
    still replaced whole: its old files, in a folder whose mode forbids deleting them, are gone."""
    out = tmp_path / "r"
    assert main(_report(study, out, "--format", "md")) == 0
    # root may give it any group; anyone else, one of their own (the primary one if they have no other)
    group = 100 if os.geteuid() == 0 else next((g for g in os.getgroups() if g != os.getegid()), os.getegid())
    os.chown(out, -1, group)
    os.chmod(out, mode)
    assert main(_report(study, out, "--format", "json")) == 0
    assert os.stat(out).st_mode & 0o7777 == mode
    assert {p.name: p.stat().st_gid for p in out.iterdir()} == {name: group for name in os.listdir(out)}
    assert os.stat(out).st_gid == group
    assert "table.json" in os.listdir(out) and "table.md" not in os.listdir(out)
    assert _leftovers(out) == []
