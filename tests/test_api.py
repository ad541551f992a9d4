"""The Python API (`import seratio`), as the README's "Python API" section uses it."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

import seratio
from study_fakes import FakeTrainer, create, table3_accuracy, work


def test_import_loads_no_torch_until_a_name_needs_it() -> None:
    code = (
        "import sys, seratio\n"
        "config = seratio.ModelConfig(depth=50, rr=seratio.parse_rr('16,16,16'))\n"
        "print(seratio.count_params(config), seratio.se_hidden(config), 'torch' in sys.modules)\n"
        "seratio.build_model\n"
        "print('torch' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split("\n")[:2] == ["764882 [1, 2, 4] False", "True"]  # DESIGN: 758,554 + 6,328


def test_every_name_in_all_resolves_and_a_typo_names_the_api() -> None:
    assert seratio.__all__ == sorted(seratio.__all__) and "train_run" in seratio.__all__
    for name in seratio.__all__:
        assert callable(getattr(seratio, name)), name
    assert dir(seratio) == sorted([*seratio.__all__, "__version__"])  # no importlib or TYPE_CHECKING to tab through
    with pytest.raises(AttributeError, match="no attribute 'train_runs'; the API is: .*train_run"):
        seratio.train_runs  # noqa: B018


def test_built_model_has_the_counted_parameters() -> None:
    config = seratio.ModelConfig(depth=50, rr=(8, 2, 16))
    model = seratio.build_model(config)
    assert sum(p.numel() for p in model.parameters()) == seratio.count_params(config) == 758_554 + 8 * (
        (2 * 16 * 2 + 2 + 16) + (2 * 32 * 16 + 16 + 32) + (2 * 64 * 4 + 4 + 64))


@pytest.fixture(scope="module")
def readme_script(cifar_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str]]:
    """The README's script, run as written: its folder of runs and its printed lines."""
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    script = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "SERATIO_DATA": str(cifar_dir), "OMP_NUM_THREADS": "1"}
    where = tmp_path_factory.mktemp("readme")
    out = subprocess.run([sys.executable, "-c", script], cwd=where, env=env, capture_output=True, text=True, check=True)
    return where / "api-runs", out.stdout.splitlines()


def test_the_readme_script_trains_compares_and_runs_a_trained_network(readme_script: tuple[Path, list[str]]) -> None:
    runs, out = readme_script
    accuracies = {}
    for line, (name, seed) in zip(out, [("constant", 0), ("constant", 1), ("found", 0), ("found", 1)]):
        result = seratio.read_result(str(runs / name / f"seed{seed}"))
        accuracies[name, seed] = result["test_accuracy"]
        assert result["seed"] == seed and result["test_accuracy"] > 0.2  # chance is 0.1
        assert line == f"{name} seed {seed}: {100 * result['test_accuracy']:.2f}% test accuracy"
    diff = (accuracies["found", 0] + accuracies["found", 1] - accuracies["constant", 0] - accuracies["constant", 1]) / 2
    seeds = seratio.compare_seeds(runs / "found", runs / "constant")
    assert seeds.welch.diff == pytest.approx(diff) and (seeds.a.seeds, seeds.b.rr) == ((0, 1), (8, 8, 8))
    assert out[4] == f"found - constant: {100 * diff:+.2f} points, Welch p = {seeds.welch.p_value:.3f}"
    assert out[5] == "seeds for 0.36 points at 0.15 points of seed noise: 4"
    named = out[6].removeprefix("predicted: ").split(", ")
    assert len(named) == 5 and set(named) <= {"airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                                              "ship", "truck"}


def test_a_loaded_model_predicts_what_the_run_recorded(readme_script: tuple[Path, list[str]]) -> None:
    import numpy as np
    import torch

    runs, _ = readme_script
    run = runs / "found" / "seed0"
    model = seratio.load_model(run)
    assert not model.training and sum(p.numel() for p in model.parameters()) == seratio.count_params(
        seratio.ModelConfig(depth=8, rr=(8, 2, 16)))
    data = seratio.load_cifar(val_size=500, test_subset=1000)
    with torch.inference_mode():
        predicted = model(seratio.to_float(data.test.images)).argmax(1).numpy()
    recorded = np.load(run / "test_predictions.npy")
    assert (predicted == recorded).mean() > 0.99  # the run evaluated the same weights in channels_last
    assert seratio.rescore_run(str(run), "none")["test_accuracy"] == pytest.approx(seratio.read_result(run)["test_accuracy"],
                                                                               abs=0.002)


def test_runs_are_read_back_not_retrained_and_folders_or_unfinished_runs_are_named(
    readme_script: tuple[Path, list[str]], tmp_path: Path,
) -> None:
    runs, _ = readme_script
    config = seratio.RunConfig(rr="8,2,16", depth=8, epochs=2, seed=0, train_subset=1200, test_subset=1000,
                               val_size=500)
    before = (runs / "found" / "seed0" / "result.json").stat().st_mtime_ns
    lines: list[str] = []
    seratio.train_run(config, runs / "found" / "seed0", log=lines.append)
    assert (runs / "found" / "seed0" / "result.json").stat().st_mtime_ns == before and lines  # said, not retrained
    with pytest.raises(seratio.SeratioError, match="is a folder of runs, not one run; compare_seeds"):
        seratio.compare_runs(runs / "found", runs / "constant" / "seed0")
    with pytest.raises(seratio.SeratioError, match="are the same run directory"):
        seratio.compare_seeds(runs / "found", runs / "found")
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "config.json").write_text("{}")
    with pytest.raises(seratio.SeratioError, match="has not finished: it has no result.json yet"):
        seratio.read_result(unfinished)


