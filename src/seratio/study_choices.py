"""The study's strategies, selection metrics and default storage, as the command line shows them.

Import-free on purpose: `seratio --help` and every parse error build the `study` and `report`
parsers, and the modules that use these names (`study`, `store`) load optuna and SQLAlchemy,
which take about half a second here.
"""

STRATEGIES = ("constant", "greedy", "grid", "tpe", "halving", "paper")
SELECT_ON = ("val", "test")
DEFAULT_STORAGE = "sqlite:///seratio.db"
STORAGE_HELP = (
    "where the study lives: sqlite:///PATH.db (one process; default sqlite:///seratio.db), "
    "journal:PATH (Optuna journal file; several processes on one machine), or "
    "postgresql://USER[:PASSWORD]@HOST[:PORT]/DB (many machines)"
)
