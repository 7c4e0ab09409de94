"""Per-cell classification metrics (scikit-learn), and the validation-chosen decision threshold."""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

THRESHOLD_METRICS = ("mcc", "balanced_accuracy", "f1", "sensitivity", "specificity")


def best_threshold(labels: np.ndarray, probs: np.ndarray) -> float:
    """The probability cut-off that maximises MCC on validation data, for the rule "positive iff prob >= cut".

    Every distinct probability is a candidate (counts from scikit-learn's ROC curve, MCC from those counts: one
    pass instead of one metric call per candidate); the cut is placed midway to the next lower probability, or
    on the chosen probability itself where the midpoint would round onto the lower one (adjacent floats), so
    the rule reproduces exactly the counts that were maximised. Where predicting no positive at all is best,
    the cut is +inf: float32 softmax can output exactly 1.0, which a cut of 1.0 would still call positive.
    0.5 when the data have a single class.
    """
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    if len(np.unique(labels)) < 2:
        return 0.5
    fpr, tpr, thresholds = skm.roc_curve(labels, probs, drop_intermediate=False)
    pos = labels.sum()
    neg = len(labels) - pos
    tp, fp = tpr * pos, fpr * neg
    fn, tn = pos - tp, neg - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        mcc = (tp * tn - fp * fn) / np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
    best = int(np.argmax(np.nan_to_num(mcc, nan=0.0)))
    if not np.isfinite(thresholds[best]):
        return math.inf  # predicting no positive at all was best
    upper = float(thresholds[best])
    lower = float(thresholds[best + 1]) if best + 1 < len(thresholds) else min(0.0, upper)
    cut = (upper + lower) / 2
    return cut if lower < cut <= upper else upper


def expected_calibration_error(labels: np.ndarray, probs: np.ndarray, bins: int = 10) -> float:
    """ECE with equal-width bins over the positive-class probability."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            ece += mask.mean() * abs(labels[mask].mean() - probs[mask].mean())
    return float(ece)


def _thresholded(labels: np.ndarray, preds: np.ndarray) -> dict[str, float]:
    tn, fp, fn, tp = skm.confusion_matrix(labels, preds, labels=[0, 1]).ravel()
    return {
        "mcc": float(skm.matthews_corrcoef(labels, preds)),
        "balanced_accuracy": float(skm.balanced_accuracy_score(labels, preds))
        if len(np.unique(labels)) > 1
        else math.nan,
        "f1": float(skm.f1_score(labels, preds, zero_division=0)),
        "sensitivity": float(tp / (tp + fn)) if tp + fn else math.nan,
        "specificity": float(tn / (tn + fp)) if tn + fp else math.nan,
    }


def compute(labels: np.ndarray, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """All metrics of one cell's test predictions; threshold-based ones at ``threshold`` and at 0.5."""
    labels, probs = np.asarray(labels, dtype=int), np.asarray(probs, dtype=float)
    both = len(np.unique(labels)) > 1
    out = {
        "pr_auc": float(skm.average_precision_score(labels, probs)) if both else math.nan,
        "roc_auc": float(skm.roc_auc_score(labels, probs)) if both else math.nan,
        "brier": float(skm.brier_score_loss(labels, probs, pos_label=1)),
        "ece": expected_calibration_error(labels, probs),
        "threshold": float(threshold),
        "n_test": int(len(labels)),
        "positive_rate": float(labels.mean()) if len(labels) else math.nan,
    }
    out.update(_thresholded(labels, (probs >= threshold).astype(int)))
    out.update({f"{k}@0.5": v for k, v in _thresholded(labels, (probs >= 0.5).astype(int)).items()})
    return out
