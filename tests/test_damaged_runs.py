"""Damaged run directories: every reader ends in one line that names the file, never a traceback.

Each test damages a copy of the session's tiny finished run (`tiny_run`), so almost nothing trains.
Where only the choice of a checkpoint matters, `start_session` is stopped before any data loads.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fixtures.studies import NONE3, make_study
from seratio import rundir
from seratio.cli import main
from tiny_run import train_args

Damage = Callable[[Path], None]
CheckpointDamage = Callable[[Path, pytest.MonkeyPatch], None]


class Stopped(Exception):
    """Raised instead of loading data: the test has seen what it needs."""


def _copy(tiny_run: Path, tmp_path: Path, name: str = "run", *, finished: bool = True) -> Path:
    run = tmp_path / name
    shutil.copytree(tiny_run, run)
    if not finished:
        (run / rundir.RESULT).unlink()
    return run


def _edit_json(path: Path, change: Callable[[Any], Any]) -> None:
    path.write_text(json.dumps(change(json.loads(path.read_text()))))


def _one_line_error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err
    assert err.startswith("seratio: error: ") and err.count("\n") == 1, err
    return err


def _with_run(change: dict[str, Any]) -> Callable[[Any], Any]:
    return lambda record: {**record, "run": {**record["run"], **change}}


CONFIG_DAMAGE: dict[str, tuple[Callable[[Any], Any], str]] = {
    "empty object": (lambda record: {}, "has no 'run' section"),
    "list": (lambda record: [], "has no 'run' section"),
    "null": (lambda record: None, "has no 'run' section"),
    "run null": (lambda record: {**record, "run": None}, "has no 'run' section"),
    "rr a number": (_with_run({"rr": 8}), "has an invalid 'run' section"),
}


@pytest.mark.parametrize("finished", [True, False], ids=["rerun", "resume"])
@pytest.mark.parametrize("damage", CONFIG_DAMAGE, ids=list(CONFIG_DAMAGE))
def test_train_into_a_run_with_a_damaged_config_json_is_refused_in_one_line(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str, finished: bool
) -> None:
    run = _copy(tiny_run, tmp_path, finished=finished)
    change, reason = CONFIG_DAMAGE[damage]
    _edit_json(run / rundir.CONFIG, change)
    assert main(train_args(cifar_dir, run, *([] if finished else ["--resume"]))) == 2
    assert f"{run / rundir.CONFIG} {reason}" in _one_line_error(capsys)


@pytest.mark.parametrize(("change", "reason"), [
    (lambda result: {}, "lacks test_accuracy, test_loss"),
    (lambda result: [], "holds a JSON list, not an object"),
    (lambda result: {**result, "test_accuracy": "high"}, "holds non-numbers in test_accuracy"),
    (lambda result: {**result, "epochs": None}, "has epochs None, not a whole number"),
    (lambda result: {**result, "confusion_matrix": [[1, 2]]}, "has confusion_matrix [[1, 2]], not a square matrix"),
], ids=["empty object", "list", "text accuracy", "epochs null", "ragged confusion"])
def test_rerun_into_a_run_with_a_damaged_result_json_is_refused_in_one_line(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    change: Callable[[Any], Any], reason: str,
) -> None:
    run = _copy(tiny_run, tmp_path)
    _edit_json(run / rundir.RESULT, change)
    assert main(train_args(cifar_dir, run)) == 2
    assert f"{run / rundir.RESULT} {reason}" in _one_line_error(capsys)


def test_a_damaged_result_json_is_written_anew_from_the_last_checkpoint_after_a_resume(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """Cut short (a full disk, a bad copy), result.json refused every command, with no way out named."""
    run = _copy(tiny_run, tmp_path)
    stored = json.loads((run / rundir.RESULT).read_text())
    (run / rundir.RESULT).write_text((run / rundir.RESULT).read_text()[:40])
    assert main(train_args(cifar_dir, run)) == 2
    assert "the last checkpoint can write the result files anew: delete result.json and resume" in _one_line_error(capsys)
    (run / rundir.RESULT).unlink()
    assert main(train_args(cifar_dir, run, "--resume")) == 0
    rewritten = json.loads((run / rundir.RESULT).read_text())
    assert {k: v for k, v in rewritten.items() if k != "seconds"} == {k: v for k, v in stored.items() if k != "seconds"}


def test_resume_with_only_out_continues_the_stored_run_and_given_options_must_match(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
) -> None:
    """After Ctrl-C, `train --resume --out DIR` alone used to be refused: every default (rr none,
    depth 50, ...) differed from the stored run, so the whole command had to be typed again."""
    run = _copy(tiny_run, tmp_path, finished=False)
    short = ["train", "--resume", "--out", str(run), "--data-dir", str(cifar_dir), "--quiet"]
    assert main([*short, "--depth", "14"]) == 2
    assert "its configuration differs (depth: stored 8, asked 14)" in _one_line_error(capsys)
    assert main(short) == 0
    assert json.loads((run / rundir.RESULT).read_text())["test_accuracy"] == (
        json.loads((tiny_run / rundir.RESULT).read_text())["test_accuracy"])


def test_resume_checks_a_given_option_against_the_stored_run_not_the_defaults(
    tiny_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--train-subset 45500 is valid beside the stored --val-size 0, not beside the default 5,000."""
    run = _copy(tiny_run, tmp_path, finished=False)
    _edit_json(run / rundir.CONFIG, _with_run({"val_size": 0, "train_subset": 45_500}))
    seen = []
    result = json.loads((tiny_run / rundir.RESULT).read_text())
    monkeypatch.setattr("seratio.train.train_run", lambda config, *args, **kwargs: seen.append(config) or result)
    assert main(["train", "--resume", "--out", str(run), "--train-subset", "45500", "--quiet"]) == 0
    assert (seen[0].val_size, seen[0].train_subset, seen[0].depth) == (0, 45_500, 8)


