"""Statistics across the grid against known values: hand-computed small cases and the libraries' own examples."""

import math
import warnings

import numpy as np
import polars as pl
import pytest
from scipy import stats as ss
from sklearn import metrics as skm

from ftbench import stats


def wide(**columns) -> tuple[pl.DataFrame, list[str]]:
    """A (block x strategy) table as stats.compare builds it: block keys, then one column per strategy."""
    n = len(next(iter(columns.values())))
    frame = pl.DataFrame({"task": ["t"] * n, "model": ["m"] * n, "fold": list(range(n)), **columns})
    return frame, sorted(columns)


def cells_frame(values: dict[str, list[float]], family: str = "cnn", regime: str = "full") -> pl.DataFrame:
    """Cells of one model and task: ``values[strategy][fold]`` is the MCC of that cell."""
    rows = [{"task": "t", "model": "m", "strategy": s, "regime": regime, "regime_group": regime, "fold": f,
             "family": family, "status": "ok", "mcc": v, "pr_auc": v}
            for s, vs in values.items() for f, v in enumerate(vs)]
    return pl.DataFrame(rows)


# --- Friedman and Nemenyi -----------------------------------------------------------------------------

def test_friedman_matches_scipy_documented_example():
    # scipy.stats.friedmanchisquare docs: statistic 10.5714..., p 0.005063...
    frame, names = wide(a_before=[72, 96, 88, 92, 74, 76, 82], b_after=[120, 120, 132, 120, 101, 96, 112],
                        c_later=[76, 95, 104, 96, 84, 72, 76])
    row, ranks, posthoc = stats.friedman_nemenyi(frame, names, 0.05)
    assert row["statistic"] == pytest.approx(10.571428571428571)
    assert row["p_value"] == pytest.approx(0.005063414171757498)
    assert row["blocks"] == 7 and row["strategies"] == 3 and len(posthoc) == 3


def test_friedman_and_nemenyi_hand_computed_perfect_ordering():
    # 4 blocks, every block ranks a > b > c: chi2 = 12/(n k (k+1)) sum R^2 - 3n(k+1) = 0.25 * (4²+8²+12²) - 48 = 8,
    # p = exp(-8/2) (chi-square, 2 df); mean ranks 1, 2, 3 (1 = best)
    frame, names = wide(a=[0.9, 0.8, 0.7, 0.95], b=[0.5, 0.4, 0.45, 0.6], c=[0.1, 0.2, 0.0, 0.3])
    row, ranks, posthoc = stats.friedman_nemenyi(frame, names, 0.05)
    assert row["statistic"] == pytest.approx(8.0)
    assert row["p_value"] == pytest.approx(math.exp(-4))
    assert {r["strategy"]: r["mean_rank"] for r in ranks} == {"a": 1.0, "b": 2.0, "c": 3.0}
    # Nemenyi a vs c: q = |1 - 3| / sqrt(k(k+1)/(6n)) * sqrt(2) = 2 / sqrt(0.5) * sqrt(2) = 4
    p_ac = next(r["p_nemenyi"] for r in posthoc if (r["a"], r["b"]) == ("a", "c"))
    assert p_ac == pytest.approx(ss.studentized_range.sf(4.0, 3, np.inf))
    # CD = q_0.05 sqrt(k(k+1)/(6n)); Demšar's table: q_0.05 = 2.343 for k = 3
    assert row["critical_difference"] == pytest.approx(2.343 * math.sqrt(12 / 24), abs=1e-3)


@pytest.mark.parametrize("k, q", [(2, 1.960), (3, 2.343), (4, 2.569), (5, 2.728), (6, 2.850), (7, 2.949),
                                  (8, 3.031), (9, 3.102), (10, 3.164)])
def test_critical_difference_matches_demsar_table(k, q):
    # Demšar (2006), Table 5(a): critical values q_0.05 of the two-tailed Nemenyi test
    n = 12
    assert stats.critical_difference(k, n, 0.05) == pytest.approx(q * math.sqrt(k * (k + 1) / (6 * n)), abs=2e-3)


def test_friedman_drops_incomplete_blocks_and_says_when_it_cannot_test():
    frame, names = wide(a=[0.9, 0.8, None, 0.7], b=[0.5, 0.4, 0.3, 0.45], c=[0.1, None, 0.2, 0.0])
    row, _, _ = stats.friedman_nemenyi(frame, names, 0.05)
    assert (row["blocks"], row["incomplete_blocks"]) == (2, 2)
    assert "few blocks" in row["note"]
    two, names2 = wide(a=[0.9, 0.8], b=[0.5, 0.4])
    assert "Friedman needs 3" in stats.friedman_nemenyi(two, names2, 0.05)[0]["note"]
    one, names1 = wide(a=[0.9], b=[0.5], c=[0.1])
    row, ranks, posthoc = stats.friedman_nemenyi(one, names1, 0.05)
    assert "too few" in row["note"] and row["p_value"] is None and ranks == [] and posthoc == []
    tied, names_t = wide(a=[0.5, 0.5, 0.5], b=[0.5, 0.5, 0.5], c=[0.5, 0.5, 0.5])
    row, ranks, posthoc = stats.friedman_nemenyi(tied, names_t, 0.05)
    assert "ties" in row["note"] and row["p_value"] is None and len(ranks) == 3


