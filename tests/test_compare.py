"""`seratio compare`: two run directories, image by image."""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from scipy import stats as sps
from statsmodels.stats.contingency_tables import mcnemar as sm_mcnemar
from statsmodels.stats.power import TTestIndPower

from fixtures.studies import CLASS_NAMES, write_run_dir
from seratio.cli import main
from seratio.errors import SeratioError
from seratio.report.labels import fmt_p
from seratio.report.pair import compare_runs


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("runs")
    write_run_dir(root / "se-8-2-16", (8, 2, 16), 0, 0.9153, 0.4652, run_seed=1)
    write_run_dir(root / "resnet", (None, None, None), 0, 0.9097, 0.4803, run_seed=2)
    return root / "se-8-2-16", root / "resnet"


def test_compare_matches_stored_runs_and_statsmodels(runs: tuple[Path, Path]) -> None:
    a_dir, b_dir = runs
    result = compare_runs(a_dir, b_dir)
    labels = np.load(a_dir / "test_labels.npy")
    a = np.load(a_dir / "test_predictions.npy") == labels
    b = np.load(b_dir / "test_predictions.npy") == labels
    table = [[np.sum(a & b), np.sum(a & ~b)], [np.sum(~a & b), np.sum(~a & ~b)]]
    assert (result.a.accuracy, result.b.accuracy) == (pytest.approx(0.9153), pytest.approx(0.9097))
    assert (result.mcnemar.b, result.mcnemar.c) == (table[0][1], table[1][0])
    assert result.mcnemar.p_value == pytest.approx(sm_mcnemar(table, exact=True).pvalue)
    assert result.a.rr == (8, 2, 16) and result.b.loss == 0.4803
    confusion = np.asarray(json.loads((a_dir / "result.json").read_text())["confusion_matrix"])
    assert [c.name for c in result.per_class] == CLASS_NAMES
    assert [c.accuracy_a for c in result.per_class] == pytest.approx(list(np.diag(confusion) / confusion.sum(1)))
    assert sum(c.images for c in result.per_class) == labels.size