def _first_line_only(path: Path) -> None:
    path.write_text(path.read_text().splitlines()[0] + "\n")


def _renumbered(path: Path) -> None:
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    path.write_text("".join(json.dumps({**row, "epoch": row["epoch"] + 10}) + "\n" for row in rows))


def _both_cut(path: Path) -> None:
    for name in (rundir.PREDICTIONS, rundir.LABELS):
        np.save(path.parent / name, np.load(path.parent / name)[:500])


@pytest.mark.parametrize(("name", "damage", "reason"), [
    (rundir.METRICS, _first_line_only, "records 1 epoch(s), but result.json says the run trained epochs 1 to 3"),
    (rundir.METRICS, _renumbered, "records other epoch numbers, but result.json says the run trained epochs 1 to 3"),
    (rundir.PREDICTIONS, _both_cut, "hold 500 test images, but the confusion matrix counts 1,000"),
    (rundir.PREDICTIONS, lambda path: np.save(path, np.full_like(np.load(path), 11)), "hold class indices outside 0 to 9"),
    (rundir.PREDICTIONS, lambda path: np.save(path, np.roll(np.load(path), 1)), "test accuracy, but result.json says"),
    (rundir.METRICS, lambda path: path.write_text("{not json"), ":1 is not valid JSON"),
    (rundir.PREDICTIONS, lambda path: path.write_bytes(b"\0" * 100), "is not a .npy array of class indices"),
    (rundir.LABELS, lambda path: path.unlink(), "not found"),
], ids=["metrics cut", "metrics renumbered", "predictions and labels cut", "class out of range", "predictions shifted",
        "metrics garbage", "predictions zeroed", "labels gone"])
def test_a_finished_run_with_damaged_companions_is_refused_then_rewritten_by_a_resume(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    name: str, damage: Damage, reason: str,
) -> None:
    """A study reads a finished run back without retraining: damage to what report and compare read
    must be caught then, while the checkpoint can still rewrite it, not later in a report."""
    run = _copy(tiny_run, tmp_path)
    damage(run / name)
    assert main(train_args(cifar_dir, run)) == 2
    err = _one_line_error(capsys)
    assert f"{run / name}" in err and reason in err and "delete result.json and resume" in err
    (run / rundir.RESULT).unlink()
    assert main(train_args(cifar_dir, run, "--resume")) == 0
    for companion in (rundir.METRICS, rundir.PREDICTIONS, rundir.LABELS):
        assert (run / companion).read_bytes() == (tiny_run / companion).read_bytes(), companion


def _no_checkpoints(run: Path) -> None:
    for checkpoint in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
        (run / checkpoint).unlink(missing_ok=True)


