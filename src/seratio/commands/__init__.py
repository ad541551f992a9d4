"""One module per `seratio` command: `register` adds its parser, and the function it registers runs it.

A command module imports torch (through `seratio.train`, `seratio.rescore` or `seratio.worker`)
inside the function that trains or scores, not at its top: `seratio --help`, a mistyped option,
`info`, `study status` and `study export` need no torch, and importing it takes about two seconds.
For the same reason `seratio.report.writer` (matplotlib) is imported only by `report`'s run.

`study` and `report` keep only their parsers in their modules; what they do is in `study_actions`
and `report_actions`, imported when an action runs, because reading a study loads optuna and
SQLAlchemy (half a second) and every `--help` and parse error builds all the parsers. Names the
parsers show come from the import-free `seratio.study_choices`.
"""
