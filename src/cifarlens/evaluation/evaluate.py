"""Score a run directory on a split and write its reports: ``cifarlens evaluate RUN``.

Writes into the run directory (``TAG`` is the split, ``test`` or ``val``, with ``_tta``
appended for mirror test-time augmentation, ``_tta_translate`` when one-pixel shifts are added)::

    summary.json              results merged in under key TAG (other keys are kept)
    per_class_TAG.csv         class, accuracy, precision, recall, f1, support
    confusion_TAG.csv         counts; header row = predicted class, first column = true class
    plots/confusion_TAG.png
    plots/misclassified_TAG.png
    plots/curves.png          when metrics.csv has epochs
"""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifarlens import run as rundir
from cifarlens.config import read_yaml
from cifarlens.data import RunData, prepare_data
from cifarlens.errors import RunDirError
from cifarlens.evaluation.metrics import classification_report, top_confusions
from cifarlens.evaluation.plots import plot_confusion, plot_curves, plot_misclassified
from cifarlens.evaluation.predict import predict_logits
from cifarlens.io import atomic_write_text


def result_key(split: str, tta: bool = False, tta_translate: bool = False) -> str:
    """The summary.json key and file-name tag of an evaluation: ``test``, ``val_tta``,
    ``test_tta_translate`` ...

    ``train`` becomes ``train_split`` because the trainer owns the ``train`` key.
    """
    key = f"{split}_tta_translate" if tta_translate else f"{split}_tta" if tta else split
    return "train_split" if key == "train" else key


def load_run_data(run: Path, data_dir: str | Path | None = None) -> RunData:
    """Rebuild the splits a run was trained with from its config.yaml (``data_dir`` overrides the run's)."""
    path = run / rundir.CONFIG
    if not path.is_file():
        raise RunDirError(f"{run} has no {rundir.CONFIG}; it is not a complete cifarlens run directory")
    cfg = read_yaml(path)
    return prepare_data(
        data_dir or cfg.get("data_dir") or None,
        download=bool(cfg.get("download", True)),
        subset=int(cfg.get("subset") or 0),
        val_size=int(cfg.get("val_size") or 0),
        seed=int(cfg.get("seed") or 0),
        saved_in=None if data_dir else path,
    )


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
    top_confusions, seconds, plus split, tta and tta_translate. ``tta_translate`` implies ``tta``.
    """
    run = rundir.resolve_run(run_dir)
    if data is None:
        data = load_run_data(run, data_dir)
    chosen = data.split(split)  # ConfigError for a missing val split or an unknown name
    model, spec = rundir.load_run_model(run, device)
    classes = tuple(spec.classes)
    if len(classes) != len(data.classes):
        raise RunDirError(
            f"the model in {run} predicts {len(classes)} classes but the data has {len(data.classes)}; "
            "evaluate with the dataset the run was trained on"
        )

    tta = tta or tta_translate
    t0 = time.perf_counter()
    logits = predict_logits(
        model, chosen.images, mean=spec.mean, std=spec.std, image_size=spec.image_size,
        batch_size=batch_size, device=device, precision=precision, tta=tta,
        tta_translate=tta_translate,
    )  # fmt: skip
    seconds = time.perf_counter() - t0
    report = classification_report(logits, chosen.labels, classes)
    result = {
        "split": split,
        "tta": tta,
        "tta_translate": tta_translate,
        **report,
        "top_confusions": top_confusions(report["confusion"], classes, k=5),
        "seconds": seconds,
    }

    key = result_key(split, tta, tta_translate)
    _merge_summary(run / rundir.SUMMARY, key, result)
    _write_per_class_csv(run / f"per_class_{key}.csv", report["per_class"])
    _write_confusion_csv(run / f"confusion_{key}.csv", report["confusion"], classes)
    plots = run / rundir.PLOTS
    label = f"{split}{' with TTA + shifts' if tta_translate else ' with TTA' if tta else ''}"
    plot_confusion(
        report["confusion"], classes, plots / f"confusion_{key}.png",
        title=f"Confusion matrix, {label}: accuracy {report['accuracy']:.2%} on {report['n']} images",
    )  # fmt: skip
    plot_misclassified(chosen.images, chosen.labels, logits, classes, plots / f"misclassified_{key}.png")
    if (run / rundir.METRICS).is_file():
        plot_curves(run / rundir.METRICS, plots / "curves.png")

    if console is not None:
        _print_report(console, result, label)
        console.print(
            escape(f"wrote {run}: {rundir.SUMMARY} (key {key}), per_class_{key}.csv, confusion_{key}.csv, {rundir.PLOTS}/")
        )
    return result


def _merge_summary(path: Path, key: str, result: dict[str, Any]) -> None:
    summary: dict[str, Any] = {}
    if path.is_file():
        try:
            summary = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise RunDirError(f"{path} is not valid JSON; delete it and evaluate again") from None
        if not isinstance(summary, dict):
            raise RunDirError(f"{path} does not hold a JSON object; delete it and evaluate again")
    summary[key] = result
    rundir.write_json(path, summary)


def _write_per_class_csv(path: Path, per_class: list[dict[str, Any]]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["class", "accuracy", "precision", "recall", "f1", "support"])
    for row in per_class:
        writer.writerow(
            [row["class"]] + [f"{row[k]:.6f}" for k in ("accuracy", "precision", "recall", "f1")] + [row["support"]]
        )
    atomic_write_text(path, buf.getvalue())


def _write_confusion_csv(path: Path, confusion: list[list[int]], classes: tuple[str, ...]) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["true \\ predicted", *classes])
    for name, row in zip(classes, confusion):
        writer.writerow([name, *row])
    atomic_write_text(path, buf.getvalue())


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
    worst = min(row["accuracy"] for row in per_class if row["support"]) if any(r["support"] for r in per_class) else None
    for row in per_class:
        acc = f"{row['accuracy']:.2%}"
        if worst is not None and row["support"] and row["accuracy"] == worst:
            acc = f"[red]{acc}[/]"
        table.add_row(
            escape(row["class"]), acc, f"{row['precision']:.2%}", f"{row['recall']:.2%}", f"{row['f1']:.3f}", str(row["support"])
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
    if result["top_confusions"]:
        pairs = ", ".join(f"{c['true']} → {c['pred']} {c['count']}" for c in result["top_confusions"])
        console.print(escape(f"most confused (true → predicted): {pairs}"))
