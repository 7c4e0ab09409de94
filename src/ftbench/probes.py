"""Fitted probes on the embedding cache: logistic regression and k-nearest neighbours (scikit-learn).

The usual frozen-feature baselines of foundation-model papers, beside the linear probe trained by
gradient descent (``lp``). A probe is fitted, not trained for epochs: every candidate hyper-parameter
(``C`` or ``k``) is fitted on the training part and the one with the lowest class-weighted validation
log-loss is kept, the criterion early stopping uses for the trained strategies.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import log_loss
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler
from sklearn.utils.class_weight import compute_sample_weight


def logreg(spec: dict, n_train: int, seed: int) -> dict[str, ClassifierMixin]:
    """L2-regularised, class-balanced logistic regression on standardised features, per inverse strength ``C``."""
    return {f"C={c:g}": make_pipeline(StandardScaler(), LogisticRegression(
        C=c, class_weight="balanced", max_iter=5000, random_state=seed)) for c in spec.get("C", [1e-3, 1e-2, 0.1, 1.0])}


def knn(spec: dict, n_train: int, seed: int) -> dict[str, ClassifierMixin]:
    """Cosine k-nearest neighbours (Euclidean on L2-normalised features), per ``k`` up to the training size."""
    ks = [k for k in spec.get("k", [1, 5, 10, 20]) if k <= n_train] or [n_train]
    return {f"k={k}": make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=k)) for k in ks}


# kind -> (spec, training images, seed) -> the candidate estimators by name
PROBES: dict[str, Callable[[dict, int, int], dict[str, ClassifierMixin]]] = {
    "logreg": logreg,
    "knn": knn,
}


def fit(spec: dict, train: tuple[np.ndarray, np.ndarray], val: tuple[np.ndarray, np.ndarray],
        seed: int) -> tuple[ClassifierMixin, dict]:
    """The candidate of ``spec['kind']`` with the lowest class-weighted validation log-loss, and a record of
    every candidate's loss and the choice."""
    (x, y), (vx, vy) = train, val
    weights = compute_sample_weight("balanced", vy)
    losses, fitted = {}, {}
    for name, estimator in PROBES[spec["kind"]](spec, len(y), seed).items():
        fitted[name] = estimator.fit(x, y)
        losses[name] = log_loss(vy, fitted[name].predict_proba(vx)[:, 1], sample_weight=weights, labels=[0, 1])
    chosen = min(losses, key=losses.get)
    return fitted[chosen], {"chosen": chosen, "val_loss": losses}


def parameters(estimator: ClassifierMixin) -> int:
    """What the probe learned: a logistic regression's weights and bias; kNN stores examples, learns none."""
    final = estimator[-1]
    return int(final.coef_.size + final.intercept_.size) if hasattr(final, "coef_") else 0
