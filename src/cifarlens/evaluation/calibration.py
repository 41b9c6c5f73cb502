"""Does 90% confidence mean 90%? Calibration scores, risk-coverage, and temperature scaling (Guo et al. 2017).

``calibration_report`` gives the expected and maximum calibration error (torchmetrics' ECE/MCE, 15 equal-width
confidence bins as in Guo et al.), NLL, the Brier score, the bins of a reliability diagram and the risk-coverage
curve. ``fit_temperature`` finds the one scalar T that minimises the NLL of ``logits / T``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

N_BINS = 15  # Guo et al. 2017 report ECE over 15 bins
TEMPERATURE_RANGE = (0.05, 20.0)


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS) -> dict[str, Any]:
    """Calibration of ``logits`` (N, C) against ``labels`` (N,); all values plain Python.

    Returns ``ece`` and ``mce`` (torchmetrics' ``multiclass_calibration_error``, norm l1 and max), ``nll`` (mean
    cross-entropy), ``brier`` (mean over images of the squared distance between the probability vector and the
    one-hot label, 0-2), ``n_bins``, ``bins`` (lower, upper, count, confidence, accuracy of each confidence bin)
    and ``coverage`` (``risk_coverage``: accuracy when the least confident images are set aside).
    """
    from torchmetrics.functional.classification import multiclass_calibration_error

    logits = torch.as_tensor(logits).float().cpu()
    labels = torch.as_tensor(labels).long().cpu()
    probs = logits.softmax(1)
    confidence, predicted = probs.max(1)
    correct = predicted == labels
    num_classes = logits.shape[1]
    ece = multiclass_calibration_error(probs, labels, num_classes=num_classes, n_bins=n_bins, norm="l1")
    mce = multiclass_calibration_error(probs, labels, num_classes=num_classes, n_bins=n_bins, norm="max")
    brier = (probs - F.one_hot(labels, num_classes).float()).pow(2).sum(1).mean()
    return {
        "ece": float(ece),
        "mce": float(mce),
        "nll": float(F.cross_entropy(logits, labels)),
        "brier": float(brier),
        "n_bins": n_bins,
        "bins": reliability_bins(confidence, correct, n_bins),
        "coverage": risk_coverage(confidence, correct),
    }


def reliability_bins(confidence: torch.Tensor, correct: torch.Tensor, n_bins: int = N_BINS) -> list[dict[str, float]]:
    """Equal-width confidence bins (N,) -> one dict per bin: lower, upper, count, mean confidence, accuracy.

    Bins are right-open as torchmetrics' (a confidence of exactly 1 joins the last bin).
    """
    edges = torch.linspace(0, 1, n_bins + 1)
    index = (torch.bucketize(confidence, edges, right=True) - 1).clamp(0, n_bins - 1)
    bins = []
    for b in range(n_bins):
        members = index == b
        count = int(members.sum())
        bins.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": count,
                "confidence": float(confidence[members].mean()) if count else 0.0,
                "accuracy": float(correct[members].float().mean()) if count else 0.0,
            }
        )
    return bins


def risk_coverage(confidence: torch.Tensor, correct: torch.Tensor, points: int = 20) -> dict[str, list[float]]:
    """Accuracy on the most confident fraction of images, at ``points`` coverages from 1/points to 1.

    Returns ``coverage`` and ``accuracy`` lists and ``aurc`` (area under the risk-coverage curve over every
    coverage k/N: the mean error of the selective classifier, lower is better).
    """
    order = torch.argsort(confidence, descending=True, stable=True)
    hits = correct[order].double()
    cumulative = hits.cumsum(0) / torch.arange(1, len(hits) + 1, dtype=torch.float64)
    coverages = [(i + 1) / points for i in range(points)]
    accuracy = [float(cumulative[max(int(round(c * len(hits))) - 1, 0)]) for c in coverages]
    return {"coverage": coverages, "accuracy": accuracy, "aurc": float((1 - cumulative).mean())}


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of ``logits / T`` (N, C) on ``labels`` (N,).

    One scalar, so the argmax and the accuracy do not change. Searched on log T with SciPy's bounded Brent.
    """
    from scipy.optimize import minimize_scalar

    logits = torch.as_tensor(logits).double().cpu()
    labels = torch.as_tensor(labels).long().cpu()

    def nll(log_t: float) -> float:
        return float(F.cross_entropy(logits / np.exp(log_t), labels))

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    result = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-6})
    return float(np.exp(result.x))
