"""Statistics across the grid: patient-bootstrap CIs, Friedman + Nemenyi, paired Wilcoxon + Holm, Pareto fronts.

The tests come from scipy, scikit-posthocs and statsmodels; this module only arranges the grid into the
shapes they expect and says, in words, when a grid is too small for a test to mean anything.

Strategies are compared within a model family and a regime group. A *block* is one test fold of one task
seen by one model of the family (few-shot repetitions of that fold are averaged first): within a block
every strategy saw the same test patients through the same backbone, which is what a paired test needs.
"""

from __future__ import annotations

import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import polars as pl
import scikit_posthocs as sp
from scipy import stats as ss
from statsmodels.stats.multitest import multipletests

BLOCK = ("task", "model", "fold")
GROUP = ("family", "regime_group")
FEW_BLOCKS = 10  # scipy: Friedman's chi-square p-value is only reliable beyond ~10 blocks


# --- bootstrap confidence intervals, resampling patients -------------------------------------------------

def weighted_mcc(labels: np.ndarray, preds: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """MCC of 0/1 ``preds`` for each row of ``weights`` (resamples x images), all resamples at once.

    The same number as ``sklearn.metrics.matthews_corrcoef(labels, preds, sample_weight=w)`` for every row
    ``w`` (scikit-learn would take one call per resample), except where a resample holds one class only:
    scikit-learn says 0 there, this says NaN, so that such a resample does not count as a chance-level cell.
    """
    y, p = labels.astype(bool), preds.astype(bool)
    tp, fp = weights @ (y & p), weights @ (~y & p)
    fn, tn = weights @ (y & ~p), weights @ (~y & ~p)
    den = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    mcc = np.divide(tp * tn - fp * fn, den, out=np.zeros_like(den, dtype=float), where=den > 0)
    return np.where((tp + fn > 0) & (tn + fp > 0), mcc, np.nan)


def weighted_average_precision(labels: np.ndarray, scores: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Average precision (PR-AUC) for each row of ``weights``; NaN where a resample has no positive.

    The same number as ``sklearn.metrics.average_precision_score(labels, scores, sample_weight=w)``:
    precision at each distinct score times the step in recall, scores taken in decreasing order.
    """
    order = np.argsort(-scores, kind="mergesort")
    y, s, w = labels[order].astype(float), scores[order], weights[:, order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # the last index of each distinct score
    tps, fps = np.cumsum(w * y, axis=1)[:, last], np.cumsum(w * (1 - y), axis=1)[:, last]
    precision = np.divide(tps, tps + fps, out=np.zeros_like(tps), where=(tps + fps) > 0)
    recall_step = np.diff(tps, axis=1, prepend=0.0)
    total = tps[:, -1]
    return np.divide((recall_step * precision).sum(axis=1), total, out=np.full_like(total, np.nan), where=total > 0)


CI_METRICS = {
    "mcc": lambda y, prob, pred, w: weighted_mcc(y, pred, w),
    "pr_auc": lambda y, prob, pred, w: weighted_average_precision(y, prob, w),
}


def bootstrap_ci(rows: pl.DataFrame, n_resamples: int = 1000, seed: int = 0,
                 confidence: float = 0.95) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of the mean over cells of each metric in ``CI_METRICS``, resampling patients.

    ``rows``: the test predictions of the cells of one (task, model, strategy, regime group), with columns
    ``cell`` (which fold / repetition), ``patient_id``, ``label``, ``prob`` and ``pred`` (0/1 at the cell's
    threshold). A resample draws patients with replacement, positive and negative patients separately so that
    every resample keeps the class balance (scipy.stats.bootstrap with one sample per class); every image of a
    drawn patient comes along, in every cell where the patient is tested, so the CI respects that images of
    one patient are not independent. The statistic is the one the summary reports: the metric per cell,
    averaged over cells (a cell left without one class by a resample is undefined and left out of the mean).
    NaN bounds when the data cannot give a CI (one class only, or resamples with no cell defined).
    """
    patients, codes = np.unique(rows["patient_id"].to_numpy(), return_inverse=True)
    cells = [np.flatnonzero(c == rows["cell"].to_numpy()) for c in rows["cell"].unique(maintain_order=True)]
    y, prob, pred = (rows[c].to_numpy() for c in ("label", "prob", "pred"))
    patient_label = np.zeros(len(patients), dtype=int)
    patient_label[codes] = y  # one label per patient (tasks check this)
    by_class = tuple(np.flatnonzero(patient_label == c) for c in (0, 1))
    undefined = {name: (math.nan, math.nan) for name in CI_METRICS}
    if not all(len(s) for s in by_class):
        return undefined

    def statistic(negatives: np.ndarray, positives: np.ndarray, axis: int = -1) -> np.ndarray:
        drawn = np.concatenate([np.atleast_2d(negatives), np.atleast_2d(positives)], axis=-1)
        offsets = np.arange(drawn.shape[0])[:, None] * len(patients)
        counts = np.bincount((drawn + offsets).ravel(), minlength=drawn.shape[0] * len(patients))
        weights = counts.reshape(drawn.shape[0], len(patients))[:, codes].astype(float)
        per_cell = np.stack([[fn(y[i], prob[i], pred[i], weights[:, i]) for i in cells] for fn in CI_METRICS.values()])
        return _nanmean(per_cell, axis=1)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ss.DegenerateDataWarning)  # reported as NaN bounds instead
        result = ss.bootstrap(by_class, statistic, n_resamples=n_resamples, vectorized=True, method="percentile",
                              confidence_level=confidence, rng=np.random.default_rng(seed), batch=250)
    low, high = result.confidence_interval
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(CI_METRICS)}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where everything is NaN."""
    count = np.sum(~np.isnan(values), axis=axis)
    total = np.nansum(values, axis=axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


# --- comparisons of strategies across the grid ----------------------------------------------------------

FRIEDMAN_SCHEMA = {"family": pl.String, "regime_group": pl.String, "metric": pl.String, "strategies": pl.Int64,
                   "blocks": pl.Int64, "incomplete_blocks": pl.Int64, "statistic": pl.Float64,
                   "p_value": pl.Float64, "critical_difference": pl.Float64, "note": pl.String}
RANKS_SCHEMA = {"family": pl.String, "regime_group": pl.String, "metric": pl.String, "strategy": pl.String,
                "mean_rank": pl.Float64, "mean": pl.Float64}
POSTHOC_SCHEMA = {"family": pl.String, "regime_group": pl.String, "metric": pl.String, "a": pl.String,
                  "b": pl.String, "p_nemenyi": pl.Float64}
WILCOXON_SCHEMA = {"family": pl.String, "regime_group": pl.String, "metric": pl.String, "a": pl.String,
                   "b": pl.String, "pairs": pl.Int64, "mean_diff": pl.Float64, "median_diff": pl.Float64,
                   "wins": pl.Int64, "ties": pl.Int64, "losses": pl.Int64, "statistic": pl.Float64,
                   "p_value": pl.Float64, "p_holm": pl.Float64, "significant": pl.Boolean, "note": pl.String}
SCHEMAS = {"friedman": FRIEDMAN_SCHEMA, "ranks": RANKS_SCHEMA, "posthoc": POSTHOC_SCHEMA, "wilcoxon": WILCOXON_SCHEMA}


@dataclass
class Comparisons:
    """The tables of :func:`compare`, one row per (family, regime group, metric) and what it tests."""

    friedman: pl.DataFrame  # statistic, p-value, blocks, critical difference, and a note when not testable
    ranks: pl.DataFrame  # mean rank (1 = best) and mean value of each strategy
    posthoc: pl.DataFrame  # Nemenyi p-value of each strategy pair
    wilcoxon: pl.DataFrame  # paired Wilcoxon of each strategy pair, Holm-corrected within the group

    def write(self, out_dir: str | Path) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name in SCHEMAS:
            getattr(self, name).write_csv(Path(out_dir) / f"{name}.csv")

    @classmethod
    def read(cls, out_dir: str | Path) -> "Comparisons":
        return cls(**{name: pl.read_csv(Path(out_dir) / f"{name}.csv", schema=schema) for name, schema in SCHEMAS.items()})


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks for ``k`` treatments over ``n`` blocks (Demšar 2006)."""
    q = ss.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


