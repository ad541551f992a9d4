"""`seratio evaluate`: a run's saved weights scored again (with the views of a `fast` run: tests/test_train.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from seratio.cli import main


def _evaluate(capsys: pytest.CaptureFixture[str], run: Path, *extra: str) -> dict:
    capsys.readouterr()
    assert main(["evaluate", str(run), "--json", *extra]) == 0
    return json.loads(capsys.readouterr().out)


def _listing(run: Path) -> dict[str, tuple[int, int]]:
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in run.iterdir()}


@pytest.fixture
def paper_run(tiny_run: Path) -> Path:
    """A finished run of the paper recipe (the default)."""
    return tiny_run


def test_a_run_scored_again_gives_its_recorded_scores_and_stays_untouched(
    paper_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    result = json.loads((paper_run / "result.json").read_text())
    before = _listing(paper_run)
    scores = _evaluate(capsys, paper_run)
    assert (scores["tta"], scores["views"], scores["epoch"], scores["epochs"]) == ("none", 1, 3, 3)  # paper: one view
    assert (scores["val_images"], scores["test_images"]) == (500, 1_000)
    assert scores["test_accuracy"] == result["test_accuracy"] == scores["recorded_test_accuracy"] > 0.30
    assert scores["val_accuracy"] == result["val_accuracy"]
    assert scores["test_loss"] == pytest.approx(result["test_loss"], rel=1e-6)
    assert scores["warnings"] == []
    assert _listing(paper_run) == before


def test_a_run_trained_on_another_machine_reads_cifar_from_seratio_data(
    paper_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Its recorded data directory is not here; `--help` promises $SERATIO_DATA next."""
    moved = tmp_path / "moved"
    shutil.copytree(paper_run, moved)
    record = json.loads((moved / "config.json").read_text())
    record["run"]["data_dir"] = "/nowhere/cifar"
    (moved / "config.json").write_text(json.dumps(record))
    monkeypatch.setenv("SERATIO_DATA", str(cifar_dir))
    scores = _evaluate(capsys, moved)
    assert scores["test_accuracy"] == json.loads((moved / "result.json").read_text())["test_accuracy"]
    assert scores["warnings"] == ["the run's data directory /nowhere/cifar is not on this machine; "
                                  "reading CIFAR from $SERATIO_DATA"]
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["evaluate", str(moved)]) == 0
    out = capsys.readouterr().out
    assert "reading CIFAR from $SERATIO_DATA" in out and "previous checkpoint" not in out  # the newest was scored
    monkeypatch.delenv("SERATIO_DATA")  # and without it, the error names where the missing path came from
    assert main(["evaluate", str(moved)]) == 2
    assert capsys.readouterr().err == (
        f"seratio: error: the run's data directory /nowhere/cifar (recorded in {moved / 'config.json'}) is not on this "
        "machine; pass --data-dir / data_dir or set $SERATIO_DATA to where CIFAR-10 is here\n")


def test_a_corrupt_newest_checkpoint_falls_back_and_says_so(
    paper_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    run = tmp_path / "copy"
    shutil.copytree(paper_run, run)
    blob = bytearray((run / "checkpoint.pt").read_bytes())
    blob[-100] ^= 0xFF
    (run / "checkpoint.pt").write_bytes(bytes(blob))
    config = json.loads((run / "config.json").read_text())
    config["run"]["epochs"] = None  # as if the recipe's own length had changed since: 200 now, 3 then
    (run / "config.json").write_text(json.dumps(config))
    monkeypatch.setenv("COLUMNS", "1000")
    capsys.readouterr()
    assert main(["evaluate", str(run)]) == 0
    out = capsys.readouterr().out
    assert "checkpoint.pt fails its SHA-256 check" in out and "scored the previous checkpoint instead" in out
    assert "weights after epoch 2 of 3" in out
    second_epoch = json.loads((run / "metrics.jsonl").read_text().splitlines()[1])
    assert f"{100 * second_epoch['test_accuracy']:.2f}" in out


def test_a_run_without_a_checkpoint_or_with_a_bad_device_is_refused(
    paper_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "started"
    run.mkdir()
    shutil.copy(paper_run / "config.json", run / "config.json")
    assert main(["evaluate", str(run)]) == 2
    assert f"{run} holds no usable checkpoint to score (it has not finished an epoch yet)" in capsys.readouterr().err
    assert main(["evaluate", str(paper_run), "--device", "gpu"]) == 2
    assert "device 'gpu' is not valid; use auto, cpu, cuda or cuda:K" in capsys.readouterr().err


def test_a_folder_of_runs_is_scored_run_by_run_and_a_run_that_cannot_be_is_skipped(
    paper_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Like a study's artifacts: run directories side by side, one of them never finished an epoch."""
    folder = tmp_path / "artifacts"
    shutil.copytree(paper_run, folder / "a-finished")
    (folder / "b-started").mkdir()
    shutil.copy(paper_run / "config.json", folder / "b-started" / "config.json")
    (folder / "c-odd" / "config.json").mkdir(parents=True)  # damaged, so skipped, but counted and said
    (folder / "d-locked").mkdir()  # a trial killed before it wrote its config.json: said, not passed over
    (folder / "d-locked" / ".seratio.lock").write_text("pid 1 on elsewhere\n")
    (folder / "notes").mkdir()  # not a run: ignored
    result = json.loads((paper_run / "result.json").read_text())
    capsys.readouterr()
    assert main(["evaluate", str(folder), str(folder / "a-finished"), "--json", "--tta", "flip"]) == 1  # once each
    captured = capsys.readouterr()
    lines = captured.out.splitlines()
    assert len(lines) == 1
    scores = json.loads(lines[0])
    assert (scores["run"], scores["views"]) == (str(folder / "a-finished"), 2)
    assert scores["recorded_test_accuracy"] == result["test_accuracy"]
    # Two views, not the one recorded; told apart by the loss, since both can get the same number of
    # images right (a run on one torch thread did).
    assert scores["test_loss"] != pytest.approx(result["test_loss"], rel=1e-6)
    err = " ".join(captured.err.split())
    assert f"[1/4] {folder / 'a-finished'}" in err and f"[2/4] {folder / 'b-started'}" in err
    assert f"[3/4] {folder / 'c-odd'}" in err and "Is a directory" in err
    assert (f"skipped {folder / 'd-locked'}: {folder / 'd-locked'} holds no config.json, only a lock file: a run starting now, or one "
            "stopped before it wrote its configuration; nothing to score") in err
    assert "holds no usable checkpoint to score" in err and "3 of 4 runs skipped" in err
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["evaluate", str(folder / "a-finished"), str(paper_run)]) == 0
    table = capsys.readouterr().out
    assert table.count(f"{100 * result['test_accuracy']:.2f}") == 4  # logged and scored, for both runs
    assert "a-finished" in table and paper_run.name in table and "+0.00" in table
