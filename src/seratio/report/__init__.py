"""Reports from stored study results: Table 3 layout, significance, figures and one HTML page.

`content` decides what the report says (with `significance` for the tests against the baseline
and `labels` for how models are named); `tables`, `figures` and `html` only render it, and
`output` decides where it may go and swaps it in whole; `writer` puts them together. A report
reads the study storage and run directories and never trains.

The package itself holds only the format names, which `seratio report --help` lists, and their
parsing: the writer imports matplotlib and scipy, so the command loads it only when it runs.
"""

from seratio.errors import SeratioError

FORMATS = ("md", "csv", "json", "latex", "html")


def parse_formats(spec: str) -> tuple[str, ...]:
    formats = tuple(f.strip() for f in spec.split(",") if f.strip())
    unknown = [f for f in formats if f not in FORMATS]
    if not formats:
        raise SeratioError(f"--format {spec!r} names no format; allowed, comma-separated: {', '.join(FORMATS)}")
    if unknown:
        raise SeratioError(f"--format {spec!r}: unknown format {', '.join(unknown)}; allowed: {', '.join(FORMATS)}")
    return formats
