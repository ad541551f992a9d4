"""A study's definition: what it searches, how each run trains, and how to refuse a mismatched join.

The definition is stored once, as the study's `seratio_definition` attribute,
and every worker builds its runs from it. So workers on other machines need no
training options, and a `study run` that would train something else under the
same name is refused instead of silently mixing two experiments.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import optuna

from seratio.architecture import STAGE_CHANNELS, Ratios, format_rr, parse_rr
from seratio.config import RunConfig, code_version
from seratio.errors import SeratioError, int_in
from seratio.halving import RetryAwareHalving
from seratio.store import StudyStore
from seratio.study_choices import SELECT_ON, STRATEGIES

DEFAULT_CANDIDATES = (2, 4, 8, 16, 32)
PAPER_PHASES = {"constant": [2, 4, 8, 16], "stage1": [2, 4, 8], "stage2": [2, 4, 8, 16], "stage3": [2, 4, 8, 16, 32]}
DEFINITION_ATTR = "seratio_definition"
ARTIFACTS_ATTR = "seratio_artifacts"
WARN_ONLY = ("code_version",)
"""Keys that may differ on join: a new commit need not change results, so it is recorded per trial, not refused."""
HALVING_FACTOR = 3


@dataclass(frozen=True)
class StudyRequest:
    """What `study run` was asked for; `run` carries the training options (its rr and seed are ignored)."""

    strategy: str
    run: RunConfig
    candidates: tuple[int, ...] | None = None
    seeds: int = 1
    baseline: Ratios = (None, None, None)
    select_on: str | None = None
    n_trials: int | None = None
    halving_min_epochs: int | None = None


def _stage_candidates(candidates: Sequence[int]) -> list[list[int]]:
    """Per stage, the ratios that leave its SE block at least one hidden unit (c // r >= 1)."""
    return [[r for r in candidates if c // r >= 1] for c in STAGE_CHANNELS]


def _check_candidates(request: StudyRequest) -> list[int]:
    if request.strategy == "paper":
        if request.candidates is not None:
            raise SeratioError("the paper preset fixes its candidates per phase; use 'greedy' to choose --candidates")
        return sorted({r for phase in PAPER_PHASES.values() for r in phase})
    candidates = list(request.candidates or DEFAULT_CANDIDATES)
    if not candidates:
        raise SeratioError("--candidates is empty; give ratios such as 2,4,8,16,32")
    for r in candidates:
        if not isinstance(r, int) or r < 1:
            raise SeratioError(f"candidate ratio {r!r} must be an integer >= 1")
        if r > max(STAGE_CHANNELS):
            raise SeratioError(
                f"candidate ratio {r} gives SE hidden width 0 in every stage (channels {STAGE_CHANNELS}); "
                f"use ratios <= {max(STAGE_CHANNELS)}"
            )
    if len(set(candidates)) != len(candidates):
        raise SeratioError(f"--candidates {format_rr(tuple(candidates))} repeats a ratio")
    return sorted(candidates)  # ascending, so a tie goes to the smallest ratio in search and report alike


def _phases(strategy: str, stage_lists: list[list[int]]) -> dict[str, list[int]] | None:
    if strategy == "paper":
        return PAPER_PHASES
    everywhere = [r for r in stage_lists[0] if all(r in s for s in stage_lists)]
    if strategy == "constant":
        return {"constant": everywhere}
    if strategy == "greedy":
        return {"constant": everywhere, "stage1": stage_lists[0], "stage2": stage_lists[1], "stage3": stage_lists[2]}
    return None


def _select_on(request: StudyRequest) -> str:
    select_on = request.select_on or ("test" if request.strategy == "paper" else "val")
    if select_on not in SELECT_ON:
        raise SeratioError(f"--select-on {select_on!r} is not one of {', '.join(SELECT_ON)}")
    if select_on == "val" and request.run.val_size == 0:
        raise SeratioError("--select-on val needs a validation split; set --val-size > 0 or use --select-on test")
    return select_on


MAX_SEEDS = 1000
MAX_N_TRIALS = 10_000
"""Bounds far above any study that could finish, so a slip of the keyboard is refused instead of
enumerating (seeds) or drawing (TPE, which mostly redraws measured configurations) for ever."""


def _check_strategy_options(request: StudyRequest, epochs: int) -> None:
    if request.strategy not in STRATEGIES:
        raise SeratioError(f"unknown strategy {request.strategy!r}; allowed: {', '.join(STRATEGIES)}")
    if not int_in(request.seeds, 1, MAX_SEEDS):
        raise SeratioError(f"--seeds {request.seeds!r} must be an integer from 1 to {MAX_SEEDS}")
    if request.strategy == "paper" and request.run.recipe != "paper":
        raise SeratioError(f"the paper preset trains with --recipe paper, not {request.run.recipe!r}; use 'greedy'")
    if request.strategy == "paper" and any(r is not None for r in parse_rr(list(request.baseline))):
        raise SeratioError(f"the paper preset compares against the plain ResNet, not --baseline "
                           f"{format_rr(parse_rr(list(request.baseline)))}; use 'greedy' to choose a baseline")
    if (request.n_trials is not None) != (request.strategy == "tpe"):
        raise SeratioError("tpe needs --n-trials N, and only tpe takes it")
    if request.n_trials is not None and not int_in(request.n_trials, 1, MAX_N_TRIALS):
        raise SeratioError(f"--n-trials {request.n_trials!r} must be an integer from 1 to {MAX_N_TRIALS}")
    if request.strategy == "halving" and epochs < 2:
        raise SeratioError(f"halving prunes between epochs, so it needs --epochs >= 2, not {epochs}")
    minimum = request.halving_min_epochs
    if minimum is not None and request.strategy != "halving":
        raise SeratioError(f"--halving-min-epochs applies to the halving strategy only, not {request.strategy!r}")
    if minimum is not None and not int_in(minimum, 1, epochs - 1):
        raise SeratioError(
            f"--halving-min-epochs {minimum!r} must be in 1..{epochs - 1} (its first cut comes before the last epoch)"
        )


def _check_grid_size(request: StudyRequest, candidates: list[int], stage_lists: list[list[int]]) -> None:
    """Grid and halving plan every combination up front: 64 candidates would be 262,144 runs, whose
    planning alone runs for hours, so the same bound as tpe's draws applies."""
    if request.strategy not in ("grid", "halving"):
        return
    configs = math.prod(len(ratios) for ratios in stage_lists)
    runs = configs * request.seeds  # the baseline's runs beside them are not counted: studies stored so are reopened
    if runs > MAX_N_TRIALS:
        raise SeratioError(
            f"--candidates {format_rr(tuple(candidates))} give {request.strategy} {configs:,} combinations, "
            f"{runs:,} runs with {request.seeds} seed(s); at most {MAX_N_TRIALS:,}: give fewer candidates or seeds, "
            "or search with tpe --n-trials"
        )


def build_definition(request: StudyRequest) -> dict[str, Any]:
    """The JSON-ready definition; every key that changes results is here and compared on join."""
    recipe = request.run.resolved_recipe()
    _check_strategy_options(request, recipe.epochs)
    candidates = _check_candidates(request)
    stage_lists = _stage_candidates(candidates)
    phases = _phases(request.strategy, stage_lists)
    if phases is not None and not all(phases.values()):
        raise SeratioError(
            f"--candidates {format_rr(tuple(candidates))} leave no ratio valid in every stage, which the "
            f"{request.strategy} strategy's constant phase needs: stage channels {STAGE_CHANNELS} allow ratios "
            f"<= {min(STAGE_CHANNELS)} in all three"
        )
    empty = [str(stage + 1) for stage, ratios in enumerate(stage_lists) if not ratios]
    if empty:
        raise SeratioError(
            f"--candidates {format_rr(tuple(candidates))} leave stage {', '.join(empty)} no ratio "
            f"(an SE block on c channels needs r <= c; channels {STAGE_CHANNELS})"
        )
    _check_grid_size(request, candidates, stage_lists)
    run = request.run
    halving_min = request.halving_min_epochs or max(1, recipe.epochs // HALVING_FACTOR**3)
    return {
        "strategy": request.strategy,
        "candidates": candidates,
        "stage_candidates": stage_lists,
        "phases": phases,
        "seeds": request.seeds,
        "baseline": list(parse_rr(list(request.baseline))),
        "select_on": _select_on(request),
        "n_trials": request.n_trials,
        "halving_min_epochs": halving_min if request.strategy == "halving" else None,
        "recipe": recipe.name,
        "depth": run.depth,
        "dataset": run.dataset,
        "epochs": recipe.epochs,
        "batch_size": recipe.batch_size,
        "lr": recipe.lr,
        "train_subset": run.train_subset,
        "test_subset": run.test_subset,
        "val_size": run.val_size,
        "split_seed": run.split_seed,
        "precision": run.precision,
        "code_version": code_version(),
        "recipe_hash": recipe.fingerprint(),
    }


DEFINITION_CORE = ("strategy", "seeds", "baseline", "select_on", "candidates", "recipe_hash", "code_version")
RUN_KEYS = (
    "depth", "dataset", "recipe", "epochs", "batch_size", "lr", "train_subset", "val_size", "split_seed", "precision",
)
LATER_RUN_KEYS = ("test_subset",)
"""Run keys added after studies were first stored: a definition without one means None (the default)."""


def run_config(
    definition: dict[str, Any], rr: Sequence[int | None], seed: int, *, device: str, data_dir: str | None
) -> RunConfig:
    """The exact run a trial stands for; only where it runs comes from the worker."""
    return RunConfig(rr=tuple(rr), seed=seed, device=device, data_dir=data_dir, **_run_values(definition))


def _run_values(definition: dict[str, Any]) -> dict[str, Any]:
    return {key: definition[key] for key in RUN_KEYS} | {key: definition.get(key) for key in LATER_RUN_KEYS}


def differences(stored: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted((set(stored) | set(wanted)) - set(WARN_ONLY))
    return [f"{k}: stored {stored.get(k)!r}, asked {wanted.get(k)!r}" for k in keys if stored.get(k) != wanted.get(k)]


def code_warnings(stored: dict[str, Any]) -> list[str]:
    if stored.get("code_version") == code_version():
        return []
    return [
        f"study created by code {stored.get('code_version')!r}, this is {code_version()!r}; "
        "each trial records the code version it ran with"
    ]


def create_or_join(store: StudyStore, definition: dict[str, Any], artifacts: Path | None) -> tuple[Path, list[str]]:
    """Store the definition on a new study, or check it against an existing one; returns (artifacts, warnings)."""
    attrs = store.user_attrs()
    if DEFINITION_ATTR not in attrs:
        if store.trials():
            raise SeratioError(f"study {store.name!r} exists but was not created by seratio; choose another --name")
        root = (artifacts or Path("seratio-runs") / store.name).resolve()
        store.set_user_attr(ARTIFACTS_ATTR, str(root))
        store.set_user_attr(DEFINITION_ATTR, definition)  # last: its presence marks the study as created
        attrs = store.user_attrs()  # a racing creator may have written its own definition last
    mismatch = differences(attrs[DEFINITION_ATTR], definition)
    if mismatch:
        raise SeratioError(
            f"study {store.name!r} exists with a different definition ({'; '.join(mismatch)}); "
            "rerun with the same options or choose another --name"
        )
    root = artifacts.resolve() if artifacts else Path(attrs[ARTIFACTS_ATTR])
    return root, code_warnings(attrs[DEFINITION_ATTR]) + _artifacts_warnings(root, Path(attrs[ARTIFACTS_ATTR]))


def _artifacts_warnings(root: Path, stored: Path) -> list[str]:
    """Another --artifacts than the study's is right only where it is the same folder mounted
    elsewhere; on the machine that created the study it splits the runs over two folders."""
    if root == stored:
        return []
    return [f"the study keeps its runs in {stored}; this worker trains under {root} (--artifacts), which is right "
            "only where that is the same folder mounted elsewhere: reports read the runs where the study keeps them"]


def stored_definition(attrs: dict[str, Any], name: str) -> dict[str, Any]:
    """The study's definition, refused in one line when it is missing or lacks what every reader uses:
    a study database edited by hand must not end in a KeyError in `status` or a worker."""
    definition = attrs.get(DEFINITION_ATTR)
    if not isinstance(definition, dict):
        raise SeratioError(f"study {name!r} has no seratio definition; create it with 'seratio study run'")
    missing = [key for key in (*DEFINITION_CORE, *RUN_KEYS) if key not in definition]
    if missing or not isinstance(attrs.get(ARTIFACTS_ATTR), str):
        raise SeratioError(
            f"study {name!r} has a damaged seratio definition (missing: {', '.join(missing or [ARTIFACTS_ATTR])}); "
            "it cannot be read or joined"
        )
    _check_rebuilds(definition, name)
    return definition


def _check_rebuilds(definition: dict[str, Any], name: str) -> None:
    """A stored definition is valid exactly when this code would build the same one from its values.

    That checks every type and range with the messages `study run` gives, so a value edited by hand
    is one line here instead of a TypeError deep in a worker. The recipe hash is left to
    `load_definition`, which explains a code-version mismatch.
    """
    try:
        rebuilt = build_definition(_stored_request(definition))
    except (SeratioError, TypeError, ValueError) as error:
        reason = str(error)
    else:
        unequal = [key for key in rebuilt if key not in (*WARN_ONLY, "recipe_hash") and rebuilt[key] != definition.get(key)]
        if not unequal:
            return
        reason = "; ".join(f"{key} {definition.get(key)!r} should be {rebuilt[key]!r}" for key in unequal)
    created_by = definition.get("code_version")
    other_code = "" if created_by == code_version() else f"; it was created by code {created_by!r}, this is {code_version()!r}"
    raise SeratioError(f"study {name!r} has an invalid seratio definition ({reason}){other_code}")


def _stored_request(definition: dict[str, Any]) -> StudyRequest:
    strategy, baseline = definition["strategy"], definition["baseline"]
    if not isinstance(baseline, list):
        raise SeratioError(f"baseline {baseline!r} is not a list of three ratios")
    run = RunConfig(**_run_values(definition))
    return StudyRequest(
        strategy=strategy,
        run=run,
        candidates=None if strategy == "paper" else definition["candidates"],
        seeds=definition["seeds"],
        baseline=tuple(baseline),
        select_on=definition["select_on"],
        n_trials=definition.get("n_trials"),
        halving_min_epochs=definition.get("halving_min_epochs"),
    )


def load_definition(store: StudyStore) -> tuple[dict[str, Any], Path]:
    """A joining worker's view: the stored definition, checked against this machine's code."""
    attrs = store.user_attrs()
    definition = stored_definition(attrs, store.name)
    recipe = run_config(definition, (None, None, None), 0, device="cpu", data_dir=None).resolved_recipe()
    recipe_hash = recipe.fingerprint()
    if recipe_hash != definition["recipe_hash"]:
        raise SeratioError(
            f"this code trains recipe {definition['recipe']!r} differently (hash {recipe_hash}) than the study "
            f"expects ({definition['recipe_hash']}); run the worker from the study's code version "
            f"{definition['code_version']!r}"
        )
    return definition, Path(attrs[ARTIFACTS_ATTR])


def sampler(definition: dict[str, Any]) -> optuna.samplers.BaseSampler:
    """TPE draws the tpe strategy's slots; every other strategy's trials arrive with fixed parameters."""
    if definition["strategy"] != "tpe":
        return optuna.samplers.RandomSampler()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, constant_liar=True)


def pruner(definition: dict[str, Any]) -> optuna.pruners.BasePruner:
    """Successive halving over epochs: a run continues past each rung only if it is in the top third there."""
    if definition["strategy"] != "halving":
        return optuna.pruners.NopPruner()
    return RetryAwareHalving(min_resource=definition["halving_min_epochs"], reduction_factor=HALVING_FACTOR)


def run_name(rr: Sequence[int | None], seed: int) -> str:
    """Deterministic, so a retried trial finds the checkpoint its predecessor left."""
    return "rr-" + "-".join("none" if r is None else str(r) for r in rr) + f"_seed-{seed}"
