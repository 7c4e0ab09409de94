"""The self-contained HTML report: one file, inline SVG figures and script, opens offline and prints."""

from __future__ import annotations

import html
import json
import math
from datetime import datetime, timezone

import polars as pl

from ftbench import __version__, plots

STYLE = """
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',sans-serif;max-width:1180px;margin:0 auto;padding:1rem 1.5rem;color:#1b1f24}
h1{font-size:1.6rem;margin:.2rem 0}h2{border-bottom:1px solid #d0d7de;padding-bottom:.2rem;margin-top:2rem}
nav a{margin-right:1rem}.muted{color:#57606a}.cards{display:flex;gap:.8rem;flex-wrap:wrap}
.card{border:1px solid #d0d7de;border-radius:6px;padding:.5rem .9rem;min-width:8rem}.card b{display:block;font-size:1.3rem}
table{border-collapse:collapse;font-size:12.5px;margin:.5rem 0}th,td{padding:.2rem .5rem;border-bottom:1px solid #eaeef2;text-align:right}
th{background:#f6f8fa;cursor:pointer;position:sticky;top:0}td:first-child,th:first-child,td.t{text-align:left}
figure{margin:.8rem 0}figcaption{color:#57606a;font-size:12.5px;max-width:60rem}svg{max-width:100%;height:auto}
.bad{color:#cf222e}.wrap{max-height:32rem;overflow:auto}
@media print{nav,.nop{display:none}th{position:static}.wrap{max-height:none;overflow:visible}h2{break-before:auto}figure{break-inside:avoid}}
"""

SORT_SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th,i){th.addEventListener('click',function(){
 var t=th.closest('table'),b=t.tBodies[0],rows=Array.from(b.rows),asc=th.dataset.asc!=='1';th.dataset.asc=asc?'1':'0';
 rows.sort(function(x,y){var a=x.cells[i].dataset.v||x.cells[i].textContent,c=y.cells[i].dataset.v||y.cells[i].textContent;
  var na=parseFloat(a),nc=parseFloat(c);var r=(isNaN(na)||isNaN(nc))?a.localeCompare(c):na-nc;return asc?r:-r;});
 rows.forEach(function(r){b.appendChild(r);});});});
"""


def _fmt(value) -> tuple[str, str]:
    """(shown text, sort key) of a cell value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–", ""
    if isinstance(value, float):
        return (f"{value:.3f}" if abs(value) < 1000 else f"{value:,.0f}"), repr(value)
    if isinstance(value, int):
        return f"{value:,}", str(value)
    return html.escape(str(value)), html.escape(str(value))


