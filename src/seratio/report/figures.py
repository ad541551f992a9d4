"""Figures: test-accuracy curves (paper Fig. 5), confusion matrices (Fig. 6), accuracy vs cost.

Uses matplotlib's object API (`Figure`, Agg canvas) rather than pyplot, so
nothing depends on a display or on global plotting state. A run directory that
is missing on this machine, unreadable or damaged turns into a note (the readers
in `records` check every value used here) and the figure is drawn from the runs
that are left.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import FuncFormatter, MaxNLocator

from seratio.errors import SeratioError
from seratio.finished_run import read_metrics, read_result
from seratio.records import ConfigResult
from seratio.report.content import ReportContent, pareto_front
from seratio.report.labels import model_label, model_slug, ratios_text

ROLE_COLORS = {"baseline": "#6baed6", "best constant": "#08519c", "best found": "#e6550d"}
DPI = 120
T = TypeVar("T")


@dataclass
class FigureSet:
    """Files written and what could not be drawn, in words."""

    paths: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def _runs_with(config: ConfigResult, label: str, notes: list[str], read: Callable[[Path], T]) -> list[T]:
    """Read one file kind for each run of a configuration, noting the runs that cannot be read."""
    loaded = []
    for run in config.runs:
        if run.run_dir is None:
            notes.append(f"{label} seed {run.seed} (trial #{run.number}): no run_dir stored; skipped.")
            continue
        try:
            loaded.append(read(run.run_dir))
        except SeratioError as error:
            notes.append(f"{label} seed {run.seed} (trial #{run.number}): {error}; skipped.")
    return loaded


def _curve(config: ConfigResult, label: str, notes: list[str]) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-epoch test accuracy (%), one row per seed, cut to the epochs every seed has."""
    series = []
    for metrics in _runs_with(config, label, notes, read_metrics):
        series.append([100 * float(m["test_accuracy"]) for m in metrics if m.get("test_accuracy") is not None])
    series = [s for s in series if s]
    if not series:
        return None
    length = min(len(s) for s in series)
    return np.arange(1, length + 1), np.array([s[:length] for s in series])


ZOOM_MIN_EPOCHS = 6
"""Below this many epochs a 'second half' panel would hold a point or two; one panel says it all."""


