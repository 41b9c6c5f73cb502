"""``cifarlens report RUN [RUN...]``: one self-contained HTML page per run (or per set of runs).

Everything is embedded (PNGs as base64 data URIs, tables from the run's CSV/JSON), so the
file can be mailed or archived alone. Sections: summary, config, curves, per-class accuracy,
confusion matrix, misclassified examples, other plots, and whatever ``RUN/explain/<command>/``
holds (PNG, JSON and CSV files are rendered generically). Several runs get the comparison
table and overlaid curves first, then one section per run.
"""

from __future__ import annotations

import base64
import csv
import html
import json
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

from cifarlens.evaluation.plots import plot_curves
from cifarlens.experiments.compare import _cell, comparison_rows, load_runs, plot_overlaid_curves, results, run_labels
from cifarlens.io import atomic_write_text
from cifarlens.robustness.corruptions import CORRUPTIONS
from cifarlens.run import RunDir

MAX_TABLE_ROWS = 60  # CSV files longer than this are cut, with a note saying how many rows were left out
MAX_JSON_CHARS = 20_000

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 1100px; padding: 0 1rem; color: #222; }
h1 { margin-bottom: .2rem; } h2 { border-bottom: 1px solid #ddd; padding-bottom: .2rem; margin-top: 2rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .9rem; }
th, td { border: 1px solid #ddd; padding: .25rem .5rem; text-align: right; }
th { background: #f4f4f4; } td:first-child, th:first-child { text-align: left; }
img { max-width: 100%; height: auto; display: block; margin: .5rem 0; }
pre { background: #f7f7f7; padding: .6rem; overflow-x: auto; font-size: .8rem; max-height: 30rem; }
.muted { color: #777; font-size: .85rem; } .worst { color: #b00; font-weight: bold; }
nav a { margin-right: 1rem; } .scroll { overflow-x: auto; }
table.facts td { text-align: left; } table.facts td:first-child { font-weight: bold; background: #f8f8f8; }
table.rank td:nth-child(2), table.rank td:last-child,
table.rank th:nth-child(2), table.rank th:last-child { text-align: left; }
"""


def _esc(value: Any) -> str:
    return html.escape(str(value))


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode("ascii")
    caption = f'<figcaption class="muted">{_esc(alt)}</figcaption>'
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{caption}</figure>'


def _table(header: list[str], rows: list[list[Any]], marks: list[list[str]] | None = None, css: str = "") -> str:
    """An HTML table; ``marks[i][j]`` is a CSS class for cell (i, j)."""
    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    marks = marks or [[""] * len(row) for row in rows]
    body = "".join(
        "<tr>" + "".join(f"<td{_cls(c)}>{_esc(v)}</td>" for c, v in zip(marked, row)) + "</tr>"
        for marked, row in zip(marks, rows)
    )
    return f"<table{_cls(css)}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _cls(name: str) -> str:
    return f' class="{name}"' if name else ""


def _csv_table(path: Path) -> str:
    with open(path, newline="") as f:
        rows = list(csv.reader(f))
    if not rows:
        return '<p class="muted">(empty)</p>'
    note = ""
    if len(rows) - 1 > MAX_TABLE_ROWS:
        note = f'<p class="muted">first {MAX_TABLE_ROWS} of {len(rows) - 1} rows</p>'
    return _table(rows[0], rows[1 : MAX_TABLE_ROWS + 1]) + note


def _json_block(path: Path) -> str:
    try:
        text = json.dumps(json.loads(path.read_text()), indent=2)
    except (json.JSONDecodeError, UnicodeDecodeError):
        return f'<p class="muted">{_esc(path.name)} is not valid JSON</p>'
    if len(text) > MAX_JSON_CHARS:
        text = text[:MAX_JSON_CHARS] + f"\n... ({len(text) - MAX_JSON_CHARS} more characters in {path.name})"
    return f"<pre>{_esc(text)}</pre>"


def _pct(value: Any) -> str:
    return f"{float(value):.2%}" if value not in (None, "") else "n/a"


def _headline(run: RunDir) -> str:
    """The run's headline accuracy (``RunDir.headline``: TTA when scored) with the plain one beside it."""
    best = run.headline()
    if best is None:
        return "n/a"
    if best["key"] == "test":
        return _pct(best["accuracy"])
    return f"{_pct(best['accuracy'])} ({best['label']}); plain {_pct(best['plain'])}"


def _torch_version(provenance: dict[str, Any]) -> str:
    return str((provenance.get("packages") or {}).get("torch", "n/a"))


def _run_section(run: Path, label: str, anchor: str) -> str:
    """One run's section: its facts, curves, per-class table, plots, explanations, config and metrics."""
    rec = RunDir(run).require_config("pass folders written by cifarlens train")
    curves = rec.plot_file("curves")
    if not curves.is_file() and rec.metrics:
        plot_curves(rec.metrics, curves)  # trials scored without `evaluate` have none yet
    parts = [f'<section id="{anchor}"><h2>{_esc(label)}</h2>', _facts(rec)]
    if not rec.summary.get("test"):
        parts.append(
            '<p class="muted">not scored on the test split (a sweep trial, or trained with --no-evaluate); '
            f"run <code>cifarlens evaluate {_esc(run)}</code></p>"
        )
    if curves.is_file():
        parts.append("<h3>Training curves</h3>" + _img(curves, "loss, accuracy and learning rate per epoch"))
    parts += [
        _evaluations(rec),
        _per_class(rec),
        _calibration(rec),
        _robustness(rec),
        _plots(rec),
        _explain_section(rec),
        _config(rec),
        _metrics(rec),
        "</section>",
    ]
    return "\n".join(part for part in parts if part)


def _facts(rec: RunDir) -> str:
    """The run at a glance: model, accuracy, size, speed, machine and code."""
    res, train, prov = results(rec), rec.summary.get("train", {}), rec.provenance
    known = {key: res[key] is not None for key in ("params", "macs", "train_s", "images_per_s")}
    facts = [
        ("model", _model_fact(rec.config)),
        ("test accuracy", _headline(rec)),
        ("validation accuracy", _pct(res["val_acc"])),
        ("epochs", "n/a (imported)" if "imported" in rec.config else train.get("epochs", len(rec.metrics))),
        ("parameters", f"{res['params']:,}" if known["params"] else "n/a"),
        ("MACs per image", f"{res['macs']:,}" if known["macs"] else "n/a"),
        ("training time", f"{res['train_s']:.1f} s" if known["train_s"] else "n/a"),
        ("images/s (training)", f"{res['images_per_s']:.0f}" if known["images_per_s"] else "n/a"),
        (
            "device",
            f"{train.get('device', prov.get('device', ''))} {train.get('precision', prov.get('precision', ''))}",
        ),
        (
            "code",
            f"cifarlens {prov.get('cifarlens', '')}, git {prov.get('git_sha') or 'n/a'}, torch {_torch_version(prov)}",
        ),
        ("run directory", str(rec.path)),
    ]
    rows = "".join(f"<tr><td>{_esc(k)}</td><td>{_esc(v)}</td></tr>" for k, v in facts)
    return f'<table class="facts"><tbody>{rows}</tbody></table>'


def _model_fact(config: dict[str, Any]) -> str:
    """The model and its arguments; for an imported one, what it was imported from."""
    imported = config.get("imported")
    if imported:
        weights = f", weights {imported['weights']}" if imported.get("weights") else ""
        return f"{config.get('model')} from {imported.get('source')}{weights}"
    return f"{config.get('model')} {json.dumps(config.get('model_args') or {})}"


def _evaluations(rec: RunDir) -> str:
    """Every evaluation of the run with the data it scored: the run's own first, then those of other data."""
    entries = rec.evaluations()
    if not entries:
        return ""
    header = ["evaluation", "accuracy", "loss", "images", "data", "fingerprint"]
    rows = [
        [
            key,
            _pct(entry["accuracy"]),
            f"{entry['loss']:.4f}" if "loss" in entry else "n/a",
            entry.get("n", "n/a"),
            (entry.get("data") or {}).get("folder", "the run's own (recorded before data records)"),
            (entry.get("data") or {}).get("fingerprint", "n/a"),
        ]
        for key, entry in entries.items()
    ]
    return "<h3>Evaluations</h3>" + _table(header, rows, css="evaluations")


def _per_class(rec: RunDir) -> str:
    """The per-class table of the test evaluation, its worst class marked."""
    if not rec.per_class:
        return ""
    worst = min(r["accuracy"] for r in rec.per_class)
    header = ["class", "accuracy", "precision", "recall", "F1", "support"]
    rows = [
        [r["class"], _pct(r["accuracy"]), _pct(r["precision"]), _pct(r["recall"]), f"{r['f1']:.3f}", r["support"]]
        for r in rec.per_class
    ]
    marks = [["", "worst" if r["accuracy"] == worst else "", "", "", "", ""] for r in rec.per_class]
    data = rec.summary.get("test", {}).get("data")
    where = f'<p class="data">{data["n"]} images of {_esc(data["folder"])}</p>' if data else ""
    return "<h3>Per-class accuracy (test)</h3>" + where + _table(header, rows, marks, css="per-class")


def _calibration(rec: RunDir) -> str:
    """Calibration of every evaluation that recorded it (ECE, MCE, NLL, Brier), after the run's temperature too."""
    rows = []
    for key, entry in rec.evaluations().items():
        cal = entry.get("calibration")
        if not cal:
            continue
        after = cal.get("calibrated") or {}
        rows.append(
            [key, _pct(cal["ece"]), _pct(cal["mce"]), f"{cal['nll']:.4f}", f"{cal['brier']:.4f}",
             f"{cal['temperature']:.4f}" if after else "n/a",
             _pct(after["ece"]) if after else "n/a", f"{after['nll']:.4f}" if after else "n/a"]
        )  # fmt: skip
    if not rows:
        return ""
    stored = rec.read_calibration()
    note = (
        f'<p class="data">temperature {stored["temperature"]:.4f} (cifarlens calibrate, fitted on '
        f"{stored['fit']['n']} images of the {_esc(stored['split'])} split)</p>"
        if stored
        else '<p class="data">not calibrated: <code>cifarlens calibrate RUN</code> fits a temperature</p>'
    )
    header = ["evaluation", "ECE", "MCE", "NLL", "Brier", "temperature T", "ECE after T", "NLL after T"]
    return "<h3>Calibration</h3>" + note + _table(header, rows, css="calibration")


def _robustness(rec: RunDir) -> str:
    """Each ``cifarlens robustness`` result: accuracy per corruption and severity, the mean, the severity plot."""
    parts = []
    for key in rec.robustness_keys():
        numbers = rec.read_robustness(key)
        severities = numbers["severities"]
        accuracy = {(c["corruption"], c["severity"]): c["accuracy"] for c in numbers["cells"]}
        rows = [
            [name + ("" if CORRUPTIONS[name].benchmark else " (extra)"), *(_pct(accuracy[name, s]) for s in severities),
             _pct(summary["mean_accuracy"])]
            for name, summary in numbers["corruptions"].items()
        ]  # fmt: skip
        caption = (
            f"{numbers['n']} images of the {numbers['split']} split, {numbers['source']} corruptions (seed "
            f"{numbers['seed']}), {numbers['backend']}: clean {_pct(numbers['clean']['accuracy'])}, mean corruption "
            f"accuracy {_pct(numbers['mean_corruption_accuracy'])} over {numbers['benchmark_corruptions']} of 15"
        )
        header = ["corruption", *(f"severity {s}" for s in severities), "mean"]
        plot = rec.robustness_files(key)["severity_plot"]
        parts.append(
            f'<h3>Robustness ({_esc(key)})</h3><p class="data">{_esc(caption)}</p>'
            + _table(header, rows, css="robustness")
            + (_img(plot, "accuracy against severity per corruption") if plot.is_file() else "")
        )
    return "".join(parts)


def _plots(rec: RunDir) -> str:
    """The confusion matrix, the most confident mistakes, and every other plot of the run."""
    curves, confusion, mistakes = (rec.plot_file(n) for n in ("curves", "confusion_test", "misclassified_test"))
    parts = []
    if confusion.is_file():
        parts.append("<h3>Confusion matrix (test)</h3>" + _img(confusion, "confusion matrix on the test split"))
    if mistakes.is_file():
        parts.append(
            "<h3>Misclassified examples (test)</h3>" + _img(mistakes, "most confident mistakes on the test split")
        )
    shown = {curves.name, confusion.name, mistakes.name}
    others = sorted(p for p in curves.parent.glob("*.png") if p.name not in shown) if curves.parent.is_dir() else []
    if others:
        parts.append("<h3>Other plots</h3>" + "".join(_img(p, p.stem.replace("_", " ")) for p in others))
    return "".join(parts)


def _config(rec: RunDir) -> str:
    rows = [[k, json.dumps(v) if isinstance(v, dict) else v] for k, v in rec.config.items()]
    return "<h3>Config</h3>" + _table(["option", "value"], rows)


METRICS_SHOWN = (
    "epoch",
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "test_loss",
    "test_acc",
    "lr",
    "seconds",
    "images_per_s",
)


def _metrics(rec: RunDir) -> str:
    columns = [c for c in METRICS_SHOWN if any(c in r for r in rec.metrics)]
    if not columns:
        return ""
    return "<h3>Metrics per epoch</h3>" + _table(columns, [[r.get(c, "") for c in columns] for r in rec.metrics])


RANK_COLUMNS = {
    "rank": "#",
    "method": "method",
    "deletion_auc": "deletion AUC (low)",
    "insertion_auc": "insertion AUC (high)",
    "road_morf": "ROAD MoRF (low)",
    "road_lerf": "ROAD LeRF (high)",
    "randomisation_corr_head": "rand. corr: head",
    "randomisation_corr_all": "rand. corr: all",
    "ms_per_image": "ms / image",
    "verdict": "verdict",
}


def _rank_section(run: RunDir) -> tuple[str, set[Path]]:
    """The rankings of attribution methods (``explain rank``, ``explain compare-cam``) and the attribution figures
    (``explain attribute``), first among the explanations; returns the HTML and the files it showed."""
    parts, shown = [], set()
    for command, heading in (("rank", "Attribution methods, ranked"), ("compare-cam", "CAM methods, ranked")):
        html_part, files = _ranking(run.rank_files(command), heading)
        parts.append(html_part)
        shown |= files
    figures = sorted(run.explain_dir("attribute", make=False).glob("*.png"))
    if figures:
        parts.append("<h3>Attribution maps</h3>" + "".join(_img(p, f"attribute/{p.name}") for p in figures))
        shown |= set(figures)
    return "".join(parts), shown


def _ranking(files: dict[str, Path], heading: str) -> tuple[str, set[Path]]:

    table = files["table"]
    if not table.is_file():
        return "", set()
    with open(table, newline="") as f:
        rows = list(csv.DictReader(f))
    cells = [[_rank_cell(key, r.get(key, "")) for key in RANK_COLUMNS] for r in rows]
    marks = [
        ["worst" if key == "verdict" and r.get("passes_sanity") == "False" else "" for key in RANK_COLUMNS]
        for r in rows
    ]
    parts = [
        f'<h3>{_esc(heading)}</h3><div class="scroll">',
        _table(list(RANK_COLUMNS.values()), cells, marks, css="rank"),
        "</div>",
    ]
    numbers = files["numbers"]
    if numbers.is_file():
        saved = json.loads(numbers.read_text())
        parts.append(
            f'<p class="muted">{len(saved.get("indices", []))} seeded {_esc(saved.get("split", ""))} images '
            f"on {_esc(saved.get('device', ''))}</p>"
        )
        parts += [f'<p class="muted">note: {_esc(note)}</p>' for note in saved.get("notes", [])]
    chart = files["chart"]
    if chart.is_file():
        parts.append(_img(chart, f"{chart.parent.name}: faithfulness, sanity and cost of each method"))
    return "".join(parts), set(files.values())


def _rank_cell(key: str, value: str) -> str:
    if key in ("method", "verdict", "rank") or value == "":
        return value
    return f"{float(value):.1f}" if key == "ms_per_image" else f"{float(value):.3f}"


def _explain_section(run: RunDir) -> str:
    """The ranking first, then every other PNG, JSON and CSV under RUN/explain, grouped by the folder (explain
    command) that holds it."""
    files = run.explain_files()
    if not files:
        return ""
    root = run.path / run.EXPLAIN
    ranking, shown = _rank_section(run)
    parts = ['<h3>Explanations</h3><div class="explain">', ranking]
    current = None
    for path in [p for p in files if p not in shown]:
        group = str(path.parent.relative_to(root))
        if group != current:
            parts.append(f"<h4>{_esc(group if group != '.' else 'explain')}</h4>")
            current = group
        name = str(path.relative_to(root))
        if path.suffix.lower() == ".png":
            parts.append(_img(path, name))
        elif path.suffix.lower() == ".json":
            parts.append(f'<p class="muted">{_esc(name)}</p>' + _json_block(path))
        else:
            parts.append(f'<p class="muted">{_esc(name)}</p>' + _csv_table(path))
    parts.append("</div>")
    return "\n".join(parts)


def _comparison_section(runs: list[Path]) -> str:

    records = load_runs(runs)
    header, rows = comparison_rows(records)
    table = _table(header, [[_cell(c, v) for c, v in zip(header, row)] for row in rows])
    with tempfile.TemporaryDirectory() as tmp:
        image = _img(plot_overlaid_curves(records, Path(tmp) / "curves.png"), "validation and test curves of every run")
    return (
        '<section id="comparison"><h2>Comparison</h2><p class="muted">config keys that differ, then results</p>'
        f'<div class="scroll">{table}</div>{image}</section>'
    )


def render_report(runs: list[str | Path]) -> str:
    """The HTML page for ``runs`` (see the module doc)."""

    paths = [Path(r) for r in runs]
    labels = run_labels(paths)
    title = f"cifarlens report: {labels[0]}" if len(paths) == 1 else f"cifarlens report: {len(paths)} runs"
    body = []
    if len(paths) > 1:
        links = "".join(f'<a href="#run-{i}">{_esc(label)}</a>' for i, label in enumerate(labels))
        body.append(f'<nav><a href="#comparison">comparison</a>{links}</nav>')
        body.append(_comparison_section(paths))
    body += [_run_section(p, label, f"run-{i}") for i, (p, label) in enumerate(zip(paths, labels))]
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        '<link rel="icon" href="data:,">'
        f"<title>{_esc(title)}</title><style>{STYLE}</style></head><body>"
        f'<h1>{_esc(title)}</h1><p class="muted">written {datetime.now():%Y-%m-%d %H:%M}</p>\n'
        + "\n".join(body)
        + "\n</body></html>\n"
    )


def write_report(runs: list[str | Path], out: str | Path) -> Path:
    """Write the report of ``runs`` to ``out`` atomically; return ``out``."""
    out = Path(out)
    atomic_write_text(out, render_report(runs))
    return out
