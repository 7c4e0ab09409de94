"""Statistics of the grid: patient-bootstrap CIs, comparisons of strategies across and within tasks, Pareto fronts.

The tests come from scipy, scikit-posthocs and baycomp (Holm's correction is :func:`holm`); this module
arranges the grid into the shapes they expect and says, in words, when a grid is too small for a test to mean
anything.

Folds of one task share most of their training patients, and models of a family see the same data, so
neither is an independent data set (Demšar 2006; Benavoli et al. 2017). Hence two kinds of comparison:

- across tasks, one block per cohort (tasks that share patients, :mod:`ftbench.plan.reach`): Friedman (with
  Iman-Davenport's F) + Nemenyi and Wilcoxon + Holm over cohorts, on each strategy's metric averaged over the
  task's cells (models of the family, folds, repetitions) that every strategy compared has, then over the
  cohort's tasks; with fewer cohorts than :func:`min_blocks` only mean ranks, never a test over folds; and the
  Bayesian hierarchical model of Corani et al. (2017) over the cohorts' fold-level scores (:mod:`hierarchical`);
- within one task and model, over its folds: the Nadeau-Bengio corrected resampled t-test and baycomp's
  Bayesian correlated t-test with a region of practical equivalence (the config's ``report.rope``).
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import baycomp
import numpy as np
import polars as pl
import scikit_posthocs as sp
from scipy import stats as ss

from ftbench.analysis import hierarchical
from ftbench.plan import reach

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


def bootstrap_ci(
    rows: pl.DataFrame, n_resamples: int = 1000, seed: int = 0, confidence: float = 0.95
) -> dict[str, tuple[float, float]]:
    """Percentile bootstrap CI of the mean over cells of each metric in ``CI_METRICS``, resampling patients.

    ``rows``: the test predictions of the cells of one (task, model, strategy, regime group), with columns
    ``cell`` (which fold / repetition), ``patient_id``, ``label``, ``prob`` and ``pred`` (0/1 at the cell's
    threshold); the summary gives one row per patient and cell (``aggregate.patient_predictions``), as the
    headline metrics are scored. A resample draws patients with replacement, positive and negative patients
    separately so that every resample keeps the class balance (scipy.stats.bootstrap with one sample per class);
    every row of a drawn patient comes along (several images, if given per image), in every cell where the
    patient is tested, so the CI respects that a patient is the unit. The statistic is the one the summary
    reports: the metric per cell, averaged over cells (a cell left without one class by a resample is undefined
    and left out of the mean).
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
        result = ss.bootstrap(
            by_class,
            statistic,
            n_resamples=n_resamples,
            vectorized=True,
            method="percentile",
            confidence_level=confidence,
            rng=np.random.default_rng(seed),
            batch=250,
        )
    low, high = result.confidence_interval
    return {name: (float(low[i]), float(high[i])) for i, name in enumerate(CI_METRICS)}


def _nanmean(values: np.ndarray, axis: int) -> np.ndarray:
    """Mean ignoring NaN; NaN (without a warning) where everything is NaN."""
    count = np.sum(~np.isnan(values), axis=axis)
    total = np.nansum(values, axis=axis)
    return np.divide(total, count, out=np.full(total.shape, np.nan), where=count > 0)


# --- comparisons of strategies: across tasks, and within one task ---------------------------------------

# The unit of a measurement inside one task: a cell is one (model, fold, repetition) of a strategy.
CELL = ("model", "fold", "repetition")
DECISION = 0.95  # ours: a posterior probability this high decides (Benavoli et al. 2017 use 0.95 too)
FEW_TASKS = 10  # Demšar (2006): Friedman's chi-square is a fair approximation from about 10 data sets on
# ours: differences smaller than this are rounding noise, not a difference: ties in ranks, zeros in Wilcoxon's test,
# no variance in the corrected t or the hierarchical model (fold scores (0.1, 0.2) and (0.15, 0.15) differ by 3e-17)
TOLERANCE = hierarchical.TOLERANCE
# ours: the hierarchical model runs on the headline metric only: MCMC for PR-AUC too would double the stage's time
HIERARCHICAL_METRIC = "mcc"
HIERARCHICAL_OFF = "not modelled: report.hierarchical is false"

