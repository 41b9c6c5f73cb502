"""The step after the training loop: score the final weights on test (and with TTA), write the report.

Called by the command layer once ``cifarlens.training.train`` (or ``resume``) has returned, so that the
trainer knows nothing of evaluation or reporting; a sweep gets it as its ``after_training`` argument.
"""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from cifarlens.data import RunData
from cifarlens.evaluation import evaluate_run
from cifarlens.report.html import write_report
from cifarlens.run import RunDir
from cifarlens.training import load_run_config


def after_training(run_dir: str | Path, *, console: Console, data: RunData | None = None) -> Path:
    """Evaluate and report the finished run in ``run_dir`` as its config.yaml asks (``evaluate``, ``tta``,
    ``tta_translate``, ``report``), on the device it trained on; ``data`` skips reading the splits again.
    Returns the run directory."""
    run = RunDir(run_dir).require_weights()
    cfg = load_run_config(run.path)
    if cfg.evaluate:
        device = run.read_summary().get("train", {}).get("device", "cpu")
        options = {"split": "test", "data": data or run.load_data(), "device": device, "console": console}
        evaluate_run(run.path, **options)
        if cfg.tta:
            evaluate_run(run.path, tta=True, tta_translate=cfg.tta_translate, **options)
    if cfg.report:
        console.print(f"report: {write_report([run.path], run.report_file)}")
    console.print(f"run saved to {run}")
    return run.path