def draw_curves(content: ReportContent, out_dir: Path) -> FigureSet:
    """Paper Fig. 5, plus a zoom on the second half of training where the models separate."""
    result = FigureSet()
    depth = content.study.definition.depth
    curves = []
    for h in content.highlights:
        label = model_label(h.config.rr, depth)
        curve = _curve(h.config, label, result.notes)
        if curve is not None:
            curves.append((h, label, *curve))
    if not curves:
        result.notes.append("No accuracy curves: no run directory of the highlighted models could be read.")
        return result
    longest = max(len(epochs) for _, _, epochs, _ in curves)
    zoomed = longest >= ZOOM_MIN_EPOCHS
    fig = Figure(figsize=(10, 4) if zoomed else (6, 4), layout="constrained")
    axes = list(np.atleast_1d(fig.subplots(1, 2 if zoomed else 1)))
    for h, label, epochs, acc in curves:
        color = ROLE_COLORS[h.roles[0]]
        name = f"{label}, {h.role}" + (f" (mean of {len(acc)})" if len(acc) > 1 else "")
        windows = [slice(None), slice(len(epochs) // 2, None)][: len(axes)]
        for ax, sl in zip(axes, windows):
            ax.plot(epochs[sl], acc.mean(axis=0)[sl], color=color, lw=1.6, label=name,
                    marker=None if zoomed else "o")
            if len(acc) > 1:
                ax.fill_between(epochs[sl], acc.min(axis=0)[sl], acc.max(axis=0)[sl], color=color, alpha=0.2, lw=0)
    for ax, title in zip(axes, ("Test accuracy per epoch", "Second half of training")):
        ax.set_title(title)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_xlabel("epoch")
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, loc="lower right")
    fig.text(0.99, 0.01, "band: min to max over seeds", ha="right", fontsize=7, color="#555")
    for suffix in ("png", "svg"):
        path = out_dir / f"curves.{suffix}"
        fig.savefig(path, dpi=DPI)
        result.paths.append(path)
    return result


def _confusion(config: ConfigResult, label: str, notes: list[str]) -> tuple[np.ndarray, list[str], int] | None:
    """Confusion counts pooled over seeds, class names, number of runs pooled."""
    results = [r for r in _runs_with(config, label, notes, read_result) if r.get("confusion_matrix")]
    if not results:
        return None
    matrices = [np.asarray(r["confusion_matrix"], dtype=np.int64) for r in results]
    if len({m.shape for m in matrices}) > 1:
        notes.append(f"{label}: confusion matrices of its seeds differ in shape; confusion figure skipped.")
        return None
    k = matrices[0].shape[0]
    names = [str(n) for n in results[0].get("class_names") or range(k)]
    return sum(matrices), names, len(matrices)  # type: ignore[return-value]


def draw_confusions(content: ReportContent, out_dir: Path) -> FigureSet:
    result = FigureSet()
    depth = content.study.definition.depth
    for h in content.highlights:
        label = model_label(h.config.rr, depth)
        pooled = _confusion(h.config, label, result.notes)
        if pooled is None:
            continue
        counts, names, runs = pooled
        k = len(names)
        per_class = 100 * np.diag(counts) / np.maximum(counts.sum(axis=1), 1)
        fig = Figure(figsize=(5.2, 6.4), layout="constrained")
        matrix_ax, bar_ax = fig.subplots(2, 1, height_ratios=[3.2, 1.3])
        shares = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
        matrix_ax.imshow(shares, cmap="Blues", vmin=0, vmax=1)
        if k <= 12:
            for i in range(k):
                for j in range(k):
                    matrix_ax.text(j, i, str(counts[i, j]), ha="center", va="center", fontsize=6,
                                   color="white" if shares[i, j] > 0.5 else "black")
        matrix_ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        matrix_ax.set_yticks(range(k), names, fontsize=7)
        matrix_ax.set_xlabel("predicted class")
        matrix_ax.set_ylabel("true class")
        pooled_text = f", pooled over {runs} seeds" if runs > 1 else ""
        matrix_ax.set_title(f"{label} ({h.role}{pooled_text})", fontsize=9)
        bars = bar_ax.bar(range(k), per_class, color=ROLE_COLORS[h.roles[0]])
        if k <= 12:
            bar_ax.bar_label(bars, fmt="%.1f", fontsize=6, padding=1)
        bar_ax.set_xticks(range(k), names, rotation=90, fontsize=7)
        bar_ax.set_ylabel("class acc. (%)", fontsize=8)
        bar_ax.set_ylim(max(0.0, float(per_class.min()) - 10), 100)
        bar_ax.grid(axis="y", alpha=0.3)
        path = out_dir / f"confusion_{model_slug(h.config.rr)}.png"
        fig.savefig(path, dpi=DPI)
        result.paths.append(path)
    return result


def _si(value: float, _position: int | None = None) -> str:
    """Axis labels like 770k and 125.7M: parameter and MAC counts differ only in the last digits."""
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= scale:
            return f"{value / scale:.6g}{suffix}"
    return f"{value:.4g}"


def draw_pareto(content: ReportContent, out_dir: Path) -> FigureSet:
    """Accuracy against params and MACs: do gains only come with more parameters?"""
    result = FigureSet()
    configs = [c for c in content.aggregate.configs.values() if c.params is not None]
    if not configs:
        result.notes.append("No Pareto figure: no configuration stores a parameter count.")
        return result
    with_macs = [c for c in configs if c.macs is not None]
    panels = [("params", configs, "parameters")] + ([("macs", with_macs, "MACs per image")] if with_macs else [])
    fig = Figure(figsize=(5.2 * len(panels), 4.2), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels)))
    for ax, (attr, group, xlabel) in zip(axes, panels):
        cost = np.array([getattr(c, attr) for c in group], dtype=float)
        acc = np.array([100 * c.test_accuracy.mean for c in group])
        err = np.array([0.0 if c.test_accuracy.n < 2 else 100 * c.test_accuracy.std for c in group])
        front = np.array(pareto_front(list(cost), list(acc)))
        ax.errorbar(cost, acc, yerr=err, fmt="none", ecolor="#bbb", lw=1)
        ax.scatter(cost[~front], acc[~front], color="#999", s=22, label="configuration", zorder=3)
        ax.scatter(cost[front], acc[front], color="#e6550d", s=34, label="Pareto front", zorder=4)
        order = np.argsort(cost[front])
        ax.step(cost[front][order], acc[front][order], where="post", color="#e6550d", lw=1, alpha=0.7)
        base = [i for i, c in enumerate(group) if c.rr == content.baseline_rr]
        if base:
            ax.scatter(cost[base], acc[base], marker="s", facecolor="none", edgecolor="black", s=70,
                       label="baseline", zorder=5)
        for x, y, c in zip(cost, acc, group):
            label = "no SE" if all(r is None for r in c.rr) else ratios_text(c.rr)
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 3), fontsize=6)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("test accuracy (%)")
        ax.grid(alpha=0.3)
        ax.xaxis.set_major_formatter(FuncFormatter(_si))
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside lower center", ncols=3, fontsize=7)  # never on a point
    several = any(c.test_accuracy.n > 1 for c in configs)
    fig.suptitle(f"Test accuracy against cost ({'error bars: std over seeds' if several else 'one seed each'})",
                 fontsize=10)
    path = out_dir / "pareto.png"
    fig.savefig(path, dpi=DPI)
    result.paths.append(path)
    return result