# The columns of the cells table (ftbench.analysis.aggregate's cells.parquet) that :func:`compare` reads, with the metrics
CELLS_SCHEMA = {
    "task": pl.String,
    "model": pl.String,
    "strategy": pl.String,
    "regime": pl.String,
    "regime_group": pl.String,
    "repetition": pl.Int32,
    "fold": pl.Int64,
    "family": pl.String,
    "status": pl.String,
    "mcc": pl.Float64,
    "pr_auc": pl.Float64,
}
SCOPE = {"family": pl.String, "models": pl.String, "regime_group": pl.String, "metric": pl.String}
FRIEDMAN_SCHEMA = SCOPE | {
    "strategies": pl.Int64,
    "tasks": pl.Int64,
    "cohorts": pl.Int64,
    "tasks_dropped": pl.Int64,
    "cells_unpaired": pl.Int64,
    "min_cohorts": pl.Int64,
    "statistic": pl.Float64,
    "p_value": pl.Float64,
    "iman_davenport_f": pl.Float64,
    "iman_davenport_p": pl.Float64,
    "critical_difference": pl.Float64,
    "comparisons": pl.Int64,
    "smallest_p_holm": pl.Float64,
    "can_reject": pl.Boolean,
    "note": pl.String,
}
RANKS_SCHEMA = SCOPE | {"strategy": pl.String, "mean_rank": pl.Float64, "mean": pl.Float64}
POSTHOC_SCHEMA = SCOPE | {"a": pl.String, "b": pl.String, "p_nemenyi": pl.Float64}
WILCOXON_SCHEMA = SCOPE | {
    "a": pl.String,
    "b": pl.String,
    "pairs": pl.Int64,
    "mean_diff": pl.Float64,
    "median_diff": pl.Float64,
    "wins": pl.Int64,
    "ties": pl.Int64,
    "losses": pl.Int64,
    "statistic": pl.Float64,
    "p_value": pl.Float64,
    "p_holm": pl.Float64,
    "significant": pl.Boolean,
    "note": pl.String,
}
HIERARCHICAL_SCHEMA = SCOPE | {
    "a": pl.String,
    "b": pl.String,
    "cohorts": pl.Int64,
    "folds": pl.Int64,
    "mean_diff": pl.Float64,
    "rope": pl.Float64,
    "p_a_better": pl.Float64,
    "p_equivalent": pl.Float64,
    "p_b_better": pl.Float64,
    "note": pl.String,
}
WITHIN_SCHEMA = {
    "task": pl.String,
    "family": pl.String,
    "model": pl.String,
    "regime_group": pl.String,
    "metric": pl.String,
    "a": pl.String,
    "b": pl.String,
    "folds": pl.Int64,
    "cells": pl.Int64,
    "mean_a": pl.Float64,
    "mean_b": pl.Float64,
    "mean_diff": pl.Float64,
    "t": pl.Float64,
    "df": pl.Int64,
    "p_value": pl.Float64,
    "p_holm": pl.Float64,
    "p_a_better": pl.Float64,
    "p_equivalent": pl.Float64,
    "p_b_better": pl.Float64,
    "rope": pl.Float64,
    "note": pl.String,
}
SCHEMAS = {
    "friedman": FRIEDMAN_SCHEMA,
    "ranks": RANKS_SCHEMA,
    "posthoc": POSTHOC_SCHEMA,
    "wilcoxon": WILCOXON_SCHEMA,
    "within_task": WITHIN_SCHEMA,
    "hierarchical": HIERARCHICAL_SCHEMA,
}


