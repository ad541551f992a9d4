"""bf16 autocast on the CPU (AMX where present) learns as well as fp32 on a short real run.

Why a bound and not equality: bf16 rounds every activation to 8 mantissa bits, so the two runs
diverge after a few steps and end as two different samples of the same training. The bound is
what two fp32 runs with different seeds also differ by on this tiny setup (a few points), far
tighter than the gap from a broken bf16 path (which stays near chance, 10%).
"""

from __future__ import annotations

from pathlib import Path

from seratio.config import RunConfig
from seratio.train import train_run

MIN_ACCURACY = 0.30
MAX_GAP = 0.06


def test_bf16_matches_fp32_accuracy_on_a_short_real_run(cifar_dir: Path, tmp_path: Path) -> None:
    base = dict(rr=(4, 4, 4), depth=8, train_subset=2000, val_size=0, epochs=3, data_dir=str(cifar_dir), device="cpu")
    fp32 = train_run(RunConfig(precision="fp32", **base), tmp_path / "fp32")
    bf16 = train_run(RunConfig(precision="bf16", **base), tmp_path / "bf16")
    assert fp32["test_accuracy"] > MIN_ACCURACY, fp32["test_accuracy"]
    assert bf16["test_accuracy"] > MIN_ACCURACY, bf16["test_accuracy"]
    assert abs(bf16["test_accuracy"] - fp32["test_accuracy"]) <= MAX_GAP, (fp32["test_accuracy"], bf16["test_accuracy"])
