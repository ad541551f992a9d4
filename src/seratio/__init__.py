"""seratio: the reduction ratio of Squeeze-and-Excitation blocks in CIFAR ResNets.

The names below are the Python API, for a researcher who scripts runs or analyses them in a
notebook; the README's "Python API" section shows them at work. They load on first use, so that
`import seratio` (and every `seratio` command that needs no torch) starts without importing torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:  # what a type checker and an editor see; at run time __getattr__ loads them from _HOMES
    from seratio.architecture import ModelConfig as ModelConfig
    from seratio.architecture import count_macs as count_macs
    from seratio.architecture import count_params as count_params
    from seratio.architecture import parse_rr as parse_rr
    from seratio.architecture import se_hidden as se_hidden
    from seratio.cli import main as main
    from seratio.config import RunConfig as RunConfig
    from seratio.errors import SeratioError as SeratioError
    from seratio.finished_run import read_metrics as read_metrics
    from seratio.finished_run import read_result as read_result
    from seratio.models import build_model as build_model
    from seratio.report.pair import compare_runs as compare_runs
    from seratio.stats import detectable_difference as detectable_difference
    from seratio.stats import holm as holm
    from seratio.stats import mcnemar_exact as mcnemar_exact
    from seratio.stats import seeds_needed as seeds_needed
    from seratio.stats import summarize as summarize
    from seratio.stats import welch_t_test as welch_t_test
    from seratio.train import train_run as train_run

_HOMES = {
    "ModelConfig": "seratio.architecture", "count_macs": "seratio.architecture", "count_params": "seratio.architecture",
    "parse_rr": "seratio.architecture", "se_hidden": "seratio.architecture",
    "main": "seratio.cli",
    "RunConfig": "seratio.config",
    "SeratioError": "seratio.errors",
    "read_metrics": "seratio.finished_run", "read_result": "seratio.finished_run",
    "build_model": "seratio.models",
    "compare_runs": "seratio.report.pair",
    "detectable_difference": "seratio.stats", "holm": "seratio.stats", "mcnemar_exact": "seratio.stats",
    "seeds_needed": "seratio.stats", "summarize": "seratio.stats", "welch_t_test": "seratio.stats",
    "train_run": "seratio.train",
}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'seratio' has no attribute {name!r}; the API is: {', '.join(__all__)}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