@dataclass
class Comparisons:
    """The tables of :func:`compare`.

    Across tasks (one row per family, models, regime group and metric, or per strategy / pair of it; the block
    is a task): ``friedman``, ``ranks``, ``posthoc``, ``wilcoxon``. Within one task (one row per task, model,
    regime group, metric and strategy pair; the unit is a fold): ``within_task``.
    """

    friedman: pl.DataFrame  # Friedman over tasks: statistic, p-value, tasks, critical difference, or why not tested
    ranks: pl.DataFrame  # mean rank over tasks (1 = best) and mean value of each strategy
    posthoc: pl.DataFrame  # Nemenyi p-value of each strategy pair (only where Friedman ran)
    wilcoxon: pl.DataFrame  # paired Wilcoxon over tasks of each strategy pair, Holm-corrected within the scope
    within_task: pl.DataFrame  # corrected resampled t and Bayesian correlated t over the folds of one task
    hierarchical: pl.DataFrame  # Bayesian hierarchical model over the cohorts' folds: P(a better), rope, P(b better)

    def write(self, out_dir: str | Path) -> None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name in SCHEMAS:
            getattr(self, name).write_csv(Path(out_dir) / f"{name}.csv")

    @classmethod
    def read(cls, out_dir: str | Path) -> Comparisons:
        return cls(
            **{name: pl.read_csv(Path(out_dir) / f"{name}.csv", schema=schema) for name, schema in SCHEMAS.items()}
        )


def critical_difference(k: int, n: int, alpha: float = 0.05) -> float:
    """Nemenyi's critical difference of mean ranks for ``k`` treatments over ``n`` blocks (Demšar 2006)."""
    q = ss.studentized_range.ppf(1 - alpha, k, np.inf) / np.sqrt(2)
    return float(q * np.sqrt(k * (k + 1) / (6 * n)))


smallest_wilcoxon_p = reach.smallest_wilcoxon_p


@functools.lru_cache
def min_blocks(alpha: float) -> int:
    """The fewest blocks (cohorts) with which one pairwise across-task test can reject at ``alpha``: the smallest N
    whose exact Wilcoxon signed-rank test can give p < alpha (2 / 2^N, all N differences of one sign). Below it
    the Friedman test could at best flag a difference that no pairwise test can place (6 at alpha 0.05)."""
    n = 1
    while smallest_wilcoxon_p(n) >= alpha:
        n += 1
    return n


def ties_within(values: np.ndarray, tol: float = TOLERANCE) -> np.ndarray:
    """``values`` (blocks x strategies) with each row's runs of values within ``tol`` of their sorted neighbour
    set to the run's smallest value, so that rounding noise ranks as a tie."""
    out = np.array(values, dtype=float)
    for row in out:
        order = np.argsort(row, kind="stable")
        ordered = row[order]
        starts = np.maximum.accumulate(np.where(np.r_[True, np.diff(ordered) > tol], np.arange(len(row)), 0))
        row[order] = ordered[starts]
    return out


def iman_davenport(chi2: float, n: int, k: int) -> tuple[float, float]:
    """Iman and Davenport's F from Friedman's chi-square over ``n`` blocks and ``k`` treatments, and its p-value
    on (k - 1, (k - 1)(n - 1)) degrees of freedom (Demšar 2006, §3.2.2: less conservative than the chi-square)."""
    den = n * (k - 1) - chi2
    if den <= 0:  # every block ranks the treatments the same way
        return math.inf, 0.0
    f = (n - 1) * chi2 / den
    return float(f), float(ss.f.sf(f, k - 1, (k - 1) * (n - 1)))


def holm(p_values: list[float]) -> np.ndarray:
    """Holm-adjusted p-values: the i-th smallest times (m - i + 1), made monotone, at most 1.

    The same numbers as statsmodels' ``multipletests(p, method="holm")`` (tests/test_stats.py checks it), which
    runs ``gc.collect()`` on every Holm call: 139 ms a call in this process, and a grid of config.yaml's shape
    makes 660 calls (``bench/stats.py``, docs/performance.md).
    """
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    adjusted = np.minimum(np.maximum.accumulate(p[order] * np.arange(len(p), 0, -1)), 1.0)
    out = np.empty_like(adjusted)
    out[order] = adjusted
    return out


