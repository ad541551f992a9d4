"""`seratio report`: the parser; the work is in `report_actions`.

Reading a study needs optuna and SQLAlchemy, about half a second to import, so `report_actions`
is imported only when the command runs: `seratio --help` and every parse error build this parser.
"""

from __future__ import annotations

import argparse

from seratio.commands.options import add_read_patience_option, path_arg, study_name
from seratio.report import FORMATS
from seratio.study_choices import DEFAULT_STORAGE, STORAGE_HELP


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "report",
        help="tables, significance tests, figures and an HTML page from a stored study",
        description="Read a study's stored results (never trains) and write the paper's Table 3 layout, "
        "significance against a baseline, accuracy curves, confusion matrices, a Pareto plot and index.html.",
    )
    parser.add_argument("--name", required=True, type=study_name, help="study name")
    parser.add_argument("--storage", default=DEFAULT_STORAGE, help=STORAGE_HELP)
    add_read_patience_option(parser)
    parser.add_argument("--out", required=True, type=path_arg, help="output directory: new, empty, or an earlier "
                        "report, which is replaced whole once the new one is complete")
    parser.add_argument("--format", default=",".join(FORMATS),
                        help=f"comma-separated table formats: {', '.join(FORMATS)} (default: all); figures always")
    parser.add_argument("--artifacts", type=path_arg, help="where the study's run folder is mounted on this machine, "
                        "for curves, confusion matrices and McNemar tests (default: where the study recorded it)")
    parser.add_argument("--baseline", help="configuration to test against, e.g. none (plain ResNet) or 8,8,8 "
                        "(default: the study's own baseline)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from seratio.commands import report_actions

    return report_actions.run(args)
