"""Results of different programs are never averaged silently: trials record their code and recipe.

A study's run directories can outlive the code that wrote them (an artifacts root reused after an
upgrade, a recipe tweaked between sessions). A finished run is read back, never retrained, so its
trial carries the code version and recipe hash of the program that trained it, and the report
keeps it out of the averages and says why.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from optuna.trial import TrialState

from faultkit import main_in_process
from seratio.config import RunConfig, code_version
from seratio.study import run_name
from seratio.worker import Worker
from study_fakes import TINY, FakeTrainer, _result, create, work

pytestmark = pytest.mark.faults
OLD_CODE = "0.0.1+gdeadbeef00"
OLD_RECIPE = "0123456789ab"
REPO = Path(__file__).resolve().parents[2]


def test_a_real_run_records_the_code_version_and_recipe_hash_it_ran_with(reference_run: Path) -> None:
    result = json.loads((reference_run / "result.json").read_text())
    config = RunConfig.from_dict(json.loads((reference_run / "config.json").read_text())["run"])
    assert result["code_version"] == code_version()
    assert result["recipe_hash"] == config.resolved_recipe().fingerprint()
    assert result["precision"] == "fp32"  # --precision auto on a CPU, resolved


def test_a_trial_of_other_code_and_recipe_is_recorded_flagged_and_kept_out_of_the_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = f"journal:{tmp_path / 'study.log'}"
    worker = _study_with_one_run_finished_earlier(storage, tmp_path / "runs", code_version=OLD_CODE, recipe_hash=OLD_RECIPE)

    trials = worker.store.trials()
    complete = {(tuple(t.user_attrs["rr"]), t.user_attrs["seed"]): t for t in trials if t.state == TrialState.COMPLETE}
    assert len(complete) == 4
    for (rr, seed), trial in complete.items():
        odd = (rr, seed) == ((4, 4, 4), 1)
        assert trial.user_attrs["code_version"] == (OLD_CODE if odd else code_version())
        assert trial.user_attrs["recipe_hash"] == (OLD_RECIPE if odd else TINY.resolved_recipe().fingerprint())

    out = tmp_path / "report"
    assert main_in_process(["report", "--name", "prov", "--storage", storage, "--out", str(out),
                            "--format", "json,md"]) == 0
    terminal = capsys.readouterr().out
    document = json.loads((out / "table.json").read_text())
    [excluded] = document["excluded"]
    assert (tuple(excluded["rr"]), excluded["seed"]) == ((4, 4, 4), 1)
    assert f"code_version {OLD_CODE!r}" in excluded["reason"] and f"recipe_hash {OLD_RECIPE!r}" in excluded["reason"]
    row = next(r for r in document["rows"] if tuple(r["rr"]) == (4, 4, 4))
    assert row["n"] == 1 and row["seeds"] == [0]  # the mean is over the comparable run only
    markdown = (out / "table.md").read_text()
    assert "## Excluded from averages" in markdown and OLD_RECIPE in markdown
    assert "excluded" in terminal and OLD_RECIPE in terminal, terminal  # said where the user looks first


def test_a_run_trained_in_another_precision_is_kept_out_of_the_mean(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`--precision auto` trains `fast` in bf16 on CUDA and in fp32 on a CPU under one recipe hash, so
    a study served by both kinds of worker must not average the two."""
    storage = f"journal:{tmp_path / 'study.log'}"
    _study_with_one_run_finished_earlier(storage, tmp_path / "runs", precision="bf16")
    out = tmp_path / "report"
    assert main_in_process(["report", "--name", "prov", "--storage", storage, "--out", str(out), "--format", "json"]) == 0
    [excluded] = json.loads((out / "table.json").read_text())["excluded"]
    assert (tuple(excluded["rr"]), excluded["seed"]) == ((4, 4, 4), 1)
    assert excluded["reason"] == "differs from the study: precision 'bf16' (majority 'fp32')"
    assert "precision 'bf16'" in " ".join(capsys.readouterr().out.split())


def _study_with_one_run_finished_earlier(storage: str, runs: Path, **stored: str) -> Worker:
    """A constant study of (4, 4, 4), two seeds, whose seed-1 run a worker finds finished, with `stored`
    in its result.json, and reads back instead of training; a fake trainer trains the rest."""
    create(storage, "prov", "constant", runs, candidates=(4,), seeds=2)
    stale = runs / run_name((4, 4, 4), 1)
    stale.mkdir(parents=True)
    config = RunConfig(rr=(4, 4, 4), seed=1, **{k: getattr(TINY, k) for k in ("depth", "epochs", "batch_size")})
    (stale / "result.json").write_text(json.dumps(_result(config, 0.5) | stored))
    return work(storage, "prov", FakeTrainer())


def test_the_code_version_follows_the_package_source_not_the_commit(tmp_path: Path) -> None:
    """A commit that leaves src/ alone (a README, a test) is the same program, so it must not split a
    study's runs; an edit to src/, committed or not, is another program."""
    clone = tmp_path / "clone"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)

    def version() -> str:
        probe = "import sys; sys.path.insert(0, 'src'); from seratio.config import code_version; print(code_version())"
        return subprocess.run([sys.executable, "-c", probe], cwd=clone, capture_output=True, text=True,
                              check=True).stdout.strip()

    def commit(message: str) -> None:
        subprocess.run(["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qam",
                        message, "--allow-empty"], check=True)

    original = version()
    assert "+src." in original
    (clone / "README.md").write_text("edited\n")
    commit("docs only")
    assert version() == original
    module = clone / "src" / "seratio" / "labels_extra.py"
    module.write_text("X = 1\n")
    edited = version()
    assert edited != original and edited.startswith(original + ".")  # an uncommitted file in src/ counts
    subprocess.run(["git", "-C", str(clone), "add", str(module)], check=True)
    commit("code")
    assert version() not in (original, edited)
