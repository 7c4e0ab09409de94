"""The self-contained HTML report: one file, inline SVG figures and script, opens offline and prints.

:func:`figures` draws every figure (also written as separate SVG files for ``snakemake --report``) and
:func:`build` lays out the page. Both work on whatever cells exist: missing and failed cells are listed,
figures without data are left out, statistics that a small grid cannot support say so.
"""

from __future__ import annotations

import html
import json
import math
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import polars as pl

from ftbench import __version__
from ftbench.analysis import aggregate, external, plots, stats
from ftbench.analysis.captions import CAPTIONS
from ftbench.analysis.external import External
from ftbench.plan.config import HINDSIGHT
from ftbench.plan.transfer import PAIR_SEPARATOR

STYLE = """
:root{--fg:#1b1f24;--muted:#57606a;--line:#d0d7de;--soft:#f6f8fa;--bad:#cf222e;--ok:#1a7f37;--warn:#9a6700}
*{box-sizing:border-box}
body{font:14px/1.5 system-ui,-apple-system,'Segoe UI',Roboto,'DejaVu Sans',sans-serif;color:var(--fg);margin:0}
main{max-width:1180px;margin:0 auto;padding:1rem 1.5rem 3rem}
header{border-bottom:1px solid var(--line);padding-bottom:.6rem}
h1{font-size:1.55rem;margin:.2rem 0}h2{font-size:1.25rem;border-bottom:1px solid var(--line);padding-bottom:.25rem;margin-top:2.2rem}
h3{font-size:1.05rem;margin:1.4rem 0 .4rem}
nav{position:sticky;top:0;background:#fff;z-index:2;padding:.45rem 0;border-bottom:1px solid var(--line);font-size:13px}
nav a{margin-right:1rem;color:#0969da;text-decoration:none}nav a:hover{text-decoration:underline}
.muted{color:var(--muted)}.small{font-size:12.5px}.bad{color:var(--bad)}.good{color:var(--ok)}
.cards{display:flex;gap:.7rem;flex-wrap:wrap;margin:.8rem 0}
.card{border:1px solid var(--line);border-radius:6px;padding:.45rem .85rem;min-width:8.5rem;background:#fff}
.card b{display:block;font-size:1.35rem;line-height:1.3}
.progress{display:flex;height:10px;border-radius:5px;overflow:hidden;background:var(--soft);max-width:40rem;border:1px solid var(--line)}
.progress span{display:block;height:100%}
.legend i{display:inline-block;width:.8em;height:.8em;border-radius:2px;margin:0 .25em 0 .8em;vertical-align:-1px}
table{border-collapse:collapse;font-size:12.5px;margin:.4rem 0;font-variant-numeric:tabular-nums}
th,td{padding:.22rem .55rem;border-bottom:1px solid #eaeef2;text-align:right;vertical-align:top;white-space:nowrap}
td.long{white-space:normal;min-width:18rem;max-width:34rem}
th{background:var(--soft);position:sticky;top:0;white-space:nowrap}
table.sortable th{cursor:pointer}table.sortable th:after{content:' \\2195';color:#afb8c1;font-size:10px}
th.asc:after{content:' \\25B2'!important;color:var(--fg)!important}th.desc:after{content:' \\25BC'!important;color:var(--fg)!important}
td.t,th.t{text-align:left}tbody tr:hover{background:#f6f8fa}
.wrap{max-height:30rem;overflow:auto;border:1px solid #eaeef2;border-radius:4px;display:inline-block;max-width:100%}
figure{margin:1rem 0 1.6rem;break-inside:avoid}figure svg{max-width:100%;height:auto;display:block}
figcaption{color:var(--muted);font-size:12.5px;max-width:62rem;margin-top:.3rem}
figcaption b{color:var(--fg)}
.note{background:#fff8c5;border:1px solid #eac54f;border-radius:6px;padding:.45rem .8rem;max-width:62rem}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(250px,1fr));gap:.4rem 1.4rem;align-items:start}
.grid table{width:100%}
.bar{display:inline-block;height:.75em;background:#8cb4e0;border-radius:2px;vertical-align:-1px}
details summary{cursor:pointer;color:#0969da;margin:.3rem 0}
code{background:var(--soft);padding:0 .25em;border-radius:3px;font-size:12.5px}
dl{display:grid;grid-template-columns:max-content 1fr;gap:.1rem .9rem;margin:.3rem 0}dt{color:var(--muted)}dd{margin:0}
@media print{nav,.nop{display:none}main{max-width:none;padding:0}th{position:static}
 .wrap{max-height:none;overflow:visible;border:0;display:block}h2{break-after:avoid}h3{break-after:avoid}
 body{font-size:11px}a{color:inherit;text-decoration:none}table{font-size:9px}
 th,td{white-space:normal;padding:.1rem .3rem}td.long{min-width:0}table.sortable th:after{content:none}tr{break-inside:avoid}}
"""

SCRIPT = """
document.querySelectorAll('table.sortable th').forEach(function(th){th.addEventListener('click',function(){
 var t=th.closest('table'),b=t.tBodies[0],rows=Array.from(b.rows),asc=!th.classList.contains('asc'),i=th.cellIndex;
 t.querySelectorAll('th').forEach(function(h){h.classList.remove('asc','desc');});th.classList.add(asc?'asc':'desc');
 rows.sort(function(x,y){var a=x.cells[i].dataset.v,c=y.cells[i].dataset.v;
  if(a===''&&c!=='')return 1;if(c===''&&a!=='')return -1;
  var na=parseFloat(a),nc=parseFloat(c);var r=(isNaN(na)||isNaN(nc))?a.localeCompare(c):na-nc;return asc?r:-r;});
 rows.forEach(function(r){b.appendChild(r);});});});
window.addEventListener('beforeprint',function(){document.querySelectorAll('details').forEach(function(d){d.open=true;});});
"""

METRIC_COLUMNS = ("mcc", "pr_auc", "roc_auc", "balanced_accuracy", "sensitivity", "specificity", "brier", "ece")


@dataclass
class Figure:
    kind: str  # a key of CAPTIONS; also the figure's folder for `snakemake --report`
    name: str  # file stem: the task, or the metric
    svg: str
    note: str = ""  # what this instance adds to the kind's caption

    @property
    def caption(self) -> str:
        return CAPTIONS[self.kind] + (f" {self.note}" if self.note else "")


