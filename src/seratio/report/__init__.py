"""Reports from stored study results: Table 3 layout, significance, figures and one HTML page.

`content` decides what the report says (with `significance` for the tests against the baseline
and `labels` for how models are named); `tables`, `figures` and `html` only render it, and
`output` decides where it may go and swaps it in whole; `writer` puts them together. A report
reads the study storage and run directories and never trains.

The package itself holds only the format names, which `seratio report --help` lists: the writer
imports matplotlib and scipy, so the command loads it only when it runs.
"""

FORMATS = ("md", "csv", "json", "latex", "html")
