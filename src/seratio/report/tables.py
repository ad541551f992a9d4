"""The paper's Table 3 layout as Markdown, CSV, JSON and LaTeX.

Human formats (Markdown, LaTeX, HTML) show percentages rounded as the paper
does; machine formats (CSV, JSON) keep the stored values unrounded, in the
stored units (accuracies as fractions), so they can be checked against the
study and reused without parsing "91.53 ± 0.12".
"""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from seratio import __version__
from seratio.architecture import format_rr
from seratio.records import RR, StudyDefinition, TrialRecord
from seratio.report.content import ReportContent, Row, completed_as
from seratio.report.labels import fmt_p, model_label, model_name, phase_title, ratios_text, short_label
from seratio.report.significance import Significance
from seratio.stats import Summary
from seratio.store import redact_url

# -- cell formatting shared by the human formats -----------------------------------------------


def fmt_pct(s: Summary) -> str:
    return f"{100 * s.mean:.2f}" if s.n < 2 else f"{100 * s.mean:.2f} ± {100 * s.std:.2f}"


def fmt_ci(s: Summary) -> str:
    return "-" if s.n < 2 else f"[{100 * s.ci_low:.2f}, {100 * s.ci_high:.2f}]"


def fmt_loss(s: Summary) -> str:
    if math.isnan(s.mean):
        return "-"
    return f"{s.mean:.4f}" if s.n < 2 else f"{s.mean:.4f} ± {s.std:.4f}"


def fmt_int(v: int | None) -> str:
    return "-" if v is None else f"{v:,}"


def fmt_macs(v: int | None) -> str:
    return "-" if v is None else f"{v / 1e6:.2f}M"


def fmt_vs_baseline(content: ReportContent, rr: RR) -> str:
    """The p-value cell: shown beside each row, 'baseline' on the baseline's own row."""
    if rr == content.baseline_rr:
        return "baseline"
    sig = content.significance.get(rr)
    return "n/a" if sig is None else fmt_p(sig.p_value)


def several_seeds(content: ReportContent) -> bool:
    return any(c.test_accuracy.n > 1 for c in content.aggregate.configs.values())


def display_header(content: ReportContent) -> list[str]:
    header = ["Experiment", "Model", "Ratios", "Test acc (%)"]
    if several_seeds(content):
        header += ["95% CI", "n"]
    if content.paper is not None:
        header.append("Paper (%)")
    header += ["Test loss", "Params", "MACs", "Epochs"]
    if content.study.definition.select_on == "val":
        header.append("Val acc (%)")
    return header + ["p vs baseline (unadjusted)"]


def display_cells(content: ReportContent, row: Row, first_in_phase: bool) -> list[str]:
    c = row.config
    cells = [phase_title(row.phase) if first_in_phase else "", model_name(c.rr, content.study.definition.depth),
             ratios_text(c.rr), fmt_pct(c.test_accuracy)]
    if several_seeds(content):
        cells += [fmt_ci(c.test_accuracy), str(c.test_accuracy.n)]
    if content.paper is not None:
        cells.append(f"{100 * content.paper[c.rr]:.2f}" if c.rr in content.paper else "-")
    cells += [fmt_loss(c.test_loss), fmt_int(c.params), fmt_macs(c.macs), fmt_int(c.epochs)]
    if content.study.definition.select_on == "val":
        cells.append(fmt_pct(c.selection))
    return cells + [fmt_vs_baseline(content, c.rr)]


def short_model(content: ReportContent, rr: RR) -> str:
    return short_label(rr, content.study.definition.depth)


def significance_header() -> list[str]:
    return ["Model (RR)", "Δ test acc (points)", "Test", "p", "Holm p", "95% CI of Δ", "Detail"]


def significance_cells(content: ReportContent, s: Significance) -> list[str]:
    ci = "-" if math.isnan(s.ci_low) else f"[{100 * s.ci_low:+.2f}, {100 * s.ci_high:+.2f}]"
    test = {"mcnemar": "McNemar (exact)", "welch": "Welch t", "none": "-"}[s.method]
    return [short_model(content, s.rr), f"{100 * s.diff:+.2f}", test,
            fmt_p(s.p_value), fmt_p(s.p_holm), ci, s.detail]


def caption(content: ReportContent) -> str:
    d = content.study.definition
    blocks = (d.depth - 2) // 6
    paper = "; the paper's ResNet-52" if d.depth == 50 else ""
    seeds = "mean ± std over seeds, 95% t-interval of the mean" if several_seeds(content) else "single runs"
    return (
        f"Study {content.study.name!r}: {d.strategy} search on {d.dataset}, depth {d.depth} "
        f"({blocks} block{'s' if blocks != 1 else ''} per stage{paper}), recipe {d.recipe}, {d.epochs} epochs"
        f"{_training(d)}, {seeds}. Test metrics are of the last epoch. Bold: winner of its phase by "
        f"{'validation' if d.select_on == 'val' else 'test'} accuracy."
    )