def _only_a_truncated_checkpoint(run: Path) -> None:
    (run / rundir.PREVIOUS_CHECKPOINT).unlink(missing_ok=True)
    (run / rundir.CHECKPOINT).write_bytes((run / rundir.CHECKPOINT).read_bytes()[:1000])


def _recipe_changed_since(run: Path) -> None:
    _edit_json(run / rundir.CONFIG, lambda record: {**record, "recipe_hash": "0000old"})


@pytest.mark.parametrize("unrewritable", [_no_checkpoints, _only_a_truncated_checkpoint, _recipe_changed_since],
                         ids=["no checkpoint", "truncated checkpoint", "recipe changed since"])
def test_damaged_companions_that_no_checkpoint_can_rewrite_warn_and_keep_the_result(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], unrewritable: Damage,
) -> None:
    """Nothing can rewrite them, and the accuracies in result.json still hold: warn, do not retrain.
    Advice to delete result.json and resume would have cost the result (another recipe is refused)
    or a full retraining (no usable checkpoint)."""
    run = _copy(tiny_run, tmp_path)
    unrewritable(run)
    _first_line_only(run / rundir.METRICS)
    assert main(train_args(cifar_dir, run)) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "warning:" in err and "records 1 epoch(s)" in err and "no usable checkpoint of this code's recipe" in err
    assert json.loads((run / rundir.RESULT).read_text()) == json.loads((tiny_run / rundir.RESULT).read_text())
    (run / rundir.RESULT).write_text("{}")  # a damaged result.json too: refused, with no advice that would fail
    assert main(train_args(cifar_dir, run)) == 2
    assert "delete result.json" not in _one_line_error(capsys)


def _with_header(path: Path, payload: bytes) -> None:
    """A file with a valid seratio header over `payload`: only what lies beneath is wrong."""
    path.write_bytes(b"SERATIO-CKPT-1\n" + hashlib.sha256(payload).hexdigest().encode() + b"\n" + payload)


