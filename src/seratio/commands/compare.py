"""`seratio compare RUN_A RUN_B`: is one run really better than the other on the same test images?"""

from __future__ import annotations

import argparse
import json
from dataclasses import asdict
from typing import TYPE_CHECKING

from rich.table import Table

from seratio.commands.console import stdout_console
from seratio.commands.options import path_arg
from seratio.errors import SeratioError
from seratio.report.labels import fmt_p

if TYPE_CHECKING:
    from seratio.report.pair import PairComparison, RunSummary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="paired comparison of two runs: accuracies, McNemar's exact test, per-class differences",
        description="Compare two finished run directories image by image (they must share the test set).",
    )
    parser.add_argument("run_a", type=path_arg, metavar="RUN_DIR_A")
    parser.add_argument("run_b", type=path_arg, metavar="RUN_DIR_B")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(func=run)


def _name(run: RunSummary) -> str:
    rr = "?" if run.rr is None else ",".join("none" if r is None else str(r) for r in run.rr)
    return f"{run.path.name} (rr {rr}, seed {run.seed})"


def _print(result: PairComparison) -> None:
    console = stdout_console()
    a, b, m = result.a, result.b, result.mcnemar
    console.print(f"A  {_name(a)}: test accuracy {100 * a.accuracy:.2f}%"
                  + (f", loss {a.loss:.4f}" if a.loss is not None else ""))
    console.print(f"B  {_name(b)}: test accuracy {100 * b.accuracy:.2f}%"
                  + (f", loss {b.loss:.4f}" if b.loss is not None else ""))
    console.print(f"A - B = {100 * (a.accuracy - b.accuracy):+.2f} points; {m.b} images right only in A, "
                  f"{m.c} only in B; McNemar exact p = {fmt_p(m.p_value)}")
    verdict = "significant" if m.p_value < 0.05 else "not significant"
    console.print(f"The difference is {verdict} at the 5% level (this pair of trained networks only).")
    if result.differences:
        console.print(f"note: the runs also differ in {'; '.join(result.differences)}; the difference is not "
                      "the ratios' (and seeds') alone.")
    table = Table(title="Per-class test accuracy (%)")
    for column in ("class", "images", "A", "B", "A - B"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for c in result.per_class:
        table.add_row(c.name, str(c.images), f"{100 * c.accuracy_a:.2f}", f"{100 * c.accuracy_b:.2f}",
                      f"{100 * (c.accuracy_a - c.accuracy_b):+.2f}")
    console.print(table)


def run(args: argparse.Namespace) -> int:
    if args.run_a.resolve() == args.run_b.resolve():
        raise SeratioError(f"{args.run_a} and {args.run_b} are the same run directory; give two different runs")
    from seratio.report.pair import compare_runs  # reads runs through `records`, which loads optuna

    result = compare_runs(args.run_a, args.run_b)
    if args.json:
        print(json.dumps(asdict(result), indent=2, default=str))
    else:
        _print(result)
    return 0
