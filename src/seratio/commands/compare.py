"""`seratio compare A B`: is one run really better than the other on the same test images, or, with a
folder of seeds per configuration, is one configuration better than the other beyond seed noise?"""

from __future__ import annotations

import argparse
import json
import math
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from rich.table import Table

from seratio.architecture import format_rr
from seratio.commands.console import stdout_console
from seratio.commands.options import path_arg
from seratio.finished_run import finished_runs, need_two
from seratio.report.labels import fmt_p
from seratio.report.seed_noise import noise_note

if TYPE_CHECKING:
    from seratio.report.groups import Group, GroupComparison
    from seratio.report.pair import PairComparison, RunSummary


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "compare",
        help="two runs (McNemar's exact test, per-class differences) or two folders of seeds (Welch's test)",
        description="Compare two finished run directories image by image (McNemar's exact test; they must share "
                    "the test set), or two folders that each hold the seeds of one configuration (Welch's t-test "
                    "over seeds, with what these seeds can detect and what the gap would need).",
    )
    parser.add_argument("run_a", type=path_arg, metavar="A", help="a run directory, or a folder of one configuration's seeds")
    parser.add_argument("run_b", type=path_arg, metavar="B", help="the same for the other configuration")
    parser.add_argument("--json", action="store_true", help="print the comparison as JSON")
    parser.set_defaults(func=run)


def _name(run: RunSummary) -> str:
    rr = "?" if run.rr is None else format_rr(run.rr)
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
    need_two(args.run_a, args.run_b)
    runs_a, runs_b = finished_runs(args.run_a), finished_runs(args.run_b)
    if len(runs_a) == 1 and len(runs_b) == 1:
        from seratio.report.pair import compare_runs

        result = compare_runs(runs_a[0], runs_b[0])
        if args.json:
            print(_strict_json(asdict(result)))
        else:
            _print(result)
        return 0
    from seratio.report.groups import compare_groups

    groups = compare_groups(runs_a, runs_b, args.run_a, args.run_b)
    if args.json:
        noise = None if groups.noise is None else groups.noise.record()  # the names table.json uses
        print(_strict_json(asdict(groups) | {"noise": noise}))
    else:
        _print_groups(groups)
    return 0


def _strict_json(document: Any) -> str:
    """A test that could not run (no spread) is NaN in the dataclasses: null here, since a strict
    JSON parser refuses NaN."""
    def finite(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: finite(item) for key, item in value.items()}
        if isinstance(value, (list, tuple)):
            return [finite(item) for item in value]
        return None if isinstance(value, float) and not math.isfinite(value) else value

    return json.dumps(finite(document), indent=2, default=str, allow_nan=False)


def _group_line(label: str, group: Group) -> str:
    s = group.summary
    rr = "?" if group.rr is None else format_rr(group.rr)
    spread = f" ± {100 * s.std:.2f}" if len(group.accuracies) > 1 else ""
    return (f"{label}  {group.path} (rr {rr}, seeds {', '.join(map(str, group.seeds))}): test accuracy "
            f"{100 * s.mean:.2f}{spread}% (mean ± std over {s.n} seeds)")


def _print_groups(result: GroupComparison) -> None:
    console = stdout_console()
    w = result.welch
    console.print(_group_line("A", result.a))
    console.print(_group_line("B", result.b))
    if math.isnan(w.p_value):
        console.print(f"A - B = {100 * w.diff:+.2f} points; not tested: every seed on both sides scored the same")
    else:
        console.print(f"A - B = {100 * w.diff:+.2f} points, 95% interval [{100 * w.ci_low:+.2f}, {100 * w.ci_high:+.2f}]; "
                      f"Welch t = {w.statistic:.2f}, df = {w.df:.1f}, p = {fmt_p(w.p_value)}")
        verdict = "significant" if w.p_value < 0.05 else "not significant"
        console.print(f"The difference is {verdict} at the 5% level, over seeds as measured on this test set.")
    if result.noise is not None:
        console.print(noise_note(result.noise, "A is {gap} points from B", "these folders have them", adjusted=False))
    if result.differences:
        console.print(f"note: the configurations also differ in {'; '.join(result.differences)}; the difference is "
                      "not the ratios' alone.")