@dataclass
class Results:
    """Everything the report shows; any table may be empty."""

    cells: pl.DataFrame
    summary: pl.DataFrame
    predictions: pl.DataFrame
    comparisons: stats.Comparisons
    data_reports: list[dict] = field(default_factory=list)
    rejects: dict[str, pl.DataFrame] = field(default_factory=dict)
    missing: pl.DataFrame = field(default_factory=lambda: pl.DataFrame(schema={"cell": pl.String, "log": pl.String}))
    projection: pl.DataFrame | None = None  # every cell of the grid with its seconds (ftbench.analysis.cost.project)
    not_possible: list[str] = field(default_factory=list)  # few-shot groups planning left out (grid.not_possible)
    external: External | None = None  # external validation (regimes.transfer), when the config declares pairs
    alpha: float = 0.05
    resamples: int = 1000  # bootstrap resamples behind the CIs (0: none)
    title: str = "ftbench report"


# --- small HTML pieces ----------------------------------------------------------------------------------


def esc(value) -> str:
    return html.escape(str(value))


def _fmt(value) -> tuple[str, str]:
    """(shown text, sort key) of a table value."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–", ""
    if isinstance(value, bool):
        return ("yes" if value else "no"), str(int(value))
    if isinstance(value, float):
        shown = (
            f"{value:,.0f}"
            if abs(value) >= 1000
            else f"{value:.3g}"
            if abs(value) < 0.001 and value
            else f"{value:.3f}"
        )
        return shown, repr(value)
    if isinstance(value, int):
        return f"{value:,}", str(value)
    return esc(value), esc(value)


def table_html(frame: pl.DataFrame, sort_keys: dict[str, str] | None = None, sortable: bool = True) -> str:
    """A table; ``sort_keys`` maps a shown text column to a hidden numeric column that orders it."""
    sort_keys = sort_keys or {}
    shown = [c for c in frame.columns if c not in sort_keys.values()]
    text = {c for c in shown if frame[c].dtype == pl.String}
    long = {c for c in text if (frame[c].str.len_chars().max() or 0) > 40}  # wrapped; the others stay on one line
    cls = {c: "t long" if c in long else "t" if c in text else "" for c in shown}
    head = "".join(f'<th class="{cls[c]}">{esc(c.replace("_", " "))}</th>' for c in shown)
    body = []
    for row in frame.iter_rows(named=True):
        tds = []
        for col in shown:
            value, key = _fmt(row[col])
            if col in sort_keys:
                key = _fmt(row[sort_keys[col]])[1]
            tds.append(f'<td class="{cls[col]}" data-v="{key}">{value}</td>')
        body.append("<tr>" + "".join(tds) + "</tr>")
    cls = ' class="sortable"' if sortable else ""
    return f'<div class="wrap"><table{cls}><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table></div>'


def figure_html(fig: Figure) -> str:
    return f'<figure id="fig-{esc(fig.kind)}-{esc(fig.name)}">{fig.svg}<figcaption>{esc(fig.caption)}</figcaption></figure>'


def _num(value, digits: int) -> str:
    return "–" if value is None or math.isnan(value) else f"{round(value, digits) + 0.0:.{digits}f}"  # no "-0.00"


def with_text(summary: pl.DataFrame) -> pl.DataFrame:
    """Add ``<metric>_text`` columns: '0.812 [0.74, 0.86]' for CI metrics, '0.812 ± 0.050' for the others."""
    texts = {}
    for m in METRIC_COLUMNS:
        rows = summary.select(
            [
                pl.col(f"{m}_{s}") if f"{m}_{s}" in summary.columns else pl.lit(None).alias(f"{m}_{s}")
                for s in ("mean", "sd", "ci_low", "ci_high")
            ]
        ).iter_rows()
        texts[f"{m}_text"] = [
            "–"
            if mean is None
            else f"{_num(mean, 3)} [{_num(low, 2)}, {_num(high, 2)}]"
            if low is not None and not math.isnan(low)
            else f"{_num(mean, 3)} ± {_num(sd or 0.0, 3)}"
            for mean, sd, low, high in rows
        ]
    return summary.with_columns(pl.Series(k, v, dtype=pl.String) for k, v in texts.items())


# --- sections ---------------------------------------------------------------------------------------------


def figures(res: Results) -> list[Figure]:
    """Every figure the data allow, in page order."""
    out: list[Figure] = []
    summary = res.summary
    style = plots.styles(summary)
    tasks = sorted(summary["task"].unique().to_list()) if summary.height else []

    def add(kind: str, name: str, svg: str | None, note: str = "") -> None:
        if svg:
            out.append(Figure(kind, name, svg, note))

    for task in tasks:
        for metric in ("mcc", "pr_auc"):
            add(f"heatmap_{metric}", task, plots.heatmap(summary, task, metric))
        add("roc_pr", task, plots.roc_pr(res.predictions, summary, task, style))
        add("calibration", task, plots.calibration(res.predictions, summary, task, style))
        add("fewshot", task, plots.fewshot_curves(summary, task, "mcc", style))
    for metric in ("mcc", "pr_auc"):
        add(
            f"cd_{metric}",
            metric,
            plots.cd_diagrams(res.comparisons, metric, style, res.alpha),
            f"Alpha = {res.alpha}.",
        )
    if res.external is not None:
        scored = external.pairs(res.external, summary)
        for pair in scored["pair"].unique(maintain_order=True).to_list():
            add("external", pair, plots.external(scored, pair, style))
    for task in tasks:
        add("efficiency", task, plots.efficiency(summary, task, style))
    add(
        "imbalance",
        "all",
        plots.imbalance(summary, style),
        "Only one task: points stand in one column." if len(tasks) == 1 else "",
    )
    return out


def _cards(res: Results) -> str:
    cells, ok = res.cells, res.cells.filter(pl.col("status") == "ok")
    failed, missing = cells.height - ok.height, res.missing.height
    total = max(cells.height + missing, 1)
    hours = (cells["wall_seconds"].sum() or 0) / 3600 if cells.height else 0.0
    gpu = cells.filter(pl.col("device").str.starts_with("cuda")) if cells.height else cells
    gpu_hours = (gpu["wall_seconds"].sum() or 0) / 3600 if gpu.height else 0.0
    peak = cells["peak_memory_mb"].max() if cells.height else None
    devices = ", ".join(sorted(cells["device"].drop_nulls().unique().to_list())) if cells.height else "none"
    rejected = sum(r.height for r in res.rejects.values())

    def card(value: str, label: str, bad: bool = False) -> str:
        return f'<div class="card"><b class="{"bad" if bad else ""}">{value}</b>{label}</div>'

    to_go = ""
    if missing and res.projection is not None:
        rest = res.projection.filter(pl.col("cell").is_in(res.missing["cell"].implode()))
        unknown = rest["source"].null_count()
        to_go = card(
            f"{(rest['seconds'].sum() or 0) / 3600:,.2f} h",
            "projected for the missing cells" + (f" ({unknown:,} not estimable yet)" if unknown else ""),
        )

    bar = "".join(
        f'<span style="width:{100 * n / total:.2f}%;background:{c}"></span>'
        for n, c in ((ok.height, "#2da44e"), (failed, "#cf222e"), (missing, "#d0d7de"))
    )
    return (
        f'<div class="cards">{card(f"{ok.height:,}", "cells done")}{card(f"{failed:,}", "cells failed", failed > 0)}'
        f"{card(f'{missing:,}', 'cells missing', missing > 0)}{to_go}{card(f'{hours:,.2f} h', f'compute ({devices})')}"
        f"{card(f'{gpu_hours:,.2f} h', 'GPU-hours') if gpu_hours else ''}"
        f"{card('–' if peak is None else f'{peak:,.0f} MB', 'largest peak memory')}"
        f"{card(f'{rejected:,}', 'images rejected')}</div>"
        f'<div class="progress" title="done / failed / missing">{bar}</div>'
        f'<p class="small muted legend"><i style="background:#2da44e"></i>done <i style="background:#cf222e"></i>failed'
        f' <i style="background:#d0d7de"></i>missing — {100 * ok.height / total:.0f}% of the grid has a result.</p>'
    )


def _grid_line(res: Results) -> str:
    frame = (
        pl.concat([res.cells.select("task", "model", "strategy", "regime", "fold"), _missing_keys(res.missing)])
        if res.cells.height or res.missing.height
        else res.cells
    )
    if frame.height == 0:
        return '<p class="note">The grid has no cells: nothing to report beyond the data.</p>'
    plural = {"task": "tasks", "model": "models", "strategy": "strategies"}
    parts = [f"{frame[c].n_unique()} {c if frame[c].n_unique() == 1 else plural[c]}" for c in plural]
    regimes = plots.regime_order({r if not r.startswith("k") else r.split("r")[0] for r in frame["regime"].unique()})
    empty = (
        '<p class="note">No cell has a result yet: the report lists the grid\'s cells and the data reports.</p>'
        if res.cells.height == 0
        else ""
    )
    return (
        f"<p>Grid: {', '.join(parts)}; regimes {esc(', '.join(regimes))}; {frame['fold'].n_unique()} folds "
        f"— {frame.height:,} cells.</p>{empty}"
    )


def _missing_keys(missing: pl.DataFrame) -> pl.DataFrame:
    return aggregate.cell_keys_frame(missing["cell"]).drop("cell")


def _key_results(res: Results) -> str:
    s = with_text(res.summary.filter(pl.col("mcc_mean").is_not_null()))
    if s.height == 0:
        return ""
    ranked = s.sort("mcc_mean", descending=True).group_by("task", "regime_group", maintain_order=True)
    best = ranked.agg(
        pl.format("{} · {}", pl.col("model"), pl.col("strategy")).first().alias("best (model · strategy)"),
        pl.col("mcc_text").first().alias("MCC [95% CI]"),
        pl.col("mcc_mean").first().alias("_mcc"),
        pl.col("pr_auc_text").first().alias("PR-AUC [95% CI]"),
        pl.col("pr_auc_mean").first().alias("_pr"),
        pl.format("{} · {}", pl.col("model"), pl.col("strategy")).get(1, null_on_oob=True).alias("runner-up"),
        (pl.col("mcc_mean").first() - pl.col("mcc_mean").get(1, null_on_oob=True)).alias("MCC lead"),
        pl.len().alias("combinations"),
        pl.col("image_mcc_mean").first().alias("MCC per image"),
    )
    best = best.with_columns(pl.col("regime_group").alias("regime")).select(
        "task",
        "regime",
        "best (model · strategy)",
        "MCC [95% CI]",
        "_mcc",
        "PR-AUC [95% CI]",
        "_pr",
        "runner-up",
        "MCC lead",
        "combinations",
        "MCC per image",
    )
    order = {r: i for i, r in enumerate(plots.regime_order(best["regime"].to_list()))}
    best = best.sort(pl.col("task"), pl.col("regime").replace_strict(order, return_dtype=pl.Int64))
    return (
        "<h3>Best per task and regime</h3><p class='small muted'>Ranked by mean MCC; the CI is a 95% patient "
        "bootstrap of that mean. A lead smaller than the CI width is not a win: see the tests below. Every metric "
        "scores one prediction per patient (the mean of its images' probabilities); 'MCC per image' counts each "
        "image instead, for comparison only.</p>" + table_html(best, {"MCC [95% CI]": "_mcc", "PR-AUC [95% CI]": "_pr"})
    )


def _labels_used(summary: pl.DataFrame) -> str:
    """The label budget next to K: the most labelled patients any K-shot cell trained and validated on."""
    rows = (
        summary.filter(pl.col("k").is_not_null())
        .group_by("task", "k", "validation")
        .agg(pl.col("train_patients_max").max(), pl.col("val_patients_max").max())
        .sort("task", "k")
    )
    if not rows.height:
        return ""
    note = {
        "kshot": "K per class of the fold's validation part (at most 2K)",
        "full": "the fold's whole validation part: more labels than K",
        "none": "none: max_epochs, threshold 0.5",
    }
    table = rows.select(
        "task",
        "k",
        pl.col("train_patients_max").alias("training patients (at most)"),
        pl.col("val_patients_max").alias("validation patients (at most)"),
        pl.col("validation").replace_strict(note, default=pl.col("validation")).alias("validation on"),
    )
    return (
        "<p class='small muted'>Labels each K-shot cell learned or selected from (training, early stopping, "
        "threshold, candidate settings): K patients per class to train on, and what it validated on.</p>"
        + table_html(table)
    )


def _tests_table(res: Results, metric: str) -> pl.DataFrame:
    """The across-task Friedman tests of ``metric``: one row per scope (family and models) and regime."""
    f = res.comparisons.friedman.filter(pl.col("metric") == metric)
    if f.height == 0:
        return f
    scope = ["family", "models", "regime_group"]
    best = (
        res.comparisons.ranks.filter(pl.col("metric") == metric)
        .sort("mean_rank")
        .group_by(scope, maintain_order=True)
        .agg(pl.format("{} ({})", pl.col("strategy"), pl.col("mean_rank").round(2)).first().alias("best mean rank"))
    )
    verdict = (
        pl.when(pl.col("p_value").is_null())
        .then(pl.lit("not tested"))
        .when(pl.col("p_value") < res.alpha)
        .then(pl.lit("strategies differ"))
        .otherwise(pl.lit("no evidence of a difference"))
    )
    return (
        f.join(best, on=scope, how="left")
        .with_columns(verdict.alias("verdict"), pl.col("regime_group").alias("regime"))
        .select(
            "family",
            "models",
            "regime",
            "strategies",
            pl.col("cohorts").alias("cohorts (blocks)"),
            "tasks",
            "tasks_dropped",
            "cells_unpaired",
            pl.col("statistic").alias("chi²"),
            "p_value",
            pl.col("iman_davenport_f").alias("Iman-Davenport F"),
            pl.col("iman_davenport_p").alias("F's p"),
            "verdict",
            pl.col("critical_difference").alias("CD"),
            "best mean rank",
            "note",
        )
    )


def _reach_table(res: Results, metric: str) -> pl.DataFrame:
    """Per scope: the cohorts, the pairwise comparisons and the smallest Holm-adjusted p they can reach."""
    return res.comparisons.friedman.filter(pl.col("metric") == metric).select(
        "family",
        "models",
        pl.col("regime_group").alias("regime"),
        "tasks",
        pl.col("cohorts").alias("cohorts (blocks)"),
        "strategies",
        pl.col("comparisons").alias("pairwise tests"),
        pl.col("smallest_p_holm").alias("smallest reachable p_holm"),
        pl.when(pl.col("can_reject")).then(pl.lit("yes")).otherwise(pl.lit("no")).alias("can a pair differ?"),
    )


def hierarchical_table(res: Results, metric: str) -> pl.DataFrame:
    """The hierarchical comparisons of ``metric`` with what each decides at :data:`stats.DECISION`."""
    h = res.comparisons.hierarchical.filter(pl.col("metric") == metric)
    decided = stats.DECISION
    verdict = (
        pl.when(pl.col("p_a_better").is_null())
        .then(pl.lit("not modelled"))
        .when(pl.col("p_a_better") >= decided)
        .then(pl.format("{} better", "a"))
        .when(pl.col("p_equivalent") >= decided)
        .then(pl.lit("equivalent"))
        .when(pl.col("p_b_better") >= decided)
        .then(pl.format("{} better", "b"))
        .otherwise(pl.lit("undecided"))
    )
    return h.select(
        "family",
        "models",
        pl.col("regime_group").alias("regime"),
        "a",
        "b",
        pl.col("cohorts").alias("cohorts"),
        pl.col("folds").alias("folds (all cohorts)"),
        (pl.col("mean_diff") + 0.0).alias("Δ (a − b)"),
        pl.col("p_a_better").alias("P(a better)"),
        pl.col("p_equivalent").alias("P(equivalent)"),
        pl.col("p_b_better").alias("P(b better)"),
        verdict.alias("verdict"),
        "note",
    )


def _across_headline(res: Results) -> str:
    """The overview's across-task result: what the design can reach and, when cohorts are too few for the pairwise
    tests to reject, the hierarchical model's probabilities (MCC) as the headline."""
    reach = _reach_table(res, "mcc")
    if reach.height == 0:
        return ""
    few = not (reach["can a pair differ?"] == "yes").any()
    out = [
        "<h3>What this grid can conclude across tasks (MCC)</h3><p class='small muted'>The unit across tasks is "
        "the <b>cohort</b>: tasks that share patients (one dataset's tasks) are one block. With N cohorts the "
        "exact Wilcoxon test cannot give p below 2/2<sup>N</sup>, and Holm multiplies it by the number of "
        f"pairwise tests: where the smallest reachable p_holm is not below alpha = {res.alpha}, no pairwise "
        "test can reject whatever the results (`report.control` compares every strategy with one: k − 1 tests)."
        "</p>" + table_html(reach)
    ]
    if few:
        out.append(
            "<p class='note'>Too few cohorts for any pairwise test to reject: the across-task result is the "
            "Bayesian hierarchical comparison below.</p>" + _hierarchical_html(res, "mcc", "MCC", headline=True)
        )
    return "".join(out)


