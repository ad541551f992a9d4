"""`make demo`: the paper's greedy study in miniature on the CPU, ending with the report.

Depth 8, a 2,500-image stratified subset, 3 epochs, ratios {2, 4, 8}: about ten tiny runs.
The numbers are far from the paper's; the point is to exercise the whole pipeline
(search, storage, statistics, figures, HTML) on real CIFAR-10 in a few minutes.
Rerunning it trains nothing new: the finished study is read back and reported.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from seratio.cli import main as seratio

STUDY = "demo-greedy"


def run(out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out.resolve() / 'study.db'}"
    started = time.perf_counter()
    code = seratio([
        "study", "run", "greedy", "--name", STUDY, "--storage", storage,
        "--artifacts", str(out / "runs"), "--candidates", "2,4,8",
        "--depth", "8", "--train-subset", "2500", "--val-size", "500", "--epochs", "3",
    ])
    if code:
        return code
    code = seratio(["report", "--name", STUDY, "--storage", storage, "--out", str(out / "report")])
    if code:
        return code
    print((out / "report" / "table.md").read_text())
    print(f"study status: seratio study status --name {STUDY} --storage {storage}")
    print(f"report: {(out / 'report' / 'index.html').resolve()}")
    print(f"demo finished in {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("demo-out"))
    sys.exit(run(parser.parse_args().out))