def no_test_note(n: int, alpha: float) -> str:
    return f"{n} cohort{'' if n == 1 else 's'}: no across-task test possible (minimum {min_blocks(alpha)})"


def cell_values(cells: pl.DataFrame, metric: str) -> pl.DataFrame:
    """One value per ok cell: (family, regime group, task, model, strategy, fold, repetition) and the metric."""
    return cells.filter((pl.col("status") == "ok") & pl.col(metric).is_not_null() & pl.col(metric).is_not_nan()).select(
        "family",
        "regime_group",
        "task",
        "model",
        "strategy",
        "fold",
        pl.col("repetition").fill_null(0),
        pl.col(metric).alias("value"),
    )


def scopes(cells: pl.DataFrame) -> list[tuple[str, str, tuple[str, ...], list[str]]]:
    """The comparisons across tasks: (family, regime group, models, strategies).

    A strategy's models are the models of the family where it has cells (ok or failed). Each distinct set of
    models is one scope, holding every strategy that has cells on all of them: with VeRA on ViTs only, a family
    of a ResNet and two ViTs gives the scope (all three models: the strategies without VeRA) and the scope
    (the two ViTs: every strategy). So every strategy of a scope can be measured on the same cells.
    """
    applies = cells.group_by("family", "regime_group", "strategy").agg(pl.col("model").unique())
    out = []
    for (family, regime), group in sorted(applies.group_by("family", "regime_group"), key=lambda g: g[0]):
        models_of = {s: frozenset(m) for s, m in group.select("strategy", "model").iter_rows()}
        for models in sorted(set(models_of.values()), key=lambda m: (-len(m), sorted(m))):
            out.append((family, regime, tuple(sorted(models)), sorted(s for s, m in models_of.items() if models <= m)))
    return out


def task_blocks(values: pl.DataFrame, models: tuple[str, ...], strategies: list[str]) -> tuple[pl.DataFrame, dict]:
    """One block per task: each strategy's metric averaged over the cells (model, fold, repetition) of the task
    where every strategy of the scope has a result, so that all are measured on the same cells.

    Returns the (task x strategy) table of complete blocks and counts: tasks dropped (no such cell) and cells
    left unpaired (a result of some strategies only: a failed or missing cell drops that cell for every strategy).
    """
    sub, wide, common = paired_cells(values, models, strategies)
    blocks = common.group_by("task").agg(pl.col(s).mean() for s in strategies).sort("task")
    counts = {"tasks_dropped": sub["task"].n_unique() - blocks.height, "cells_unpaired": wide.height - common.height}
    return blocks, counts


def paired_cells(
    values: pl.DataFrame, models: tuple[str, ...], strategies: list[str]
) -> tuple[pl.DataFrame, pl.DataFrame, pl.DataFrame]:
    """The scope's values, the (task, model, fold, repetition) x strategy table, and its rows every strategy has."""
    sub = values.filter(pl.col("model").is_in(list(models)) & pl.col("strategy").is_in(strategies))
    wide = sub.pivot(on="strategy", index=["task", *CELL], values="value")
    wide = wide.with_columns(pl.lit(None, pl.Float64).alias(s) for s in strategies if s not in wide.columns)
    return sub, wide, wide.drop_nulls(strategies)