def _training(d: StudyDefinition) -> str:
    """The settings a reader needs to rerun the study, which a recipe's name alone does not give:
    `--lr` and `--batch-size` override the recipe's own."""
    parts = [f"batch size {d.batch_size}" if d.batch_size is not None else "",
             f"learning rate {d.lr:g}" if d.lr is not None else "",
             f"{d.val_size:,} training images held out for validation" if d.val_size else "",
             f"precision {d.precision}" if d.precision not in (None, "auto") else ""]
    return "".join(f", {part}" for part in parts if part)


# -- machine formats ---------------------------------------------------------------------------


def _num(v: float | None) -> float | None:
    return None if v is None or math.isnan(v) else v


def row_record(content: ReportContent, row: Row) -> dict[str, Any]:
    """One table row with unrounded stored values; NaN becomes null."""
    c = row.config
    sig = content.significance.get(c.rr)
    return {
        "phase": row.phase,
        "experiment": phase_title(row.phase),
        "model": model_name(c.rr, content.study.definition.depth),
        "ratios": ratios_text(c.rr),
        "rr": list(c.rr),
        "winner": row.winner,
        "is_baseline": c.rr == content.baseline_rr,
        "n": c.test_accuracy.n,
        "seeds": [t.seed for t in c.runs],
        "trials": [t.number for t in c.runs],
        "test_accuracy": _num(c.test_accuracy.mean),
        "test_accuracy_std": _num(c.test_accuracy.std),
        "test_accuracy_ci_low": _num(c.test_accuracy.ci_low),
        "test_accuracy_ci_high": _num(c.test_accuracy.ci_high),
        "paper_test_accuracy": None if content.paper is None else content.paper.get(c.rr),
        "test_loss": _num(c.test_loss.mean),
        "test_loss_std": _num(c.test_loss.std),
        "best_test_accuracy": None if c.best_test_accuracy is None else _num(c.best_test_accuracy.mean),
        "selection_metric": f"{content.study.definition.select_on}_accuracy",
        "selection": _num(c.selection.mean),
        "params": c.params,
        "macs": c.macs,
        "epochs": c.epochs,
        "vs_baseline_test": None if sig is None else sig.method,
        "vs_baseline_diff": None if sig is None else _num(sig.diff),
        "p_value": None if sig is None else _num(sig.p_value),
        "p_holm": None if sig is None else _num(sig.p_holm),
        "diff_ci_low": None if sig is None else _num(sig.ci_low),
        "diff_ci_high": None if sig is None else _num(sig.ci_high),
        "vs_baseline_detail": None if sig is None else sig.detail,
    }


def all_rows(content: ReportContent) -> list[tuple[Row, bool]]:
    """(row, first row of its phase) in table order."""
    return [(row, i == 0) for _, rows in content.phases for i, row in enumerate(rows)]


def to_csv(content: ReportContent) -> str:
    records = [row_record(content, row) for row, _ in all_rows(content)]
    out = io.StringIO()
    if records:
        writer = csv.DictWriter(out, fieldnames=list(records[0]), lineterminator="\n")
        writer.writeheader()
        for record in records:
            writer.writerow({key: _csv_cell(key, value) for key, value in record.items()})
    return out.getvalue()


def _csv_cell(key: str, value: Any) -> Any:
    """Ratios as the command line writes them (8,2,16; none), other lists space-separated, and floats
    to 12 significant digits: a spreadsheet should show 0.046, not 0.045999999999999985. table.json
    keeps the stored values unrounded."""
    if key == "rr":
        return format_rr(value)
    if isinstance(value, list):
        return " ".join(map(str, value))
    return float(f"{value:.12g}") if isinstance(value, float) else value


def trial_record(t: TrialRecord) -> dict[str, Any]:
    return {"trial": t.number, "state": t.state, "rr": None if t.rr is None else list(t.rr), "seed": t.seed,
            "phase": t.phase, "run_dir": None if t.run_dir is None else str(t.run_dir),
            "fail_reason": t.fail_reason, "last_reported_epoch": t.last_reported_epoch}


def to_json(content: ReportContent) -> str:
    d = content.study.definition
    document = {
        "study": content.study.name,
        "storage": redact_url(content.study.storage),
        "definition": {k: list(v) if isinstance(v, tuple) else v for k, v in vars(d).items()},
        "selection_note": content.selection_note,
        "baseline": {"rr": list(content.baseline_rr), "model": model_label(content.baseline_rr, d.depth)},
        "caption": caption(content),
        "rows": [row_record(content, row) for row, _ in all_rows(content)],
        "conclusion": content.conclusion,
        "pareto_note": content.pareto_note,
        "excluded": [trial_record(e.trial) | {"reason": e.reason} for e in content.excluded],
        "incomplete": [trial_record(t) for t in content.incomplete],
        "notes": list(content.notes),
        "seed_noise": None if content.seed_noise is None else content.seed_noise.record(),
        "generated_by": f"seratio {__version__}",
    }
    return json.dumps(document, indent=2, allow_nan=False) + "\n"