def _hierarchical_html(res: Results, metric: str, label: str, headline: bool = False) -> str:
    table = hierarchical_table(res, metric)
    if table.height == 0:
        return ""
    rope = res.comparisons.hierarchical["rope"][0]
    return (
        f"<h3>Across cohorts: Bayesian hierarchical comparison, {label}{' (headline)' if headline else ''}</h3>"
        f"<p class='small muted'>Corani, Benavoli et al. (2017), baycomp's model: every cohort's fold-level "
        f"differences a − b (folds share training patients: correlation 1/folds), each cohort's mean difference "
        f"drawn from a Student t across cohorts. P(a better), P(equivalent: within ±{rope:g}) and P(b better) are "
        f"about the difference on a new cohort; {stats.DECISION} or more decides. a is the control "
        f"(report.control) or the strategy of best mean rank. With one or two cohorts the probabilities mostly "
        f"say how little is known.</p>" + table_html(table)
    )


def against_best(res: Results, metric: str) -> pl.DataFrame:
    """Within each (task, regime, model): every strategy against the best one (highest mean ``metric``), from the
    within-task comparisons, with P(best better), P(equivalent), P(this better) and what they decide."""
    w = res.comparisons.within_task.filter(pl.col("metric") == metric)
    if w.height == 0 or res.summary.height == 0:
        return pl.DataFrame()
    keys = ["task", "regime_group", "model"]
    best = (
        res.summary.filter(pl.col(f"{metric}_mean").is_not_null())
        .sort(f"{metric}_mean", descending=True)
        .group_by(keys, maintain_order=True)
        .agg(pl.col("strategy").first().alias("best"), pl.col(f"{metric}_mean").first().alias("best_mean"))
    )
    w = w.join(best, on=keys)
    sides = []
    for me, other, sign in (("a", "b", -1), ("b", "a", 1)):  # mean_diff is a - b
        sides.append(
            w.filter(pl.col(me) == pl.col("best")).select(
                *keys,
                "best",
                "best_mean",
                pl.col(other).alias("strategy"),
                "folds",
                (sign * pl.col("mean_diff") + 0.0).alias("Δ"),  # + 0.0: no "-0.000"
                pl.col(f"p_{me}_better").alias("P(best better)"),
                pl.col("p_equivalent").alias("P(equivalent)"),
                pl.col(f"p_{other}_better").alias("P(this better)"),
                "p_holm",
                "note",
            )
        )
    rows = pl.concat(sides)
    decided = stats.DECISION
    verdict = (
        pl.when(pl.col("P(best better)") >= decided)
        .then(pl.lit("worse"))
        .when(pl.col("P(equivalent)") >= decided)
        .then(pl.lit("equivalent"))
        .when(pl.col("P(this better)") >= decided)
        .then(pl.lit("better"))
        .when(pl.col("P(best better)").is_null())
        .then(pl.lit("not tested"))
        .otherwise(pl.lit("undecided"))
    )
    order = {r: i for i, r in enumerate(plots.regime_order(rows["regime_group"].to_list()))}
    return rows.with_columns(verdict.alias("verdict")).sort(
        pl.col("task"),
        pl.col("regime_group").replace_strict(order, return_dtype=pl.Int64),
        "model",
        pl.col("Δ"),
        descending=[False, False, False, True],
    )