def smallest_wilcoxon_p(n: int) -> float:
    """The smallest two-sided p-value the exact signed-rank test can give with ``n`` pairs."""
    return float(ss.wilcoxon(np.arange(1, n + 1)).pvalue) if n else float("nan")


def block_values(cells: pl.DataFrame, metric: str) -> pl.DataFrame:
    """One value per (family, regime group, block, strategy): the metric averaged over repetitions."""
    return (cells.filter((pl.col("status") == "ok") & pl.col(metric).is_not_nan())
            .group_by([*GROUP, *BLOCK, "strategy"]).agg(pl.col(metric).mean().alias("value")))


def friedman_nemenyi(wide: pl.DataFrame, strategies: list[str], alpha: float) -> tuple[dict, list[dict], list[dict]]:
    """Friedman test and Nemenyi post-hoc over the complete blocks of a (block x strategy) table."""
    complete = wide.drop_nulls(strategies)
    n, k = complete.height, len(strategies)
    row = {"strategies": k, "blocks": n, "incomplete_blocks": wide.height - n, "statistic": None, "p_value": None,
           "critical_difference": None, "note": None}
    if k < 3:
        return row | {"note": f"{k} strateg{'y' if k == 1 else 'ies'}: Friedman needs 3 or more (see the paired tests)"}, [], []
    if n < 2:
        return row | {"note": f"{n} complete block(s): too few for a Friedman test"}, [], []
    values = complete.select(strategies).to_numpy().astype(float)
    ranks = ss.rankdata(-values, axis=1).mean(axis=0)  # rank 1 = the highest metric
    rank_rows = [{"strategy": s, "mean_rank": float(r), "mean": float(m)}
                 for s, r, m in zip(strategies, ranks, values.mean(axis=0))]
    if np.all(values == values[:, :1]):
        return row | {"note": "every strategy ties in every block: nothing to test"}, rank_rows, []
    result = ss.friedmanchisquare(*values.T)
    p_matrix = sp.posthoc_nemenyi_friedman(values)
    posthoc = [{"a": strategies[i], "b": strategies[j], "p_nemenyi": float(p_matrix.iloc[i, j])}
               for i, j in itertools.combinations(range(k), 2)]
    note = "few blocks: p approximate" if n < FEW_BLOCKS else None
    return (row | {"statistic": float(result.statistic), "p_value": float(result.pvalue),
                   "critical_difference": critical_difference(k, n, alpha), "note": note}, rank_rows, posthoc)


