"""``calibrate_run``: fit temperature scaling on half of the held-out split and store it in the run
(``cifarlens calibrate RUN``); ``evaluate`` then reports before and after, and ``predict``, ``serve``, ``bench`` and
``export`` (inside the graph) divide the logits by it.

``RUN/calibration.json``: ``temperature``; ``split``, ``seed``, ``fit`` and ``held_out`` (n and fingerprint of the
two halves); ``scores`` (``calibration_report`` numbers before and after, on the held-out half and on the test
split); ``history``: the fits it replaced, so a later calibrate loses nothing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from cifarlens.data.cifar10 import Split
from cifarlens.errors import ConfigError
from cifarlens.evaluation.calibration import calibration_report, fit_temperature
from cifarlens.run import RunDir, write_json
from cifarlens.run.predictor import Predictor

SCORES = ("accuracy", "ece", "mce", "nll", "brier")


def halves(split: Split, seed: int) -> tuple[Split, Split]:
    """The split in two random halves (seeded): the one temperature is fitted on, and the one it is judged on."""
    order = torch.randperm(len(split), generator=torch.Generator().manual_seed(seed))
    middle = len(split) // 2
    return split.take(order[:middle]), split.take(order[middle:])


def scores(logits: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
    report = calibration_report(logits, labels)
    accuracy = float((logits.argmax(1) == labels).float().mean())
    return {"accuracy": accuracy} | {k: report[k] for k in SCORES if k != "accuracy"}


def calibrate_run(
    run_dir: str | Path,
    *,
    split: str = "val",
    seed: int = 0,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    batch_size: int = 500,
    console: Console | None = None,
) -> dict[str, Any]:
    """Fit one temperature on half of ``split`` (minimising NLL), score calibration before and after on the other
    half and on the test split, store it all in ``RUN/calibration.json`` and return it."""
    run = RunDir(run_dir).require_weights()
    data = run.load_data(data_dir)
    if split == "val" and data.val is None:
        raise ConfigError(
            f"{run} has no held-out split to fit the temperature on; train with --val-size 5000, "
            "or pass --split test (then the test figures are no longer independent of the fit)"
        )
    chosen = data.split(split)
    if len(chosen) < 20:
        raise ConfigError(f"the {split} split has {len(chosen)} images; calibrate needs at least 20")
    model, spec = run.load_model(device)
    predictor = Predictor(model, spec, device=device, batch_size=batch_size)
    fit, held = halves(chosen, seed)
    t0 = time.perf_counter()
    fit_logits, held_logits = predictor.logits(fit.images), predictor.logits(held.images)
    temperature = fit_temperature(fit_logits, fit.labels)
    evaluated = {f"{split} (other half)": (held_logits, held.labels)}
    if split != "test":
        evaluated["test"] = (predictor.logits(data.test.images), data.test.labels)
    results = {
        name: {"before": scores(logits, labels), "after": scores(logits / temperature, labels)}
        for name, (logits, labels) in evaluated.items()
    }
    previous = run.read_calibration()
    record = {
        "temperature": temperature,
        "split": split,
        "seed": seed,
        "fit": {"n": len(fit), "fingerprint": fit.fingerprint()},
        "held_out": {"n": len(held), "fingerprint": held.fingerprint()},
        "fit_nll": {
            "before": scores(fit_logits, fit.labels)["nll"],
            "after": scores(fit_logits / temperature, fit.labels)["nll"],
        },
        "scores": results,
        "seconds": time.perf_counter() - t0,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "history": (previous.get("history", []) + [{k: v for k, v in previous.items() if k != "history"}])
        if previous
        else [],
    }
    write_json(run.calibration_file, record)
    if console is not None:
        print_calibration(console, run, record)
    return record


def print_calibration(console: Console, run: RunDir, record: dict[str, Any]) -> None:
    console.print(
        f"temperature [bold]{record['temperature']:.4f}[/] fitted on {record['fit']['n']} images of the "
        f"{record['split']} split (NLL {record['fit_nll']['before']:.4f} -> {record['fit_nll']['after']:.4f})",
        highlight=False,
    )
    table = Table(title="calibration before -> after temperature scaling", title_justify="left")
    table.add_column("scored on", style="bold")
    for name in SCORES:
        table.add_column(name.upper() if name in ("ece", "mce", "nll") else name, justify="right")
    for where, result in record["scores"].items():
        cells = []
        for name in SCORES:
            before, after = result["before"][name], result["after"][name]
            percent = name in ("accuracy", "ece", "mce")
            cells.append(f"{before:.2%} -> {after:.2%}" if percent else f"{before:.4f} -> {after:.4f}")
        table.add_row(escape(where), *cells)
    console.print(table)
    console.print(
        escape(f"wrote {run.calibration_file}: predict, serve, bench and export now divide the logits by it"),
        highlight=False,
    )
