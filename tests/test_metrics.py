"""Metrics: the validation threshold really maximises MCC; the metric values match scikit-learn."""

import numpy as np
import pytest
from sklearn.metrics import matthews_corrcoef, roc_auc_score

from ftbench.train import metrics


@pytest.mark.parametrize("seed", range(5))
def test_best_threshold_maximises_mcc(seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, 60)
    probs = np.clip(labels * 0.3 + rng.normal(0.35, 0.2, 60), 0, 1).round(2)  # ties included
    cut = metrics.best_threshold(labels, probs)
    brute = max(matthews_corrcoef(labels, probs >= c) for c in np.unique(probs))
    assert matthews_corrcoef(labels, probs >= cut) == pytest.approx(brute)
    assert cut not in set(probs)  # midway between two observed probabilities


def test_threshold_edge_cases():
    assert metrics.best_threshold(np.array([1, 1]), np.array([0.2, 0.9])) == 0.5
    assert metrics.best_threshold(np.array([0, 1]), np.array([0.2, 0.9])) == pytest.approx(0.55)


def test_no_positive_is_exact_even_at_a_probability_of_exactly_one():
    """When predicting no positive maximises MCC, no image may be called positive, although float32 softmax
    outputs exactly 1.0 for confident images (a cut of 1.0 called those positive)."""
    labels = np.array([0, 0, 1, 1, 0])
    probs = np.array([1.0, 1.0, 0.3, 0.2, 0.9], dtype=np.float32).astype(float)  # every positive below the negatives
    cut = metrics.best_threshold(labels, probs)
    assert cut == np.inf
    assert metrics.compute(labels, probs, cut)["sensitivity"] == 0 and (probs >= cut).sum() == 0


def test_the_cut_between_adjacent_floats_keeps_the_chosen_counts():
    """Two adjacent doubles have no double strictly between them: the midpoint rounds onto one of them, and a
    cut on the lower one would call it positive too. The cut must give exactly the confusion counts chosen."""
    hi = np.nextafter(0.7, 1)
    lo = np.nextafter(hi, 0)
    assert (hi + lo) / 2 == lo  # the premise: this pair's midpoint rounds down onto the lower one
    labels, probs = np.array([1, 0, 0]), np.array([hi, lo, 0.1])
    cut = metrics.best_threshold(labels, probs)
    assert (probs >= cut).tolist() == [True, False, False]
    assert matthews_corrcoef(labels, probs >= cut) == 1.0


def test_compute_known_values():
    labels = np.array([0, 0, 0, 1, 1, 1])
    probs = np.array([0.1, 0.4, 0.6, 0.35, 0.8, 0.9])
    out = metrics.compute(labels, probs, threshold=0.5)
    # at 0.5: tp 2, fn 1, tn 2, fp 1
    assert out["sensitivity"] == pytest.approx(2 / 3) and out["specificity"] == pytest.approx(2 / 3)
    assert out["mcc"] == pytest.approx(1 / 3)
    assert out["roc_auc"] == pytest.approx(roc_auc_score(labels, probs))
    assert out["brier"] == pytest.approx(np.mean((probs - labels) ** 2))
    single = metrics.compute(np.array([1, 1]), np.array([0.7, 0.2]), 0.5)
    assert np.isnan(single["roc_auc"]) and single["sensitivity"] == 0.5
