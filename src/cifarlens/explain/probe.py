"""Linear probes and kNN on frozen features: how class-specific is a representation?

``fit_linear_probe`` is the "logistic regression on frozen features" baseline: reuse it for any
(N, D) features, e.g. a transfer-learning baseline on a pretrained backbone.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cifarlens.errors import CifarlensError


@dataclass
class ProbeResult:
    """Test accuracy of a classifier fitted on frozen features, and the fitted pipeline (scaler + classifier)."""

    accuracy: float
    train_accuracy: float
    model: Pipeline


def _check(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray) -> None:
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise CifarlensError(f"probe features must be (N, D) with equal D, got {train_x.shape} and {test_x.shape}")
    if len(train_x) != len(train_y) or len(test_x) != len(test_y):
        raise CifarlensError("probe features and labels differ in length")
    if len(np.unique(train_y)) < 2:
        raise CifarlensError("a probe needs training features of at least 2 classes; use more images (--train-limit)")


def fit_linear_probe(
    train_x: np.ndarray,
    train_y: np.ndarray,
    test_x: np.ndarray,
    test_y: np.ndarray,
    *,
    C: float = 1.0,
    max_iter: int = 1000,
    seed: int = 0,
) -> ProbeResult:
    """Multinomial logistic regression on standardised features: fit on train, score on test.

    train_x: (N, D), train_y: (N,) int; test_x: (M, D), test_y: (M,). ``C`` is the inverse
    L2 strength (scikit-learn's). Features are standardised with the training mean/std.
    """
    _check(train_x, train_y, test_x, test_y)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=C, max_iter=max_iter, random_state=seed))
    model.fit(train_x, train_y)
    return ProbeResult(float(model.score(test_x, test_y)), float(model.score(train_x, train_y)), model)


def fit_knn_probe(
    train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, test_y: np.ndarray, *, k: int = 10
) -> ProbeResult:
    """k-nearest-neighbour vote (cosine distance on standardised features): fit on train, score on test."""
    _check(train_x, train_y, test_x, test_y)
    k = min(k, len(train_x))
    model = make_pipeline(StandardScaler(), KNeighborsClassifier(n_neighbors=k, metric="cosine"))
    model.fit(train_x, train_y)
    return ProbeResult(float(model.score(test_x, test_y)), float(model.score(train_x, train_y)), model)
