"""Statistics across the grid against known values: hand-computed small cases and the libraries' own examples."""

import math
import warnings
from pathlib import Path

import baycomp
import numpy as np
import polars as pl
import pytest
from scipy import stats as ss
from sklearn import metrics as skm
from statsmodels.stats.multitest import multipletests

from ftbench.analysis import stats


@pytest.fixture(autouse=True)
def no_sampler(monkeypatch):
    """stats.compare's tests skip the hierarchical model's sampler (seconds of NUTS); it is tested on its own."""
    monkeypatch.setattr(stats.hierarchical, "compare_pairs", lambda prepared, seed=0: [(0.0, 1.0, 0.0)] * len(prepared))


def wide(**columns) -> tuple[pl.DataFrame, list[str]]:
    """A (block x strategy) table as stats.compare builds it: the task, then one column per strategy."""
    n = len(next(iter(columns.values())))
    frame = pl.DataFrame({"task": [f"t{i}" for i in range(n)], **columns})
    return frame, sorted(columns)


def cells_frame(
    values: dict[str, list[float]],
    task: str = "t",
    model: str = "m",
    family: str = "cnn",
    regime: str = "full",
    repetition: int | None = None,
) -> pl.DataFrame:
    """Cells of one task, model and regime: ``values[strategy][fold]`` is the metric of that cell (None: failed)."""
    name = regime if repetition is None else f"{regime}r{repetition}"
    rows = [
        {
            "task": task,
            "model": model,
            "strategy": s,
            "regime": name,
            "regime_group": regime,
            "repetition": repetition,
            "fold": f,
            "family": family,
            "status": "ok" if v is not None else "failed",
            "mcc": v,
            "pr_auc": v,
        }
        for s, vs in values.items()
        for f, v in enumerate(vs)
    ]
    return pl.DataFrame(rows, schema=stats.CELLS_SCHEMA)


# --- Friedman and Nemenyi over tasks ------------------------------------------------------------------------


def test_friedman_matches_scipy_documented_example():
    # scipy.stats.friedmanchisquare docs: statistic 10.5714..., p 0.005063...
    frame, names = wide(
        a_before=[72, 96, 88, 92, 74, 76, 82],
        b_after=[120, 120, 132, 120, 101, 96, 112],
        c_later=[76, 95, 104, 96, 84, 72, 76],
    )
    row, ranks, posthoc = stats.friedman_nemenyi(frame, names, 0.05)
    assert row["statistic"] == pytest.approx(10.571428571428571)
    assert row["p_value"] == pytest.approx(0.005063414171757498)
    assert row["cohorts"] == 7 and row["strategies"] == 3 and len(posthoc) == 3


def test_friedman_and_nemenyi_hand_computed_perfect_ordering():
    # 6 tasks, every one ranks a > b > c: chi2 = 12/(n k (k+1)) sum R^2 - 3n(k+1) = (1/6)(6²+12²+18²) - 72 = 12,
    # p = exp(-12/2) (chi-square, 2 df); mean ranks 1, 2, 3 (1 = best)
    frame, names = wide(
        a=[0.9, 0.8, 0.7, 0.95, 0.85, 0.75], b=[0.5, 0.4, 0.45, 0.6, 0.5, 0.4], c=[0.1, 0.2, 0.0, 0.3, 0.1, 0.2]
    )
    row, ranks, posthoc = stats.friedman_nemenyi(frame, names, 0.05)
    assert row["statistic"] == pytest.approx(12.0)
    assert row["p_value"] == pytest.approx(math.exp(-6))
    assert {r["strategy"]: r["mean_rank"] for r in ranks} == {"a": 1.0, "b": 2.0, "c": 3.0}
    # Nemenyi a vs c: q = |1 - 3| / sqrt(k(k+1)/(6n)) * sqrt(2) = 2 / sqrt(1/3) * sqrt(2) = sqrt(24)
    p_ac = next(r["p_nemenyi"] for r in posthoc if (r["a"], r["b"]) == ("a", "c"))
    assert p_ac == pytest.approx(ss.studentized_range.sf(math.sqrt(24), 3, np.inf))
    # CD = q_0.05 sqrt(k(k+1)/(6n)); Demšar's table: q_0.05 = 2.343 for k = 3
    assert row["critical_difference"] == pytest.approx(2.343 * math.sqrt(12 / 36), abs=1e-3)
    assert "fewer than 10 cohorts" in row["note"]


@pytest.mark.parametrize(
    "k, q",
    [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (7, 2.949), (8, 3.031), (9, 3.102), (10, 3.164)],
)
def test_critical_difference_matches_demsar_table(k, q):
    # Demšar (2006), Table 5(a): critical values q_0.05 of the two-tailed Nemenyi test
    n = 12
    assert stats.critical_difference(k, n, 0.05) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_min_blocks_is_where_the_exact_wilcoxon_can_first_reject():
    # 2 / 2^5 = 0.0625 >= 0.05 > 2 / 2^6 = 0.03125; at alpha 0.01: 2 / 2^7 = 0.0156 >= 0.01 > 2 / 2^8
    assert (stats.min_blocks(0.05), stats.min_blocks(0.01), stats.min_blocks(0.1)) == (6, 8, 5)