def test_configs_take_ratios_numpy_integers_and_paths_as_a_notebook_gives_them(tmp_path: Path) -> None:
    import numpy as np

    for rr, expected in [("8,2,16", (8, 2, 16)), ([8, 2, 16], (8, 2, 16)), (8, (8, 8, 8)), ("16", (16, 16, 16)),
                         (None, (None, None, None)), (np.int64(4), (4, 4, 4))]:
        assert seratio.RunConfig(rr=rr).rr == seratio.ModelConfig(rr=rr).rr == expected
    config = seratio.RunConfig(depth=np.int64(8), seed=np.int64(3), epochs=np.int32(2), lr=np.float32(0.5),
                               data_dir=tmp_path)
    assert (type(config.depth), type(config.seed), type(config.epochs), type(config.lr)) == (int, int, int, float)
    assert config.data_dir == str(tmp_path) and json.dumps(config.to_dict())
    assert seratio.RunConfig(lr=np.float32(1e-3)).lr == 0.001  # what was meant, not 0.0010000000474974513
    assert seratio.ModelConfig(depth=np.int64(8), num_classes=np.int64(10)).depth == 8
    with pytest.raises(seratio.SeratioError, match="reduction ratios 8.0 are not a ratio or a sequence"):
        seratio.RunConfig(rr=8.0)
    with pytest.raises(seratio.SeratioError, match="data_dir 123 must be a path or None"):
        seratio.RunConfig(data_dir=123)


def test_training_leaves_the_callers_random_state_as_it_was(cifar_dir: Path, tmp_path: Path) -> None:
    """A run seeds torch for its own model; a notebook's next draw must not depend on it."""
    import torch

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    config = seratio.RunConfig(rr=8, depth=8, epochs=1, train_subset=200, test_subset=1000, val_size=100,
                               data_dir=cifar_dir)
    assert seratio.train_run(config, tmp_path / "run", log=lambda line: None)["epochs"] == 1
    assert torch.equal(torch.rand(3), expected)


def test_train_run_refuses_what_is_not_a_config_or_a_callback_before_it_writes(tmp_path: Path) -> None:
    with pytest.raises(seratio.SeratioError, match="is not a RunConfig; make one with RunConfig"):
        seratio.train_run({"rr": [8, 2, 16]}, tmp_path / "dict")  # type: ignore[arg-type]
    with pytest.raises(seratio.SeratioError, match="on_epoch 5 is not callable"):
        seratio.train_run(seratio.RunConfig(depth=8), tmp_path / "callback", on_epoch=5)  # type: ignore[arg-type]
    assert list(tmp_path.iterdir()) == []


