"""``cifarlens evaluate MODEL.keras``: score a user's Keras file on the CIFAR-10 test split as it is."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console

from cifarlens.data import prepare_data
from cifarlens.errors import ConfigError
from cifarlens.evaluation.calibration import calibration_report
from cifarlens.evaluation.evaluate import _print_report
from cifarlens.evaluation.metrics import classification_report, top_confusions
from cifarlens.models import create_model
from cifarlens.models.keras_models import PREPROCESSING
from cifarlens.run import ModelSpec
from cifarlens.run.predictor import Predictor


def evaluate_keras_file(
    path: str | Path,
    *,
    preprocess: str = "scale",
    trust_code: bool = False,
    data_dir: str | Path | None = None,
    subset: int = 0,
    device: str = "cpu",
    console: Console | None = None,
) -> dict[str, Any]:
    """Accuracy, loss, per-class scores and calibration of the Keras model in ``path`` on the test split
    (``subset``: cap it).

    ``preprocess`` is how the file's model wants its 0-255 RGB input (``keras_models.PREPROCESSING``;
    ``scale``, x / 255, by default). Nothing is written.
    """

    name = f"keras:{path}"
    data = prepare_data(data_dir, subset=subset)
    classes = tuple(data.classes)
    model = create_model(name, num_classes=len(classes), preprocess=preprocess, trust_code=trust_code)
    if model.keras_units != len(classes):
        raise ConfigError(
            f"{path} ends in a Dense layer of {model.keras_units} units but CIFAR-10 has {len(classes)} classes; "
            f"train it first with cifarlens train --model {name}"
        )
    mean, std = PREPROCESSING[preprocess]
    spec = ModelSpec(name, {"preprocess": preprocess}, len(classes), classes, mean, std, model.input_side)
    predictor = Predictor(model.to(device).eval(), spec, device=device)
    t0 = time.perf_counter()
    logits = predictor.logits(data.test.images)
    report = classification_report(logits, data.test.labels, classes)
    result = {
        "split": "test",
        "preprocess": preprocess,
        **report,
        "calibration": calibration_report(logits, data.test.labels),
        "top_confusions": top_confusions(report["confusion"], classes, k=5),
        "seconds": time.perf_counter() - t0,
    }
    if console is not None:
        _print_report(console, result, f"test ({Path(path).name}, preprocess {preprocess})")
    return result