def test_compare_refuses_different_test_sets(runs: tuple[Path, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    write_run_dir(other, (8, 8, 8), 0, 0.91, 0.47, run_seed=3)
    np.save(other / "test_labels.npy", np.roll(np.load(other / "test_labels.npy"), 1))
    with pytest.raises(SeratioError, match="different test labels"):
        compare_runs(runs[0], other)
    with pytest.raises(SeratioError, match="does not exist"):
        compare_runs(runs[0], tmp_path / "absent")
    np.save(other / "test_labels.npy", np.load(other / "test_labels.npy")[:500])
    np.save(other / "test_predictions.npy", np.load(other / "test_predictions.npy")[:500])
    with pytest.raises(SeratioError, match=r"different test labels \(10,000 and 500 test images: was one run on a --test-subset\?\)"):
        compare_runs(runs[0], other)


def test_cli_compare(runs: tuple[Path, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["compare", str(runs[0]), str(runs[1])]) == 0
    out = capsys.readouterr().out
    assert "McNemar exact p" in out and "+0.56 points" in out and "automobile" in out
    assert main(["compare", str(runs[0]), str(runs[1]), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    assert document["mcnemar"]["n"] == document["mcnemar"]["b"] + document["mcnemar"]["c"]
    assert main(["compare", str(runs[0]), "/nonexistent/run"]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_settings_that_differ_besides_the_ratios_are_said(
    tiny_run: Path, runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Same test images, but one run trained longer and in bf16: the gap is not the ratios' alone."""
    other = tmp_path / "longer"
    shutil.copytree(tiny_run, other)
    result = json.loads((other / "result.json").read_text())
    (other / "result.json").write_text(json.dumps(result | {"epochs": 4, "precision": "bf16"}))
    assert compare_runs(tiny_run, other).differences == ("epochs 3 vs 4", "precision fp32 vs bf16")
    assert main(["compare", str(tiny_run), str(other)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "note: the runs also differ in epochs 3 vs 4; precision fp32 vs bf16;" in out
    assert compare_runs(*runs).differences == ()  # no config.json: compared on what both runs store


def test_runs_trained_on_other_images_of_the_same_count_are_said(
    tiny_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Two draws of 2,000 training images under other split seeds share few images; the count alone
    hid that. Where both trained on the whole training set, the split seed changes nothing."""
    config = json.loads((tiny_run / "config.json").read_text())

    def copy_with(name: str, **run: Any) -> Path:
        other = tmp_path / name
        shutil.copytree(tiny_run, other)
        (other / "config.json").write_text(json.dumps(config | {"run": config["run"] | run}))
        return other

    assert compare_runs(tiny_run, copy_with("seed1", split_seed=1)).differences == (
        "training images 2,000 (split seed 0, 500 held out for validation) vs "
        "2,000 (split seed 1, 500 held out for validation)",
    )
    assert compare_runs(tiny_run, copy_with("val0", val_size=0)).differences == (
        "training images 2,000 (split seed 0, 500 held out for validation) vs "
        "2,000 (split seed 0, 0 held out for validation)",
    )
    whole = {"val_size": 0, "train_subset": None}
    everything = {"data": config["data"] | {"train": 50_000}}  # what config.json records of such a run

    def whole_set(name: str, **run: Any) -> Path:
        other = copy_with(name, **run)
        (other / "config.json").write_text(json.dumps(json.loads((other / "config.json").read_text()) | everything))
        return other

    assert compare_runs(whole_set("all0", **whole), whole_set("all1", **whole, split_seed=1)).differences == ()
    # a subset that is the whole training set is the whole training set
    assert compare_runs(whole_set("all2", **whole), whole_set("sub", val_size=0, train_subset=50_000)).differences == ()
    assert main(["compare", str(tiny_run), str(tmp_path / "seed1")]) == 0
    assert "split seed 1" in capsys.readouterr().out


def test_compare_says_a_run_has_not_finished(
    runs: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run stopped mid-training has config.json and checkpoints but no result: that is not damage."""
    stopped = tmp_path / "stopped run"  # the hint quotes it, ready to paste
    stopped.mkdir()
    (stopped / "config.json").write_text("{}")
    assert main(["compare", str(runs[0]), str(stopped)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"run '{stopped}' has not finished: it has no result.json yet" in err
    assert f"seratio train --resume --out '{stopped}'" in err


SEEDS_A = (0.9153, 0.9121, 0.9140)  # (8, 2, 16), three seeds
SEEDS_B = (0.9117, 0.9095, 0.9102)  # (8, 8, 8)


def _seeds(folder: Path, rr: tuple[int, ...], accuracies: tuple[float, ...], first_run_seed: int) -> Path:
    for seed, accuracy in enumerate(accuracies):
        write_run_dir(folder / f"rr-{'-'.join(map(str, rr))}_seed-{seed}", rr, seed, accuracy, 0.47, first_run_seed + seed)
    return folder


def test_two_folders_of_seeds_are_compared_by_welch_with_what_the_seeds_can_detect(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = _seeds(tmp_path / "a", (8, 2, 16), SEEDS_A, 10)
    b = _seeds(tmp_path / "b", (8, 8, 8), SEEDS_B, 20)
    assert main(["compare", str(a), str(b), "--json"]) == 0
    document = json.loads(capsys.readouterr().out)
    reference = sps.ttest_ind(SEEDS_A, SEEDS_B, equal_var=False)
    interval = reference.confidence_interval(0.95)
    welch = document["welch"]
    gap = np.mean(SEEDS_A) - np.mean(SEEDS_B)
    assert welch["p_value"] == pytest.approx(reference.pvalue) and welch["diff"] == pytest.approx(gap)
    assert (welch["ci_low"], welch["ci_high"]) == pytest.approx((interval.low, interval.high))
    assert document["a"]["accuracies"] == pytest.approx(list(SEEDS_A)) and document["b"]["seeds"] == [0, 1, 2]
    squares = sum(((np.asarray(s) - np.mean(s)) ** 2).sum() for s in (SEEDS_A, SEEDS_B))
    noise = document["noise"]  # named as in table.json's seed_noise
    assert noise["pooled_std"] == pytest.approx(math.sqrt(squares / 4)) and noise["seeds"] == 3
    assert noise["detectable_difference"] == pytest.approx(
        noise["pooled_std"] * TTestIndPower().solve_power(nobs1=3, power=0.8, alpha=0.05))
    assert main(["compare", str(a), str(b)]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"A - B = +0.33 points, 95% interval [{100 * interval.low:+.2f}, {100 * interval.high:+.2f}]" in out
    assert f"p = {fmt_p(reference.pvalue)}" in out and "A is +0.33 points from B" in out
    assert "a t-test at the 5% level (two-sided) finds" in out and "Holm" not in out  # one test: nothing to adjust


def test_a_folder_of_seeds_must_hold_one_configuration_and_two_seeds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    b = _seeds(tmp_path / "b", (8, 8, 8), SEEDS_B, 20)
    mixed = _seeds(tmp_path / "mixed", (8, 2, 16), SEEDS_A[:2], 10)
    write_run_dir(mixed / "other", (4, 4, 4), 0, 0.91, 0.47, 30)
    assert main(["compare", str(mixed), str(b)]) == 2
    assert "other and rr-8-2-16_seed-0 in " in (err := capsys.readouterr().err) and "differ in rr [4, 4, 4] vs [8, 2, 16]" in err
    one = _seeds(tmp_path / "one", (8, 2, 16), SEEDS_A[:1], 10)
    assert main(["compare", str(one), str(b)]) == 2
    assert "holds 1 finished run; Welch's test over seeds needs at least 2 per side" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "one"), str(tmp_path / "nothing")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_folders_whose_seeds_all_scored_the_same_give_strict_json(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Welch cannot run without spread: its NaNs are null, and the text says why."""
    a = _seeds(tmp_path / "a", (16, 16, 16), (0.9, 0.9, 0.9), 10)
    b = _seeds(tmp_path / "b", (8, 8, 8), (0.8, 0.8, 0.8), 20)
    assert main(["compare", str(a), str(b), "--json"]) == 0
    document = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert document["welch"]["p_value"] is None and document["welch"]["diff"] == pytest.approx(0.1)
    assert document["noise"] is None
    assert main(["compare", str(a), str(b)]) == 0
    assert "not tested: every seed on both sides scored the same" in capsys.readouterr().out
