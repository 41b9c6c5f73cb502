"""``robustness_run``: a run's accuracy and calibration under every corruption and severity (``cifarlens robustness``).

Writes ``RUN/robustness/KEY/`` (``RunDir.robustness_files``): every number in ``robustness.json``, accuracy per
corruption and severity in ``accuracy.csv`` and ``robustness.md``, the accuracy drop per class, the predictions
(which images flipped), a severity plot and a grid of one image under every corruption and severity. KEY names
what was scored (split, seed, subset, TTA, backend), so a run keeps the results of different settings side by side.

Mean corruption accuracy averages CIFAR-10-C's 15 benchmark corruptions over the scored severities; the corruption
error relative to a baseline run is Hendrycks & Dietterich's: CE = sum_s E(s) / sum_s E_base(s) and relative
CE = sum_s (E(s) - E_clean) / sum_s (E_base(s) - E_base_clean), averaged over the 15 (mCE, relative mCE), in %.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.console import Console
from rich.markup import escape

from cifarlens.data import stratified_indices
from cifarlens.data.cifar10 import Split
from cifarlens.deploy.runtime import TORCH_BACKENDS, Classifier, open_classifier, torch_backend
from cifarlens.device import cpu_name, resolve_device
from cifarlens.errors import ConfigError, RunDirError
from cifarlens.evaluation.calibration import calibration_report
from cifarlens.io import atomic_write_csv, atomic_write_text
from cifarlens.robustness.cifar10c import Cifar10C
from cifarlens.robustness.config import RobustnessConfig
from cifarlens.robustness.corruptions import CORRUPTIONS, benchmark_names, corrupt
from cifarlens.run import RunDir, write_json


def result_key(cfg: RobustnessConfig, split: str, subset: bool) -> str:
    """The folder name of one setting under ``robustness/``: ``val_seed0``, ``test_seed0_n1000_tta_onnxruntime``."""
    parts = [split, f"seed{cfg.seed}"]
    if subset:
        parts.append(f"n{cfg.n}")
    if cfg.tta:
        parts.append("tta")
    if cfg.backend != "torch":
        parts.append(cfg.backend)
    if cfg.cifar10c_dir:
        parts.append("cifar10c")
    return "_".join(parts)


def run_classifier(run: RunDir, backend: str, device: torch.device) -> Classifier:
    """The run's model as ``backend`` runs it (torch backends on ``device``; the graph ones on the CPU)."""
    if backend in TORCH_BACKENDS:
        model, spec = run.load_model(device)
        return torch_backend(model, spec, run.path, backend, device=str(device))
    if device.type != "cpu":
        raise ConfigError(f"--backend {backend} runs on the CPU; drop --device {device} or use a torch backend")
    return open_classifier(run.path, backend=backend)


