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
    from seratio.augment import to_float as to_float
    from seratio.cli import main as main
    from seratio.concurrent import train_concurrently as train_concurrently
    from seratio.config import RunConfig as RunConfig
    from seratio.data import load_cifar as load_cifar
    from seratio.errors import SeratioError as SeratioError
    from seratio.finished_run import read_metrics as read_metrics
    from seratio.finished_run import read_result as read_result
    from seratio.models import build_model as build_model
    from seratio.records import aggregate as aggregate
    from seratio.records import read_study as read_study
    from seratio.report.groups import compare_seeds as compare_seeds
    from seratio.report.pair import compare_runs as compare_runs
    from seratio.report.writer import write_report as write_report
    from seratio.rescore import load_model as load_model
    from seratio.rescore import rescore_run as rescore_run
    from seratio.stats import detectable_difference as detectable_difference
    from seratio.stats import holm as holm
    from seratio.stats import mcnemar_exact as mcnemar_exact
    from seratio.stats import seeds_needed as seeds_needed
    from seratio.stats import summarize as summarize
    from seratio.stats import welch_t_test as welch_t_test
    from seratio.train import train_run as train_run

_NAMES = {
    "seratio.architecture": ("ModelConfig", "count_macs", "count_params", "parse_rr", "se_hidden"),
    "seratio.augment": ("to_float",),
    "seratio.cli": ("main",),
    "seratio.concurrent": ("train_concurrently",),
    "seratio.config": ("RunConfig",),
    "seratio.data": ("load_cifar",),
    "seratio.errors": ("SeratioError",),
    "seratio.finished_run": ("read_metrics", "read_result"),
    "seratio.models": ("build_model",),
    "seratio.records": ("aggregate", "read_study"),
    "seratio.report.groups": ("compare_seeds",),
    "seratio.report.pair": ("compare_runs",),
    "seratio.report.writer": ("write_report",),
    "seratio.rescore": ("load_model", "rescore_run"),
    "seratio.stats": ("detectable_difference", "holm", "mcnemar_exact", "seeds_needed", "summarize", "welch_t_test"),
    "seratio.train": ("train_run",),
}
_HOMES = {name: home for home, names in _NAMES.items() for name in names}
__all__ = sorted(_HOMES)


def __getattr__(name: str) -> Any:
    home = _HOMES.get(name)
    if home is None:
        raise AttributeError(f"module 'seratio' has no attribute {name!r}; the API is: {', '.join(__all__)}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    """The API and the version: tab completion should not offer this module's own imports."""
    return sorted([*__all__, "__version__"])