def test_a_study_reads_back_as_records_and_summaries_over_seeds(tmp_path: Path) -> None:
    url = f"journal:{tmp_path / 'study.log'}"
    create(url, "p", "paper", tmp_path / "runs")
    work(url, "p", FakeTrainer(table3_accuracy))
    study = seratio.read_study("p", url, artifacts=tmp_path / "moved")
    assert len(study.trials) == 14 and study.definition.strategy == "paper"
    assert {t.run_dir.parent for t in study.trials} == {tmp_path / "moved"}  # where the runs are mounted here
    configs = seratio.aggregate(study).configs
    assert configs[(8, 2, 16)].test_accuracy.mean == 0.9153 and configs[(None, None, None)].test_accuracy.mean == 0.9097
    with pytest.raises(seratio.SeratioError, match="--db-patience -1 must be >= 0"):
        seratio.read_study("p", url, db_patience=-1)
    written = seratio.write_report(study, str(tmp_path / "report"), "md,json", baseline="8,8,8")
    rows = json.loads((tmp_path / "report" / "table.json").read_text())["rows"]
    assert len(rows) == 17 and [r["ratios"] for r in rows if r["is_baseline"]] == ["(8, 8, 8)"] * 3  # shown per phase
    assert {p.name for p in written.paths} >= {"table.md", "table.json"} and not (tmp_path / "report" / "index.html").exists()
    assert seratio.write_report(study, tmp_path / "trailing", "md,").paths  # as --format md, takes it
    with pytest.raises(seratio.SeratioError, match="--format 'md,pdf': unknown format pdf"):
        seratio.write_report(study, tmp_path / "other", "md,pdf")
    with pytest.raises(seratio.SeratioError, match="--baseline 32,32,32: study 'p' has no completed comparable run"):
        seratio.write_report(study, tmp_path / "other", "md", baseline=32)
    assert not (tmp_path / "other").exists()


def test_statistics_of_the_papers_gap() -> None:
    assert [seratio.seeds_needed(0.0036, std) for std in (0.0010, 0.0015, 0.0020, 0.0025)] == [3, 4, 6, 9]
    welch = seratio.welch_t_test([0.9153, 0.9160, 0.9149], [0.9117, 0.9121, 0.9110])
    assert welch.p_value < 0.01 and welch.ci_low < welch.diff < welch.ci_high
    assert seratio.holm([0.01, 0.04]) == [0.02, 0.04]


def test_a_bad_value_is_a_seratio_error_naming_it() -> None:
    with pytest.raises(seratio.SeratioError, match="stage 1 has 16 channels; ratio 32"):
        seratio.ModelConfig(rr=(32, 4, 4))
    run = seratio.RunConfig(rr=(8, 2, 16))
    for count in (seratio.count_params, seratio.count_macs, seratio.build_model):
        with pytest.raises(seratio.SeratioError, match=r"RunConfig .* is not a ModelConfig; RunConfig.model_config\(\)"):
            count(run)  # type: ignore[arg-type]
    assert seratio.count_params(run.model_config()) == 772_426


def test_main_runs_a_command_and_returns_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    import numpy as np

    assert seratio.main(["info", "--rr", "8,2,16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == seratio.count_params(seratio.ModelConfig(rr=(8, 2, 16)))
    assert seratio.main("info --rr 8,2,16 --depth 8 --json") == 0  # one string, split as a shell would
    assert json.loads(capsys.readouterr().out)["params"] == 79_776
    assert seratio.main(["info", "--depth", np.int64(8), "--rr", Path("8"), "--json"]) == 0  # numbers, paths as text
    assert json.loads(capsys.readouterr().out)["se_hidden"] == [2, 4, 8]
    assert [seratio.main(["--version"]), seratio.main(["--help"]), seratio.main([]), seratio.main(["trian"])] == [0, 0, 2, 2]
    assert seratio.main(["info", None]) == 2  # type: ignore[list-item]
    assert "argument None is not text, a path or a number" in capsys.readouterr().err


def test_main_from_a_script_never_restarts_the_calling_process() -> None:
    """The `seratio` command re-executes itself under tcmalloc; a script's state must survive a call."""
    code = "import os, seratio\nprint('started', os.getpid())\nraise SystemExit(seratio.main())"
    out = subprocess.run([sys.executable, "-c", code, "info", "--depth", "8"], capture_output=True, text=True).stdout
    assert out.count("started") == 1 and "parameters" in out


def test_the_names_a_type_checker_sees_are_the_names_loaded() -> None:
    """`__init__` lists each name twice, for static tools and for loading; the two lists must agree."""
    tree = ast.parse(Path(seratio.__file__).read_text())
    static = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module and node.module.startswith("seratio.") for alias in node.names}
    assert static == {(home, name) for name, home in seratio._HOMES.items()}
