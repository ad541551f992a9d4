"""A whole report written at once: the tables, the figures and the HTML page, swapped in together."""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

from seratio.architecture import parse_rr
from seratio.records import RR, StudyRecords, aggregate
from seratio.report import FORMATS, parse_formats
from seratio.report.content import ReportContent, build_content
from seratio.report.figures import draw_confusions, draw_curves, draw_pareto
from seratio.report.html import render_html
from seratio.report.output import MARKER, check_out, marker_text, staged
from seratio.report.reportable import need_reportable
from seratio.report.tables import to_csv, to_json, to_latex, to_markdown

TABLE_FILES = {"md": "table.md", "csv": "table.csv", "json": "table.json", "latex": "table.tex"}
TABLE_WRITERS = {"md": to_markdown, "csv": to_csv, "json": to_json, "latex": to_latex}


@dataclass(frozen=True)
class Written:
    """What a report run produced: the content it rendered, the files, and what it had to skip."""

    content: ReportContent
    paths: tuple[Path, ...]
    notes: tuple[str, ...]


def write_report(
    study: StudyRecords, out_dir: Path | str, formats: tuple[str, ...] | str = FORMATS,
    baseline: RR | str | int | None = None,
) -> Written:
    """Write the chosen table formats, all figures, and (with "html") index.html as the new `out_dir`.

    `out_dir` must be new, empty or an earlier report (see `output`); it is replaced whole, so no
    file of an earlier report with other formats or another baseline survives, and a report that
    fails or is interrupted leaves the earlier one as it was. `formats` and `baseline` take what
    `seratio report --format` and `--baseline` do, e.g. "md,html" and "8,8,8".
    """
    out_dir = Path(out_dir)
    formats = parse_formats(formats if isinstance(formats, str) else ",".join(formats))
    baseline = None if baseline is None else parse_rr(baseline)
    check_out(out_dir)
    need_reportable(study, aggregate(study), baseline)
    content = build_content(study, baseline)
    with staged(out_dir) as stage:
        paths, notes = _write_files(content, stage, formats)
    return Written(content, tuple(out_dir / path.relative_to(stage) for path in paths), tuple(notes))


def _write_files(content: ReportContent, out_dir: Path, formats: tuple[str, ...]) -> tuple[list[Path], list[str]]:
    (out_dir / MARKER).write_text(marker_text(content.study.name), encoding="utf-8")
    figures: list[Path] = []
    notes: list[str] = []
    for draw in (draw_curves, draw_confusions, draw_pareto):
        drawn = draw(content, out_dir)
        figures += drawn.paths
        notes += drawn.notes
    content = replace(content, notes=content.notes + tuple(notes))  # a reader of table.md alone learns what is missing
    paths: list[Path] = []
    for fmt, name in TABLE_FILES.items():
        if fmt in formats:
            path = out_dir / name
            path.write_text(TABLE_WRITERS[fmt](content), encoding="utf-8")
            paths.append(path)
    paths += figures
    if "html" in formats:
        path = out_dir / "index.html"
        path.write_text(render_html(content, figures), encoding="utf-8")
        paths.append(path)
    return paths, notes
