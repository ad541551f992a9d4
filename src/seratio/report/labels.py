"""How models, ratios, phases and p-values are written: one spelling in every report format."""

from __future__ import annotations

import math

from seratio.architecture import Ratios

PHASE_TITLES = {
    "baseline": "Baseline",
    "constant": "Constant reduction ratio",
    "stage1": "Stage 1 greedy RR search",
    "stage2": "Stage 2 greedy RR search",
    "stage3": "Stage 3 greedy RR search",
    "grid": "Grid search",
    "tpe": "TPE search",
    "halving": "Successive halving",
}


def ratios_text(rr: Ratios) -> str:
    """Paper style "(8, 2, 16)"; a stage without SE shows as "-"; no SE at all as "-"."""
    if all(r is None for r in rr):
        return "-"
    return "(" + ", ".join("-" if r is None else str(r) for r in rr) + ")"


def model_name(rr: Ratios, depth: int) -> str:
    return f"ResNet-{depth}" if all(r is None for r in rr) else f"SE-ResNet-{depth}"


def model_label(rr: Ratios, depth: int) -> str:
    ratios = ratios_text(rr)
    return model_name(rr, depth) + ("" if ratios == "-" else f" {ratios}")


def short_label(rr: Ratios, depth: int) -> str:
    """Ratios alone identify an SE model once a caption names the network; the plain one keeps its name."""
    ratios = ratios_text(rr)
    return model_name(rr, depth) if ratios == "-" else ratios


def model_slug(rr: Ratios) -> str:
    """File-name-safe model id: `resnet` or `se_8_2_16` (`none` for a stage without SE)."""
    if all(r is None for r in rr):
        return "resnet"
    return "se_" + "_".join("none" if r is None else str(r) for r in rr)


def phase_title(phase: str) -> str:
    return PHASE_TITLES.get(phase, phase)


def fmt_p(p: float) -> str:
    """Three significant digits near the 5% threshold, so 0.0496 and 0.0500 do not both read "0.050"
    while only one of them is called significant."""
    if math.isnan(p):
        return "n/a"
    if p == 0:
        return "< 1e-300"  # the exact binomial tail underflows for very lopsided counts
    if p < 0.001:
        return f"{p:.2g}"
    return f"{p:#.3g}" if p < 0.1 else f"{p:.3f}"
