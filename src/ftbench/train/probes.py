"""Fitted probes on the embedding cache: logistic regression and k-nearest neighbours (scikit-learn).

The usual frozen-feature baselines of foundation-model papers, beside the linear probe trained by gradient
descent (``lp``). A probe is fitted, not trained for epochs; its settings (``C``, ``k``) are candidates like any
listed setting: the cell fits each and keeps the one with the lowest class-weighted validation loss, the
criterion early stopping uses for the trained strategies (``ftbench.train.cell``).
"""

from __future__ import annotations

from collections.abc import Callable

from sklearn.base import ClassifierMixin
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import Normalizer, StandardScaler


def logreg(spec: dict, n_train: int, seed: int) -> ClassifierMixin:
    """L2-regularised, class-balanced logistic regression on standardised features, inverse strength ``C``."""
    return make_pipeline(
        StandardScaler(), LogisticRegression(C=spec["C"], class_weight="balanced", max_iter=5000, random_state=seed)
    )


def knn(spec: dict, n_train: int, seed: int) -> ClassifierMixin:
    """Cosine k-nearest neighbours (Euclidean on L2-normalised features); ``k`` at most the training size."""
    return make_pipeline(Normalizer(), KNeighborsClassifier(n_neighbors=min(spec["k"], n_train)))


# kind -> (resolved settings, training images, seed) -> the estimator to fit
PROBES: dict[str, Callable[[dict, int, int], ClassifierMixin]] = {
    "logreg": logreg,
    "knn": knn,
}


def parameters(estimator: ClassifierMixin) -> int:
    """What the probe learned: a logistic regression's weights and bias; kNN stores examples, learns none."""
    final = estimator[-1]
    return int(final.coef_.size + final.intercept_.size) if hasattr(final, "coef_") else 0