def paired_wilcoxon(wide: pl.DataFrame, strategies: list[str], alpha: float) -> list[dict]:
    """Wilcoxon signed-rank test of every strategy pair over the blocks both have, Holm-corrected together."""
    rows = []
    for a, b in itertools.combinations(strategies, 2):
        both = wide.select(a, b).drop_nulls()
        diff = (both[a] - both[b]).to_numpy()
        row = {"a": a, "b": b, "pairs": len(diff), "mean_diff": float(diff.mean()) if len(diff) else None,
               "median_diff": float(np.median(diff)) if len(diff) else None, "wins": int((diff > 0).sum()),
               "ties": int((diff == 0).sum()), "losses": int((diff < 0).sum()), "statistic": None, "p_value": None,
               "note": None}
        if len(diff) == 0:
            row["note"] = "no block has both"
        elif np.all(diff == 0):
            row |= {"p_value": 1.0, "note": "identical in every block"}
        else:
            result = ss.wilcoxon(diff)
            row |= {"statistic": float(result.statistic), "p_value": float(result.pvalue)}
            untied = int((diff != 0).sum())  # the test drops zero differences
            if smallest_wilcoxon_p(untied) > alpha:
                row["note"] = f"{untied} untied pairs: p ≥ {smallest_wilcoxon_p(untied):.3g}"
        rows.append(row)
    tested = [r for r in rows if r["statistic"] is not None]
    if tested:
        reject, p_holm, _, _ = multipletests([r["p_value"] for r in tested], alpha=alpha, method="holm")
        for r, rej, p in zip(tested, reject, p_holm):
            r |= {"p_holm": float(p), "significant": bool(rej)}
    return rows


def compare(cells: pl.DataFrame, metrics: tuple[str, ...] = ("mcc", "pr_auc"), alpha: float = 0.05) -> Comparisons:
    """Friedman + Nemenyi and paired Wilcoxon + Holm for the strategies of every (family, regime group, metric)."""
    out: dict[str, list[dict]] = {"friedman": [], "ranks": [], "posthoc": [], "wilcoxon": []}
    for metric in metrics:
        if cells.height == 0 or metric not in cells.columns:
            continue
        values = block_values(cells, metric)
        for (family, regime), group in sorted(values.group_by(list(GROUP)), key=lambda g: g[0]):
            strategies = sorted(group["strategy"].unique().to_list())
            wide = group.pivot(on="strategy", index=list(BLOCK), values="value")
            key = {"family": family, "regime_group": regime, "metric": metric}
            friedman, ranks, posthoc = friedman_nemenyi(wide, strategies, alpha)
            out["friedman"].append(key | friedman)
            out["ranks"] += [key | r for r in ranks]
            out["posthoc"] += [key | r for r in posthoc]
            out["wilcoxon"] += [key | r for r in paired_wilcoxon(wide, strategies, alpha)]
    return Comparisons(**{name: pl.DataFrame(rows, schema=SCHEMAS[name]) for name, rows in out.items()})


# --- cost versus performance ----------------------------------------------------------------------------

def pareto_front(cost: np.ndarray, value: np.ndarray) -> np.ndarray:
    """Mask of the points no other point beats: none is as cheap or cheaper and at least as good, one strictly."""
    cost, value = np.asarray(cost, float), np.asarray(value, float)
    no_worse = (cost[None, :] <= cost[:, None]) & (value[None, :] >= value[:, None])
    better = (cost[None, :] < cost[:, None]) | (value[None, :] > value[:, None])
    valid = ~(np.isnan(cost) | np.isnan(value))
    dominated = (no_worse & better & valid[None, :]).any(axis=1)
    return valid & ~dominated
