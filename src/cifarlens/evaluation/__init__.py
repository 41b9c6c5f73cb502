"""Scoring a trained model: logits (with TTA), metrics, plots and the ``evaluate`` command.

Names are re-exported lazily so that ``from cifarlens.run.predictor import Predictor`` (the
training loop) does not pull in matplotlib and scikit-learn.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "classification_report": "metrics",
    "top_confusions": "metrics",
    "plot_confusion": "plots",
    "plot_curves": "plots",
    "plot_misclassified": "plots",
    "image_grid": "plots",
    "evaluate_run": "evaluate",
    "result_key": "evaluate",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from cifarlens.evaluation.evaluate import evaluate_run, result_key
    from cifarlens.evaluation.metrics import classification_report, top_confusions
    from cifarlens.evaluation.plots import image_grid, plot_confusion, plot_curves, plot_misclassified


def __getattr__(name: str):
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