def _within_html(res: Results, metric: str, label: str) -> str:
    """The readable view of the within-task comparisons: per task, regime and model, which strategies the data
    place below the best, which are practically equivalent to it, and which are undecided; then the numbers."""
    rows = against_best(res, metric)
    if rows.height == 0:
        return ""
    keys = ["task", "regime_group", "model"]

    def listed(kind: str) -> pl.Expr:
        return pl.col("strategy").filter(pl.col("verdict") == kind).str.join(", ").alias(kind)

    kinds = ("worse", "equivalent", "undecided", "better", "not tested")
    compact = (
        rows.group_by(keys, maintain_order=True)
        .agg(
            pl.col("best").first(),
            pl.col("best_mean").first().alias(label),
            pl.col("folds").max(),
            *(listed(k) for k in kinds),
        )
        .rename(
            {
                "regime_group": "regime",
                "folds": "folds (units)",
                "worse": f"worse (P ≥ {stats.DECISION})",
                "equivalent": f"equivalent (P ≥ {stats.DECISION})",
            }
        )
    )
    empty = [c for c in compact.columns if compact[c].dtype == pl.String and not compact[c].str.len_chars().max()]
    compact = compact.drop(empty)  # a verdict no strategy got
    rope = res.comparisons.within_task["rope"][0]
    detail = rows.select(
        "task",
        pl.col("regime_group").alias("regime"),
        "model",
        "best",
        "strategy",
        pl.col("folds").alias("folds (units)"),
        pl.col("Δ").alias(f"Δ {label} (this − best)"),
        "P(best better)",
        "P(equivalent)",
        "P(this better)",
        "verdict",
        pl.col("p_holm").alias("corrected t: p (Holm)"),
        "note",
    )
    return (
        f"<h3>Within each task: strategies against the best, {label}</h3><p class='small muted'>Unit: the "
        f"<b>fold</b> (few-shot repetitions averaged per fold); N = the folds column. For each task, regime and "
        f"model, every strategy is compared with the one of highest mean {label} by the Bayesian correlated "
        f"t-test (baycomp) with a region of practical equivalence of ±{rope:g}: 'worse' means P(best better by "
        f"more than {rope:g}) ≥ {stats.DECISION}, 'equivalent' P(difference within ±{rope:g}) ≥ "
        f"{stats.DECISION}; "
        f"'undecided' means the folds cannot tell. The test accounts for the folds' shared training patients "
        f"(Nadeau-Bengio correction); its frequentist twin, the corrected resampled t, is in the details and in "
        f"<code>results/stats/within_task.csv</code> (every pair, MCC and PR-AUC).</p>"
        + table_html(compact)
        + "<details><summary>every strategy against the best, with the probabilities</summary>"
        + table_html(detail)
        + "</details>"
    )


