"""The GPU checks' scripts run here on the CPU first: a lent GPU has minutes, and a script that
crashes there loses them. Only what holds on any device is asserted, not speed."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def test_stacked_models_train_each_model_as_alone_in_one_step_of_as_many_kernels(tmp_path: Path) -> None:
    """The stacking benchmark's premise: K stacked models, padded to the widest SE blocks, learn what
    each would learn alone, and a step launches as many kernels whatever K, more than one plain
    model's but not twice as many."""
    out = tmp_path / "stacked.json"
    command = [sys.executable, str(REPO / "benchmarks" / "stacked_models.py"), "--device", "cpu", "--depth", "8",
               "--steps", "4", "--models", "1,2", "--precision", "fp32", "--repeats", "1", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    result = json.loads(out.read_text())
    checked = result["check"]
    assert checked["same"] and checked["max_relative_gap"] < 1e-5 and checked["padding_max"] == 0.0
    assert checked["ratios"] == [[8, 2, 16], [2, 8, 8], [16, 16, 16]]  # other SE widths in every stage
    rows = {row["models"]: row for row in result["rows"]}
    assert set(rows) == {1, 2} and all(row["how"] == "eager" for row in rows.values())
    assert (rows[1]["stacks"], rows[2]["stacks"]) == (14, 7)
    assert rows[1]["kernels"] == rows[2]["kernels"]
    assert result["lone_kernels"] < rows[1]["kernels"] < 2 * result["lone_kernels"]
    for row in rows.values():
        assert row["ips_all"] == pytest.approx(row["models"] * row["ips_per_model"]) and row["ips_all"] > 0
        assert 0 < row["projected_hours"] < 10_000
    assert "check: 3 models padded and stacked vs alone" in done.stdout and ": same" in done.stdout