def test_friedman_below_the_minimum_gives_mean_ranks_and_no_test():
    frame, names = wide(
        a=[0.9, 0.8, None, 0.7, 0.9, 0.8, 0.7],
        b=[0.5, 0.4, 0.3, 0.45, 0.5, 0.4, 0.3],
        c=[0.1, None, 0.2, 0.0, 0.1, 0.1, 0.2],
    )
    row, ranks, posthoc = stats.friedman_nemenyi(frame, names, 0.05)
    assert row["cohorts"] == 5 and row["p_value"] is None and posthoc == []  # 2 incomplete blocks leave 5 < 6
    assert row["note"] == "5 cohorts: no across-task test possible (minimum 6)"
    assert {r["strategy"]: r["mean_rank"] for r in ranks} == {"a": 1.0, "b": 2.0, "c": 3.0}
    two, names2 = wide(a=[0.9, 0.8, 0.7, 0.6, 0.5, 0.4], b=[0.5, 0.4, 0.3, 0.2, 0.1, 0.0])
    assert "Friedman needs 3" in stats.friedman_nemenyi(two, names2, 0.05)[0]["note"]
    tied, names_t = wide(a=[0.5] * 6, b=[0.5] * 6, c=[0.5] * 6)
    row, ranks, posthoc = stats.friedman_nemenyi(tied, names_t, 0.05)
    assert "ties" in row["note"] and row["p_value"] is None and len(ranks) == 3


# --- paired Wilcoxon with Holm over tasks ---------------------------------------------------------------------


def test_wilcoxon_matches_scipy_documented_example():
    # scipy.stats.wilcoxon docs: differences in height of 15 pairs -> statistic 24, p 0.041259765625 (exact)
    d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    frame, names = wide(a=d, b=[0] * len(d))
    (row,) = stats.paired_wilcoxon(frame, names, 0.05)
    assert row["statistic"] == 24.0 and row["p_value"] == pytest.approx(0.041259765625)
    assert (row["wins"], row["ties"], row["losses"]) == (13, 0, 2)
    assert row["p_holm"] == pytest.approx(0.041259765625) and row["significant"]  # one test: Holm changes nothing


def test_wilcoxon_holm_hand_computed():
    # a beats b and c in all 6 tasks: exact two-sided p = 2 / 2^6 = 0.03125 each; b and c are identical.
    # Holm over the two tested pairs: sorted p (0.03125, 0.03125) -> 2 x 0.03125 = 0.0625 for both
    frame, names = wide(
        a=[0.9, 0.8, 0.85, 0.7, 0.95, 0.9], b=[0.5, 0.4, 0.3, 0.45, 0.6, 0.5], c=[0.5, 0.4, 0.3, 0.45, 0.6, 0.5]
    )
    rows = {(r["a"], r["b"]): r for r in stats.paired_wilcoxon(frame, names, 0.05)}
    for pair in (("a", "b"), ("a", "c")):
        assert rows[pair]["p_value"] == pytest.approx(0.03125)
        assert rows[pair]["p_holm"] == pytest.approx(0.0625) and not rows[pair]["significant"]
        assert rows[pair]["note"] == "Holm over 2 pairs: p_holm ≥ 0.0625"  # 6 tasks cannot survive 2 tests
    assert rows[("b", "c")]["p_value"] == 1.0 and rows[("b", "c")]["note"] == "identical in every cohort"
    assert "p_holm" not in rows[("b", "c")]
    # a tie leaves 5 untied tasks: the exact test drops it and cannot go below 2 / 2^5
    tie, names2 = wide(a=[0.1, 0.2, 0.0, 0.3, 0.15, 0.25], b=[0.0] * 6)
    (row,) = stats.paired_wilcoxon(tie, names2, 0.05)
    assert row["p_value"] == pytest.approx(0.0625) and row["note"] == "5 untied pairs: p ≥ 0.0625"
    few, names3 = wide(a=[0.9] * 5, b=[0.1] * 5)
    (row,) = stats.paired_wilcoxon(few, names3, 0.05)
    assert row["p_value"] is None and row["wins"] == 5 and "minimum 6" in row["note"]