def cohort_folds(
    values: pl.DataFrame, models: tuple[str, ...], strategies: list[str], cohorts: dict[str, str]
) -> pl.DataFrame:
    """Fold-level scores of each cohort, what the hierarchical model reads: on the cells every strategy has, each
    strategy's mean over the models and repetitions of a task's fold, then over the cohort's tasks, fold by fold
    (fold i of each task: the tasks of a cohort are split alike, 5-fold by default)."""
    common = paired_cells(values, models, strategies)[2]
    cohort = pl.col("task").replace_strict(cohorts, default=pl.col("task"), return_dtype=pl.String)
    return (
        common.group_by("task", "fold")
        .agg(pl.col(s).mean() for s in strategies)
        .with_columns(cohort.alias("cohort"))
        .group_by("cohort", "fold")
        .agg(pl.col(s).mean() for s in strategies)
        .sort("cohort", "fold")
    )


def hierarchical_requests(folds: pl.DataFrame, strategies: list[str], reference: str, rope: float) -> list:
    """The hierarchical comparisons of a scope, ``reference`` (the control, else the best mean rank) against each
    other strategy: every pair's row and its prepared data, or the note saying why it cannot be modelled.
    k - 1 pairs, not k(k - 1)/2: the question the report asks (is anything as good as the best, or better than
    the control?), and MCMC for every pair of a default-sized grid would not fit the stage's 2 minutes."""
    out = []
    groups = [g for _, g in folds.group_by("cohort", maintain_order=True)]
    for a, b in pairs(strategies, reference):
        x, y = [g[a].to_numpy() for g in groups], [g[b].to_numpy() for g in groups]
        row = {
            "a": a,
            "b": b,
            "cohorts": len(groups),
            "folds": int(sum(len(v) for v in x)),
            "mean_diff": float(np.mean([np.mean(u - v) for u, v in zip(x, y)])) if groups else None,
            "rope": rope,
        }
        if not groups:
            out.append((row | {"note": "no cohort where both have a result"}, None))
        elif min(len(v) for v in x) < 2:
            out.append((row | {"note": "a cohort with fewer than 2 folds: no fold-level variance"}, None))
        else:
            prepared = hierarchical.prepare(x, y, rope)
            out.append((row | {"note": prepared}, None) if isinstance(prepared, str) else (row, prepared))
    return out


def cohort_blocks(blocks: pl.DataFrame, strategies: list[str], cohorts: dict[str, str]) -> pl.DataFrame:
    """One block per cohort: the (task x strategy) blocks of :func:`task_blocks` averaged over the tasks of each
    cohort (tasks sharing patients are not independent; each task weighs the same). A task not in ``cohorts`` is
    a cohort of its own."""
    cohort = pl.col("task").replace_strict(cohorts, default=pl.col("task"), return_dtype=pl.String)
    return (
        blocks.with_columns(cohort.alias("cohort"))
        .group_by("cohort")
        .agg(pl.len().alias("tasks"), *(pl.col(s).mean() for s in strategies))
        .sort("cohort")
    )


