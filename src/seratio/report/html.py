"""One self-contained HTML page: tables, statistics and figures, with no external requests.

Images are inlined as base64, CSS is inline, and there is no JavaScript, so the
file can be mailed, archived or opened offline and looks the same everywhere.
A Content-Security-Policy forbids every fetch except inline styles and data:
images, so an accidental external reference fails loudly in the browser
console instead of leaking a request. Wide tables scroll inside their own box
on phones; print styles keep figures and rows from splitting across pages.
"""

from __future__ import annotations

import base64
import math
from html import escape
from pathlib import Path

from seratio import __version__
from seratio.report.content import ReportContent
from seratio.report.labels import model_label, model_slug, phase_title
from seratio.report.tables import (
    all_rows,
    caption,
    display_cells,
    display_header,
    incomplete_text,
    significance_cells,
    significance_header,
    short_model,
    trial_label,
)
from seratio.store import redact_url

CSP = "default-src 'none'; img-src data:; style-src 'unsafe-inline'"

CSS = """
:root { --fg: #1b1f24; --muted: #57606a; --line: #d0d7de; --accent: #e6550d; --soft: #f6f8fa; }
* { box-sizing: border-box; }
body { margin: 0; color: var(--fg); background: #fff; line-height: 1.5;
  font: 16px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 72rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.5rem; margin: 0.5rem 0; overflow-wrap: anywhere; }
h2 { font-size: 1.2rem; margin: 2rem 0 0.5rem; border-bottom: 1px solid var(--line); padding-bottom: 0.2rem; }
p, li { max-width: 48rem; }
.meta { color: var(--muted); font-size: 0.9rem; overflow-wrap: anywhere; }
.callout { border-left: 4px solid var(--accent); background: var(--soft); padding: 0.6rem 0.9rem; }
.scroll { overflow-x: auto; -webkit-overflow-scrolling: touch; border: 1px solid var(--line); border-radius: 4px; }
table { border-collapse: collapse; width: 100%; font-size: 0.88rem; font-variant-numeric: tabular-nums; }
th, td { padding: 0.3rem 0.55rem; border-bottom: 1px solid var(--line); text-align: right; white-space: nowrap; }
th:first-child, td:first-child, td.text, th.text { text-align: left; }
td.text { white-space: normal; min-width: 22rem; }
thead th { background: var(--soft); }
td:first-child, th:first-child { position: sticky; left: 0; background: #fff; }
thead th:first-child { background: var(--soft); }
tr.phase th { text-align: left; background: #eef2f6; font-weight: 600; position: static; }
tr.winner td { font-weight: 700; }
tr.winner td:first-child { box-shadow: inset 3px 0 0 var(--accent); }
.badge { font-size: 0.7rem; font-weight: 600; color: #fff; background: var(--accent); border-radius: 3px;
  padding: 0 0.3rem; margin-left: 0.3rem; vertical-align: middle; }
.sig { color: #a40e26; font-weight: 700; }
figure { margin: 1rem 0; break-inside: avoid; page-break-inside: avoid; }
figure img { display: block; max-width: 100%; height: auto; border: 1px solid var(--line); }
figcaption { color: var(--muted); font-size: 0.85rem; margin-top: 0.3rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fit, minmax(16rem, 1fr)); gap: 1rem; }
footer { color: var(--muted); font-size: 0.8rem; margin-top: 2rem; border-top: 1px solid var(--line);
  padding-top: 0.5rem; overflow-wrap: anywhere; }
@media (max-width: 40rem) { main { padding: 0.6rem; } body { font-size: 15px; } }
@media print {
  @page { margin: 1.5cm; }
  body { font-size: 10pt; }
  main { max-width: none; padding: 0; }
  .scroll { overflow: visible; border: none; }
  table { font-size: 7.5pt; }
  td:first-child, th:first-child { position: static; }
  tr, h2 { break-inside: avoid; page-break-inside: avoid; break-after: avoid-page; }
  .grid { grid-template-columns: repeat(3, 1fr); }
}
"""