def test_holm_equals_statsmodels():
    rng = np.random.default_rng(1)
    for m in (1, 2, 5, 28):
        p = rng.uniform(0, 0.2, m)
        p[: m // 3] = p[0]  # ties
        assert stats.holm(list(p)) == pytest.approx(multipletests(p, method="holm")[1])


def test_smallest_wilcoxon_p_is_two_over_two_to_the_n():
    assert [stats.smallest_wilcoxon_p(n) for n in (4, 5, 6)] == pytest.approx([0.125, 0.0625, 0.03125])


# --- blocks are tasks ----------------------------------------------------------------------------------------


def test_blocks_are_tasks_six_tasks_five_folds_give_six_blocks():
    rng = np.random.default_rng(0)
    quality = {"fft": 0.6, "lora": 0.5, "lp": 0.3}
    cells = pl.concat(
        [
            cells_frame({s: list(q + rng.normal(0, 0.1, 5)) for s, q in quality.items()}, task=f"task{t}", model=model)
            for t in range(6)
            for model in ("resnet18", "resnet50")
        ]
    )
    result = stats.compare(cells, metrics=("mcc",))
    (row,) = result.friedman.rows(named=True)
    assert (row["tasks"], row["cohorts"], row["strategies"], row["models"]) == (6, 6, 3, "resnet18, resnet50")
    # the block of a task: each strategy's mean over the task's 2 models x 5 folds, then Friedman over 6 blocks
    blocks = (
        cells.group_by("task", "strategy").agg(pl.col("mcc").mean()).pivot(on="strategy", index="task").sort("task")
    )
    expected = ss.friedmanchisquare(*(blocks[s].to_numpy() for s in sorted(quality)))
    assert row["statistic"] == pytest.approx(expected.statistic) and row["p_value"] == pytest.approx(expected.pvalue)
    assert row["critical_difference"] == pytest.approx(stats.critical_difference(3, 6))
    assert set(result.wilcoxon["pairs"]) == {6}


def test_one_task_never_tests_over_its_folds():
    # 10 folds in which a > b > c every time: the old block (task, model, fold) gave Friedman p = exp(-10)
    cells = cells_frame({"a": [0.9] * 10, "b": [0.6] * 10, "c": [0.3] * 10})
    cells = cells.with_columns(pl.col("mcc") + pl.col("fold") / 100)  # folds differ, strategies keep their order
    result = stats.compare(cells, metrics=("mcc",))
    (row,) = result.friedman.rows(named=True)
    assert row["tasks"] == 1 and row["p_value"] is None and row["critical_difference"] is None
    assert row["note"] == "1 cohort: no across-task test possible (minimum 6)"
    assert result.ranks.sort("strategy")["mean_rank"].to_list() == [1.0, 2.0, 3.0]
    assert result.posthoc.height == 0 and result.wilcoxon["p_value"].is_null().all()
    assert result.within_task.height == 3  # the folds go to the within-task comparisons instead


# --- pairing: every strategy of a comparison measured on the same cells -----------------------------------


def test_strategies_on_some_models_only_get_their_own_scope():
    # a biomedical family of a ResNet and a ViT; VPT runs on the ViT only
    cells = pl.concat(
        [
            cells_frame({"fft": [0.5] * 3, "lp": [0.4] * 3}, model="resnet", family="fm"),
            cells_frame({"fft": [0.6] * 3, "lp": [0.3] * 3, "vpt": [0.5] * 3}, model="vit", family="fm"),
        ]
    )
    assert stats.scopes(cells) == [
        ("fm", "full", ("resnet", "vit"), ["fft", "lp"]),
        ("fm", "full", ("vit",), ["fft", "lp", "vpt"]),
    ]
    result = stats.compare(cells, metrics=("mcc",))
    means = {(r["models"], r["strategy"]): r["mean"] for r in result.ranks.rows(named=True)}
    assert means == {
        ("resnet, vit", "fft"): pytest.approx(0.55),
        ("resnet, vit", "lp"): pytest.approx(0.35),
        ("vit", "fft"): pytest.approx(0.6),
        ("vit", "lp"): pytest.approx(0.3),
        ("vit", "vpt"): pytest.approx(0.5),
    }


def test_a_failed_cell_leaves_that_cell_out_for_every_strategy():
    cells = pl.concat(
        [
            cells_frame({"fft": [0.9, 0.8, 0.7, 0.6], "lp": [0.5, 0.4, None, 0.2]}, task="t1"),
            cells_frame({"fft": [0.1, 0.2], "lp": [None, None]}, task="t2"),
        ]
    )
    values = stats.cell_values(cells, "mcc")
    blocks, counts = stats.task_blocks(values, ("m",), ["fft", "lp"])
    # t1: fold 2 failed for lp, so fft's block is also the mean over folds 0, 1, 3; t2 has no cell in common
    assert blocks.rows() == [("t1", pytest.approx(0.7667, abs=1e-4), pytest.approx(0.3667, abs=1e-4))]
    assert counts == {"tasks_dropped": 1, "cells_unpaired": 3}
    row = stats.compare(cells, metrics=("mcc",)).friedman.row(0, named=True)
    assert (row["tasks"], row["tasks_dropped"], row["cells_unpaired"]) == (1, 1, 3)


# --- within one task: corrected and Bayesian correlated t over folds --------------------------------------


def test_nadeau_bengio_corrected_t_hand_computed():
    a = np.array([0.80, 0.75, 0.70, 0.85, 0.78])
    b = np.array([0.70, 0.72, 0.66, 0.70, 0.74])
    # d = a - b = (0.10, 0.03, 0.04, 0.15, 0.04): mean 0.072, s² = 0.01068 / 4 = 0.00267;
    # corrected variance s² (1/n + n_test/n_train) = 0.00267 (1/5 + 1/4) = 0.0012015 (5 folds: test/train = 1/4);
    # t = 0.072 / sqrt(0.0012015) = 2.0772 on 4 df, two-sided p = 0.1064. The plain paired t would be
    # 0.072 / sqrt(0.00267 / 5) = 3.116, p = 0.036: the overlap of training sets is what makes it not significant.
    row = stats.correlated_t(a, b, rope=0.01)
    assert row["t"] == pytest.approx(2.0772, abs=1e-4) and row["df"] == 4
    assert row["p_value"] == pytest.approx(0.1064, abs=1e-4)
    assert ss.ttest_rel(a, b).pvalue == pytest.approx(0.0357, abs=1e-4)
    # the posterior of the mean difference: Student t, 4 df, location 0.072, scale sqrt(0.0012015) = 0.034663;
    # P(a better by more than the rope) = P(T > (0.01 - 0.072) / 0.034663) = P(T < 1.7887)
    scale = math.sqrt(0.0012015)
    assert row["p_a_better"] == pytest.approx(ss.t.cdf((0.072 - 0.01) / scale, 4))
    assert row["p_b_better"] == pytest.approx(ss.t.cdf((-0.01 - 0.072) / scale, 4))
    assert row["p_a_better"] + row["p_equivalent"] + row["p_b_better"] == pytest.approx(1.0)
    # without a rope, P(b better) is the one-sided p-value of the corrected t (Benavoli et al. 2017)
    assert stats.correlated_t(a, b, rope=1e-12)["p_b_better"] == pytest.approx(row["p_value"] / 2)


def test_correlated_t_of_identical_or_constant_differences():
    same = stats.correlated_t(np.array([0.5, 0.6, 0.7]), np.array([0.5, 0.6, 0.7]), 0.01)
    assert (same["t"], same["p_value"], same["p_equivalent"]) == (None, 1.0, 1.0)
    assert same["note"] == "identical in every fold"
    shifted = stats.correlated_t(np.array([0.75, 0.5, 1.0]), np.array([0.5, 0.25, 0.75]), 0.01)  # exact in binary
    assert shifted["p_value"] is None and shifted["p_a_better"] == 1.0 and "no variance" in shifted["note"]


# baycomp's documentation ("A Quick Guide to Bayesian Comparison of Classifiers", janezd/baycomp docs/): accuracies
# of naive Bayes and AODE on 'sonar', 10 runs of 10-fold cross-validation (docs/code/accuracies.txt), and the
# published output of two_on_single(nbc, aode, runs=10) without and with rope=0.5.
SONAR_NBC = """
    94.203 92.754 95.652 91.176 92.647 91.176 92.647 92.647 86.765 91.176 91.304 94.203 88.406 98.529 95.588
    97.059 91.176 89.706 85.294 89.706 97.101 92.754 94.203 92.647 92.647 91.176 88.235 97.059 94.118 88.235
    92.754 95.652 89.855 94.118 88.235 91.176 94.118 92.647 94.118 91.176 91.304 88.406 91.304 92.647 91.176
    85.294 92.647 97.059 92.647 95.588 84.058 97.101 94.203 95.588 91.176 92.647 92.647 91.176 89.706 89.706
    89.855 92.754 91.304 94.118 89.706 92.647 91.176 98.529 86.765 95.588 91.304 92.754 97.101 94.118 86.765
    98.529 91.176 82.353 94.118 97.059 88.406 86.957 91.304 94.118 97.059 92.647 92.647 89.706 92.647 94.118
    94.203 94.203 92.754 95.588 89.706 88.235 94.118 94.118 88.235 91.176
"""
SONAR_AODE = """
    95.652 94.203 95.652 91.176 94.118 91.176 98.529 92.647 91.176 89.706 92.754 94.203 91.304 98.529 94.118
    97.059 92.647 91.176 86.765 92.647 100.000 94.203 94.203 92.647 91.176 91.176 91.176 97.059 94.118 89.706
    94.203 95.652 92.754 94.118 88.235 94.118 94.118 95.588 94.118 91.176 92.754 89.855 94.203 94.118 95.588
    88.235 92.647 97.059 92.647 95.588 85.507 95.652 95.652 95.588 91.176 95.588 92.647 91.176 94.118 92.647
    91.304 94.203 92.754 94.118 92.647 94.118 91.176 98.529 89.706 95.588 91.304 94.203 97.101 97.059 86.765
    98.529 88.235 86.765 94.118 97.059 91.304 88.406 92.754 95.588 98.529 94.118 94.118 92.647 92.647 95.588
    92.754 95.652 94.203 95.588 92.647 94.118 92.647 94.118 88.235 92.647
"""


def test_baycomp_reproduces_its_documented_example():
    nbc, aode = (np.array(text.split(), dtype=float) for text in (SONAR_NBC, SONAR_AODE))
    assert (nbc.mean(), aode.mean()) == (pytest.approx(92.19582), pytest.approx(93.30815))
    assert baycomp.two_on_single(nbc, aode, runs=10) == pytest.approx((0.024471493163386815, 0.97552850683661319))
    assert baycomp.two_on_single(nbc, aode, runs=10, rope=0.5) == pytest.approx(
        (0.0023685180162288377, 0.13517773046085313, 0.86245375152291803)
    )
    # stats.correlated_t is this test with one run: its posterior on the first run's 10 folds, in closed form
    a, b = nbc[:10], aode[:10]
    d = b - a
    scale = math.sqrt(d.var(ddof=1) * (1 / 10 + 1 / 9))
    row = stats.correlated_t(a, b, rope=0.5)
    assert row["p_b_better"] == pytest.approx(ss.t.sf((0.5 - d.mean()) / scale, 9))
    assert row["p_a_better"] == pytest.approx(ss.t.cdf((-0.5 - d.mean()) / scale, 9))


def test_within_task_averages_repetitions_per_fold_and_pairs_only_shared_cells():
    k4 = pl.concat(
        [
            cells_frame({"a": [0.6, 0.7, 0.8], "b": [0.5, 0.5, 0.6]}, regime="k4", repetition=0),
            cells_frame({"a": [0.8, 0.5, 0.6], "b": [0.3, None, 0.4]}, regime="k4", repetition=1),
        ]
    )
    (row,) = stats.compare(k4, metrics=("mcc",)).within_task.rows(named=True)
    # fold means over the repetitions both have: a (0.7, 0.7, 0.7), b (0.4, 0.5, 0.5); fold 1's r1 is b's failure
    assert (row["folds"], row["cells"], row["regime_group"]) == (3, 5, "k4")
    assert (row["mean_a"], row["mean_b"]) == (pytest.approx(0.7), pytest.approx(1.4 / 3))
    expected = stats.correlated_t(np.array([0.7, 0.7, 0.7]), np.array([0.4, 0.5, 0.5]), 0.01)
    assert row["t"] == pytest.approx(expected["t"]) and row["p_a_better"] == pytest.approx(expected["p_a_better"])
    one = stats.compare(cells_frame({"a": [0.6], "b": [0.5]}), metrics=("mcc",)).within_task.row(0, named=True)
    assert one["t"] is None and one["note"] == "1 fold in common: no within-task test"


def test_within_task_holm_corrects_the_pairs_of_one_task_and_model():
    values = {"a": [0.9, 0.8, 0.85, 0.7, 0.95], "b": [0.5, 0.45, 0.5, 0.4, 0.6], "c": [0.52, 0.4, 0.55, 0.42, 0.58]}
    rows = stats.compare(cells_frame(values), metrics=("mcc",)).within_task.sort("p_value")
    assert rows["p_holm"].to_list() == pytest.approx(
        list(np.maximum.accumulate(rows["p_value"].to_numpy() * np.array([3, 2, 1])))
    )


def test_compare_on_an_empty_grid_gives_empty_tables():
    empty = pl.DataFrame(schema=stats.CELLS_SCHEMA)
    result = stats.compare(empty, metrics=("mcc", "pr_auc"))
    assert result.friedman.height == 0 and "p_value" in result.friedman.columns and result.within_task.height == 0


def test_compare_leaves_degenerate_groups_to_notes_not_library_warnings():
    cells = pl.concat(
        [
            cells_frame({"fft": [0.9, 0.8, 0.7, 0.9, 0.85], "lp": [0.5, 0.4, 0.3, 0.5, None]}),
            cells_frame({"fft": [0.2, 0.2], "lp": [0.2, 0.2]}, family="vit", model="v", regime="k4", repetition=0),
        ]
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        result = stats.compare(cells, metrics=("mcc", "pr_auc"))
    assert result.friedman.height == 4 and result.within_task.height == 4


# --- bootstrap --------------------------------------------------------------------------------------------


def test_weighted_metrics_equal_scikit_learn_with_sample_weights():
    rng = np.random.default_rng(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # scikit-learn warns on resamples with one class; the values still count
        for _ in range(100):
            n = int(rng.integers(3, 40))
            y = rng.integers(0, 2, n)
            score = np.round(rng.random(n), 1)  # ties, as probabilities of a real model have
            pred = (score >= 0.5).astype(int)
            weights = rng.integers(0, 3, (4, n)).astype(float)
            mcc, ap = stats.weighted_mcc(y, pred, weights), stats.weighted_average_precision(y, score, weights)
            for i, w in enumerate(weights):
                if w.sum() == 0:
                    continue
                if (w * y).sum() > 0 and (w * (1 - y)).sum() > 0:
                    assert mcc[i] == pytest.approx(skm.matthews_corrcoef(y, pred, sample_weight=w))
                else:  # one class only: undefined, left out of the bootstrap mean (scikit-learn says 0)
                    assert np.isnan(mcc[i])
                if (w * y).sum() > 0:
                    assert ap[i] == pytest.approx(skm.average_precision_score(y, score, sample_weight=w))
                else:
                    assert np.isnan(ap[i])


def predictions(patients: int, images: int, seed: int = 0, noise: float = 1.0) -> pl.DataFrame:
    """Two cells (folds) of test predictions; each patient's images share label and probability."""
    rng = np.random.default_rng(seed)
    rows = []
    for cell in range(2):
        for p in range(patients):
            label = int(p % 3 == 0)
            prob = float(1 / (1 + np.exp(-(2 * label - 1 + rng.normal(0, noise)))))
            rows += [
                {
                    "cell": f"fold{cell}",
                    "patient_id": f"c{cell}p{p}",
                    "label": label,
                    "prob": prob,
                    "pred": int(prob >= 0.5),
                }
                for _ in range(images)
            ]
    return pl.DataFrame(rows)


def test_bootstrap_ci_of_a_perfect_model_is_a_point():
    # 6 patients per cell, 2 positive: a fifth of the resamples draw a cell without positives; those cells are
    # left out, not scored 0, so a perfect model's CI stays [1, 1]
    rows = predictions(6, 1, noise=0.0)
    assert stats.bootstrap_ci(rows, 500, 0) == {"mcc": (1.0, 1.0), "pr_auc": (1.0, 1.0)}


def test_bootstrap_ci_resamples_patients_not_images():
    """20 images per patient are not 20 independent observations: the CI must be as wide as with one image."""
    clustered = predictions(30, 20)
    one_image = predictions(30, 1)
    as_if_independent = clustered.with_columns(
        pl.format("{}_{}", "patient_id", pl.int_range(pl.len())).alias("patient_id")
    )
    width = {
        name: np.subtract(*stats.bootstrap_ci(rows, 400, 1)["mcc"][::-1])
        for name, rows in (("clustered", clustered), ("one", one_image), ("independent", as_if_independent))
    }
    assert width["clustered"] == pytest.approx(width["one"])  # duplicated images weigh like one
    assert width["independent"] < 0.5 * width["clustered"]


def test_bootstrap_ci_brackets_the_mean_over_cells_and_is_reproducible():
    rows = predictions(40, 2, seed=3)
    ci = stats.bootstrap_ci(rows, 500, 7)
    per_cell = [skm.matthews_corrcoef(g["label"], g["pred"]) for _, g in rows.group_by("cell")]
    assert ci["mcc"][0] < np.mean(per_cell) < ci["mcc"][1]
    assert ci == stats.bootstrap_ci(rows, 500, 7)


# --- Pareto front -----------------------------------------------------------------------------------------


def test_pareto_front_hand_case():
    cost = [1, 2, 3, 4, 2, np.nan]
    value = [0.5, 0.7, 0.6, 0.9, 0.7, 1.0]
    # (3, 0.6) is beaten by (2, 0.7); the two (2, 0.7) tie and both stay; NaN cost is never on the front
    assert stats.pareto_front(cost, value).tolist() == [True, True, False, True, True, False]


# --- the unit across tasks is the cohort (issue 22 §3) -------------------------------------------------------


def six_tasks_three_cohorts(seed: int = 0) -> tuple[pl.DataFrame, dict[str, str]]:
    rng = np.random.default_rng(seed)
    quality = {"fft": 0.6, "lora": 0.5, "lp": 0.3}
    cohorts = {"c1": "cohen", "c2": "cohen", "c3": "cohen", "n1": "nysbu", "n2": "nysbu", "car": "car"}
    cells = pl.concat(
        [cells_frame({s: list(q + rng.normal(0, 0.1, 5)) for s, q in quality.items()}, task=t) for t in cohorts]
    )
    return cells, cohorts


def test_tasks_sharing_patients_count_as_one_block():
    cells, cohorts = six_tasks_three_cohorts()
    result = stats.compare(cells, metrics=("mcc",), cohorts=cohorts)
    (row,) = result.friedman.rows(named=True)
    assert (row["tasks"], row["cohorts"]) == (6, 3)
    assert row["note"] == "3 cohorts: no across-task test possible (minimum 6)" and row["p_value"] is None
    # a cohort's block: each task's mean over its folds, then the mean over the cohort's tasks (each task weighs 1)
    task_means = cells.group_by("task", "strategy").agg(pl.col("mcc").mean())
    blocks = (
        task_means.with_columns(pl.col("task").replace_strict(cohorts).alias("cohort"))
        .group_by("cohort", "strategy")
        .agg(pl.col("mcc").mean())
    )
    means = {r["strategy"]: r["mean"] for r in result.ranks.rows(named=True)}
    assert means == pytest.approx(dict(blocks.group_by("strategy").agg(pl.col("mcc").mean()).iter_rows()))
    assert set(result.wilcoxon["pairs"]) == {3} and result.wilcoxon["p_value"].is_null().all()
    # without the mapping every task is its own block, as before
    assert stats.compare(cells, metrics=("mcc",)).friedman["cohorts"].to_list() == [6]


def test_cohorts_come_from_the_dataset_unless_a_task_names_one():
    from ftbench.plan import config as plan_config
    from ftbench.plan import reach

    config = plan_config.load(Path(__file__).resolve().parents[1] / "config.yaml")
    by_task = reach.cohorts(config)
    assert by_task == {
        "cohen_death": "cohen",
        "cohen_icu": "cohen",
        "cohen_intubated": "cohen",
        "nysbu_death": "nysbu",
        "nysbu_icu": "nysbu",
        "car_icu": "covid19_ar",
    }
    config["tasks"]["car_icu"]["cohort"] = "nysbu"  # e.g. two collections known to share patients
    assert reach.cohorts(config)["car_icu"] == "nysbu"
    # then nysbu_icu -> car_icu is no external validation: refused, naming the key
    with pytest.raises(plan_config.ConfigError, match="regimes.transfer.nysbu_icu"):
        plan_config.validate(config)
    config["regimes"]["transfer"] = None
    plan_config.validate(config)  # the schema allows the key


# --- what the design can conclude, said before it runs --------------------------------------------------------


def test_smallest_wilcoxon_p_equals_scipys_exact_and_normal_test():
    for n in (1, 2, 5, 6, 12, 50, 51, 60):
        assert stats.smallest_wilcoxon_p(n) == pytest.approx(ss.wilcoxon(np.arange(1, n + 1)).pvalue, rel=1e-9)


def test_smallest_holm_p_the_design_can_reach():
    from ftbench.plan import reach

    # the numbers: 6 blocks and 8 strategies (28 pairs): 28 x 2 / 2^6 = 0.875
    assert reach.Reach(6, reach.comparisons(8, control=False), 0.05).smallest_p == pytest.approx(0.875)
    # the default grid's 3 cohorts: 28 x 0.25 > 1, and against a control 7 x 0.25 > 1: nothing can reject
    assert reach.Reach(3, 28, 0.05).smallest_p == 1.0 and not reach.Reach(3, 7, 0.05).can_reject
    # against a control (7 comparisons) 9 cohorts suffice: 7 x 2 / 2^9 = 0.027; 8 do not: 7 x 2 / 2^8 = 0.055
    assert reach.Reach(9, reach.comparisons(8, control=True), 0.05).can_reject
    assert not reach.Reach(8, 7, 0.05).can_reject


def test_planning_says_what_the_default_grid_can_conclude():
    from ftbench.plan import config as plan_config
    from ftbench.plan import reach

    config = plan_config.validate(plan_config.load(Path(__file__).resolve().parents[1] / "config.yaml"))
    line = reach.design_line(config)
    assert "6 task(s) in 3 cohort(s)" in line and "28 pairwise Wilcoxon tests" in line
    assert "smallest adjusted p 1 ≥ alpha 0.05: no pairwise across-task test can reject" in line
    config["report"]["control"] = "lp"
    assert "against the control lp: 7 pairwise Wilcoxon tests" in reach.design_line(config)


def test_friedman_row_carries_the_reachable_p():
    cells, cohorts = six_tasks_three_cohorts()
    row = stats.compare(cells, metrics=("mcc",), cohorts=cohorts).friedman.row(0, named=True)
    assert (row["comparisons"], row["smallest_p_holm"], row["can_reject"]) == (3, 0.75, False)  # 3 x 2 / 2^3
    row = stats.compare(cells, metrics=("mcc",)).friedman.row(0, named=True)  # 6 tasks as blocks: 3 x 2 / 2^6
    assert (row["smallest_p_holm"], row["can_reject"]) == (pytest.approx(0.09375), False)


def test_a_control_gives_k_minus_one_comparisons_holm_over_them():
    # 7 blocks; a beats b, c and d in every block: exact p = 2 / 2^7 = 0.015625 each
    frame, names = wide(
        a=[0.9, 0.8, 0.85, 0.7, 0.95, 0.9, 0.88],
        b=[0.5, 0.4, 0.3, 0.45, 0.6, 0.5, 0.41],
        c=[0.52, 0.41, 0.31, 0.46, 0.62, 0.51, 0.4],
        d=[0.1, 0.2, 0.3, 0.1, 0.2, 0.3, 0.1],
    )
    every = stats.paired_wilcoxon(frame, names, 0.05)
    assert len(every) == 6 and not any(r["significant"] for r in every if r["a"] == "a")  # 6 x 0.0156 = 0.094
    control = stats.paired_wilcoxon(frame, names, 0.05, control="a")
    assert [(r["a"], r["b"]) for r in control] == [("a", "b"), ("a", "c"), ("a", "d")]
    assert all(r["p_holm"] == pytest.approx(3 * 0.015625) and r["significant"] for r in control)
    assert stats.friedman_nemenyi(frame, names, 0.05, control="a")[0]["comparisons"] == 3


def test_report_control_must_be_a_strategy_of_the_benchmark():
    from ftbench.plan import config as plan_config

    config = plan_config.load(Path(__file__).resolve().parents[1] / "config.yaml")
    config["report"]["control"] = "nope"
    with pytest.raises(plan_config.ConfigError, match="report.control"):
        plan_config.validate(config)


# --- Iman-Davenport's F beside Friedman's chi-square ---------------------------------------------------------


def test_iman_davenport_reproduces_demsars_example():
    # Demšar (2006), §3.2.2 on Table 6: 14 data sets, 4 classifiers, chi2_F = 9.28 gives F_F = 3.69
    f, p = stats.iman_davenport(9.28, 14, 4)
    assert f == pytest.approx(3.69, abs=0.005) and p == pytest.approx(ss.f.sf(f, 3, 39))
    assert f > ss.f.isf(0.05, 3, 39) == pytest.approx(2.85, abs=0.005)  # the paper: critical value 2.85 at 0.05


def test_iman_davenport_equals_repeated_measures_anova_on_ranks():
    # without ties, F_F is the repeated-measures ANOVA F of the ranks (statsmodels' AnovaRM)
    from statsmodels.stats.anova import AnovaRM

    rng = np.random.default_rng(3)
    values = rng.normal(size=(14, 4)) + np.array([0, 0.5, 0.1, 0.6])
    frame, names = wide(**{f"s{j}": list(values[:, j]) for j in range(4)})
    row = stats.friedman_nemenyi(frame, names, 0.05)[0]
    ranks = ss.rankdata(-values, axis=1)
    long = pl.DataFrame(
        {"block": np.repeat(np.arange(14), 4), "s": np.tile(np.arange(4), 14), "r": ranks.ravel()}
    ).to_pandas()
    anova = AnovaRM(long, "r", "block", within=["s"]).fit().anova_table
    assert row["iman_davenport_f"] == pytest.approx(anova["F Value"].iloc[0])
    assert row["iman_davenport_p"] == pytest.approx(anova["Pr > F"].iloc[0])


# --- rounding noise is not a difference ------------------------------------------------------------------------


def test_rounding_noise_ties_in_ranks_and_wilcoxon():
    # fold scores (0.1, 0.2) and (0.15, 0.15): the same mean in exact arithmetic, 3e-17 apart in floats; the old
    # code ranked a first in all six tasks (1.0 vs 2.0) and gave Wilcoxon p = 0.031
    cells = pl.concat([cells_frame({"a": [0.1, 0.2], "b": [0.15, 0.15]}, task=f"t{i}") for i in range(6)])
    assert np.mean([0.1, 0.2]) != np.mean([0.15, 0.15])
    result = stats.compare(cells, metrics=("mcc",))
    assert result.ranks.sort("strategy")["mean_rank"].to_list() == [1.5, 1.5]
    (row,) = result.wilcoxon.rows(named=True)
    assert (row["wins"], row["ties"], row["losses"]) == (0, 6, 0) and row["note"] == "identical in every cohort"


def test_rounding_noise_is_no_variance_in_the_corrected_t():
    a = np.array([0.3, 0.5, 0.7, 0.2, 0.9])
    b = a - 0.1  # in floats the differences vary by ~1e-17: the old code gave t = 2.4e15, p = 1e-46
    assert np.ptp(a - b) > 0
    row = stats.correlated_t(a, b, 0.01)
    assert row["t"] is None and row["p_value"] is None and "no variance" in row["note"]
    assert row["p_a_better"] == 1.0
    same = stats.correlated_t(np.array([0.1, 0.2]), np.array([0.15, 0.15]) + np.array([-0.05, 0.05]), 0.01)
    assert same["note"] == "identical in every fold" and same["p_value"] == 1.0


# --- the Bayesian hierarchical comparison across cohorts -------------------------------------------------------

# A fixed example: 3 cohorts x 5 folds of MCC of strategies a and b. baycomp's HierarchicalTest (pystan 3.10,
# 4 chains x 20,000 draws, random_state=0) gives these (P(a better), P(equivalent), P(b better)) at two ROPEs;
# test_hierarchical_matches_baycomp_live recomputes them where pystan is installed.
EXAMPLE_A = [[0.31, 0.42, 0.28, 0.35, 0.39], [0.12, 0.20, 0.15, 0.09, 0.18], [0.55, 0.49, 0.61, 0.52, 0.58]]
EXAMPLE_B = [[0.35, 0.44, 0.33, 0.36, 0.45], [0.15, 0.19, 0.22, 0.12, 0.20], [0.53, 0.50, 0.57, 0.51, 0.55]]
BAYCOMP = {0.01: (0.291825, 0.050775, 0.6574), 0.03: (0.17775, 0.44755, 0.3747)}


def hierarchical_probabilities(rope: float) -> tuple[float, float, float]:
    prepared = stats.hierarchical.prepare([np.array(r) for r in EXAMPLE_A], [np.array(r) for r in EXAMPLE_B], rope)
    (probs,) = REAL_COMPARE_PAIRS([prepared])
    return probs


REAL_COMPARE_PAIRS = stats.hierarchical.compare_pairs  # the autouse fixture replaces it inside stats.compare


def test_hierarchical_model_matches_baycomps_on_a_fixed_example():
    # Monte Carlo error of 4 x 1,000 draws: about 0.02 on each probability
    for rope, expected in BAYCOMP.items():
        assert hierarchical_probabilities(rope) == pytest.approx(expected, abs=0.05), rope


@pytest.mark.slow
def test_hierarchical_matches_baycomp_live(tmp_path, monkeypatch):
    pytest.importorskip("stan", reason="baycomp's HierarchicalTest needs pystan (pip install pystan 'setuptools<81')")
    monkeypatch.chdir(tmp_path)  # baycomp pickles its last sample into the working directory
    x, y = np.array(EXAMPLE_A), np.array(EXAMPLE_B)
    live = baycomp.HierarchicalTest(x, y, 0.03, random_state=0, nsamples=5000, chains=4).probs()
    assert live == pytest.approx(BAYCOMP[0.03], abs=0.03)
    assert hierarchical_probabilities(0.03) == pytest.approx(live, abs=0.05)


def test_hierarchical_rows_in_compare(monkeypatch):
    monkeypatch.setattr(stats.hierarchical, "compare_pairs", REAL_COMPARE_PAIRS)
    cells, cohorts = six_tasks_three_cohorts()
    cells = cells.filter(pl.col("strategy") != "lora")
    rows = stats.compare(cells, metrics=("mcc",), cohorts=cohorts, control="lp").hierarchical.rows(named=True)
    (row,) = rows
    assert (row["a"], row["b"], row["cohorts"], row["folds"]) == ("lp", "fft", 3, 15)
    # fft is 0.3 better than lp with fold noise 0.1: the model is sure b is better on a new cohort
    assert row["p_b_better"] > 0.95 and row["p_a_better"] + row["p_equivalent"] + row["p_b_better"] == 1.0


def test_hierarchical_model_turned_off_lists_its_comparisons_and_runs_no_mcmc(monkeypatch):
    def no_sampling(prepared):
        assert prepared == [], "the model ran"
        return []

    monkeypatch.setattr(stats.hierarchical, "compare_pairs", no_sampling)
    cells, cohorts = six_tasks_three_cohorts()
    cells = cells.filter(pl.col("strategy") != "lora")
    compared = stats.compare(cells, metrics=("mcc",), cohorts=cohorts, control="lp", hierarchical_model=False)
    (row,) = compared.hierarchical.rows(named=True)
    assert (row["a"], row["b"], row["cohorts"], row["folds"]) == ("lp", "fft", 3, 15)
    assert row["p_b_better"] is None and row["note"] == stats.HIERARCHICAL_OFF


def test_the_samplers_compiled_code_is_cached_where_asked(monkeypatch, tmp_path):
    monkeypatch.setenv("FTBENCH_JAX_CACHE", str(tmp_path / "jax"))
    assert stats.hierarchical.compilation_cache() == str(tmp_path / "jax")
    monkeypatch.setenv("FTBENCH_JAX_CACHE", "")
    assert stats.hierarchical.compilation_cache() is None
    monkeypatch.delenv("FTBENCH_JAX_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path))
    cache = Path(stats.hierarchical.compilation_cache())
    assert cache.parent == tmp_path / "ftbench" / "jax" and len(cache.name) == 12  # one folder per kind of CPU


def test_hierarchical_notes_what_it_cannot_model():
    same = stats.hierarchical.prepare([np.array([0.5, 0.5])] * 2, [np.array([0.5, 0.5])] * 2, 0.01)
    assert same == "the same difference in every fold of every cohort: no variance to model"
    # one cohort's constant difference keeps its mean (baycomp would centre its noise on 0)
    p = stats.hierarchical.prepare([np.array([0.1, 0.2, 0.3]), np.array([0.5, 0.5, 0.5])], [np.zeros(3)] * 2, 0.01)
    assert np.nanmean(p.diff[1]) == pytest.approx(-0.5 / np.mean([np.std([0.1, 0.2, 0.3]), 0.0]))
