"""Score a run directory on a split and write its reports: ``cifarlens evaluate RUN``.

Writes into the run directory (``TAG`` is the split, ``test`` or ``val``, with ``_tta``
appended for mirror test-time augmentation, ``_tta_translate`` when one-pixel shifts are added)::

    summary.json              results merged in under key TAG (other keys are kept)
    per_class_TAG.csv         class, accuracy, precision, recall, f1, support
    confusion_TAG.csv         counts; header row = predicted class, first column = true class
    plots/confusion_TAG.png
    plots/misclassified_TAG.png
    plots/reliability_TAG.png   reliability diagram (after the run's temperature too, once calibrated)
    plots/confidence_TAG.png    confidence histogram
    plots/coverage_TAG.png      risk-coverage curve
    plots/curves.png          when metrics.csv has epochs
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifarlens.data import RunData
from cifarlens.errors import RunDirError
from cifarlens.evaluation.calibration import calibration_report
from cifarlens.evaluation.metrics import classification_report, top_confusions
from cifarlens.evaluation.plots import (
    plot_confidence_histogram,
    plot_confusion,
    plot_curves,
    plot_misclassified,
    plot_reliability,
    plot_risk_coverage,
)
from cifarlens.run import RunDir
from cifarlens.run.predictor import Predictor


def result_key(split: str, tta: bool = False, tta_translate: bool = False) -> str:
    """The summary.json key and file-name tag of an evaluation: ``test``, ``val_tta``,
    ``test_tta_translate`` ...

    ``train`` becomes ``train_split`` because the trainer owns the ``train`` key.
    """
    key = f"{split}_tta_translate" if tta_translate else f"{split}_tta" if tta else split
    return "train_split" if key == "train" else key


def evaluate_run(
    run_dir: str | Path,
    *,
    split: str = "test",
    tta: bool = False,
    tta_translate: bool = False,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 500,
    console: Console | None = None,
    data: RunData | None = None,
    precision: str = "fp32",
) -> dict[str, Any]:
    """Score the run's final weights on ``split`` and write summary, CSVs and plots into the run.

    ``data`` skips rebuilding the splits from config.yaml (the trainer passes its own). Returns
    the result dict stored in summary.json: accuracy, loss, n, per_class, confusion,
    top_confusions, seconds, ``calibration`` (``calibration_report``: ECE, MCE, NLL, Brier, bins, risk-coverage;
    with ``temperature`` and ``calibrated``, the same after it, once ``cifarlens calibrate`` stored one),
    plus split, tta, tta_translate and ``data`` (folder, split, n, fingerprint: what
    was scored). ``tta_translate`` implies ``tta``. An evaluation of other data than the run's is kept beside
    the run's own under ``KEY@FINGERPRINT`` (``RunDir.evaluation_key``).
    """
    run = RunDir(run_dir).require_weights()
    if data is None:
        data = run.load_data(data_dir)
    chosen = data.split(split)  # ConfigError for a missing val split or an unknown name
    model, spec = run.load_model(device)
    classes = tuple(spec.classes)
    if len(classes) != len(data.classes):
        raise RunDirError(
            f"the model in {run} predicts {len(classes)} classes but the data has {len(data.classes)}; "
            "evaluate with the dataset the run was trained on"
        )

    tta = tta or tta_translate
    t0 = time.perf_counter()
    predictor = Predictor(
        model, spec, device=device, precision=precision, tta=tta, tta_translate=tta_translate, batch_size=batch_size
    )
    logits = predictor.logits(chosen.images)
    seconds = time.perf_counter() - t0
    report = classification_report(logits, chosen.labels, classes)
    calibration = calibration_report(logits, chosen.labels)
    temperature = run.temperature
    if temperature != 1.0:
        calibration["temperature"] = temperature
        calibration["calibrated"] = calibration_report(logits / temperature, chosen.labels)
    record = {
        "folder": str(Path(data.root).resolve()),
        "split": split,
        "n": len(chosen),
        "fingerprint": chosen.fingerprint(),
    }
    result = {
        "split": split,
        "tta": tta,
        "tta_translate": tta_translate,
        "data": record,
        **report,
        "calibration": calibration,
        "top_confusions": top_confusions(report["confusion"], classes, k=5),
        "seconds": seconds,
    }

    key = run.evaluation_key(result_key(split, tta, tta_translate), record)
    run.merge_summary(key, result)
    run.write_evaluation(key, report["per_class"], report["confusion"], classes)
    label = f"{split}{' with TTA + shifts' if tta_translate else ' with TTA' if tta else ''}"
    if "@" in key:
        label += f" of {record['folder']}"
    plot_confusion(
        report["confusion"],
        classes,
        run.plot_file(f"confusion_{key}"),
        title=f"Confusion matrix, {label}: accuracy {report['accuracy']:.2%} on {report['n']} images",
    )
    plot_misclassified(chosen.images, chosen.labels, logits, classes, run.plot_file(f"misclassified_{key}"))
    plot_reliability(
        calibration, run.plot_file(f"reliability_{key}"), f"Reliability, {label}", calibration.get("calibrated")
    )
    plot_confidence_histogram(calibration, run.plot_file(f"confidence_{key}"), f"Confidence, {label}")
    plot_risk_coverage(calibration, run.plot_file(f"coverage_{key}"), f"Risk-coverage, {label}")
    if run.metrics:
        plot_curves(run.metrics, run.plot_file("curves"))

    if console is not None:
        _print_report(console, result, label)
        console.print(
            escape(
                f"wrote {run}: {run.SUMMARY} (key {key}), {run.per_class_file(key).name}, "
                f"{run.confusion_file(key).name}, {run.PLOTS}/"
            )
        )
    return result


def _print_report(console: Console, result: dict[str, Any], label: str) -> None:
    console.print(
        f"[bold]{label}[/]: accuracy [bold green]{result['accuracy']:.2%}[/]  loss {result['loss']:.4f}  "
        f"({result['n']} images, {result['seconds']:.1f}s)"
    )
    table = Table(title=f"per-class scores ({label})", title_justify="left")
    table.add_column("class", style="bold")
    for name in ("accuracy", "precision", "recall", "F1"):
        table.add_column(name, justify="right")
    table.add_column("support", justify="right")
    per_class = result["per_class"]
    worst = (
        min(row["accuracy"] for row in per_class if row["support"]) if any(r["support"] for r in per_class) else None
    )
    for row in per_class:
        acc = f"{row['accuracy']:.2%}"
        if worst is not None and row["support"] and row["accuracy"] == worst:
            acc = f"[red]{acc}[/]"
        table.add_row(
            escape(row["class"]),
            acc,
            f"{row['precision']:.2%}",
            f"{row['recall']:.2%}",
            f"{row['f1']:.3f}",
            str(row["support"]),
        )
    k = len(per_class)
    table.add_section()
    table.add_row(
        "macro avg",
        f"{sum(r['accuracy'] for r in per_class) / k:.2%}",
        f"{sum(r['precision'] for r in per_class) / k:.2%}",
        f"{sum(r['recall'] for r in per_class) / k:.2%}",
        f"{sum(r['f1'] for r in per_class) / k:.3f}",
        str(result["n"]),
        style="dim",
    )
    console.print(table)
    cal = result["calibration"]
    line = f"calibration: ECE {cal['ece']:.2%}  MCE {cal['mce']:.2%}  NLL {cal['nll']:.4f}  Brier {cal['brier']:.4f}"
    if "calibrated" in cal:
        after = cal["calibrated"]
        line += f"; after temperature {cal['temperature']:.3f}: ECE {after['ece']:.2%}  NLL {after['nll']:.4f}"
    console.print(line, highlight=False)
    if result["top_confusions"]:
        pairs = ", ".join(f"{c['true']} → {c['pred']} {c['count']}" for c in result["top_confusions"])
        console.print(escape(f"most confused (true → predicted): {pairs}"))
