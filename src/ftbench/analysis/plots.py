"""Figures of the report, each returned as an inline SVG string (vector: crisp on screen and in print).

Every function takes the summary tables and returns one SVG, or None when the data hold nothing to draw,
so a partial grid gives fewer figures, never an error. Colours are per strategy and shapes per model,
the same in every figure (see :func:`styles`).
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402  (scikit-posthocs takes pandas)
import polars as pl  # noqa: E402
import scikit_posthocs as sp  # noqa: E402
from sklearn import metrics as skm  # noqa: E402

from ftbench.analysis import aggregate, stats  # noqa: E402

plt.rcParams.update(
    {
        "svg.fonttype": "none",
        "font.size": 9,
        "axes.spines.top": False,
        "axes.spines.right": False,
        "font.family": ["DejaVu Sans", "sans-serif"],
        "legend.fontsize": 8,
        "axes.titlesize": 9.5,
        "axes.titleweight": "bold",
        "svg.hashsalt": "ftbench",
    }
)

LABELS = {"mcc": "MCC", "pr_auc": "PR-AUC", "roc_auc": "ROC-AUC"}
MARKERS = "osD^vP*Xph"


@dataclass(frozen=True)
class Styles:
    """One colour per strategy and one marker per model, shared by all figures."""

    colour: dict[str, str]
    marker: dict[str, str]


def styles(summary: pl.DataFrame) -> Styles:
    cmap = plt.get_cmap("tab10")
    strategies = sorted(summary["strategy"].unique().to_list()) if summary.height else []
    models = model_order(summary)
    return Styles(
        {s: matplotlib.colors.to_hex(cmap(i % 10)) for i, s in enumerate(strategies)},
        {m: MARKERS[i % len(MARKERS)] for i, m in enumerate(models)},
    )


def model_order(summary: pl.DataFrame) -> list[str]:
    """Models sorted by family, then name: models of one family sit together in every figure."""
    if not summary.height:
        return []
    pairs = summary.select(pl.col("family").fill_null("unknown"), "model").unique().sort("family", "model")
    return pairs["model"].to_list()


def regime_order(regimes) -> list[str]:
    """``full`` first, then few-shot groups by increasing K."""
    return sorted(set(regimes), key=lambda r: (r != "full", int(r[1:]) if r[1:].isdigit() else 0, r))


def to_svg(fig) -> str:
    buf = io.StringIO()
    # no metadata block: no date (reports of the same results are identical) and no namespace URLs
    fig.savefig(
        buf, format="svg", bbox_inches="tight", metadata={"Creator": None, "Date": None, "Format": None, "Type": None}
    )
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg") :]


def _value(frame: pl.DataFrame, column: str):
    return frame[column][0] if frame.height and column in frame.columns else None


def _ci_text(row: pl.DataFrame, metric: str) -> str:
    low, high = _value(row, f"{metric}_ci_low"), _value(row, f"{metric}_ci_high")
    if low is None or high is None or math.isnan(low):
        return ""
    return f"\n[{round(low, 2) + 0.0:.2f}, {round(high, 2) + 0.0:.2f}]"  # + 0.0: no "-0.00"


def heatmap(summary: pl.DataFrame, task: str, metric: str) -> str | None:
    """Mean ``metric`` (and its 95% CI) of every model (rows) x strategy (columns), one panel per regime."""
    data = summary.filter(pl.col("task") == task)
    if data.height == 0:
        return None
    regimes = regime_order(data["regime_group"].to_list())
    models = model_order(data)
    strategies = sorted(data["strategy"].unique().to_list())
    family = dict(data.select("model", "family").unique().iter_rows())
    cmap = plt.get_cmap("RdBu" if metric == "mcc" else "Blues")
    norm = matplotlib.colors.Normalize(-1.0 if metric == "mcc" else 0.0, 1.0)
    width = 1.0 + 0.95 * len(strategies)
    fig, axes = plt.subplots(
        1, len(regimes), figsize=(width * len(regimes) + 1.6, 0.62 * len(models) + 1.1), squeeze=False, sharey=True
    )
    mesh = None
    for ax, regime in zip(axes[0], regimes):
        sub = data.filter(pl.col("regime_group") == regime)
        grid = np.full((len(models), len(strategies)), np.nan)
        for i, model in enumerate(models):
            for j, strategy in enumerate(strategies):
                row = sub.filter((pl.col("model") == model) & (pl.col("strategy") == strategy))
                mean = _value(row, f"{metric}_mean")
                text = "–" if row.height == 0 else "failed" if mean is None else f"{mean:.2f}{_ci_text(row, metric)}"
                red, green, blue, _ = cmap(norm(mean)) if mean is not None else (1, 1, 1, 1)
                dark = 0.299 * red + 0.587 * green + 0.114 * blue < 0.55  # white text on dark cells
                ax.text(j, i, text, ha="center", va="center", fontsize=7.5, color="white" if dark else "#1b1f24")
                grid[i, j] = np.nan if mean is None else mean
        # vector cells (crisp in print); missing ones show the grey background
        mesh = ax.pcolormesh(
            np.arange(len(strategies) + 1) - 0.5,
            np.arange(len(models) + 1) - 0.5,
            np.ma.masked_invalid(grid),
            cmap=cmap,
            norm=norm,
            edgecolors="white",
            linewidth=1,
        )
        ax.set_facecolor("#eef0f2")
        ax.set_xlim(-0.5, len(strategies) - 0.5)
        ax.set_ylim(len(models) - 0.5, -0.5)  # first model on top
        ax.set_xticks(range(len(strategies)), strategies, rotation=30, ha="right")
        ax.set_yticks(range(len(models)), [f"{m}\n({family.get(m) or 'unknown'})" for m in models])
        ax.set_title(regime if regime == "full" else f"few-shot {regime}")
        ax.tick_params(length=0)
        for side in ax.spines.values():
            side.set_visible(False)
    fig.colorbar(mesh, ax=axes[0].tolist(), shrink=0.85, pad=0.02, label=LABELS.get(metric, metric))
    return to_svg(fig)


def cd_diagrams(comparisons: stats.Comparisons, metric: str, style: Styles, alpha: float = 0.05) -> str | None:
    """Mean ranks of the strategies over tasks, one panel per scope (family and its models) and regime group:
    a critical-difference diagram where the Friedman test ran, the mean ranks alone (and why) where it could not."""
    tests = comparisons.friedman.filter(pl.col("metric") == metric)
    if tests.height == 0:
        return None
    scopes = (
        tests.select("family", "models")
        .unique()
        .sort(  # a family's widest scope first
            "family", pl.col("models").str.count_matches(","), "models", descending=[False, True, False]
        )
    )
    regimes = regime_order(tests["regime_group"].to_list())
    ks = max(tests["strategies"].max() or 2, 2)
    fig, axes = plt.subplots(
        scopes.height, len(regimes), figsize=(4.4 * len(regimes), (0.3 * ks + 1.1) * scopes.height), squeeze=False
    )
    for r, (family, models) in enumerate(scopes.iter_rows()):
        for c, regime in enumerate(regimes):
            ax = axes[r][c]
            key = (
                (pl.col("family") == family)
                & (pl.col("models") == models)
                & (pl.col("regime_group") == regime)
                & (pl.col("metric") == metric)
            )
            test, ranks, posthoc = tests.filter(key), comparisons.ranks.filter(key), comparisons.posthoc.filter(key)
            title = f"{family} ({models}) · {regime}"
            if ranks.height == 0:
                ax.axis("off")
                note = test["note"][0] if test.height else "no cells"
                ax.text(
                    0.5,
                    0.5,
                    f"{title}\nno ranks: {note}",
                    ha="center",
                    va="center",
                    fontsize=8,
                    color="#57606a",
                    wrap=True,
                    transform=ax.transAxes,
                )
                continue
            names = ranks["strategy"].to_list()
            tested = test["p_value"][0] is not None and posthoc.height > 0
            # untested: every pair marked apart, so that no bar joins strategies (a bar would claim a test)
            p = pd.DataFrame(
                np.eye(len(names)) if not tested else np.ones((len(names), len(names))), index=names, columns=names
            )
            for a, b, value in posthoc.select("a", "b", "p_nemenyi").iter_rows():
                p.loc[a, b] = p.loc[b, a] = value
            drawn = sp.critical_difference_diagram(
                dict(zip(names, ranks["mean_rank"].to_list())),
                p,
                ax=ax,
                alpha=alpha,
                color_palette={n: style.colour.get(n, "#333333") for n in names},
                label_fmt_left="{label} ({rank:.2f})",
                label_fmt_right="({rank:.2f}) {label}",
            )
            ax.set_xlim(0.8, len(names) + 0.2)
            bottom = min(t.get_position()[1] for t in drawn["labels"]) - 0.8
            ax.set_ylim(bottom, 2.2)
            blocks = test["cohorts"][0]
            if tested:
                cd = test["critical_difference"][0]
                ax.plot([1, 1 + cd], [1.6, 1.6], color="#1b1f24", lw=1.2, marker="|", ms=6)
                ax.text(1 + cd + 0.08, 1.6, f"CD = {cd:.2f}", va="center", fontsize=7.5)
                ax.set_title(
                    f"{title}\nFriedman p = {test['p_value'][0]:.3g} over {blocks} cohorts", pad=4, fontsize=8.5
                )
            else:
                ax.set_title(f"{title}\nmean ranks only — {test['note'][0]}", pad=4, fontsize=8.5)
    fig.tight_layout()
    return to_svg(fig)


def fewshot_curves(summary: pl.DataFrame, task: str, metric: str, style: Styles) -> str | None:
    """``metric`` against K (and full data) per strategy, one panel per model; bands and bars are 95% CIs."""
    data = summary.filter(pl.col("task") == task)
    fewshot = data.filter(pl.col("k").is_not_null())
    if fewshot.height == 0:
        return None
    ks = sorted(fewshot["k"].unique().to_list())
    has_full = data.filter(pl.col("regime_group") == "full").height > 0
    labels = [str(k) for k in ks] + (["full"] if has_full else [])
    models = model_order(fewshot)
    strategies = sorted(data["strategy"].unique().to_list())
    family = dict(data.select("model", "family").unique().iter_rows())
    cols = min(len(models), 3)
    rows = math.ceil(len(models) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.5 * cols + 1.3, 2.7 * rows), squeeze=False, sharey=True)
    for ax in axes.flat[len(models) :]:
        ax.axis("off")
    dodge = 0.08
    for ax, model in zip(axes.flat, models):
        for j, strategy in enumerate(strategies):
            sub = data.filter(
                (pl.col("model") == model) & (pl.col("strategy") == strategy) & pl.col(f"{metric}_mean").is_not_null()
            )
            shift = (j - (len(strategies) - 1) / 2) * dodge
            colour = style.colour.get(strategy)
            few = sub.filter(pl.col("k").is_not_null()).sort("k")
            x = np.array([ks.index(k) for k in few["k"].to_list()], dtype=float) + shift
            mean = few[f"{metric}_mean"].to_numpy()
            low, high = _ci(few, metric)
            if len(x) > 1:
                ax.fill_between(x, low, high, color=colour, alpha=0.12, lw=0)
            _interval(ax, x, mean, low, high, color=colour, marker="o", ms=3.5, lw=1.4, capsize=2, label=strategy)
            full = sub.filter(pl.col("regime_group") == "full")
            if has_full and full.height:
                fm = full[f"{metric}_mean"].to_numpy()
                flo, fhi = _ci(full, metric)
                _interval(ax, [len(ks) + shift], fm, flo, fhi, color=colour, marker="s", ms=4, capsize=2, ls="none")
        if has_full:
            ax.axvline(len(ks) - 0.5, color="#d0d7de", lw=0.8, ls="--")
        ax.axhline(0, color="grey", lw=0.6)
        ax.set_xticks(range(len(labels)), labels)
        ax.set_xlim(-0.5, len(labels) - 0.5)
        ax.set_title(f"{model} ({family.get(model) or 'unknown'})")
        ax.set_xlabel("K labelled patients per class")
    for row in axes:
        row[0].set_ylabel(LABELS.get(metric, metric))
    handles, names = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, names, title="strategy", loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.tight_layout()
    return to_svg(fig)


def _interval(ax, x, mean, low, high, **style) -> None:
    """The mean with its CI as error bars; where the mean lies outside the CI (the mean is over folds, the CI a
    bootstrap of the pooled predictions) the CI is drawn as it is, a plain line, and the mean beside it."""
    x, mean, low, high = (np.asarray(v, dtype=float) for v in (x, mean, low, high))
    inside = (low <= mean) & (mean <= high)
    ax.errorbar(x, mean, yerr=[np.where(inside, mean - low, 0), np.where(inside, high - mean, 0)], **style)
    if not inside.all():
        ax.vlines(x[~inside], low[~inside], high[~inside], color=style.get("color"), lw=style.get("lw", 1.0))


def _ci(frame: pl.DataFrame, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """The CI bounds of ``metric``; the mean itself where no CI was computed (no bar rather than a made-up one)."""
    mean = frame[f"{metric}_mean"].to_numpy()
    low = frame[f"{metric}_ci_low"].fill_null(np.nan).to_numpy() if f"{metric}_ci_low" in frame.columns else mean
    high = frame[f"{metric}_ci_high"].fill_null(np.nan).to_numpy() if f"{metric}_ci_high" in frame.columns else mean
    return np.where(np.isnan(low), mean, low), np.where(np.isnan(high), mean, high)


COSTS = {"trainable_params": "trainable parameters", "compute_hours": "compute", "peak_memory_mb": "peak memory (MB)"}


def efficiency(summary: pl.DataFrame, task: str, style: Styles, metric: str = "mcc") -> str | None:
    """``metric`` against each cost, one point per (model, strategy); the Pareto front joined by a line."""
    data = summary.filter((pl.col("task") == task) & pl.col(f"{metric}_mean").is_not_null())
    if data.height == 0:
        return None
    regime = "full" if "full" in data["regime_group"].to_list() else regime_order(data["regime_group"].to_list())[-1]
    data = data.filter(pl.col("regime_group") == regime)
    fig, axes = plt.subplots(1, len(COSTS), figsize=(3.3 * len(COSTS) + 1.6, 2.9), sharey=True)
    low, high = _ci(data, metric)
    mean = data[f"{metric}_mean"].to_numpy()
    for ax, (cost, label) in zip(axes, COSTS.items()):
        x = data[cost].cast(pl.Float64).fill_null(np.nan).to_numpy()
        if cost == "compute_hours":  # minutes when the cells are short (the demo), hours otherwise
            minutes = np.nanmax(x) < 2
            x, label = (x * 60, "compute minutes (all folds)") if minutes else (x, "compute hours (all folds)")
        front = stats.pareto_front(x, mean)
        order = np.argsort(x[front])
        ax.plot(
            x[front][order],
            mean[front][order],
            color="#57606a",
            lw=1,
            ls="--",
            zorder=1,
            drawstyle="steps-post",
            label="Pareto front",
        )
        for i, (model, strategy) in enumerate(data.select("model", "strategy").iter_rows()):
            _interval(
                ax,
                [x[i]],
                [mean[i]],
                [low[i]],
                [high[i]],
                color=style.colour[strategy],
                marker=style.marker.get(model, "o"),
                ms=6,
                capsize=2,
                lw=0.8,
                markeredgecolor="black" if front[i] else style.colour[strategy],
                markeredgewidth=1.2,
            )
        if cost == "trainable_params" and np.nanmin(x) > 0:
            ax.set_xscale("log")
        ax.set_xlabel(label)
    axes[0].set_ylabel(f"{LABELS.get(metric, metric)} ({regime})")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="none", label=s)
        for s, c in style.colour.items()
        if s in data["strategy"].to_list()
    ]
    handles += [
        plt.Line2D([], [], color="#57606a", marker=style.marker[m], ls="none", label=m) for m in model_order(data)
    ]
    handles.append(plt.Line2D([], [], color="#57606a", ls="--", label="Pareto front (black edge)"))
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.tight_layout()
    return to_svg(fig)


def best_pairs(
    predictions: pl.DataFrame, summary: pl.DataFrame, task: str, top: int = 3
) -> list[tuple[str, str, np.ndarray, np.ndarray]]:
    """The ``top`` (model, strategy) pairs by mean MCC on full data, with their test labels and probabilities
    pooled over folds, one per patient and fold (``aggregate.patient_predictions``: what the headline metrics
    score); pairs whose pooled test parts hold one class only are left out."""
    best = (
        summary.filter((pl.col("task") == task) & (pl.col("regime_group") == "full") & pl.col("mcc_mean").is_not_null())
        .sort("mcc_mean", descending=True)
        .head(top)
    )
    preds = aggregate.patient_predictions(
        predictions.filter((pl.col("task") == task) & (pl.col("regime_group") == "full"))
    )
    out = []
    for model, strategy in best.select("model", "strategy").iter_rows():
        rows = preds.filter((pl.col("model") == model) & (pl.col("strategy") == strategy))
        y, p = rows["label"].to_numpy(), rows["prob"].to_numpy()
        if len(np.unique(y)) == 2:
            out.append((model, strategy, y, p))
    return out


DASHES = ["-", "--", ":", "-."]


def roc_pr(predictions: pl.DataFrame, summary: pl.DataFrame, task: str, style: Styles, top: int = 3) -> str | None:
    """Pooled ROC and PR curves of the ``top`` (model, strategy) pairs by mean MCC on full data."""
    pairs = best_pairs(predictions, summary, task, top)
    if not pairs:
        return None
    fig, (roc, pr) = plt.subplots(1, 2, figsize=(8.2, 3.3))
    for i, (model, strategy, y, p) in enumerate(pairs):
        fpr, tpr, _ = skm.roc_curve(y, p)
        precision, recall, _ = skm.precision_recall_curve(y, p)
        kw = {"color": style.colour[strategy], "ls": DASHES[i % 4], "lw": 1.6}
        roc.plot(fpr, tpr, label=f"{model} · {strategy} (AUC {skm.roc_auc_score(y, p):.2f})", **kw)
        pr.step(
            recall,
            precision,
            where="post",
            label=f"{model} · {strategy} (AP {skm.average_precision_score(y, p):.2f})",
            **kw,
        )
    roc.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":")
    roc.set(
        xlabel="false positive rate (1 − specificity)",
        ylabel="true positive rate (sensitivity)",
        title="ROC",
        xlim=(0, 1),
        ylim=(0, 1.02),
    )
    positive_rate = pairs[-1][2].mean()
    pr.axhline(positive_rate, color="grey", lw=0.7, ls=":", label=f"chance ({positive_rate:.2f})")
    pr.set(
        xlabel="recall (sensitivity)", ylabel="precision (PPV)", title="Precision-recall", xlim=(0, 1), ylim=(0, 1.02)
    )
    roc.legend(loc="lower right", frameon=False, fontsize=7.5)
    pr.legend(loc="lower left", frameon=False, fontsize=7.5)
    fig.tight_layout()
    return to_svg(fig)


def calibration(
    predictions: pl.DataFrame, summary: pl.DataFrame, task: str, style: Styles, top: int = 3, bins: int = 10
) -> str | None:
    """Reliability diagram of the same pairs as :func:`roc_pr`: observed positive rate against mean predicted
    probability in ``bins`` equal-width bins (the bins of the cells' ECE), with the predictions' histogram."""
    from sklearn.calibration import calibration_curve

    from ftbench.train.metrics import expected_calibration_error

    pairs = best_pairs(predictions, summary, task, top)
    if not pairs:
        return None
    fig, (curve, hist) = plt.subplots(2, 1, figsize=(4.6, 4.4), sharex=True, height_ratios=(3, 1))
    edges = np.linspace(0, 1, bins + 1)
    for i, (model, strategy, y, p) in enumerate(pairs):
        observed, predicted = calibration_curve(y, p, n_bins=bins, strategy="uniform")
        kw = {"color": style.colour[strategy], "ls": DASHES[i % 4], "lw": 1.4}
        curve.plot(
            predicted,
            observed,
            marker=style.marker[model],
            ms=4,
            **kw,
            label=f"{model} · {strategy} (ECE {expected_calibration_error(y, p, bins):.2f}, "
            f"Brier {skm.brier_score_loss(y, p):.2f})",
        )
        hist.hist(p, bins=edges, histtype="step", **kw)
    curve.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":")
    curve.set(ylabel="observed positive rate", title="Calibration", xlim=(0, 1), ylim=(0, 1.02))
    curve.legend(loc="upper left", frameon=False, fontsize=7)
    hist.set(xlabel="predicted probability of the positive class", ylabel="patients")
    fig.tight_layout()
    return to_svg(fig)


def imbalance(summary: pl.DataFrame, style: Styles) -> str | None:
    """MCC and PR-AUC on full data against each task's positive rate; PR-AUC's chance level is the diagonal."""
    data = summary.filter(
        (pl.col("regime_group") == "full") & pl.col("mcc_mean").is_not_null() & pl.col("positive_rate").is_not_null()
    )
    if data.height == 0:
        return None
    fig, axes = plt.subplots(1, 2, figsize=(8.6, 3.2))
    strategies = sorted(data["strategy"].unique().to_list())
    rates = data.group_by("task").agg(pl.col("positive_rate").mean()).sort("positive_rate")
    right = min(1.0, max(0.55, float(rates["positive_rate"].max()) + 0.1))
    for ax, metric in zip(axes, ("mcc", "pr_auc")):
        for j, strategy in enumerate(strategies):
            sub = data.filter(pl.col("strategy") == strategy)
            x = sub["positive_rate"].to_numpy() + (j - (len(strategies) - 1) / 2) * 0.006
            ax.scatter(
                x,
                sub[f"{metric}_mean"].to_numpy(),
                color=style.colour[strategy],
                s=24,
                label=strategy,
                edgecolor="white",
                linewidth=0.5,
                zorder=3,
            )
        if metric == "pr_auc":
            ax.plot([0, 1], [0, 1], color="grey", lw=0.7, ls=":", label="chance (= positive rate)")
            ax.set_ylim(0, 1.02)
        else:
            ax.axhline(0, color="grey", lw=0.7, ls=":")
            ax.set_ylim(min(-0.1, float(data["mcc_mean"].min()) - 0.05), 1.02)
        ax.set_xlim(0, right)
        top = ax.secondary_xaxis("top")
        top.set_xticks(rates["positive_rate"].to_list(), rates["task"].to_list(), fontsize=7, rotation=15, ha="left")
        top.tick_params(length=2, colors="#57606a")
        ax.set_xlabel("positive rate of the task's test parts")
        ax.set_ylabel(f"{LABELS[metric]} (full data)")
    axes[1].legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)
    fig.tight_layout()
    return to_svg(fig)


def external(pairs: pl.DataFrame, pair: str, style: Styles, metric: str = "mcc") -> str | None:
    """External against internal ``metric`` of one (source, target) pair (:func:`ftbench.analysis.external.pairs`):
    one point per (model, strategy), x the source's full-data test folds, y the same folds' models on the target
    with its 95% bootstrap CI; on the dotted diagonal a model keeps its internal level on the other cohort."""
    data = pairs.filter((pl.col("pair") == pair) & pl.col(f"{metric}_mean").is_not_null())
    if data.height == 0:
        return None
    fig, ax = plt.subplots(figsize=(4.6, 3.6))
    low, high = _ci(data, metric)
    internal = data[f"internal_{metric}"].cast(pl.Float64).fill_null(np.nan).to_numpy()
    mean = data[f"{metric}_mean"].to_numpy()
    for i, (model, strategy) in enumerate(data.select("model", "strategy").iter_rows()):
        _interval(
            ax,
            [internal[i]],
            [mean[i]],
            [low[i]],
            [high[i]],
            color=style.colour.get(strategy, "#57606a"),
            marker=style.marker.get(model, "o"),
            ms=6,
            capsize=2,
            lw=0.8,
        )
    values = np.concatenate([internal, low, high])
    lo, hi = np.nanmin(values), np.nanmax(values)
    lo, hi = min(lo, 0.0) - 0.05, max(hi, 0.0) + 0.05
    ax.plot([lo, hi], [lo, hi], ls=":", color="#57606a", lw=1)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    source, target = data["source"][0], data["target"][0]
    ax.set_xlabel(f"internal {LABELS.get(metric, metric)}: {source}, test folds")
    ax.set_ylabel(f"external {LABELS.get(metric, metric)}: {target}")
    handles = [
        plt.Line2D([], [], color=c, marker="o", ls="none", label=s)
        for s, c in style.colour.items()
        if s in data["strategy"].to_list()
    ]
    handles += [
        plt.Line2D([], [], color="#57606a", marker=style.marker.get(m, "o"), ls="none", label=m)
        for m in model_order(data)
    ]
    fig.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.0, 0.95), frameon=False)
    fig.tight_layout()
    return to_svg(fig)