def friedman_nemenyi(
    wide: pl.DataFrame, strategies: list[str], alpha: float, control: str | None = None
) -> tuple[dict, list[dict], list[dict]]:
    """Mean ranks, and the Friedman test (with Iman-Davenport's F) and Nemenyi post-hoc over the complete blocks
    (cohorts) of a (block x strategy) table, when there are at least :func:`min_blocks` of them; and the smallest
    Holm-adjusted p the pairwise Wilcoxon tests can reach with these blocks (against ``control`` if it is one of
    ``strategies``). Values closer than :data:`TOLERANCE` tie."""
    complete = wide.drop_nulls(strategies)
    n, k = complete.height, len(strategies)
    floor = reach.Reach(n, reach.comparisons(k, control in strategies), alpha)
    row = {
        "strategies": k,
        "cohorts": n,
        "min_cohorts": min_blocks(alpha),
        "statistic": None,
        "p_value": None,
        "iman_davenport_f": None,
        "iman_davenport_p": None,
        "critical_difference": None,
        "comparisons": floor.comparisons,
        "smallest_p_holm": None if math.isnan(floor.smallest_p) else floor.smallest_p,
        "can_reject": None if math.isnan(floor.smallest_p) else floor.can_reject,
        "note": None,
    }
    if n == 0:
        return row | {"note": "no cohort where every strategy has a result"}, [], []
    values = ties_within(complete.select(strategies).to_numpy().astype(float))
    ranks = ss.rankdata(-values, axis=1).mean(axis=0)  # rank 1 = the highest metric
    rank_rows = [
        {"strategy": s, "mean_rank": float(r), "mean": float(m)}
        for s, r, m in zip(strategies, ranks, values.mean(axis=0))
    ]
    if n < min_blocks(alpha):
        return row | {"note": no_test_note(n, alpha)}, rank_rows, []
    if k < 3:
        note = f"{k} strateg{'y' if k == 1 else 'ies'}: Friedman needs 3 or more (see the paired tests)"
        return row | {"note": note}, rank_rows, []
    if np.all(values == values[:, :1]):
        return row | {"note": "every strategy ties in every task: nothing to test"}, rank_rows, []
    result = ss.friedmanchisquare(*values.T)
    f, p_f = iman_davenport(float(result.statistic), n, k)
    p_matrix = sp.posthoc_nemenyi_friedman(values)
    posthoc = [
        {"a": strategies[i], "b": strategies[j], "p_nemenyi": float(p_matrix.iloc[i, j])}
        for i, j in itertools.combinations(range(k), 2)
    ]
    note = f"fewer than {FEW_TASKS} cohorts: chi-square p approximate" if n < FEW_TASKS else None
    return (
        row
        | {
            "statistic": float(result.statistic),
            "p_value": float(result.pvalue),
            "iman_davenport_f": f,
            "iman_davenport_p": p_f,
            "critical_difference": critical_difference(k, n, alpha),
            "note": note,
        },
        rank_rows,
        posthoc,
    )


def pairs(strategies: list[str], control: str | None) -> list[tuple[str, str]]:
    """The strategy pairs compared across tasks: (control, other) for every other strategy when ``control`` is
    one of ``strategies`` (k - 1 comparisons, Demšar 2006 §3.2.2), else every pair."""
    if control in strategies:
        return [(control, s) for s in strategies if s != control]
    return list(itertools.combinations(strategies, 2))


def paired_wilcoxon(wide: pl.DataFrame, strategies: list[str], alpha: float, control: str | None = None) -> list[dict]:
    """Wilcoxon signed-rank test of each strategy pair (:func:`pairs`) over the blocks (cohorts) both have,
    Holm-corrected together; counts only (no p-value) with fewer than :func:`min_blocks` blocks. Differences
    smaller than :data:`TOLERANCE` are ties (zeros, which the test drops)."""
    rows = []
    for a, b in pairs(strategies, control):
        both = wide.select(a, b).drop_nulls()
        diff = (both[a] - both[b]).to_numpy()
        diff = np.where(np.abs(diff) < TOLERANCE, 0.0, diff)
        row = {
            "a": a,
            "b": b,
            "pairs": len(diff),
            "mean_diff": float(diff.mean()) if len(diff) else None,
            "median_diff": float(np.median(diff)) if len(diff) else None,
            "wins": int((diff > 0).sum()),
            "ties": int((diff == 0).sum()),
            "losses": int((diff < 0).sum()),
            "statistic": None,
            "p_value": None,
            "note": None,
        }
        if len(diff) == 0:
            row["note"] = "no cohort has both"
        elif len(diff) < min_blocks(alpha):
            row["note"] = no_test_note(len(diff), alpha)
        elif np.all(diff == 0):
            row |= {"p_value": 1.0, "note": "identical in every cohort"}
        else:
            result = ss.wilcoxon(diff)
            row |= {"statistic": float(result.statistic), "p_value": float(result.pvalue)}
            untied = int((diff != 0).sum())  # the test drops zero differences
            if smallest_wilcoxon_p(untied) > alpha:
                row["note"] = f"{untied} untied pairs: p ≥ {smallest_wilcoxon_p(untied):.3g}"
        rows.append(row)
    tested = [r for r in rows if r["statistic"] is not None]
    if tested:
        p_holm = holm([r["p_value"] for r in tested])
        floor = len(tested) * smallest_wilcoxon_p(max(r["pairs"] for r in tested))  # Holm multiplies the smallest p
        for r, p in zip(tested, p_holm):
            r |= {"p_holm": float(p), "significant": bool(p < alpha)}
            if len(tested) > 1 and floor >= alpha:
                bound = f"Holm over {len(tested)} pairs: p_holm ≥ {min(floor, 1.0):.3g}"
                r["note"] = f"{r['note']}; {bound}" if r["note"] else bound
    return rows


