"""Linear probes and kNN on frozen features: how class-specific is a representation?

``fit_linear_probe`` is the "logistic regression on frozen features" baseline: reuse it for any
(N, D) features, e.g. a transfer-learning baseline on a pretrained backbone.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from sklearn.linear_model import LogisticRegression
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from cifarlens.console import console
from cifarlens.data import stratified_indices
from cifarlens.errors import CifarlensError
from cifarlens.explain.features import extract_features
from cifarlens.explain.plots import plot_probe
from cifarlens.explain.run_model import load_run_model
from cifarlens.io import atomic_write_csv
from cifarlens.run import RunDir, write_json


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


@dataclass
class ProbesResult:
    """What ``probe_run`` measured: one row per layer (dims, linear and kNN test accuracy, seconds)."""

    model_name: str
    rows: list[dict]
    train_images: int
    test_images: int
    chance: float  # accuracy of always answering the commonest test class
    k: int
    C: float

    def write(self, folder: str | Path) -> list[Path]:
        """``probe.csv`` (the rows), ``probe.json`` (with the settings) and ``probe.png`` into ``folder``."""

        folder = Path(folder)
        paths = [folder / "probe.csv", folder / "probe.json", folder / "probe.png"]
        atomic_write_csv(paths[0], self.rows)
        write_json(
            paths[1],
            {
                "train_images": self.train_images,
                "test_images": self.test_images,
                "chance": self.chance,
                "k": self.k,
                "C": self.C,
                "stages": self.rows,
            },
        )
        plot_probe(
            self.rows,
            paths[2],
            chance=self.chance,
            title=f"{self.model_name}: test accuracy of probes on frozen features, by depth",
        )
        return paths


def probe_run(
    run: str | Path,
    *,
    layers: list[str] | None = None,
    train_limit: int = 5000,
    test_limit: int = 0,
    k: int = 10,
    C: float = 1.0,
    seed: int = 0,
    data_dir: str | None = None,
    device: str = "cpu",
    show_progress: bool = False,
) -> ProbesResult:
    """Linear-probe and kNN test accuracy of the pooled features of ``layers`` (default: every probe stage),
    fitted on a stratified ``train_limit`` subsample (seeded; 0: all) of the run's training split and scored on
    its first ``test_limit`` test images (0: all). Features are extracted on ``device``."""
    import torch

    model, spec, dev = load_run_model(run, device)
    data = RunDir(run).load_data(data_dir)
    names = layers or list(spec.capabilities(model).probe_stages)
    train, test = data.train, data.test
    if train_limit and train_limit < len(train):
        train = train.take(stratified_indices(train.labels, train_limit, seed))
    train_f = extract_features(
        model, spec, train.images, train.labels, names, split="train", device=dev, show_progress=show_progress
    )
    test_f = extract_features(
        model, spec, test.images, test.labels, names, limit=test_limit, device=dev, show_progress=show_progress
    )
    with console.status("fitting probes") if show_progress else contextlib.nullcontext():
        rows = [_probe_row(name, train_f, test_f, k=k, C=C, seed=seed) for name in names]
    chance = float(torch.bincount(test.labels[: len(test_f.labels)]).max()) / len(test_f.labels)
    return ProbesResult(spec.name, rows, int(len(train_f.labels)), int(len(test_f.labels)), chance, k, C)


def _probe_row(name: str, train_f, test_f, *, k: int, C: float, seed: int) -> dict:
    t0 = time.perf_counter()
    train_x, train_y, test_x, test_y = train_f.layers[name], train_f.labels, test_f.layers[name], test_f.labels
    linear = fit_linear_probe(train_x, train_y, test_x, test_y, C=C, seed=seed)
    knn = fit_knn_probe(train_x, train_y, test_x, test_y, k=k)
    return {
        "layer": name,
        "dims": int(train_x.shape[1]),
        "linear_accuracy": linear.accuracy,
        "linear_train_accuracy": linear.train_accuracy,
        "knn_accuracy": knn.accuracy,
        "seconds": time.perf_counter() - t0,
    }
