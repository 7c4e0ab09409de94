"""Per-cell classification metrics (scikit-learn), the validation-chosen decision threshold, and the one prediction
per patient that both are computed on."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from sklearn import metrics as skm

THRESHOLD_METRICS = ("mcc", "balanced_accuracy", "f1", "sensitivity", "specificity")


@dataclass(frozen=True)
class Patients:
    """The patients of a part's images, to score one prediction per patient: a patient with 20 images (a long ICU
    stay) would otherwise count 20 times. A patient's prediction is the mean of its images' probabilities
    (docs/methods.md says why); with one image per patient it is that image's probability, bit for bit.

    ``ids``: the patients, sorted; ``index``: each image's patient (a position in ``ids``); ``labels``: each
    patient's label.
    """

    ids: np.ndarray
    index: np.ndarray
    labels: np.ndarray

    @classmethod
    def of(cls, patient_ids, labels) -> Patients:
        """The patients of images given their patient ids and labels; an error if a patient has both labels."""
        ids, index = np.unique(np.asarray(patient_ids), return_inverse=True)
        image_labels = np.asarray(labels, dtype=int)
        per_patient = np.zeros(len(ids), dtype=int)
        per_patient[index] = image_labels
        mixed = ids[np.unique(index[per_patient[index] != image_labels])]
        if len(mixed):
            raise ValueError(f"patient(s) {mixed[:10].tolist()} have images with both labels: no patient-level label")
        return cls(ids, index, per_patient)

    def probs(self, image_probs: np.ndarray) -> np.ndarray:
        """Each patient's probability: the mean of its images' (in image order, so it is reproducible)."""
        counts = np.bincount(self.index, minlength=len(self.ids))
        return np.bincount(self.index, weights=np.asarray(image_probs, dtype=float), minlength=len(self.ids)) / counts


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
    """All metrics of one set of predictions; threshold-based ones at ``threshold`` and at 0.5."""
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


def evaluate(patients: Patients, probs: np.ndarray, threshold: float) -> dict[str, float]:
    """A cell's metrics of its test images' probabilities ``probs``: the headline ones on one prediction per
    patient, the same metrics per image as secondary ``image_<metric>`` keys; ``n_test`` counts images (what the
    cell's cost depends on), ``n_test_patients`` patients."""
    headline = compute(patients.labels, patients.probs(probs), threshold)
    per_image = compute(patients.labels[patients.index], probs, threshold)
    return (
        headline
        | {"n_test": per_image["n_test"], "n_test_patients": headline["n_test"]}
        | {f"image_{k}": v for k, v in per_image.items() if k not in ("threshold", "n_test")}
    )