def _missing_html(res: Results) -> str:
    parts = []
    if res.not_possible:
        parts.append(
            f"<h3>Not possible with this data ({len(res.not_possible)})</h3><p class='small muted'>Few-shot groups "
            "left out of the grid when it was planned: the task's smaller class has fewer training patients in some "
            "fold than K (its class counts as <code>cost.tasks.&lt;task&gt;.classes</code> declares them).</p><ul>"
            + "".join(f"<li>{esc(reason)}</li>" for reason in res.not_possible)
            + "</ul>"
        )
    failed = res.cells.filter(pl.col("status") != "ok")
    if failed.height:
        parts.append(
            f"<h3 class='bad'>Failed cells ({failed.height})</h3><p class='small muted'>These cells ran "
            "but produced no usable result (their metrics are left out of every figure and test).</p>"
            + table_html(failed.select("task", "model", "strategy", "regime", "fold", "error"))
        )
    if res.missing.height:
        keys = _missing_keys(res.missing)
        grouped = (
            keys.group_by("task", "model", "strategy")
            .agg(pl.len().alias("missing cells"), pl.col("regime").unique().sort().str.join(", ").alias("regimes"))
            .sort("task", "model", "strategy")
        )
        listing = res.missing.with_columns(pl.col("log").fill_null("no log: not started"))
        parts.append(
            f"<h3 class='bad'>Missing cells ({res.missing.height})</h3><p class='small muted'>Cells of the grid with "
            "no result: not run yet, or their job stopped without writing one (the log's last line says why). "
            "Figures and tests use the cells that exist; rerun <code>snakemake</code> (with "
            "<code>--keep-going</code>) to fill the grid.</p>"
            + table_html(grouped)
            + "<details><summary>every missing cell and the last line of its log</summary>"
            + table_html(listing.rename({"log": "last log line"}).head(2000))
            + "</details>"
        )
    return "".join(parts)