# --- paired Wilcoxon with Holm ---------------------------------------------------------------------------

def test_wilcoxon_matches_scipy_documented_example():
    # scipy.stats.wilcoxon docs: differences in height of 15 pairs -> statistic 24, p 0.041259765625 (exact)
    d = [6, 8, 14, 16, 23, 24, 28, 29, 41, -48, 49, 56, 60, -67, 75]
    frame, names = wide(a=d, b=[0] * len(d))
    (row,) = stats.paired_wilcoxon(frame, names, 0.05)
    assert row["statistic"] == 24.0 and row["p_value"] == pytest.approx(0.041259765625)
    assert (row["wins"], row["ties"], row["losses"]) == (13, 0, 2)
    assert row["p_holm"] == pytest.approx(0.041259765625) and row["significant"]  # one test: Holm changes nothing


def test_wilcoxon_holm_hand_computed():
    # a beats b and c in all 5 blocks: exact two-sided p = 2 / 2^5 = 0.0625 each; b and c are identical.
    # Holm over the two tested pairs: sorted p (0.0625, 0.0625) -> 2 x 0.0625 = 0.125, max(0.125, 0.0625) = 0.125
    frame, names = wide(a=[0.9, 0.8, 0.85, 0.7, 0.95], b=[0.5, 0.4, 0.3, 0.45, 0.6], c=[0.5, 0.4, 0.3, 0.45, 0.6])
    rows = {(r["a"], r["b"]): r for r in stats.paired_wilcoxon(frame, names, 0.05)}
    for pair in (("a", "b"), ("a", "c")):
        assert rows[pair]["p_value"] == pytest.approx(0.0625)
        assert rows[pair]["p_holm"] == pytest.approx(0.125) and not rows[pair]["significant"]
        assert "p ≥ 0.0625" in rows[pair]["note"]  # 5 blocks can never give p < 0.05
    assert rows[("b", "c")]["p_value"] == 1.0 and rows[("b", "c")]["note"] == "identical in every block"
    assert "p_holm" not in rows[("b", "c")]


def test_smallest_wilcoxon_p_is_two_over_two_to_the_n():
    assert [stats.smallest_wilcoxon_p(n) for n in (4, 5, 6)] == pytest.approx([0.125, 0.0625, 0.03125])


def test_compare_groups_by_family_and_regime_and_averages_repetitions():
    cells = pl.concat([
        cells_frame({"fft": [0.9, 0.8, 0.7, 0.9, 0.85], "lp": [0.5, 0.4, 0.3, 0.5, 0.45], "lora": [0.6] * 5}),
        cells_frame({"fft": [0.2] * 3, "lp": [0.4] * 3}, family="vit", regime="k4").with_columns(
            pl.lit("k4r0").alias("regime")),
        cells_frame({"fft": [0.4] * 3, "lp": [0.4] * 3}, family="vit", regime="k4").with_columns(
            pl.lit("k4r1").alias("regime")),
    ])
    cells = cells.with_columns(pl.when((pl.col("strategy") == "lp") & (pl.col("fold") == 4))
                               .then(pl.lit("failed")).otherwise(pl.col("status")).alias("status"))
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # degenerate groups are handled, not left to library warnings
        result = stats.compare(cells, metrics=("mcc",))
    cnn = result.friedman.filter(pl.col("family") == "cnn").row(0, named=True)
    assert (cnn["strategies"], cnn["blocks"], cnn["incomplete_blocks"]) == (3, 4, 1)  # the failed lp cell's block
    vit = result.wilcoxon.filter(pl.col("family") == "vit").row(0, named=True)
    # repetitions averaged per block: fft (0.2 + 0.4) / 2 = 0.3 vs lp 0.4 in each of 3 blocks
    assert (vit["pairs"], vit["losses"], vit["median_diff"]) == (3, 3, pytest.approx(-0.1))
    assert "Friedman needs 3" in result.friedman.filter(pl.col("family") == "vit")["note"][0]


def test_compare_on_an_empty_grid_gives_empty_tables():
    empty = pl.DataFrame(schema={"task": pl.String, "model": pl.String, "strategy": pl.String, "fold": pl.Int64,
                                 "family": pl.String, "regime_group": pl.String, "status": pl.String,
                                 "mcc": pl.Float64})
    result = stats.compare(empty, metrics=("mcc", "pr_auc"))
    assert result.friedman.height == 0 and "p_value" in result.friedman.columns


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
            rows += [{"cell": f"fold{cell}", "patient_id": f"c{cell}p{p}", "label": label, "prob": prob,
                      "pred": int(prob >= 0.5)} for _ in range(images)]
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
    as_if_independent = clustered.with_columns(pl.format("{}_{}", "patient_id", pl.int_range(pl.len())).alias("patient_id"))
    width = {name: np.subtract(*stats.bootstrap_ci(rows, 400, 1)["mcc"][::-1])
             for name, rows in (("clustered", clustered), ("one", one_image), ("independent", as_if_independent))}
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
