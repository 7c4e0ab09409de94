"""Figures of the report, each returned as an inline SVG string (vector: crisp on screen and in print)."""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import polars as pl  # noqa: E402

plt.rcParams.update({"svg.fonttype": "none", "font.size": 9, "axes.spines.top": False, "axes.spines.right": False})


def to_svg(fig) -> str:
    buf = io.StringIO()
    # no metadata block: no date (reports of the same results are identical) and no namespace URLs
    fig.savefig(buf, format="svg", bbox_inches="tight",
                metadata={"Creator": None, "Date": None, "Format": None, "Type": None})
    plt.close(fig)
    svg = buf.getvalue()
    return svg[svg.index("<svg"):]


def metric_bars(summary: pl.DataFrame, task: str, metric: str) -> str:
    """Mean ± SD of ``metric`` per model (groups) and strategy (bars), one panel per regime."""
    data = summary.filter(pl.col("task") == task)
    regimes = sorted(data["regime_group"].unique().to_list(), key=lambda r: (r != "full", len(r), r))
    models = sorted(data["model"].unique().to_list())
    strategies = sorted(data["strategy"].unique().to_list())
    fig, axes = plt.subplots(1, len(regimes), figsize=(max(4.0, 2.2 * len(models)) * len(regimes) ** 0.7, 2.8),
                             sharey=True, squeeze=False)
    width = 0.8 / max(len(strategies), 1)
    colours = plt.get_cmap("tab10")
    for ax, regime in zip(axes[0], regimes):
        sub = data.filter(pl.col("regime_group") == regime)
        for j, strategy in enumerate(strategies):
            vals = [sub.filter((pl.col("model") == m) & (pl.col("strategy") == strategy)) for m in models]
            mean = [v[f"{metric}_mean"][0] if v.height else np.nan for v in vals]
            sd = [v[f"{metric}_sd"][0] if v.height else np.nan for v in vals]
            ax.bar(np.arange(len(models)) + (j - (len(strategies) - 1) / 2) * width, mean, width, yerr=sd,
                   capsize=2, label=strategy, color=colours(j % 10), error_kw={"lw": 0.8})
        ax.set_xticks(np.arange(len(models)), models, rotation=20, ha="right")
        ax.set_title(regime)
        ax.axhline(0, color="grey", lw=0.6)
    axes[0][0].set_ylabel(metric.upper().replace("_", "-"))
    axes[0][-1].legend(title="strategy", bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
    return to_svg(fig)


def fewshot_curves(summary: pl.DataFrame, task: str, metric: str) -> str | None:
    """``metric`` against K (log scale) per model and strategy, with ± SD bands; None without few-shot."""
    data = summary.filter((pl.col("task") == task) & (pl.col("regime_group") != "full")).with_columns(
        pl.col("regime_group").str.slice(1).cast(pl.Int32).alias("k"))
    if data.height == 0:
        return None
    models = sorted(data["model"].unique().to_list())
    fig, axes = plt.subplots(1, len(models), figsize=(3.2 * len(models), 2.6), sharey=True, squeeze=False)
    colours = plt.get_cmap("tab10")
    for ax, model in zip(axes[0], models):
        for j, strategy in enumerate(sorted(data["strategy"].unique().to_list())):
            sub = data.filter((pl.col("model") == model) & (pl.col("strategy") == strategy)).sort("k")
            if sub.height == 0:
                continue
            k, mean, sd = sub["k"].to_numpy(), sub[f"{metric}_mean"].to_numpy(), sub[f"{metric}_sd"].fill_null(0).to_numpy()
            ax.plot(k, mean, marker="o", ms=3, label=strategy, color=colours(j % 10))
            ax.fill_between(k, mean - sd, mean + sd, alpha=0.15, color=colours(j % 10))
        ax.set_xscale("log", base=2)
        ax.set_title(model)
        ax.set_xlabel("K patients per class")
    axes[0][0].set_ylabel(metric.upper().replace("_", "-"))
    axes[0][-1].legend(title="strategy", bbox_to_anchor=(1.02, 1), loc="upper left", frameon=False)
    return to_svg(fig)