def scorer(classifier: Classifier, tta: bool, batch_size: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """uint8 images (N, 3, H, W) -> float32 logits (N, C); with ``tta`` the mean of each image's and its mirror's."""

    def logits(images: torch.Tensor) -> torch.Tensor:
        array = images.numpy()
        out = classifier.logits(array, batch_size)
        if tta:
            out = (out + classifier.logits(np.ascontiguousarray(array[..., ::-1]), batch_size)) / 2
        return torch.from_numpy(out)

    return logits


def choose_split(cfg: RobustnessConfig, run: RunDir) -> tuple[str, Split, torch.Tensor, str]:
    """The split to corrupt, the images scored, their indices into the split, and the data folder."""
    data = run.load_data(cfg.data_dir or None)
    name = "test" if cfg.cifar10c_dir else cfg.split
    if name == "auto":
        name = "val" if data.val is not None else "test"
    split = data.split(name)
    indices = torch.arange(len(split))
    if cfg.n and cfg.n < len(split):
        indices = stratified_indices(split.labels, cfg.n, cfg.seed)
    return name, split, indices, str(Path(data.root).resolve())


def robustness_run(cfg: RobustnessConfig, console: Console | None = None) -> dict[str, Any]:
    """Score ``cfg.run`` on every corruption and severity of ``cfg``; write ``RUN/robustness/KEY/``; return the
    numbers of ``robustness.json`` (plus ``files``: what was written)."""
    cfg.validate()
    run = RunDir(cfg.run).require_weights()
    names, severities = cfg.corruption_names(), cfg.severity_list()
    device = resolve_device(cfg.device)
    published = Cifar10C(cfg.cifar10c_dir) if cfg.cifar10c_dir else None
    split_name, split, indices, folder = choose_split(cfg, run)
    subset = len(indices) < len(split)
    key = result_key(cfg, split_name, subset)
    images, labels = split.images[indices], split.labels[indices]
    if published is not None:
        published.check(names, len(split))
        labels = published.labels(indices)
    classifier = run_classifier(run, cfg.backend, device)
    classes = tuple(classifier.classes)
    logits_of = scorer(classifier, cfg.tta, cfg.batch_size)
    say = console.print if console is not None else (lambda *a, **k: None)
    where = "the run's held-out split" if split_name == "val" else "the test split"
    source = (
        f"the CIFAR-10-C files in {cfg.cifar10c_dir}" if published else f"corruptions generated with seed {cfg.seed}"
    )
    say(
        escape(
            f"{run}: {len(images)} images of {where} ({split_name}), {source}, {cfg.backend} on "
            f"{classifier.runs_on}{', TTA' if cfg.tta else ''}"
        ),
        highlight=False,
    )

    t0 = time.perf_counter()
    clean_logits = logits_of(images)
    clean = _scores(clean_logits, labels, classes)
    clean_pred = clean_logits.argmax(1)
    say(f"clean: accuracy {clean['accuracy']:.2%}, ECE {clean['ece']:.2%}", highlight=False)
    cells, predictions = [], {}
    for name in names:

        def make(severity: int, name: str = name) -> torch.Tensor:
            if published is not None:
                return published.images(name, severity, indices)
            return corrupt(images, name, severity, seed=cfg.seed, device=device)

        done = score_corruption(name, severities, make, logits_of, labels, clean_pred, classes, predictions)
        cells += done
        accuracies = "  ".join(f"s{c['severity']} {c['accuracy']:6.2%}" for c in done)
        timing = f"{sum(c['generate_s'] for c in done):.1f}s to make, {sum(c['score_s'] for c in done):.1f}s to score"
        say(f"{name:18s} {accuracies}   ({timing})", highlight=False)

    numbers = summarise(cells, clean, classes, severities)
    numbers.update(
        {
            "key": key,
            "run": str(run),
            "split": split_name,
            "n": len(images),
            "seed": cfg.seed,
            "tta": cfg.tta,
            "backend": cfg.backend,
            "runs_on": classifier.runs_on,
            "temperature": float(classifier.info.get("temperature", 1.0)),  # cifarlens calibrate's, in the logits
            "device": str(device),
            "cpu": cpu_name(),
            "source": "cifar10c" if published else "generated",
            "cifar10c_dir": cfg.cifar10c_dir or None,
            "data": {
                "folder": folder,
                "split": split_name,
                "n": len(images),
                "fingerprint": Split(images, labels).fingerprint(),
            },
            "severities": severities,
            "clean": clean,
            "cells": cells,
            "seconds": time.perf_counter() - t0,
        }
    )
    if cfg.baseline:
        numbers["baseline"] = compare_with_baseline(cfg, numbers, console)
    files = write_results(run, key, numbers, predictions, clean_pred, labels, indices, images)
    if console is not None:
        print_summary(console, numbers, files)
    return numbers | {"files": {k: str(v) for k, v in files.items()}}


def score_corruption(
    name: str,
    severities: list[int],
    make: Callable[[int], torch.Tensor],
    logits_of: Callable[[torch.Tensor], torch.Tensor],
    labels: torch.Tensor,
    clean_pred: torch.Tensor,
    classes: tuple[str, ...],
    predictions: dict[str, np.ndarray],
) -> list[dict[str, Any]]:
    """One cell per severity of corruption ``name``: accuracy, ECE, NLL, images flipped from right to wrong,
    seconds to make and to score; each cell's predictions go into ``predictions`` under ``NAME/SEVERITY``."""
    corruption = CORRUPTIONS[name]
    cells = []
    for severity in severities:
        start = time.perf_counter()
        corrupted = make(severity)
        generated = time.perf_counter()
        logits = logits_of(corrupted)
        scored = time.perf_counter()
        pred = logits.argmax(1)
        scores = _scores(logits, labels, classes)
        cells.append(
            {
                "corruption": name,
                "family": corruption.family,
                "benchmark": corruption.benchmark,
                "severity": severity,
                "accuracy": scores["accuracy"],
                "ece": scores["ece"],
                "nll": scores["nll"],
                "flipped": int(((clean_pred == labels) & (pred != labels)).sum()),
                "generate_s": generated - start,
                "score_s": scored - generated,
                "per_class": scores["per_class"],
            }
        )
        predictions[f"{name}/{severity}"] = pred.to(torch.uint8).numpy()
    return cells


def _scores(logits: torch.Tensor, labels: torch.Tensor, classes: tuple[str, ...]) -> dict[str, Any]:
    """Accuracy, ECE, NLL and per-class accuracy of ``logits`` (N, C)."""
    report = calibration_report(logits, labels)
    correct = logits.argmax(1) == labels
    per_class = [
        float(correct[labels == c].float().mean()) if (labels == c).any() else None for c in range(len(classes))
    ]
    return {
        "accuracy": float(correct.float().mean()),
        "ece": report["ece"],
        "nll": report["nll"],
        "per_class": per_class,
    }


def mean(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarise(cells: list[dict], clean: dict, classes: tuple[str, ...], severities: list[int]) -> dict[str, Any]:
    """Mean corruption accuracy (the 15 benchmark corruptions), the extras' mean, ECE per severity, per-class drop."""
    bench = [c for c in cells if c["benchmark"]]
    extra = [c for c in cells if not c["benchmark"]]
    present = sorted({c["corruption"] for c in bench}, key=benchmark_names().index)
    per_corruption = {}
    for name in dict.fromkeys(c["corruption"] for c in cells):
        mine = [c for c in cells if c["corruption"] == name]
        per_corruption[name] = {
            "mean_accuracy": mean([c["accuracy"] for c in mine]),
            "mean_ece": mean([c["ece"] for c in mine]),
            "generate_s": sum(c["generate_s"] for c in mine),
            "score_s": sum(c["score_s"] for c in mine),
        }
    pool = bench or cells
    drop = []
    for i, name in enumerate(classes):
        corrupted = mean([c["per_class"][i] for c in pool if c["per_class"][i] is not None])
        before = clean["per_class"][i]
        drop.append(
            {
                "class": name,
                "clean": before,
                "corrupted": corrupted,
                "drop": None if before is None or corrupted is None else before - corrupted,
            }
        )
    return {
        "mean_corruption_accuracy": mean([c["accuracy"] for c in bench]),
        "benchmark_corruptions": len(present),
        "benchmark_complete": len(present) == len(benchmark_names()) and severities == [1, 2, 3, 4, 5],
        "extra_mean_accuracy": mean([c["accuracy"] for c in extra]),
        "mean_corruption_ece": mean([c["ece"] for c in bench]),
        "ece_by_severity": {str(s): mean([c["ece"] for c in pool if c["severity"] == s]) for s in severities},
        "accuracy_by_severity": {str(s): mean([c["accuracy"] for c in pool if c["severity"] == s]) for s in severities},
        "corruptions": per_corruption,
        "per_class_drop": drop,
    }


def corruption_errors(numbers: dict, base: dict) -> dict[str, Any]:
    """Hendrycks's CE and relative CE per corruption (in %, against ``base``), and their means over the benchmark."""
    table = {}
    for name in numbers["corruptions"]:
        mine = {c["severity"]: 1 - c["accuracy"] for c in numbers["cells"] if c["corruption"] == name}
        theirs = {c["severity"]: 1 - c["accuracy"] for c in base["cells"] if c["corruption"] == name}
        shared = sorted(set(mine) & set(theirs))
        if not shared:
            continue
        errors, base_errors = sum(mine[s] for s in shared), sum(theirs[s] for s in shared)
        clean_error, base_clean_error = 1 - numbers["clean"]["accuracy"], 1 - base["clean"]["accuracy"]
        relative_base = base_errors - len(shared) * base_clean_error
        table[name] = {
            "ce": 100 * errors / base_errors if base_errors > 0 else None,
            "relative_ce": 100 * (errors - len(shared) * clean_error) / relative_base if relative_base > 0 else None,
        }
    bench = [table[n] for n in benchmark_names() if n in table]
    return {
        "corruptions": table,
        "mce": mean([t["ce"] for t in bench if t["ce"] is not None]),
        "relative_mce": mean([t["relative_ce"] for t in bench if t["relative_ce"] is not None]),
        "over": len(bench),
    }


def compare_with_baseline(cfg: RobustnessConfig, numbers: dict, console: Console | None) -> dict[str, Any]:
    """The baseline run's result at the same setting (scored now, into its own run, if it has none), and the CEs."""
    baseline = RunDir(cfg.baseline).require_weights()
    stored = baseline.read_robustness(numbers["key"]) if numbers["key"] in baseline.robustness_keys() else {}
    needed = {(c["corruption"], c["severity"]) for c in numbers["cells"]}
    have = {(c["corruption"], c["severity"]) for c in stored.get("cells", [])}
    if not stored or not needed <= have or stored.get("data", {}).get("fingerprint") != numbers["data"]["fingerprint"]:
        if console is not None:
            console.print(escape(f"scoring the baseline {baseline} at the same setting"), highlight=False)
        stored = robustness_run(dataclasses.replace(cfg, run=cfg.baseline, baseline=""), console=None)
    if stored["data"]["fingerprint"] != numbers["data"]["fingerprint"]:
        raise RunDirError(f"the baseline {baseline} was scored on other images; give both runs the same data")
    return {
        "run": str(baseline),
        "clean_accuracy": stored["clean"]["accuracy"],
        "mean_corruption_accuracy": stored["mean_corruption_accuracy"],
        **corruption_errors(numbers, stored),
    }


def write_results(
    run: RunDir,
    key: str,
    numbers: dict,
    predictions: dict[str, np.ndarray],
    clean_pred: torch.Tensor,
    labels: torch.Tensor,
    indices: torch.Tensor,
    images: torch.Tensor,
) -> dict[str, Path]:
    from cifarlens.robustness.plots import plot_corruption_grid, plot_severity

    files = run.robustness_files(key)
    files["numbers"].parent.mkdir(parents=True, exist_ok=True)
    write_json(files["numbers"], numbers)
    rows = [{k: v for k, v in c.items() if k != "per_class"} for c in numbers["cells"]]
    atomic_write_csv(files["table"], rows)
    atomic_write_csv(files["per_class"], numbers["per_class_drop"])
    atomic_write_text(files["markdown"], markdown(numbers))
    with open(files["predictions"].with_suffix(".tmp.npz"), "wb") as handle:
        np.savez_compressed(
            handle,
            indices=indices.numpy(),
            labels=labels.numpy().astype(np.uint8),
            clean=clean_pred.numpy().astype(np.uint8),
            cells=np.array(list(predictions)),
            predictions=np.stack(list(predictions.values())) if predictions else np.zeros((0, len(labels)), np.uint8),
        )
    files["predictions"].with_suffix(".tmp.npz").replace(files["predictions"])
    plot_severity(numbers, files["severity_plot"])
    plot_corruption_grid(images[0], list(numbers["corruptions"]), numbers["severities"], numbers["seed"], files["grid"])
    return files


def pct(value: float | None) -> str:
    return "n/a" if value is None else f"{100 * value:.2f}"


def markdown(numbers: dict) -> str:
    """The result as markdown: headline numbers, then corruption x severity accuracy (%)."""
    severities = numbers["severities"]
    base = numbers.get("baseline")
    lines = [
        f"# Corruption robustness of {numbers['run']}",
        "",
        f"{numbers['n']} images of the {numbers['split']} split, {numbers['source']} corruptions (seed "
        f"{numbers['seed']}), backend {numbers['backend']} on {numbers['runs_on']}{', TTA' if numbers['tta'] else ''}; "
        f"CPU {numbers['cpu']}.",
        "",
        f"- clean accuracy: {pct(numbers['clean']['accuracy'])}%, ECE {pct(numbers['clean']['ece'])}%",
        f"- mean corruption accuracy ({numbers['benchmark_corruptions']} of 15 benchmark corruptions, severities "
        f"{','.join(map(str, severities))}): {pct(numbers['mean_corruption_accuracy'])}%",
        f"- held-out extras (speckle noise, Gaussian blur, spatter, saturate): {pct(numbers['extra_mean_accuracy'])}%",
        "- ECE by severity: " + ", ".join(f"{s}: {pct(v)}%" for s, v in numbers["ece_by_severity"].items()),
    ]
    if base:
        lines.append(
            f"- against {base['run']} (clean {pct(base['clean_accuracy'])}%): mCE {base['mce']:.1f}%, relative mCE "
            f"{base['relative_mce']:.1f}% over {base['over']} corruptions"
            if base["mce"] is not None
            else f"- against {base['run']}: no shared benchmark corruption"
        )
    header = ["corruption", "family"] + [f"s{s}" for s in severities] + ["mean", "make s", "score s"]
    if base:
        header += ["CE", "rel. CE"]
    lines += ["", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, summary in numbers["corruptions"].items():
        accs = {c["severity"]: c["accuracy"] for c in numbers["cells"] if c["corruption"] == name}
        corruption = CORRUPTIONS[name]
        row = [name + ("" if corruption.benchmark else " (extra)"), corruption.family]
        row += [pct(accs.get(s)) for s in severities]
        row += [pct(summary["mean_accuracy"]), f"{summary['generate_s']:.1f}", f"{summary['score_s']:.1f}"]
        if base:
            ce = base["corruptions"].get(name, {})
            row += [
                f"{ce['ce']:.1f}" if ce.get("ce") is not None else "n/a",
                f"{ce['relative_ce']:.1f}" if ce.get("relative_ce") is not None else "n/a",
            ]
        lines.append("| " + " | ".join(row) + " |")
    lines += ["", "Accuracy drop per class (clean minus mean over the corruptions, points):", ""]
    lines += ["| class | clean | corrupted | drop |", "|---|---|---|---|"]
    for row in numbers["per_class_drop"]:
        lines.append(f"| {row['class']} | {pct(row['clean'])} | {pct(row['corrupted'])} | {pct(row['drop'])} |")
    return "\n".join(lines) + "\n"


def print_summary(console: Console, numbers: dict, files: dict[str, Path]) -> None:
    mca = numbers["mean_corruption_accuracy"]
    console.print(
        f"clean accuracy [bold]{numbers['clean']['accuracy']:.2%}[/], mean corruption accuracy "
        f"[bold]{pct(mca)}%[/] over {numbers['benchmark_corruptions']} of 15 benchmark corruptions"
        + ("" if numbers["benchmark_complete"] else " (not the whole benchmark: compare only like with like)"),
        highlight=False,
    )
    base = numbers.get("baseline")
    if base and base["mce"] is not None:
        console.print(
            escape(f"against {base['run']}: mCE {base['mce']:.1f}%, relative mCE {base['relative_mce']:.1f}%"),
            highlight=False,
        )
    console.print(
        escape(f"wrote {files['numbers'].parent}/ ({', '.join(p.name for p in files.values())})"), highlight=False
    )