def _data_html(res: Results) -> str:
    if not res.data_reports:
        return "<p class='muted'>No data report.</p>"
    out = []
    for rep in res.data_reports:
        name = rep.get("task", "task")
        facts, tables, other = [], [], []
        for key, value in rep.items():
            if key == "left_out":  # the task's own rejects: listed below
                continue
            label = key.replace("_", " ")
            if isinstance(value, dict) and value and all(isinstance(v, (int, float)) for v in value.values()):
                tables.append(_count_table(label, value, classes="class" in key))
            elif isinstance(value, (str, int, float, bool)) or value is None:
                facts.append(f"<dt>{esc(label)}</dt><dd>{esc(value)}</dd>")
            elif isinstance(value, list) and all(not isinstance(v, (dict, list)) for v in value):
                facts.append(f"<dt>{esc(label)}</dt><dd>{esc(', '.join(map(str, value)))}</dd>")
            else:
                other.append(f"<dt>{esc(label)}</dt><dd><code>{esc(json.dumps(value))}</code></dd>")
        rejects = res.rejects.get(rep.get("dataset", ""))
        out.append(f"<h3>{esc(name)}</h3>")
        if rep.get("images_policy") == "all":
            out.append(f"<p class='note'>This task uses {esc(HINDSIGHT)}.</p>")
        out.append(f"<dl>{''.join(facts + other)}</dl><div class='grid'>{''.join(tables)}</div>")
        if rep.get("left_out"):
            out.append(
                f"<details><summary>the {len(rep['left_out'])} images its image rule left out "
                f"(results/tasks/{esc(name)}/rejects.csv)</summary>{table_html(pl.DataFrame(rep['left_out']))}</details>"
            )
        if rejects is not None and rejects.height:
            reason = "reason" if "reason" in rejects.columns else rejects.columns[-1]
            counts = dict(rejects.group_by(reason).agg(pl.len()).sort("len", descending=True).iter_rows())
            title = f"images rejected from {rep.get('dataset')}"
            out.append(
                f"<div class='grid'>{_count_table(title, counts)}</div>"
                f"<details><summary>the {rejects.height} rejected files</summary>{table_html(rejects.head(1000))}</details>"
            )
    return "".join(out)


def _count_table(title: str, counts: dict, classes: bool = False) -> str:
    """A small table of counts with inline bars (crisp in print, no figure needed)."""
    top = max((abs(v) for v in counts.values()), default=0) or 1
    names = {"0": "0 · negative", "1": "1 · positive"} if classes else {}
    rows = "".join(
        f"<tr><td class='t'>{esc(names.get(str(k), k))}</td><td>{_fmt(v)[0]}</td>"
        f"<td class='t'><span class='bar' style='width:{80 * abs(v) / top:.0f}px'></span></td></tr>"
        for k, v in counts.items()
    )
    return (
        f"<table><thead><tr><th class='t'>{esc(title)}</th><th>n</th><th></th></tr></thead>"
        f"<tbody>{rows}</tbody></table>"
    )


METHODS = """
<ul class="small">
<li><b>Cells.</b> One cell = one (task, model, strategy, regime, fold). Metrics are computed on the fold's test
patients, <b>one prediction per patient</b> (the mean of its images' probabilities), so a patient with many images
counts once; threshold-based ones (MCC, sensitivity, ...) at the threshold that maximised MCC on one prediction per
patient of the fold's validation part, where early stopping and candidate settings also score one per patient.
Metrics per image are kept as secondary columns (<code>image_*</code>). Few-shot regimes <code>k{K}</code> pool
the repetitions of K-shot draws.</li>
<li><b>Mean ± SD</b> are over the folds (and few-shot repetitions) of a (task, model, strategy, regime).</li>
<li><b>95% CIs</b> are percentile bootstraps (scipy.stats.bootstrap, {resamples} resamples) of that mean, drawing
patients with replacement within each class (each drawn patient brings its one prediction per fold that tests it)
so that the class balance stays; models and thresholds stay fixed, so the CI describes test-sample uncertainty,
not training variability (that is the SD). A fold that a resample leaves without one class is left out of that
resample's mean.</li>
<li><b>Across tasks</b> the unit is the <b>cohort</b>: tasks that share patients (one dataset's tasks) are one
independent group of patients, folds of a task share most of their training patients and models of a family see
the same data, so none of them is an independent data set (Demšar 2006). Per model family, regime and metric, a
cohort gives one block, the mean of its tasks' blocks; a task's block is each strategy's metric averaged over the family's models, folds and
repetitions, on the cells (model, fold, repetition) where every compared strategy has a result, so all are measured
on the same cells (a failed or missing cell leaves that cell out for every strategy). A strategy that runs on some
models of a family only (e.g. VPT on ViTs) is compared on those models in a scope of its own, beside the scope of
the strategies that run on all. The <b>Friedman test</b> (scipy) with <b>Nemenyi</b> post-hoc (scikit-posthocs;
critical-difference diagrams; Iman-Davenport's F beside the chi-square) and paired <b>Wilcoxon</b> signed-rank
tests (scipy) with <b>Holm</b> correction over the scope's pairs (or against <code>report.control</code>: k − 1
tests) run over these blocks, with at least {min_blocks} cohorts: with N cohorts the exact Wilcoxon test cannot give
p below 2/2<sup>N</sup>, which reaches alpha = {alpha} from N = {min_blocks} on, and Holm multiplies the smallest p by
the number of tests (the overview says what this grid can reach). With fewer cohorts the report shows mean ranks and
says that no test is possible; it never tests over folds instead. Differences below 1e-12 are rounding noise: ties.</li>
<li>The <b>Bayesian hierarchical comparison</b> (Corani, Benavoli et al. 2017; baycomp's model, sampled with numpyro)
reads every cohort's fold-level scores and gives P(a better), P(equivalent within ±{rope}) and P(b better) for a
new cohort; it is the headline across tasks when no pairwise test can reject.</li>
<li><b>Within one task</b> the unit is the <b>fold</b>: per task, model and regime, every pair of strategies is
compared over the folds both have (few-shot repetitions of a fold share its test patients, so they are averaged per
fold first). Folds share training patients, so the variance of the differences is corrected by Nadeau and Bengio's
factor 1/n + 1/(k−1) (k = n folds: each test part is 1/(k−1) of its training pool): the <b>corrected resampled
t-test</b> (Holm-corrected within the task, model and regime) and the <b>Bayesian correlated t-test</b> (baycomp;
Benavoli et al. 2017), which gives P(a better), P(practically equivalent: within ±{rope}) and P(b better). A
probability of {decision} or more decides (ours).</li>
<li>With few tasks or folds these tests cannot reach a decision; add tasks before reading a 'no difference' across
tasks as evidence of equivalence (within a task, the ROPE probability says how equivalent).</li>
</ul>
"""


