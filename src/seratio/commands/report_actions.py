"""What `seratio report` does: tables, statistics, figures and one HTML page from a stored study. Never trains.

Imported only when the command runs (see `commands/report.py`, which holds the parser).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from seratio.architecture import parse_rr
from seratio.commands.console import stdout_console
from seratio.commands.signals import sigterm_as_ctrl_c
from seratio.errors import SeratioError
from seratio.records import aggregate, load_study
from seratio.report import parse_formats
from seratio.report.output import check_out
from seratio.report.reportable import need_reportable
from seratio.report.tables import all_rows, display_cells, display_header, short_model, trial_label
from seratio.store import read_patience

if TYPE_CHECKING:
    from seratio.report.writer import Written


TERMINAL_DROPS = ("Experiment", "Model", "Ratios", "MACs", "Epochs")


def _print(written: Written, out: Path) -> None:
    """The table in a terminal's width: phase key and ratios up front, MACs and epochs left to the files."""
    console = stdout_console()
    content = written.content
    header = display_header(content)
    keep = [i for i, column in enumerate(header) if column not in TERMINAL_DROPS]
    table = Table(title=f"Study {content.study.name} (bold: phase winner)", title_justify="left")
    table.add_column("phase")
    table.add_column("model", no_wrap=True)
    for i in keep:
        table.add_column(header[i], justify="right")
    for row, first in all_rows(content):
        if first and table.row_count:
            table.add_section()
        cells = display_cells(content, row, first)
        table.add_row(row.phase if first else "", short_model(content, row.config.rr), *(cells[i] for i in keep),
                      style="bold" if row.winner else None)
    console.print(table)
    console.print(content.selection_note)
    console.print(content.conclusion)
    for note in (*content.notes, *written.notes):
        console.print(f"note: {note}")
    for excluded in content.excluded:  # never averaged in, so never left unsaid
        console.print(f"excluded from averages: {trial_label(excluded.trial)}: {excluded.reason}")
    if content.incomplete:
        console.print(
            f"{len(content.incomplete)} trial(s) without a result (failed, pruned, running or waiting) listed in the report."
        )
    index = out / "index.html"
    console.print(f"report: {index if index in written.paths else out}")


def run(args: argparse.Namespace) -> int:
    formats = parse_formats(args.format)
    baseline = None if args.baseline is None else parse_rr(args.baseline)
    check_out(args.out)
    if args.artifacts is not None and not args.artifacts.is_dir():  # a typo would report with every figure missing
        raise SeratioError(f"--artifacts {str(args.artifacts)!r} is not a directory on this machine; name the folder "
                           "where the study's run folder is mounted here, or leave it out to read the paths the "
                           "study recorded")
    study = load_study(args.name, args.storage, log=Console(stderr=True, markup=False).print, patience=read_patience(args.db_patience),
                       artifacts=args.artifacts)
    need_reportable(study, aggregate(study), baseline)
    from seratio.report.writer import write_report  # matplotlib: not for a study that is missing or empty

    with sigterm_as_ctrl_c():
        written = write_report(study, args.out, formats, baseline)
    _print(written, args.out)
    return 0
