"""``cifarlens compare RUN...``: one table of the config keys that differ and the results, plus overlaid curves.

Everything comes from the run directories (``RunDir``): the config, summary, metrics, per-class test
scores, and the model rebuilt from its spec for params and MACs.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from cifarlens.errors import CifarlensError
from cifarlens.evaluation.plots import _new_figure, _save
from cifarlens.io import atomic_write_text
from cifarlens.models import create_model, model_kwargs
from cifarlens.models.summary import summarize
from cifarlens.run import RunDir

IGNORED_KEYS = {"out", "data_dir"}  # where the run and its data lie: says nothing about the run
RESULT_COLUMNS = ["test_acc", "val_acc", "params", "macs", "train_s", "images_per_s"]


def results(run: RunDir) -> dict[str, Any]:
    """The result columns of one run: accuracies, model size, training time and speed."""
    rates = [float(r["images_per_s"]) for r in run.metrics if "images_per_s" in r]
    params, macs = model_size(run)
    return {
        "test_acc": run.test_acc,
        "val_acc": run.val_acc,
        "params": params,
        "macs": macs,
        "train_s": run.summary.get("train", {}).get("seconds"),
        "images_per_s": sum(rates) / len(rates) if rates else None,
    }


def model_size(run: RunDir) -> tuple[int | None, int | None]:
    """Parameters and MACs per image of the run's model (rebuilt from its weights header, else its config)."""

    if run.has_weights():
        spec = run.read_spec()
        model, size = spec.build(run.path), spec.image_size
    else:
        model, size = create_model(run.config["model"], **(run.config.get("model_args") or {})), 32
    total = summarize(model, input_size=(1, 3, size, size), depth=1)["total"]
    return int(total["params"]), int(total["macs"])


def load_runs(runs: list[str | Path]) -> list[RunDir]:
    """The run directories, each checked to hold a run (a ``RunDirError`` names the first that does not)."""
    return [RunDir(r).require_config("pass folders written by cifarlens train") for r in runs]


def run_labels(paths: list[Path]) -> list[str]:
    """Short unique names: the folder name, or more of the path where names repeat."""
    for depth in range(1, 6):
        labels = ["/".join(p.resolve().parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            return labels
    return [str(p) for p in paths]


def differing_keys(configs: list[dict[str, Any]]) -> list[str]:
    """Config keys whose values are not the same in every run (model args one by one)."""
    flat = [_flatten(c) for c in configs]
    keys = sorted({k for f in flat for k in f} - IGNORED_KEYS)
    if len(configs) < 2:
        return []
    return [k for k in keys if len({json.dumps(f.get(k), sort_keys=True) for f in flat}) > 1]


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Config with each model argument as its own ``model_args.NAME`` key, defaults filled in; an imported
    model is told by what it was imported from (``source``, ``weights``) instead of where the run keeps it."""
    if "imported" in config:
        imported = config["imported"]
        rest = {k: v for k, v in config.items() if k not in ("imported", "model_args")}
        return rest | {"source": imported.get("source"), "weights": imported.get("weights")}
    flat = {k: v for k, v in config.items() if k != "model_args"}
    try:
        defaults = model_kwargs(config["model"])
    except (KeyError, CifarlensError):  # a model this install does not register
        defaults = {}
    for k, v in (defaults | (config.get("model_args") or {})).items():
        flat[f"model_args.{k}"] = v
    return flat


def comparison_rows(runs: list[RunDir]) -> tuple[list[str], list[list[Any]]]:
    """Header and rows: run, differing config keys, results, then per-class test accuracy."""
    keys = differing_keys([r.config for r in runs])
    classes = [row["class"] for row in runs[0].per_class] if runs and runs[0].per_class else []
    header = ["run", *keys, *RESULT_COLUMNS, *(f"acc_{c}" for c in classes)]
    rows = []
    for label, run in zip(run_labels([r.path for r in runs]), runs):
        flat = _flatten(run.config)
        per_class = {row["class"]: row["accuracy"] for row in run.per_class}
        scores = results(run)
        rows.append(
            [
                label,
                *(flat.get(k) for k in keys),
                *(scores[c] for c in RESULT_COLUMNS),
                *(per_class.get(c) for c in classes),
            ]
        )
    return header, rows


def _cell(column: str, value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if column.endswith("acc") or column.startswith("acc_"):
        return f"{value:.2%}"
    if column in ("params", "macs"):
        return f"{value:,}"
    if column in ("train_s", "images_per_s"):
        return f"{value:.1f}" if column == "train_s" else f"{value:.0f}"
    return str(value)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub markdown table; accuracies as percentages."""
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        lines.append("| " + " | ".join(_cell(c, v).replace("|", "\\|") for c, v in zip(header, row)) + " |")
    return "\n".join(lines) + "\n"


def csv_table(header: list[str], rows: list[list[Any]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else (f"{v:.6g}" if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def plot_overlaid_curves(runs: list[RunDir], path: str | Path) -> Path:
    """Val (solid) and test (dashed) accuracy and loss of every run against epoch, one colour per run."""
    from matplotlib.ticker import MaxNLocator, PercentFormatter

    fig = _new_figure(11.0, 4.6)
    ax_acc, ax_loss = fig.subplots(1, 2)
    colors = [f"C{i % 10}" for i in range(len(runs))]
    for label, run, color in zip(run_labels([r.path for r in runs]), runs, colors):
        for split, style in (("val", "-"), ("test", "--"), ("train", ":")):
            for ax, metric in ((ax_acc, "acc"), (ax_loss, "loss")):
                column = f"{split}_{metric}"
                points = [(r["epoch"], r[column]) for r in run.metrics if column in r]
                if split == "train" and any(f"val_{metric}" in r or f"test_{metric}" in r for r in run.metrics):
                    continue  # train curves only where a run has nothing held out
                if points:
                    xs, ys = zip(*points)
                    ax.plot(xs, ys, style, color=color, marker="o", markersize=3, label=f"{label} {split}")
    ax_acc.set_ylabel("accuracy")
    ax_acc.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax_loss.set_ylabel("cross-entropy loss")
    for ax in (ax_acc, ax_loss):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(True, alpha=0.3)
    if ax_acc.get_legend_handles_labels()[0]:
        ax_acc.legend(frameon=False, fontsize=8)
    ax_acc.set_title("accuracy (solid: val, dashed: test)", fontsize=10)
    ax_loss.set_title("loss", fontsize=10)
    fig.tight_layout()
    return _save(fig, path)


def write_comparison(runs: list[Path], prefix: str | Path | None = None) -> str:
    """The markdown comparison of ``runs``; with ``prefix`` also PREFIX.md, PREFIX.csv and PREFIX.png."""
    loaded = load_runs(runs)
    header, rows = comparison_rows(loaded)
    table = markdown_table(header, rows)
    if prefix is not None:
        prefix = Path(prefix)
        atomic_write_text(prefix.with_name(prefix.name + ".md"), table)
        atomic_write_text(prefix.with_name(prefix.name + ".csv"), csv_table(header, rows))
        plot_overlaid_curves(loaded, prefix.with_name(prefix.name + ".png"))
    return table