def _img(path: Path, alt: str, text: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    return (f'<figure><img src="data:image/png;base64,{data}" alt="{escape(alt)}">'
            f"<figcaption>{escape(text)}</figcaption></figure>")


def _main_table(content: ReportContent) -> str:
    """Phases become header rows, and model + ratios one short sticky column that stays in view on phones."""
    header = ["Model (RR per stage)"] + display_header(content)[3:]
    parts = ['<div class="scroll"><table>', "<thead><tr>"]
    parts += [f'<th scope="col">{escape(h)}</th>' for h in header]
    parts.append("</tr></thead><tbody>")
    for row, first in all_rows(content):
        if first:
            parts.append(f'<tr class="phase"><th colspan="{len(header)}" scope="rowgroup">'
                         f"{escape(phase_title(row.phase))}</th></tr>")
        rest = display_cells(content, row, first)[3:]  # after experiment, model and ratios
        cells = [escape(short_model(content, row.config.rr))] + [escape(c) for c in rest]
        if row.winner:
            cells[0] += '<span class="badge">winner</span>'
        tr = '<tr class="winner">' if row.winner else "<tr>"
        parts.append(tr + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _significance_table(content: ReportContent) -> str:
    if not content.significance:
        return ""
    header = significance_header()
    parts = ['<div class="scroll"><table><thead><tr>']
    parts += [f'<th scope="col" class="text">{escape(h)}</th>' if h == "Detail" else f'<th scope="col">{escape(h)}</th>'
              for h in header]
    parts.append("</tr></thead><tbody>")
    for sig in content.significance.values():
        cells = [escape(c) for c in significance_cells(content, sig)]
        if not math.isnan(sig.p_holm) and sig.p_holm < 0.05:
            cells[4] = f'<span class="sig">{cells[4]}</span>'
        parts.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells[:-1]) + f'<td class="text">{cells[-1]}</td></tr>')
    parts.append("</tbody></table></div>")
    return "".join(parts)


def _list(items: list[str]) -> str:
    return "<ul>" + "".join(f"<li>{escape(i)}</li>" for i in items) + "</ul>"


def render_html(content: ReportContent, figures: list[Path]) -> str:
    """The whole report as one page; `figures` are the PNGs to inline (what could not be drawn is
    among the content's notes)."""
    d = content.study.definition
    depth = d.depth
    by_name = {p.name: p for p in figures if p.suffix == ".png"}
    body = [
        f"<header><h1>seratio report: {escape(content.study.name)}</h1>",
        f'<p class="meta">{escape(d.strategy)} search · {escape(d.dataset)} · depth {depth} · recipe '
        f"{escape(d.recipe)} · {d.epochs} epochs · {d.seeds} seed(s) per configuration · baseline "
        f"{escape(model_label(content.baseline_rr, depth))}</p></header>",
        f'<section><h2>Is the difference real?</h2><p class="callout">{escape(content.conclusion)}</p></section>',
        "<section><h2>Results (paper Table 3 layout)</h2>",
        f"<p>{escape(caption(content))}</p><p>{escape(content.selection_note)}</p>",
        _main_table(content),
        "</section>",
        "<section><h2>Significance against the baseline</h2>",
        "<p>One seed: McNemar's exact test on the paired test predictions. Several seeds: Welch's t-test over "
        "seeds and its 95% t-interval of the difference of means. Holm-adjusted p-values account for testing "
        "every configuration against the same baseline.</p>",
        _significance_table(content) or "<p>No tests.</p>",
        "</section>",
    ]
    if "curves.png" in by_name:
        body += ["<section><h2>Test accuracy per epoch (paper Fig. 5)</h2>",
                 _img(by_name["curves.png"], "Test accuracy per epoch",
                      "Baseline, best constant ratio and best found; mean over seeds, band min to max."),
                 "</section>"]
    confusions = [(h, by_name[f"confusion_{model_slug(h.config.rr)}.png"]) for h in content.highlights
                  if f"confusion_{model_slug(h.config.rr)}.png" in by_name]
    if confusions:
        body.append("<section><h2>Confusion matrices and per-class accuracy (paper Fig. 6)</h2><div class=\"grid\">")
        body += [_img(p, f"Confusion matrix of {model_label(h.config.rr, depth)}",
                      f"{model_label(h.config.rr, depth)}, {h.role}") for h, p in confusions]
        body.append("</div></section>")
    if "pareto.png" in by_name:
        body += ["<section><h2>Accuracy against parameters and MACs</h2>",
                 f"<p>{escape(content.pareto_note)}</p>",
                 _img(by_name["pareto.png"], "Accuracy against parameters and MACs",
                      "Every configuration; orange points form the Pareto front (no cheaper configuration is "
                      "more accurate)."),
                 "</section>"]
    if content.excluded:
        body += ["<section><h2>Excluded from averages</h2>",
                 _list([f"{trial_label(e.trial)}: {e.reason}" for e in content.excluded]), "</section>"]
    if content.incomplete:
        body += ["<section><h2>Failed, pruned or running trials</h2>",
                 _list([incomplete_text(content, t) for t in content.incomplete]), "</section>"]
    if content.notes:
        body += ["<section><h2>Notes</h2>", _list(list(content.notes)), "</section>"]
    body.append(f"<footer>Generated by seratio {escape(__version__)} from study {escape(content.study.name)} in "
                f"{escape(redact_url(content.study.storage))}. Reads stored results only.</footer>")
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f'<meta http-equiv="Content-Security-Policy" content="{CSP}">'
        f"<title>seratio report: {escape(content.study.name)}</title><style>{CSS}</style></head>"
        "<body><main>" + "\n".join(body) + "</main></body></html>\n"
    )
