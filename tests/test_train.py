"""One training run on real CIFAR-10: it learns, it is deterministic, it survives a kill."""

from __future__ import annotations

import json
import os
import pty
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from seratio import rundir
from seratio.architecture import parse_rr
from seratio.augment import to_float
from seratio.cli import main
from seratio.config import RunConfig
from seratio.data import Split, load_cifar
from seratio.runtime import allocator
from seratio.session import build_session
from seratio.train import evaluate
from tiny_run import TINY, train_args

RESULT_KEYS = {
    "test_accuracy", "test_loss", "best_test_accuracy", "best_epoch", "val_accuracy", "params", "macs",
    "per_class_accuracy", "confusion_matrix", "epochs", "seconds",
}
METRIC_KEYS = {
    "epoch", "lr", "train_loss", "train_accuracy", "val_loss", "val_accuracy", "test_loss", "test_accuracy", "seconds",
}


def deterministic(rows: list[dict]) -> list[dict]:
    return [{k: v for k, v in row.items() if k != "seconds"} for row in rows]


def read_rows(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def finished_run(tiny_run: Path) -> Path:
    return tiny_run


def test_short_run_learns_far_above_chance(finished_run: Path) -> None:
    result = json.loads((finished_run / "result.json").read_text())
    assert RESULT_KEYS <= result.keys()
    assert result["test_accuracy"] > 0.30, result["test_accuracy"]
    assert result["val_accuracy"] > 0.30, result["val_accuracy"]
    assert result["params"] == 80_870 and result["epochs"] == 3
    assert 1 <= result["best_epoch"] <= 3
    assert not [key for key in result if key.startswith("tta")]  # the paper evaluates one view


def test_run_directory_files(finished_run: Path) -> None:
    rows = read_rows(finished_run)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert all(METRIC_KEYS <= row.keys() for row in rows)
    config = json.loads((finished_run / "config.json").read_text())
    assert config["run"]["rr"] == [4, 4, 4] and config["versions"]["torch"].startswith("2.")
    assert config["runtime"] == {"allocator": allocator(), "threads": torch.get_num_threads()}
    assert (config["compiled"], config["cuda_graph"]) == (False, False)  # 6k images: too short to compile
    assert config["data"] == {**config["data"], "train": 2000, "val": 500, "test": 1000}
    predictions = np.load(finished_run / "test_predictions.npy")
    labels = np.load(finished_run / "test_labels.npy")
    result = json.loads((finished_run / "result.json").read_text())
    assert predictions.shape == labels.shape == (1_000,)
    assert (predictions == labels).mean() == pytest.approx(result["test_accuracy"])
    confusion = np.array(result["confusion_matrix"])
    assert confusion.shape == (10, 10) and confusion.sum() == 1_000 and (confusion.sum(1) == 100).all()  # stratified
    assert result["per_class_accuracy"] == pytest.approx((confusion.diagonal() / 100).tolist())
    assert rows[-1]["test_accuracy"] == result["test_accuracy"]


SMALLER = ("--train-subset", "500", "--test-subset", "200", "--val-size", "100", "--epochs", "2")
"""Given after TINY's options, these win: for tests of what a run prints, not of what it learns."""


def test_train_s_stdout_is_its_json_alone_when_not_in_a_terminal(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`seratio train ... > result.json` or `| jq`: the progress bar belongs on a terminal's stderr,
    and used to leave an empty line on stdout when it closed outside one."""
    args = [a for a in train_args(cifar_dir, tmp_path / "run", *SMALLER) if a != "--quiet"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert out.startswith("{") and json.loads(out)["test_accuracy"] > 0.15
    assert list(json.loads(out)) == [  # the README lists them in this order
        "rr", "seed", "test_accuracy", "test_loss", "best_test_accuracy", "best_epoch", "val_accuracy", "params",
        "macs", "epochs", "seconds",
    ]
    epochs = [line for line in err.splitlines() if line.startswith("epoch ")]
    assert [line.split()[1] for line in epochs] == ["1/2", "2/2"]
    rows = read_rows(tmp_path / "run")
    for line, row in zip(epochs, rows, strict=True):  # named and rounded as in metrics.jsonl
        for key in ("train_loss", "train_accuracy", "val_accuracy", "test_accuracy"):
            assert f" {key} {row[key]:.4f} " in line
    assert "\x1b[" not in err  # no bar drawn into a file


def test_on_a_terminal_the_bar_is_drawn_and_each_epoch_line_prints_above_it(cifar_dir: Path, tmp_path: Path) -> None:
    """The line used to be written past the live bar, glued to its last line on screen."""
    leader, follower = pty.openpty()
    args = [sys.executable, "-m", "seratio", *(a for a in train_args(cifar_dir, tmp_path / "run", *SMALLER) if a != "--quiet")]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=follower, env={**os.environ, "TERM": "xterm"})
    os.close(follower)
    screen = bytearray()
    reader = threading.Thread(target=_read_until_closed, args=(leader, screen))  # a full pty would stop the child
    reader.start()
    out, _ = child.communicate(timeout=300)
    reader.join(timeout=30)
    os.close(leader)
    assert child.returncode == 0 and json.loads(out)["epochs"] == 2  # stdout: the JSON alone
    text = screen.decode()
    assert "img/s" in text and "\x1b[" in text  # the bar was drawn
    lines = list(re.finditer(r"epoch (\d)/2 lr ", text))
    assert [m[1] for m in lines] == ["1", "2"]
    for match in lines:
        start = max(text.rfind("\r", 0, match.start()), text.rfind("\n", 0, match.start())) + 1
        assert re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", text[start:match.start()]) == "", text


def _read_until_closed(fd: int, into: bytearray) -> None:
    while True:
        try:
            chunk = os.read(fd, 4096)
        except OSError:  # EIO: the child closed its end
            return
        if not chunk:
            return
        into += chunk


def test_a_run_folder_with_brackets_is_named_as_typed(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """rich read "[x]" as markup and dropped it: the notice named another folder."""
    out = tmp_path / "run[x]"
    assert main(train_args(cifar_dir, out, "--resume", *SMALLER, "--epochs", "1")) == 0
    assert f"notice: {out} holds no run to resume; starting a new one" in " ".join(capsys.readouterr().err.split())


def test_rerun_into_finished_dir_neither_retrains_nor_overwrites(
    finished_run: Path, cifar_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    before = {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()}
    assert main(train_args(cifar_dir, finished_run)) == 0
    assert "already holds the finished run" in capsys.readouterr().err
    assert {p.name: p.stat().st_mtime_ns for p in finished_run.iterdir()} == before


def test_a_finished_dir_from_other_code_is_reused_with_a_warning(
    finished_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    result = json.loads((copy / "result.json").read_text())
    (copy / "result.json").write_text(json.dumps({**result, "code_version": "0.0.1+gdeadbeef00"}))
    assert main(train_args(cifar_dir, copy)) == 0
    err = " ".join(capsys.readouterr().err.split())  # the console wraps long lines
    assert "already holds the finished run" in err and "trained by code 0.0.1+gdeadbeef00" in err
    assert main(train_args(cifar_dir, finished_run)) == 0
    assert "trained by code" not in capsys.readouterr().err


def test_finished_dir_with_other_config_is_refused(finished_run: Path, cifar_dir: Path, capsys) -> None:
    assert main(train_args(cifar_dir, finished_run, "--seed", "1")) == 2
    assert "different configuration (seed: stored 0, asked 1)" in capsys.readouterr().err


def test_killed_run_resumes_to_identical_metrics(finished_run: Path, cifar_dir: Path, tmp_path: Path) -> None:
    """SIGKILL during epoch 2, then --resume: the run ends bit-identical to the uninterrupted one."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "seratio", *train_args(cifar_dir, out)]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 120
    while not (out / "checkpoint.pt").exists() and time.monotonic() < deadline:
        time.sleep(0.05)
    time.sleep(0.5)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    assert not (out / "result.json").exists(), "the kill came too late to test anything"
    assert main(train_args(cifar_dir, out)) == 2
    assert main(train_args(cifar_dir, out, "--resume")) == 0
    assert deterministic(read_rows(out)) == deterministic(read_rows(finished_run))
    assert np.array_equal(np.load(out / "test_predictions.npy"), np.load(finished_run / "test_predictions.npy"))


def test_a_run_without_a_checkpoint_needs_resume_to_train_from_epoch_0(
    finished_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Killed while writing its first checkpoint: metrics.jsonl already shows epoch 1, so a silent
    restart would look like a lost resume."""
    out = tmp_path / "first-write"
    out.mkdir()
    shutil.copy(finished_run / "config.json", out / "config.json")
    recorded = json.dumps(read_rows(finished_run)[0]) + "\n"
    (out / "metrics.jsonl").write_text(recorded)
    assert main(train_args(cifar_dir, out)) == 2  # a rerun without --resume must not overwrite the epoch silently
    assert "metrics.jsonl records 1 epoch(s) but no checkpoint" in " ".join(capsys.readouterr().err.split())
    assert (out / "metrics.jsonl").read_text() == recorded
    assert main(train_args(cifar_dir, out, "--resume")) == 0
    assert "holds no checkpoint (the run stopped" in " ".join(capsys.readouterr().err.split())
    assert deterministic(read_rows(out)) == deterministic(read_rows(finished_run))


def test_resume_into_a_directory_without_a_run_says_it_starts_a_new_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A mistyped --out with --resume would otherwise retrain from scratch unnoticed (here the data is
    missing, so the run stops right after the notice)."""
    (tmp_path / "no-data").mkdir()
    out = tmp_path / "typo"
    assert main(["train", *TINY, "--data-dir", str(tmp_path / "no-data"), "--out", str(out), "--resume"]) == 2
    assert f"notice: {out} holds no run to resume; starting a new one" in " ".join(capsys.readouterr().err.split())


@pytest.mark.parametrize("versions", ["recorded", "damaged"])
def test_a_checkpoint_does_not_continue_under_a_changed_recipe(
    finished_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], versions: str
) -> None:
    """Code that trains the recipe differently (its hash moved) would switch schedules mid-run."""
    out = tmp_path / "other-recipe"
    out.mkdir()
    for name in ("checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl"):
        shutil.copy(finished_run / name, out / name)
    record = json.loads((finished_run / "config.json").read_text())
    current, record["recipe_hash"] = record["recipe_hash"], "0123456789ab"
    started_by = record["versions"]["code_version"]
    if versions == "damaged":
        record["versions"], started_by = "not a mapping", "unrecorded"
    (out / "config.json").write_text(json.dumps(record))
    assert main(train_args(cifar_dir, out, "--resume")) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert (f"this code trains recipe 'paper' differently (hash {current}) than the run started with "
            f"(hash 0123456789ab, code {started_by}); finish it with that code") in err
    assert not (out / "result.json").exists()


def test_corrupt_checkpoint_falls_back_to_previous(finished_run: Path, cifar_dir: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "corrupt"
    for name in ("config.json", "checkpoint.pt", "checkpoint.prev.pt", "metrics.jsonl"):
        (out / name).parent.mkdir(exist_ok=True)
        (out / name).write_bytes((finished_run / name).read_bytes())
    blob = bytearray((out / "checkpoint.pt").read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    (out / "checkpoint.pt").write_bytes(bytes(blob))
    assert main(train_args(cifar_dir, out, "--resume")) == 0
    err = capsys.readouterr().err
    assert "fails its SHA-256 check" in err and "resuming" in err and "after epoch 2" in err
    assert deterministic(read_rows(out)) == deterministic(read_rows(finished_run))
    (out / "checkpoint.pt").unlink()  # lost, as a kill during the next save could lose it
    state, notes = rundir.load_checkpoint(out)
    assert notes == [] and state is not None and state["epoch"] == 2  # the damaged one was not rotated over it


def test_threads_option_sets_the_run_threads_and_leaves_the_callers(
    finished_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Resumed for its last epoch on one thread: config.json records the thread count the run used,
    and a resume on another thread count than the run's last session says it is no longer bit-identical."""
    out = tmp_path / "one-thread"
    out.mkdir()
    for name in ("config.json", "metrics.jsonl"):
        shutil.copy(finished_run / name, out / name)
    shutil.copy(finished_run / "checkpoint.prev.pt", out / "checkpoint.pt")
    callers = torch.get_num_threads()
    torch.set_num_threads(2)  # anything but one, also on a one-core machine
    try:
        assert main(train_args(cifar_dir, out, "--resume", "--threads", "1")) == 0
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(callers)
    assert json.loads((out / "config.json").read_text())["runtime"]["threads"] == 1
    stored = json.loads((finished_run / "config.json").read_text())["runtime"]["threads"]
    noticed = f"last session used {stored} torch thread(s) and this one uses 1" in " ".join(capsys.readouterr().err.split())
    assert noticed == (stored != 1)
    assert [row["epoch"] for row in read_rows(out)] == [1, 2, 3]
    assert json.loads((out / "result.json").read_text())["test_accuracy"] > 0.30


def test_a_checkpoint_from_another_device_type_resumes_with_a_notice(
    finished_run: Path, cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A CUDA generator's 16-byte state cannot seed a CPU generator: resume on a fresh, seeded stream."""
    after_two = tmp_path / "after-two"
    after_two.mkdir()
    shutil.copy(finished_run / "checkpoint.prev.pt", after_two / "checkpoint.pt")
    state, _ = rundir.load_checkpoint(after_two)
    assert state is not None and state["epoch"] == 2
    out = tmp_path / "from-gpu"
    out.mkdir()
    shutil.copy(finished_run / "config.json", out / "config.json")
    (out / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in read_rows(finished_run)[:2]))
    rundir.save_checkpoint(out, {**state, "generator": torch.zeros(16, dtype=torch.uint8)})
    assert main(train_args(cifar_dir, out, "--resume")) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "belongs to another device type than cpu" in err and "epochs after 2 use a fresh stream" in err
    rows = read_rows(out)
    assert [row["epoch"] for row in rows] == [1, 2, 3]
    assert deterministic(rows[:2]) == deterministic(read_rows(finished_run)[:2])
    assert deterministic(rows[2:]) != deterministic(read_rows(finished_run)[2:])
    assert json.loads((out / "result.json").read_text())["test_accuracy"] > 0.30


def test_an_auto_precision_run_resumes_in_the_precision_it_started_in(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run that `--precision auto` started in bf16 (as `fast` does on CUDA) finishes in bf16 on a
    CPU, where auto picks fp32: it used to switch precision halfway. (A smaller run than TINY: bf16
    is about 10x slower than fp32 on a CPU without bf16 instructions.)"""
    small = ["train", "--depth", "8", "--rr", "4,4,4", "--train-subset", "400", "--test-subset", "200",
             "--val-size", "100", "--epochs", "2", "--data-dir", str(cifar_dir), "--quiet", "--out"]
    fp32 = tmp_path / "fp32"
    assert main([*small, str(fp32)]) == 0
    out = tmp_path / "bf16-start"
    out.mkdir()
    record = json.loads((fp32 / "config.json").read_text())
    assert record["run"]["precision"] == "auto" and record["autocast"] is None
    (out / "config.json").write_text(json.dumps({**record, "autocast": "torch.bfloat16"}))
    (out / "metrics.jsonl").write_text(json.dumps(read_rows(fp32)[0]) + "\n")
    shutil.copy(fp32 / "checkpoint.prev.pt", out / "checkpoint.pt")
    capsys.readouterr()
    assert main([*small, str(out), "--resume"]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert "this run started in bf16 under --precision auto and keeps it" in err
    assert json.loads((out / "config.json").read_text())["autocast"] == "torch.bfloat16"
    assert json.loads((out / "result.json").read_text())["precision"] == "bf16"
    assert deterministic(read_rows(out)[1:]) != deterministic(read_rows(fp32)[1:])  # epoch 2 in bf16, not fp32


def test_a_recipe_with_test_time_augmentation_reports_it_once_at_the_end(
    cifar_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "fast"
    args = ["train", "--recipe", "fast", *TINY, "--train-subset", "1000", "--val-size", "0", "--batch-size", "64",
            "--data-dir", str(cifar_dir), "--out", str(out), "--quiet"]
    assert main(args) == 0
    summary = json.loads(capsys.readouterr().out)
    result = json.loads((out / "result.json").read_text())
    assert result["tta"] == summary["tta"] == "flip-shift"
    assert {key for key in result if key.startswith("tta")} <= set(summary)  # README: into the printed summary too
    assert (summary["rr"], summary["seed"]) == ([4, 4, 4], 0)  # a saved summary says which run it was
    assert summary["tta_test_accuracy"] == result["tta_test_accuracy"] > 0.30
    assert 0.5 < result["tta_test_loss"] < 2.3 and result["tta_test_loss"] != pytest.approx(result["test_loss"])
    assert result["tta_val_accuracy"] is None and result["tta_val_loss"] is None  # no validation split
    assert result["tta_seconds"] > 0
    assert not [key for row in read_rows(out) for key in row if key.startswith("tta")]  # epochs: one view
    assert main(["evaluate", str(out), "--json"]) == 0  # scored again: with the recipe's views by default
    scores = json.loads(capsys.readouterr().out)
    assert (scores["tta"], scores["views"], scores["test_accuracy"]) == ("flip-shift", 6, result["tta_test_accuracy"])
    assert scores["test_loss"] == pytest.approx(result["tta_test_loss"], rel=1e-6) and scores["val_loss"] is None
    assert main(["evaluate", str(out), "--json", "--tta", "none"]) == 0
    assert json.loads(capsys.readouterr().out)["test_accuracy"] == result["test_accuracy"]


def test_test_time_augmentation_averages_the_views_softmax(finished_run: Path, cifar_dir: Path) -> None:
    config = RunConfig(rr=parse_rr("4,4,4"), depth=8, train_subset=2000, val_size=500)
    data = load_cifar(data_dir=cifar_dir, val_size=500, train_subset=2000)
    session = build_session(config, data, torch.device("cpu"), compile_forward=False)
    state, _ = rundir.load_checkpoint(finished_run)
    session.model.load_state_dict(state["model"])
    split = Split(images=data.test.images[:250], labels=data.test.labels[:250])
    loss, accuracy, predictions = evaluate(session, split, "flip")
    with torch.inference_mode():
        images = to_float(split.images)
        mean = (F.softmax(session.model(images), 1) + F.softmax(session.model(images.flip(3)), 1)) / 2
    assert loss == pytest.approx(F.nll_loss(mean.log(), split.labels).item(), rel=1e-5)
    assert torch.equal(predictions, mean.argmax(1))
    assert accuracy == pytest.approx((mean.argmax(1) == split.labels).float().mean().item(), abs=0.01)
    one_view_loss = evaluate(session, split)[0]
    assert one_view_loss == pytest.approx(F.cross_entropy(session.model(to_float(split.images)), split.labels).item(), rel=1e-6)
    assert one_view_loss != pytest.approx(loss, rel=1e-3)  # two views, not one