def _directory(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path.unlink()
    path.mkdir()


def _not_torch(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _with_header(path, b"no torch file " * 20)


def _wrong_dict(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    buffer = io.BytesIO()
    torch.save({"weights": torch.zeros(2)}, buffer)
    _with_header(path, buffer.getvalue())


def _unreadable(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Permission denied: chmod cannot deny root, so reading the file is what fails."""
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:
        if self == path:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)


CHECKPOINT_DAMAGE: dict[str, tuple[CheckpointDamage, str]] = {
    "directory": (_directory, "(Is a directory)"),
    "not a torch file": (_not_torch, "holds no readable torch payload"),
    "wrong dict": (_wrong_dict, "is not a seratio checkpoint (it lacks epoch, history"),
    "unreadable": (_unreadable, "(Permission denied)"),
}


def _stop_before_data(*args: Any, **kwargs: Any) -> None:
    raise Stopped


@pytest.mark.parametrize("damage", [d for d in CHECKPOINT_DAMAGE if d != "directory"])
def test_resume_treats_an_unusable_checkpoint_like_a_corrupt_one(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, damage: str,
) -> None:
    run = _copy(tiny_run, tmp_path, finished=False)
    make, reason = CHECKPOINT_DAMAGE[damage]
    make(run / rundir.CHECKPOINT, monkeypatch)
    monkeypatch.setattr("seratio.session.start_session", _stop_before_data)
    with pytest.raises(Stopped):
        main(train_args(cifar_dir, run, "--resume"))
    err = " ".join(capsys.readouterr().err.split())
    assert f"{run / rundir.CHECKPOINT} {reason}" in err and "falling back" in err
    assert f"resuming {run} after epoch 2" in err
    make(run / rundir.PREVIOUS_CHECKPOINT, monkeypatch)
    with pytest.raises(Stopped):
        main(train_args(cifar_dir, run, "--resume"))
    assert f"no usable checkpoint in {run}; restarting the run from epoch 0" in " ".join(capsys.readouterr().err.split())


def test_resume_refuses_a_checkpoint_path_it_could_never_write(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(tiny_run, tmp_path, finished=False)
    (run / rundir.CHECKPOINT).unlink()
    (run / rundir.CHECKPOINT).mkdir()
    assert main(train_args(cifar_dir, run, "--resume")) == 2
    assert f"{run / rundir.CHECKPOINT} is not a file" in _one_line_error(capsys)
    assert (run / rundir.CHECKPOINT).is_dir()  # never removed: it may hold anything


def test_evaluate_skips_every_damaged_run_of_a_folder_with_its_reason(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Items of one batch: damaged config.json, a checkpoint of another model, both checkpoints
    unusable in each way; the one run whose newest checkpoint alone is unusable is scored from
    the previous one."""
    folder = tmp_path / "artifacts"
    fallback = _copy(tiny_run, folder, "a-fallback")
    _directory(fallback / rundir.CHECKPOINT, monkeypatch)
    skipped: list[str] = []
    reasons: list[str] = []
    for name, (change, reason) in CONFIG_DAMAGE.items():
        run = _copy(tiny_run, folder, f"config {name}")
        _edit_json(run / rundir.CONFIG, change)
        skipped.append(f"skipped {run}: {run / rundir.CONFIG} {reason}")
    run = _copy(tiny_run, folder, "other model")
    _edit_json(run / rundir.CONFIG, _with_run({"depth": 50}))
    skipped.append(f"skipped {run}: the checkpoint in {run} does not match {run / rundir.CONFIG}")
    for name, (make, reason) in CHECKPOINT_DAMAGE.items():
        run = _copy(tiny_run, folder, f"checkpoints {name}")
        for checkpoint in (rundir.CHECKPOINT, rundir.PREVIOUS_CHECKPOINT):
            make(run / checkpoint, monkeypatch)
        skipped.append(f"skipped {run}: {run} holds no usable checkpoint to score")
        reasons.append(f"{run / rundir.PREVIOUS_CHECKPOINT} {reason}")
    capsys.readouterr()
    assert main(["evaluate", str(folder), "--json"]) == 1
    captured = capsys.readouterr()
    scores = [json.loads(line) for line in captured.out.splitlines()]
    assert [(s["run"], s["epoch"]) for s in scores] == [(str(fallback), 2)]
    assert "(Is a directory)" in scores[0]["warnings"][0]
    err = " ".join(captured.err.split())
    assert f"{len(skipped)} of {len(skipped) + 1} runs skipped" in err
    for expected in skipped + reasons:
        assert expected in err


def test_evaluate_of_a_checkpoint_of_another_model_is_one_line(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(tiny_run, tmp_path)
    _edit_json(run / rundir.CONFIG, _with_run({"depth": 50, "rr": [None, None, None]}))
    assert main(["evaluate", str(run)]) == 2
    err = _one_line_error(capsys)
    assert f"does not match {run / rundir.CONFIG} (depth 50, rr none,none,none)" in err and "size mismatch" not in err


def _pickled(path: Path) -> None:
    np.save(path, np.array([{"class": 1}] * 3, dtype=object), allow_pickle=True)


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(0).bytes(4000))


def _two_dimensional(path: Path) -> None:
    np.save(path, np.load(path).reshape(10, -1).astype(np.float32))


@pytest.mark.parametrize(("name", "damage", "reason"), [
    (rundir.PREDICTIONS, _pickled, "is not a .npy array of class indices"),
    (rundir.PREDICTIONS, _random_bytes, "is not a .npy array of class indices"),
    (rundir.PREDICTIONS, _two_dimensional, "holds float32 (10, 100), not a 1-D integer array"),
    (rundir.LABELS, _random_bytes, "is not a .npy array of class indices"),
    (rundir.PREDICTIONS, lambda path: np.save(path, np.array([], dtype=np.int64)), "holds no class indices"),
    (rundir.RESULT, lambda path: path.write_text("[]"), "holds a JSON list, not an object"),
    (rundir.RESULT, lambda path: path.write_text("{}"), "lacks test_accuracy"),
], ids=["pickled predictions", "random predictions", "2-D predictions", "random labels", "empty predictions",
        "result list", "result empty"])
def test_compare_of_a_damaged_run_names_the_file(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], name: str, damage: Damage, reason: str
) -> None:
    run = _copy(tiny_run, tmp_path)
    damage(run / name)
    assert main(["compare", str(tiny_run), str(run)]) == 2
    assert f"{run / name} {reason}" in _one_line_error(capsys)


def test_report_notes_damaged_run_files_and_still_writes(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    fixture = make_study(tmp_path / "study", table=[("baseline", NONE3, 0.90, 0.5), ("constant", (8, 8, 8), 0.91, 0.4)])
    base, best = (Path(fixture.stored[(rr, 0)]["run_dir"]) for rr in (NONE3, (8, 8, 8)))
    _pickled(best / rundir.PREDICTIONS)
    (base / rundir.RESULT).write_text("[]")
    monkeypatch.setenv("COLUMNS", "1000")
    assert main(["report", "--name", fixture.name, "--storage", fixture.storage, "--out", str(tmp_path / "r")]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{base / rundir.RESULT} holds a JSON list, not an object" in out
    html = (tmp_path / "r" / "index.html").read_text()
    assert f"not tested: {best / rundir.PREDICTIONS} is not a .npy array of class indices" in html


def _strict_json(text: str) -> Any:
    def refuse(constant: str) -> None:
        raise AssertionError(f"{constant} is not JSON")
    return json.loads(text, parse_constant=refuse)


def test_a_diverged_run_finishes_with_valid_json_that_every_reader_takes(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One step per epoch at the largest learning rate allowed: the loss of that step is finite, every later one is not."""
    out = tmp_path / "diverged"
    args = ["train", "--depth", "8", "--rr", "4,4,4", "--train-subset", "20", "--test-subset", "1000", "--val-size", "100",
            "--epochs", "1", "--lr", "1e6", "--data-dir", str(cifar_dir), "--out", str(out), "--quiet"]
    assert main(args) == 0
    assert _strict_json(capsys.readouterr().out)["test_loss"] is None
    result = _strict_json((out / rundir.RESULT).read_text())
    rows = [_strict_json(line) for line in (out / rundir.METRICS).read_text().splitlines()]
    assert result["test_loss"] is None and rows[-1]["test_loss"] is None and result["test_accuracy"] >= 0
    assert main(args) == 0 and "already holds the finished run" in " ".join(capsys.readouterr().err.split())
    assert main(["compare", str(tiny_run), str(out)]) == 0
    assert "B  diverged (rr 4,4,4, seed 0): test accuracy 10.00%\n" in capsys.readouterr().out  # no loss to show
    assert main(["evaluate", str(out), "--json"]) == 0
    assert _strict_json(capsys.readouterr().out)["test_loss"] is None


@pytest.mark.parametrize("existing", ["", "deep", "deep/a/b/c"], ids=["nothing existed", "a parent existed", "it existed"])
def test_a_refused_run_removes_only_the_directories_it_created(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], existing: str
) -> None:
    if existing:
        (tmp_path / existing).mkdir(parents=True)
    before = sorted(tmp_path.rglob("*"))
    assert main(train_args(cifar_dir, tmp_path / "deep" / "a" / "b" / "c", "--device", "cuda:99")) == 2
    assert "cuda:99" in _one_line_error(capsys)
    assert sorted(p for p in tmp_path.rglob("*") if p.name != ".seratio.lock") == before  # one that existed keeps its lock


def test_explicit_recipe_values_are_the_same_run_as_the_recipe_defaults(
    tiny_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The paper recipe trains at batch 32 and lr 0.001 whether or not they are given."""
    assert main(train_args(cifar_dir, tiny_run, "--batch-size", "32", "--lr", "0.001")) == 0
    assert "already holds the finished run" in " ".join(capsys.readouterr().err.split())
    explicit = _copy(tiny_run, tmp_path)
    _edit_json(explicit / rundir.CONFIG, _with_run({"batch_size": 32, "lr": 0.001}))
    assert main(train_args(cifar_dir, explicit)) == 0
    assert "already holds the finished run" in " ".join(capsys.readouterr().err.split())
    assert main(train_args(cifar_dir, explicit, "--batch-size", "64")) == 2
    assert "different configuration (batch_size: stored 32, asked 64)" in _one_line_error(capsys)


def test_evaluate_of_a_run_trained_on_a_gpu_names_its_device_and_the_way_out(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _copy(tiny_run, tmp_path)
    _edit_json(run / rundir.CONFIG, _with_run({"device": "cuda:99"}))
    assert main(["evaluate", str(run)]) == 2
    assert "was trained on device 'cuda:99' (its config.json), which this machine lacks; pass --device cpu" in _one_line_error(capsys)
    assert main(["evaluate", str(run), "--device", "cpu", "--json"]) == 0