def _methods(res: Results) -> str:
    rope = res.comparisons.within_task["rope"]
    values = {
        "resamples": f"{res.resamples:,}",
        "alpha": str(res.alpha),
        "min_blocks": str(stats.min_blocks(res.alpha)),
        "rope": f"{rope[0]:g}" if rope.len() else "report.rope",
        "decision": str(stats.DECISION),
    }
    text = METHODS
    for key, value in values.items():
        text = text.replace("{" + key + "}", value)
    return text


def build(res: Results, figs: list[Figure]) -> str:
    """The report page as one HTML string."""
    by_kind: dict[str, list[Figure]] = {}
    for fig in figs:
        by_kind.setdefault(fig.kind, []).append(fig)
    tasks = sorted(res.summary["task"].unique().to_list()) if res.summary.height else []
    status = _missing_html(res)
    sections = [
        ("overview", "Overview"),
        ("status", "Failed & missing" if status else ""),
        ("tasks", "Results per task"),
        ("fewshot", "Few-shot" if "fewshot" in by_kind else ""),
        ("external", "External validation" if res.external is not None else ""),
        ("stats", "Statistics"),
        ("cost", "Cost"),
        ("imbalance", "Imbalance" if "imbalance" in by_kind else ""),
        ("table", "All results"),
        ("data", "Data"),
        ("methods", "Methods"),
    ]
    nav = "".join(f'<a href="#{a}">{esc(t)}</a>' for a, t in sections if t)
    p = [
        f"<header><h1>{esc(res.title)}</h1><p class='muted small'>ftbench {__version__} · generated "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC · self-contained: works offline and prints</p></header>",
        f"<nav class='nop'>{nav}</nav>",
        "<h2 id='overview'>Overview</h2>",
        _grid_line(res),
        _cards(res),
        _key_results(res),
    ]
    p.append(_across_headline(res))
    tests = _tests_table(res, "mcc")
    if tests.height:
        p.append(
            "<h3>Do strategies differ across tasks? (MCC)</h3><p class='small muted'>Friedman test per model "
            "family and regime; the unit is the <b>cohort</b> (tasks sharing patients form one block), never a "
            "fold. Within-task "
            "comparisons, PR-AUC and the pairwise tests under <a href='#stats'>Statistics</a>.</p>"
            + table_html(
                tests.select(
                    "family",
                    "models",
                    "regime",
                    "strategies",
                    "cohorts (blocks)",
                    "p_value",
                    "verdict",
                    "best mean rank",
                    "note",
                )
            )
        )
    if status:
        p += ["<h2 id='status'>Failed and missing cells</h2>", status]
    p.append("<h2 id='tasks'>Results per task</h2>")
    for task in tasks:
        p.append(f"<h3>{esc(task)}</h3>")
        p += [
            figure_html(f)
            for kind in ("heatmap_mcc", "heatmap_pr_auc", "roc_pr", "calibration")
            for f in by_kind.get(kind, [])
            if f.name == task
        ]
    if "fewshot" in by_kind:
        p.append("<h2 id='fewshot'>Few-shot</h2>" + _labels_used(res.summary))
        for f in by_kind["fewshot"]:
            p += [f"<h3>{esc(f.name)}</h3>", figure_html(f)]
    if res.external is not None:
        p.append(_external_html(res, by_kind.get("external", [])))
    p.append("<h2 id='stats'>Statistics</h2>")
    p += [figure_html(f) for kind in ("cd_mcc", "cd_pr_auc") for f in by_kind.get(kind, [])]
    for metric, label in (("mcc", "MCC"), ("pr_auc", "PR-AUC")):
        t = _tests_table(res, metric)
        if t.height:
            p.append(
                f"<h3>Across tasks: Friedman tests, {label}</h3><p class='small muted'>Unit: the <b>cohort</b>; "
                f"N = cohorts (blocks). A block is a strategy's {label} averaged over the family's models (listed), "
                f"folds and repetitions, on the cells every strategy of the row has ('cells unpaired': cells left "
                f"out because some strategy lacks them; 'tasks dropped': tasks without such a cell), then over the "
                f"cohort's tasks. Iman-Davenport's F beside Friedman's chi-square (Demšar 2006).</p>" + table_html(t)
            )
    w = res.comparisons.wilcoxon
    if w.height:
        w = w.select(
            "family",
            "models",
            pl.col("regime_group").alias("regime"),
            "metric",
            "a",
            "b",
            pl.col("pairs").alias("cohorts (units)"),
            "median_diff",
            pl.format("{} / {} / {}", "wins", "ties", "losses").alias("a wins / ties / b wins"),
            "p_value",
            "p_holm",
            "significant",
            "note",
        )
        p.append(
            f"<h3>Across tasks: paired Wilcoxon tests with Holm correction</h3><p class='small muted'>Unit: the "
            f"<b>cohort</b>. Differences a − b over the cohorts both strategies have (positive: a better). "
            f"'significant' means Holm-adjusted p &lt; {res.alpha} within the family, models, regime and metric. "
            f"Click a header to sort.</p>" + table_html(w)
        )
    p.append(_hierarchical_html(res, stats.HIERARCHICAL_METRIC, "MCC"))
    p.append(_within_html(res, "mcc", "MCC"))
    if not res.comparisons.friedman.height:
        p.append("<p class='note'>No statistics: no strategy has a result yet.</p>")
    p.append("<h2 id='cost'>Cost</h2>")
    for f in by_kind.get("efficiency", []):
        p += [f"<h3>{esc(f.name)}</h3>", figure_html(f)]
    if "imbalance" in by_kind:
        p += ["<h2 id='imbalance'>Class imbalance</h2>", *map(figure_html, by_kind["imbalance"])]
    p.append(
        "<h2 id='table'>All results</h2><p class='small muted'>One row per (task, model, strategy, regime): "
        "mean [95% CI] for MCC and PR-AUC, mean ± SD otherwise, each on one prediction per patient; the image "
        "columns (means) count every image instead, for comparison only. Click a header to sort.</p>"
    )
    if res.summary.height:
        p.append(table_html(_results_table(res.summary), {"mcc": "_mcc", "pr_auc": "_pr"}))
    p.append(_choices(res.cells))
    p += [
        "<h2 id='data'>Data</h2>",
        _data_html(res),
        "<h2 id='methods'>Methods: how the numbers are made</h2>",
        _methods(res),
    ]
    return (
        f"<!doctype html><html lang=en><head><meta charset=utf-8>"
        f"<meta name=viewport content='width=device-width,initial-scale=1'><title>{esc(res.title)}</title>"
        f"<style>{STYLE}</style></head><body><main>{''.join(p)}</main><script>{SCRIPT}</script></body></html>"
    )