def correlated_t(a: np.ndarray, b: np.ndarray, rope: float) -> dict:
    """Nadeau-Bengio corrected resampled t-test and Bayesian correlated t-test of ``a`` against ``b``, paired per fold.

    baycomp's correlated t-test (Corani & Benavoli 2015) gives the posterior of the mean difference: a Student t
    with n - 1 degrees of freedom, centred on the observed mean difference, with the variance of the differences
    times (1/n + rho/(1 - rho)), rho = 1/n: with k folds each test part is 1/(k-1) of its training pool (Nadeau &
    Bengio 2003). The corrected t is the same mean over the same scale, so its one-sided p-value equals the
    posterior probability of the other sign. Returns t, df, the two-sided p, and P(a better by more than
    ``rope``), P(within the rope), P(b better by more than ``rope``).
    """
    d = np.asarray(a, float) - np.asarray(b, float)
    if np.ptp(d) < TOLERANCE:  # rounding noise is not variance: (0.1, 0.2) - 0.1 is not exactly 0.1 twice
        d = np.full_like(d, 0.0 if abs(d.mean()) < TOLERANCE else d.mean())
    posterior = baycomp.CorrelatedTTest(d, np.zeros_like(d), rope)  # of b - a
    p_a, p_eq, p_b = (float(p) for p in posterior.probs())
    diff, scale = -float(posterior.mean), math.sqrt(posterior.var)
    row = {
        "t": None,
        "df": int(posterior.df),
        "p_value": None,
        "p_a_better": p_a,
        "p_equivalent": p_eq,
        "p_b_better": p_b,
        "note": None,
    }
    if scale > 0:
        t = diff / scale
        return row | {"t": t, "p_value": float(2 * ss.t.sf(abs(t), posterior.df))}
    if diff == 0:
        return row | {"p_value": 1.0, "note": "identical in every fold"}
    return row | {"note": "the same difference in every fold: no variance to test"}


def within_task(values: pl.DataFrame, rope: float) -> list[dict]:
    """Every strategy pair within each (task, model, regime group), over the folds both have.

    Few-shot repetitions of a fold share its test patients, so they are averaged per fold first (over the
    repetitions both strategies have): the unit is the fold. The corrected t's p-values are Holm-corrected
    within the (task, model, regime group).
    """
    out = []
    for (task, model, regime), group in sorted(values.group_by("task", "model", "regime_group"), key=lambda g: g[0]):
        strategies = sorted(group["strategy"].unique().to_list())
        wide = group.pivot(on="strategy", index=["fold", "repetition"], values="value").sort("fold", "repetition")
        folds, matrix = wide["fold"].to_numpy(), wide.select(strategies).to_numpy().astype(float)  # null: NaN
        rows = []
        for (i, a), (j, b) in itertools.combinations(enumerate(strategies), 2):
            x, y = matrix[:, i], matrix[:, j]
            both = ~(np.isnan(x) | np.isnan(y))
            fold_ids, index = np.unique(folds[both], return_inverse=True)
            count = np.bincount(index)
            fa, fb = np.bincount(index, x[both]) / count, np.bincount(index, y[both]) / count
            row = {
                "a": a,
                "b": b,
                "folds": len(fold_ids),
                "cells": int(both.sum()),
                "rope": rope,
                "mean_a": float(fa.mean()) if len(fa) else None,
                "mean_b": float(fb.mean()) if len(fb) else None,
                "mean_diff": float((fa - fb).mean()) if len(fa) else None,
            }
            if len(fold_ids) < 2:
                row["note"] = f"{len(fold_ids)} fold{'' if len(fold_ids) == 1 else 's'} in common: no within-task test"
            else:
                row |= correlated_t(fa, fb, rope)
            rows.append(row)
        tested = [r for r in rows if r.get("t") is not None]
        for r, p in zip(tested, holm([r["p_value"] for r in tested])):
            r["p_holm"] = float(p)
        family = group["family"][0]
        out += [{"task": task, "family": family, "model": model, "regime_group": regime} | r for r in rows]
    return out