def table_html(frame: pl.DataFrame, text_columns: tuple[str, ...] = ()) -> str:
    head = "".join(f"<th>{html.escape(c)}</th>" for c in frame.columns)
    body = []
    for row in frame.iter_rows():
        tds = []
        for col, value in zip(frame.columns, row):
            shown, key = _fmt(value)
            cls = ' class="t"' if col in text_columns or isinstance(value, str) else ""
            tds.append(f'<td{cls} data-v="{key}">{shown}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    return f'<div class="wrap"><table class="sortable"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def _mean_sd(summary: pl.DataFrame, metrics: tuple[str, ...]) -> pl.DataFrame:
    cols = [pl.col(c) for c in ("task", "model", "strategy", "regime_group", "cells", "failed")]
    for m in metrics:
        cols.append(pl.format("{} ± {}", pl.col(f"{m}_mean").round(3), pl.col(f"{m}_sd").round(3)).alias(m))
    cols.append(pl.col("trainable_params"))
    return summary.select(cols).rename({"regime_group": "regime"})


def figure(svg: str | None, caption: str) -> str:
    return f"<figure>{svg}<figcaption>{html.escape(caption)}</figcaption></figure>" if svg else ""


def build(cells: pl.DataFrame, summary: pl.DataFrame, data_reports: list[dict], rejects: dict[str, int],
          missing: list[str], title: str = "ftbench report") -> str:
    """The report page as one HTML string."""
    ok = cells.filter(pl.col("status") == "ok") if cells.height else cells
    failed = cells.filter(pl.col("status") != "ok") if cells.height else cells
    compute_h = (cells["wall_seconds"].sum() / 3600) if cells.height else 0.0
    tasks = sorted(summary["task"].unique().to_list()) if summary.height else []
    parts = [f"<h1>{html.escape(title)}</h1>",
             f'<p class="muted">ftbench {__version__} · generated {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC</p>',
             '<nav class="nop"><a href="#summary">Run summary</a><a href="#tasks">Results per task</a>'
             '<a href="#table">All results</a><a href="#data">Data</a></nav>',
             '<h2 id="summary">Run summary</h2><div class="cards">',
             f"<div class=card><b>{ok.height}</b>cells done</div>",
             f"<div class=card><b class={'bad' if failed.height else ''}>{failed.height}</b>cells failed</div>",
             f"<div class=card><b class={'bad' if missing else ''}>{len(missing)}</b>cells missing</div>",
             f"<div class=card><b>{compute_h:.2f} h</b>compute (sum of cell wall time)</div>",
             f"<div class=card><b>{sum(rejects.values())}</b>images rejected</div></div>"]
    if failed.height:
        parts.append("<h3>Failed cells</h3>" + table_html(failed.select("task", "model", "strategy", "regime", "fold", "error")))
    if missing:
        parts.append(f"<h3>Missing cells</h3><p>These cells of the grid have no result yet; the figures use what exists.</p>"
                     f"<pre>{html.escape(chr(10).join(missing))}</pre>")
    parts.append('<h2 id="tasks">Results per task</h2>')
    for task in tasks:
        parts.append(f"<h3>{html.escape(task)}</h3>")
        parts.append(figure(plots.metric_bars(summary, task, "mcc"),
                            "MCC on the test part at the threshold chosen on validation: bar = mean over folds (and "
                            "few-shot repetitions), whisker = SD. Groups are models, colours strategies, panels regimes. "
                            "0 is chance level, 1 perfect."))
        parts.append(figure(plots.metric_bars(summary, task, "pr_auc"),
                            "PR-AUC (average precision) on the test part, mean ± SD. Chance level equals the positive "
                            "rate of the task, not 0.5."))
        parts.append(figure(plots.fewshot_curves(summary, task, "mcc"),
                            "Few-shot: MCC against K labelled patients per class (log scale), mean over folds and "
                            "repetitions with ± SD band, one panel per model."))
    parts.append('<h2 id="table">All results</h2><p class="muted">Mean ± SD over folds (and repetitions). '
                 "Click a column header to sort.</p>")
    if summary.height:
        parts.append(table_html(_mean_sd(summary, ("mcc", "pr_auc", "roc_auc", "balanced_accuracy", "brier")),
                                ("task", "model", "strategy", "regime")))
    parts.append('<h2 id="data">Data</h2>')
    for rep in data_reports:
        counts = rep["patients_per_class"]
        parts.append(
            f"<h3>{html.escape(rep['task'])}</h3><p>dataset <b>{html.escape(rep['dataset'])}</b>, label "
            f"<code>{html.escape(rep['label'])}</code> positive when in {html.escape(json.dumps(rep['positive']))}; "
            f"images used per patient: <b>{html.escape(rep['images_policy'])}</b>; "
            f"patients negative/positive: {counts.get('0', 0)}/{counts.get('1', 0)}; "
            f"images without a usable label: {rep['unlabelled_images']}; "
            f"images rejected from the dataset: {rejects.get(rep['dataset'], 0)}.</p>")
        steps = pl.DataFrame({"step": list(rep["steps"]), "images": list(rep["steps"].values())})
        parts.append(table_html(steps, ("step",)))
    return (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport content='width=device-width,initial-scale=1'>"
            f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>{''.join(parts)}"
            f"<script>{SORT_SCRIPT}</script></body></html>")