# -- Markdown ----------------------------------------------------------------------------------


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    def line(cells: list[str]) -> str:
        return "| " + " | ".join(cell.replace("|", "\\|") for cell in cells) + " |"

    return [line(header), "| " + " | ".join("---" for _ in header) + " |", *map(line, rows)]


def trial_label(t: TrialRecord) -> str:
    return f"trial #{t.number} {ratios_text(t.rr) if t.rr else '(no ratios stored)'} seed {t.seed} ({t.phase})"


def incomplete_text(content: ReportContent, t: TrialRecord) -> str:
    """Why a trial is not in the table, in words, and whether another trial finished its run."""
    text = _state_text(t)
    done = completed_as(content.aggregate, t)
    return text if done is None else f"{text}; completed by trial #{done}"


def _state_text(t: TrialRecord) -> str:
    where = trial_label(t)
    if t.state == "FAIL":
        return f"{where}: failed: {t.fail_reason or 'no reason stored'}"
    if t.state == "RUNNING":
        progress = f", last reported epoch {t.last_reported_epoch}" if t.last_reported_epoch is not None else ""
        return f"{where}: still running{progress}"
    if t.state == "PRUNED":
        return f"{where}: pruned at epoch {t.last_reported_epoch}"
    if t.state == "COMPLETE":
        return f"{where}: complete, but its stored attributes lack the ratios or the test accuracy"
    return f"{where}: {t.state.lower()}"


def to_markdown(content: ReportContent) -> str:
    rows = []
    for row, first in all_rows(content):
        cells = display_cells(content, row, first)
        rows.append(cells[:1] + [f"**{c}**" if row.winner else c for c in cells[1:]])
    lines = [f"# Study {content.study.name}", "", caption(content), "", content.selection_note, ""]
    lines += _md_table(display_header(content), rows)
    lines += ["", "## Significance against the baseline", "", content.conclusion, ""]
    sig = list(content.significance.values())
    if sig:
        lines += _md_table(significance_header(), [significance_cells(content, s) for s in sig])
        lines.append("")
    lines += ["## Accuracy against cost", "", content.pareto_note, ""]
    if content.excluded:
        lines += ["## Excluded from averages", ""]
        lines += [f"- {trial_label(e.trial)}: {e.reason}" for e in content.excluded] + [""]
    if content.incomplete:
        lines += ["## Failed, pruned or running trials", ""]
        lines += [f"- {incomplete_text(content, t)}" for t in content.incomplete] + [""]
    if content.notes:
        lines += ["## Notes", ""] + [f"- {n}" for n in content.notes] + [""]
    return "\n".join(lines)


# -- LaTeX -------------------------------------------------------------------------------------

_TEX_ESCAPES = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
                "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
                "<": r"\textless{}", ">": r"\textgreater{}", "|": r"\textbar{}"}
"""Characters that base LaTeX treats as commands, or (`<`, `>`, `|` in its default OT1 font encoding)
prints as other glyphs: an underflowed p "< 1e-300" came out as "¡ 1e-300"."""


def tex_escape(text: str) -> str:
    text = "".join(_TEX_ESCAPES.get(ch, ch) for ch in text)
    return text.replace("±", r"$\pm$").replace("Δ", r"$\Delta$")


def to_latex(content: ReportContent) -> str:
    """A `table` float using only base LaTeX, so `\\input{table.tex}` works in any document."""
    header = display_header(content)
    lines = [
        "% Generated by seratio " + __version__ + " from study " + tex_escape(content.study.name),
        r"\begin{table}[htbp]",
        r"\centering",
        r"\small",
        r"\caption{" + tex_escape(caption(content) + " " + content.selection_note) + "}",
        r"\begin{tabular}{" + "ll" + "r" * (len(header) - 2) + "}",
        r"\hline",
        " & ".join(tex_escape(h) for h in header) + r" \\",
        r"\hline",
    ]
    for row, first in all_rows(content):
        if first and not lines[-1].endswith(r"\hline"):
            lines.append(r"\hline")
        cells = [tex_escape(c) for c in display_cells(content, row, first)]
        if row.winner:
            cells = cells[:1] + [r"\textbf{" + c + "}" for c in cells[1:]]
        lines.append(" & ".join(cells) + r" \\")
    lines += [r"\hline", r"\end{tabular}", r"\end{table}", ""]
    return "\n".join(lines)