def compare(
    cells: pl.DataFrame,
    metrics: tuple[str, ...] = ("mcc", "pr_auc"),
    alpha: float = 0.05,
    rope: float = 0.01,
    cohorts: dict[str, str] | None = None,
    control: str | None = None,
    within: bool = True,
    hierarchical_model: bool = True,
) -> Comparisons:
    """Strategies compared across tasks (Friedman + Nemenyi, Wilcoxon + Holm; one block per cohort, ``cohorts``
    mapping each task to its cohort, a task of its own where absent) in every scope of :func:`scopes`, every pair
    or each strategy against ``control``; and, unless ``within`` is False, within each task (corrected and Bayesian
    correlated t over folds), for each metric. Without ``hierarchical_model`` the hierarchical rows say what would
    be compared, and that the model was not run (``report.hierarchical``)."""
    cohorts = cohorts or {}
    if not rope > 0:
        raise ValueError(f"rope {rope}: the region of practical equivalence must be wider than 0 (report.rope)")
    out: dict[str, list[dict]] = {name: [] for name in SCHEMAS}
    requests: list[tuple[dict, hierarchical.Prepared | None]] = []
    for metric in metrics:
        if cells.height == 0 or metric not in cells.columns:
            continue
        values = cell_values(cells, metric)
        for family, regime, models, strategies in scopes(cells):
            key = {"family": family, "models": ", ".join(models), "regime_group": regime, "metric": metric}
            scope_values = values.filter((pl.col("family") == family) & (pl.col("regime_group") == regime))
            tasks, counts = task_blocks(scope_values, models, strategies)
            blocks = cohort_blocks(tasks, strategies, cohorts)
            friedman, ranks, posthoc = friedman_nemenyi(blocks, strategies, alpha, control)
            out["friedman"].append(key | counts | {"tasks": tasks.height} | friedman)
            out["ranks"] += [key | r for r in ranks]
            out["posthoc"] += [key | r for r in posthoc]
            out["wilcoxon"] += [key | r for r in paired_wilcoxon(blocks, strategies, alpha, control)]
            if metric == HIERARCHICAL_METRIC:
                folds = cohort_folds(scope_values, models, strategies, cohorts)
                best = min(ranks, key=lambda r: r["mean_rank"], default={"strategy": strategies[0]})["strategy"]
                reference = control if control in strategies else best
                requests += [(key | r, data) for r, data in hierarchical_requests(folds, strategies, reference, rope)]
        if within:
            out["within_task"] += [r | {"metric": metric} for r in within_task(values, rope)]
    if not hierarchical_model:
        requests = [(row | {"note": row.get("note") or HIERARCHICAL_OFF}, None) for row, _ in requests]
    modelled = [data for _, data in requests if data is not None]
    probs = iter(hierarchical.compare_pairs(modelled))
    for row, data in requests:
        p = next(probs) if data is not None else (None, None, None)
        out["hierarchical"].append(row | dict(zip(("p_a_better", "p_equivalent", "p_b_better"), p)))
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
