"""Commands that neither train nor draw start without torch, scipy or matplotlib, and those that
touch no study without optuna and SQLAlchemy.

Importing the first three takes 3-4 s here, which `seratio --help` and `study status` used to pay
on every call; the study stack takes another half second, which `--help` paid for the `study` and
`report` parsers' defaults. Each case runs in a fresh interpreter, since this test process has
imported all of them.
"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest

from fixtures.studies import write_run_dir
from study_fakes import FakeTrainer, create, work

HEAVY = ("torch", "scipy", "matplotlib")
STUDY_STACK = ("optuna", "sqlalchemy")
PROBE = """
import contextlib, io, json, sys
from seratio.cli import main
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
    try:
        code = main(sys.argv[1:])
    except SystemExit as stop:
        code = stop.code
print(json.dumps({"code": code, "loaded": [m for m in %r if m in sys.modules]}))
""" % (HEAVY + STUDY_STACK,)


def _probe(*argv: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.parametrize(("argv", "code"), [
    (["--help"], 0), (["train", "--help"], 0), (["study", "run", "--help"], 0), (["report", "--help"], 0),
    (["study", "status", "--help"], 0), (["evaluate", "--help"], 0), (["compare", "--help"], 0), (["info", "--help"], 0),
    (["train", "--no-such-option"], 2), (["info", "--rr", "8,2,16"], 0),
])
def test_help_parse_errors_and_info_load_no_heavy_library_nor_the_study_stack(argv: list[str], code: int) -> None:
    assert _probe(*argv) == {"code": code, "loaded": []}


def test_study_status_and_export_load_no_heavy_library(tmp_path: Path) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    create(storage, "s", "constant", tmp_path / "runs", candidates=(4, 8))
    work(storage, "s", FakeTrainer())
    status = _probe("study", "status", "--name", "s", "--storage", storage)
    export = _probe("study", "export", "--name", "s", "--storage", storage, "--out", str(tmp_path / "trials.csv"))
    assert status == {"code": 0, "loaded": list(STUDY_STACK)}
    assert export == {"code": 0, "loaded": list(STUDY_STACK)}
    with (tmp_path / "trials.csv").open(newline="") as rows:
        exported = {row["rr"]: row["state"] for row in csv.DictReader(rows)}
    assert exported == {"4,4,4": "COMPLETE", "8,8,8": "COMPLETE", "none,none,none": "COMPLETE"}


def test_compare_loads_scipy_for_its_test_and_nothing_else(tmp_path: Path) -> None:
    """`compare` reads two run directories, never a study: McNemar's exact test needs scipy only."""
    write_run_dir(tmp_path / "a", (8, 2, 16), 0, 0.9153, 0.4652, run_seed=1)
    write_run_dir(tmp_path / "b", (None, None, None), 0, 0.9097, 0.4803, run_seed=2)
    assert _probe("compare", str(tmp_path / "a"), str(tmp_path / "b")) == {"code": 0, "loaded": ["scipy"]}


def test_report_of_a_missing_study_fails_before_loading_matplotlib(tmp_path: Path) -> None:
    probe = _probe("report", "--name", "nope", "--storage", f"sqlite:///{tmp_path / 'none.db'}",
                   "--out", str(tmp_path / "report"))
    assert probe["code"] == 2
    assert "matplotlib" not in probe["loaded"]
