"""Scoring a trained model: metrics, plots and ``evaluate_run`` (the ``evaluate`` command's library call).

The forward pass itself (with TTA) is ``cifarlens.run.Predictor``, which training uses too.
"""

from cifarlens.evaluation.evaluate import evaluate_run, result_key
from cifarlens.evaluation.metrics import classification_report, top_confusions
from cifarlens.evaluation.plots import image_grid, plot_confusion, plot_curves, plot_misclassified

__all__ = [
    "classification_report",
    "evaluate_run",
    "image_grid",
    "plot_confusion",
    "plot_curves",
    "plot_misclassified",
    "result_key",
    "top_confusions",
]
