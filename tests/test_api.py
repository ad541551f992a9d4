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
    assert set(seratio.__all__) <= set(dir(seratio))
    with pytest.raises(AttributeError, match="no attribute 'train_runs'; the API is: .*train_run"):
        seratio.train_runs  # noqa: B018


def test_built_model_has_the_counted_parameters() -> None:
    config = seratio.ModelConfig(depth=50, rr=(8, 2, 16))
    model = seratio.build_model(config)
    assert sum(p.numel() for p in model.parameters()) == seratio.count_params(config) == 758_554 + 8 * (
        (2 * 16 * 2 + 2 + 16) + (2 * 32 * 16 + 16 + 32) + (2 * 64 * 4 + 4 + 64))


def test_the_readme_script_trains_compares_and_reads_back(cifar_dir: Path, tmp_path: Path) -> None:
    readme = (Path(__file__).parents[1] / "README.md").read_text()
    script = readme.split("## Python API", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    env = {**os.environ, "SERATIO_DATA": str(cifar_dir), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         check=True).stdout.splitlines()
    runs = tmp_path / "api-runs"
    results = [seratio.read_result(str(runs / f"seed{seed}")) for seed in (0, 1)]
    for seed, result in enumerate(results):
        assert result["seed"] == seed and result["test_accuracy"] > 0.2  # chance is 0.1
        assert out[seed] == f"seed {seed}: {100 * result['test_accuracy']:.2f}% test accuracy, 79,776 parameters"
    assert [row["epoch"] for row in seratio.read_metrics(runs / "seed0")] == [1, 2]
    pair = seratio.compare_runs(str(runs / "seed0"), str(runs / "seed1"))
    assert (pair.a.seed, pair.b.seed, pair.a.accuracy) == (0, 1, results[0]["test_accuracy"])
    assert pair.mcnemar.b + pair.mcnemar.c == pair.mcnemar.n > 0
    assert out[2] == f"McNemar p = {pair.mcnemar.p_value:.3f}; the seeds disagree on {pair.mcnemar.n} test images"
    assert out[3:] == ["seeds per configuration for 0.36 points: 4"]


def test_statistics_of_the_papers_gap() -> None:
    assert [seratio.seeds_needed(0.0036, std) for std in (0.0010, 0.0015, 0.0020, 0.0025)] == [3, 4, 6, 9]
    welch = seratio.welch_t_test([0.9153, 0.9160, 0.9149], [0.9117, 0.9121, 0.9110])
    assert welch.p_value < 0.01 and welch.ci_low < welch.diff < welch.ci_high
    assert seratio.holm([0.01, 0.04]) == [0.02, 0.04]


def test_a_bad_value_is_a_seratio_error_naming_it() -> None:
    with pytest.raises(seratio.SeratioError, match="stage 1 has 16 channels; ratio 32"):
        seratio.ModelConfig(rr=(32, 4, 4))


def test_main_runs_a_command_and_returns_its_exit_code(capsys: pytest.CaptureFixture[str]) -> None:
    assert seratio.main(["info", "--rr", "8,2,16", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["params"] == seratio.count_params(seratio.ModelConfig(rr=(8, 2, 16)))


def test_the_names_a_type_checker_sees_are_the_names_loaded() -> None:
    """`__init__` lists each name twice, for static tools and for loading; the two lists must agree."""
    tree = ast.parse(Path(seratio.__file__).read_text())
    static = {(node.module, alias.name) for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
              and node.module and node.module.startswith("seratio.") for alias in node.names}
    assert static == {(home, name) for name, home in seratio._HOMES.items()}
