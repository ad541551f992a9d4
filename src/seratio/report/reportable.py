"""What a study must hold before a report of it means anything.

A report with an empty table, or tests against a baseline that has no result, would look like a
finished analysis. Both `seratio report` (before it loads matplotlib) and `write_report` refuse
them.
"""

from __future__ import annotations

from collections import Counter

from seratio.architecture import Ratios, format_rr
from seratio.errors import SeratioError
from seratio.records import Aggregate, StudyRecords
from seratio.store import redact_url
from seratio.study_choices import DEFAULT_STORAGE


def need_reportable(study: StudyRecords, measured: Aggregate, baseline: Ratios | None) -> None:
    if baseline is not None:
        _need_measured(baseline, study.name, measured)
    _need_results(study, measured)


def _need_results(study: StudyRecords, measured: Aggregate) -> None:
    """A report with an empty table would look like the finished analysis of a study that has not
    finished a run yet, or whose runs are all excluded."""
    if measured.configs:
        return
    states = Counter(t.state.lower() for t in study.trials)
    held = ", ".join(f"{count} {state}" for state, count in sorted(states.items())) or "no trials yet"
    excluded = "" if not measured.excluded else (
        f"; every finished one is excluded from averages, e.g. trial #{measured.excluded[0].trial.number}: "
        f"{measured.excluded[0].reason}")
    storage = "" if study.storage == DEFAULT_STORAGE else f" --storage {redact_url(study.storage)}"
    raise SeratioError(f"study {study.name!r} has no finished run to report ({held}{excluded}); "
                       f"`seratio study status --name {study.name}{storage}` shows where it stands")


def _need_measured(baseline: Ratios, name: str, measured: Aggregate) -> None:
    """An asked-for baseline must have a result to test against; a report of nothing but "n/a"
    would look like a finished analysis."""
    if baseline not in measured.configs:
        listed = " ".join(sorted(format_rr(rr) for rr in measured.configs)) or "none yet"
        raise SeratioError(
            f"--baseline {format_rr(baseline)}: study {name!r} has no completed comparable run of it; "
            f"configurations with results: {listed}"
        )
