"""A report built from a study of tiny real CIFAR-10 runs: the values it shows are the stored ones."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest
from matplotlib.image import imread

from seratio.cli import main

STUDY = "real-constant"


@pytest.fixture(scope="module")
def real_study(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    root = tmp_path_factory.mktemp("real")
    storage = f"sqlite:///{root / 'study.db'}"
    code = main([
        "study", "run", "constant", "--name", STUDY, "--storage", storage, "--artifacts", str(root / "runs"),
        "--candidates", "4,8", "--depth", "8", "--train-subset", "1000", "--test-subset", "1000", "--val-size", "200",
        "--epochs", "2",
        "--data-dir", str(cifar_dir),
    ])
    assert code == 0
    assert main(["report", "--name", STUDY, "--storage", storage, "--out", str(root / "report")]) == 0
    return storage, root / "report"


def test_table_values_equal_the_stored_trials(real_study: tuple[str, Path]) -> None:
    storage, report = real_study
    trials = optuna.load_study(study_name=STUDY, storage=storage).get_trials()
    stored = {tuple(t.user_attrs["rr"]): t.user_attrs for t in trials}
    assert set(stored) == {(None, None, None), (4, 4, 4), (8, 8, 8)}
    rows = json.loads((report / "table.json").read_text())["rows"]
    assert {tuple(r["rr"]) for r in rows} == set(stored)
    for row in rows:
        attrs = stored[tuple(row["rr"])]
        assert row["test_accuracy"] == attrs["test_accuracy"]
        assert row["params"] == attrs["params"]
        assert 0.2 < attrs["test_accuracy"] < 1.0  # learned: chance is 0.1
        result = json.loads((Path(attrs["run_dir"]) / "result.json").read_text())
        assert result["test_accuracy"] == attrs["test_accuracy"]


def test_figures_and_page_exist_and_parse(real_study: tuple[str, Path]) -> None:
    _, report = real_study
    for name in ("curves.png", "pareto.png"):
        assert imread(report / name).shape[2] in (3, 4)
    assert len(list(report.glob("confusion_*.png"))) >= 2
    html = (report / "index.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "McNemar" in html
    assert np.isfinite(json.loads((report / "table.json").read_text())["rows"][0]["test_loss"])


def test_a_quick_study_says_its_accuracies_come_from_data_subsets(real_study: tuple[str, Path]) -> None:
    _, report = real_study
    note = ("Quick-run data: this study used a stratified subset of 1,000 training images and a stratified "
            "subset of 1,000 test images, so its accuracies are not comparable with full-data runs or the paper's.")
    assert note in json.loads((report / "table.json").read_text())["notes"]
    assert note in (report / "table.md").read_text()
    trials = optuna.load_study(study_name=STUDY, storage=real_study[0]).get_trials()
    assert {len(np.load(Path(t.user_attrs["run_dir"]) / "test_labels.npy")) for t in trials} == {1000}


def test_a_report_reads_the_runs_where_artifacts_says_the_folder_is_mounted(
    real_study: tuple[str, Path], tmp_path: Path
) -> None:
    """On another machine the shared run folder may be mounted elsewhere than the study recorded;
    without the runs the report has no curves, confusion matrices or McNemar tests."""
    storage, report = real_study
    recorded = report.parent / "runs"
    mounted = tmp_path / "mounted"
    recorded.rename(mounted)
    try:
        assert main(["report", "--name", STUDY, "--storage", storage, "--out", str(tmp_path / "without")]) == 0
        assert main(["report", "--name", STUDY, "--storage", storage, "--out", str(tmp_path / "with"),
                     "--artifacts", str(mounted)]) == 0
    finally:
        mounted.rename(recorded)
    assert not list((tmp_path / "without").glob("confusion_*.png"))
    assert len(list((tmp_path / "with").glob("confusion_*.png"))) >= 2
    assert "McNemar" in (tmp_path / "with" / "index.html").read_text()