def _external_html(res: Results, figs: list[Figure]) -> str:
    """External validation: per pair, every model and strategy's result on the target beside its internal one;
    the figure of each pair; the tests across pairs (each pair one block)."""
    scored = external.pairs(res.external, res.summary)
    out = [
        "<h2 id='external'>External validation</h2><p class='small muted'>Models trained on one task's cohort, "
        "scored unchanged on every patient of another cohort with the same outcome (<code>regimes.transfer</code>). "
        "Each fold's full-data model of the source (its epoch, candidate settings and decision threshold chosen on "
        "the source's validation part) predicts the target; the target takes no part in training, early stopping, "
        "the threshold or the choice of candidates. External: mean over the source's fold models [95% bootstrap CI "
        "over target patients]; internal: the same models' mean on the source's own test folds; Δ = external − "
        "internal.</p>"
    ]
    if scored.height == 0:
        return out[0] + "<p class='note'>No external result yet: the sources' full-data jobs have not finished.</p>"
    table = (
        with_text(scored)
        .join(external.target_patients(res.external), on="pair", how="left")
        .select(
            "source",
            "target",
            "model",
            "strategy",
            "target patients",
            pl.col("cells").alias("folds"),
            "failed",
            pl.col("mcc_text").alias("external MCC"),
            pl.col("internal_mcc").alias("internal MCC"),
            pl.col("delta_mcc").alias("Δ MCC"),
            pl.col("pr_auc_text").alias("external PR-AUC"),
            pl.col("internal_pr_auc").alias("internal PR-AUC"),
            pl.col("roc_auc_text").alias("external ROC-AUC"),
            pl.col("internal_roc_auc").alias("internal ROC-AUC"),
        )
    )
    out.append(table_html(table))
    for fig in figs:
        out += [f"<h3>{esc(fig.name.replace(PAIR_SEPARATOR, ' → '))}</h3>", figure_html(fig)]
    across = replace(res, comparisons=res.external.comparisons)
    # a pair is the block here, where a cohort is across tasks: the same tables, in the pairs' words
    blocks = {
        "cohorts (blocks)": "pairs (blocks)",
        "tasks_dropped": "pairs dropped",
        "cohorts": "pairs",
        "folds (all cohorts)": "folds (all pairs)",
    }
    worded = [pl.col("note").str.replace_all("cohort", "pair")]
    tests = _tests_table(across, "mcc").drop("tasks", strict=False).rename(blocks, strict=False)
    reach = _reach_table(across, "mcc").drop("tasks").rename(blocks, strict=False)
    hierarchical = hierarchical_table(across, "mcc").rename(blocks, strict=False)
    tests, hierarchical = (t.with_columns(worded) if t.height else t for t in (tests, hierarchical))
    out.append(
        "<h3>Across pairs (MCC)</h3><p class='small muted'>The unit is the <b>(source, target) pair</b>: each pair "
        "is one block of the Friedman, Wilcoxon and hierarchical comparisons, as the grid's cohorts are across "
        "tasks. Pairs that share a source or a target share patients, so they are not fully independent: read "
        "the tests as descriptive where they do. Within one pair no test is run: every fold's model is scored on "
        "the same target patients, so the corrected t's correlation (test part over training pool) does not "
        "hold.</p>" + table_html(reach) + (table_html(tests) if tests.height else "")
    )
    if hierarchical.height:
        out.append(
            "<p class='small muted'>Bayesian hierarchical comparison over the pairs (baycomp's model, as across "
            "cohorts): a pair's fold-level differences are those of the source's fold models on the target.</p>"
            + table_html(hierarchical)
        )
    return "".join(out)


def _choices(cells: pl.DataFrame) -> str:
    """Settings chosen on validation among a strategy's candidates: how often each was chosen (run.json of every
    cell holds every candidate's validation loss)."""
    if "chosen" not in cells.columns or cells["chosen"].is_null().all():
        return ""
    counts = (
        cells.filter(pl.col("chosen").is_not_null())
        .group_by("task", "model", "strategy", "regime_group", "chosen")
        .agg(pl.len().alias("cells"))
        .sort("task", "model", "strategy", "regime_group", "cells", descending=[False] * 4 + [True])
    )
    return (
        "<h3>Settings chosen on validation</h3><p class='small muted'>Where a strategy lists candidate values, "
        "each cell trained every candidate and kept the one with the lowest validation loss (on its regime's "
        "validation part); how often each was kept.</p>" + table_html(counts.rename({"regime_group": "regime"}))
    )


def _results_table(summary: pl.DataFrame) -> pl.DataFrame:
    cols = [
        pl.col("task"),
        pl.col("model"),
        pl.col("family"),
        pl.col("strategy"),
        pl.col("regime_group").alias("regime"),
        pl.col("cells"),
        pl.col("failed"),
        pl.col("mcc_text").alias("mcc"),
        pl.col("mcc_mean").alias("_mcc"),
        pl.col("pr_auc_text").alias("pr_auc"),
        pl.col("pr_auc_mean").alias("_pr"),
    ]
    cols += [pl.col(f"{m}_text").alias(m) for m in METRIC_COLUMNS[2:]]
    cols += [pl.col(f"image_{m}_mean").alias(f"image_{m}") for m in ("mcc", "pr_auc")]
    cols += [pl.col("trainable_params"), pl.col("compute_hours"), pl.col("peak_memory_mb")]
    return with_text(summary).select(cols)


def write(res: Results, out: str | Path, figures_dir: str | Path | None = None) -> list[Figure]:
    """Write the page, and each figure as ``<figures_dir>/<kind>/<name>.svg`` when a folder is given."""
    figs = figures(res)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(build(res, figs), encoding="utf-8")
    if figures_dir is not None:
        for fig in figs:
            path = Path(figures_dir) / fig.kind / f"{fig.name}.svg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(fig.svg, encoding="utf-8")
    return figs
