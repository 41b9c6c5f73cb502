"""CLI commands of the experiments area: ``sweep``, ``compare`` and ``report``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

from cifarlens.console import console, user_errors
from cifarlens.errors import CifarlensError


@user_errors
def sweep(
    config: Annotated[Path, typer.Argument(help="sweep YAML: base, method (grid|optuna), params, trials, ...")],
    out: Annotated[Optional[str], typer.Option(help="sweep folder (overrides the file's out)")] = None,
    budget: Annotated[
        Optional[float], typer.Option(help="seconds the whole sweep should take here: shrinks subset, then epochs")
    ] = None,
    trials: Annotated[Optional[int], typer.Option(help="optuna: trials of the study in total")] = None,
    worker_trials: Annotated[Optional[int], typer.Option(help="optuna: stop this process after N trials")] = None,
    storage: Annotated[Optional[str], typer.Option(help="optuna storage URL (default sqlite:///OUT/study.db)")] = None,
    study_name: Annotated[Optional[str], typer.Option(help="optuna study name")] = None,
) -> None:
    """Run a grid or an Optuna search over training options; tune on val, score the finalists on test."""
    from cifarlens.experiments.sweep import load_sweep, run_sweep
    from cifarlens.report import after_training

    given = {
        "out": out,
        "budget": budget,
        "trials": trials,
        "worker_trials": worker_trials,
        "storage": storage,
        "study_name": study_name,
    }
    cfg = load_sweep(config, {k: v for k, v in given.items() if v is not None})
    run_sweep(cfg, console=console, after_training=after_training)


@user_errors
def compare(
    runs: Annotated[list[Path], typer.Argument(help="run directories written by cifarlens train")],
    out: Annotated[
        Optional[Path], typer.Option(help="also write OUT.md, OUT.csv and OUT.png (overlaid curves)")
    ] = None,
) -> None:
    """One table of the config keys that differ and the results of several runs, plus overlaid curves."""
    from cifarlens.experiments.compare import write_comparison

    table = write_comparison(runs, out)
    console.print(table, markup=False, highlight=False)
    if out is not None:
        console.print(f"wrote {out}.md, {out}.csv, {out}.png", markup=False, highlight=False)


@user_errors
def report(
    runs: Annotated[list[Path], typer.Argument(help="run directories written by cifarlens train")],
    out: Annotated[
        Optional[Path], typer.Option(help="HTML file (default: RUN/report.html for one run, report.html for several)")
    ] = None,
) -> None:
    """One self-contained HTML page: config, curves, per-class accuracy, confusion, mistakes, explain outputs."""
    from cifarlens.experiments.compare import load_runs
    from cifarlens.report.html import write_report

    loaded = load_runs(runs)  # one clear line for a folder that is not a run, before any work
    if out is None:
        out = loaded[0].report_file if len(runs) == 1 else Path("report.html")
    if out.is_dir():
        raise CifarlensError(f"--out {out} is a folder; give an .html file path")
    console.print(f"wrote {write_report(runs, out)}", markup=False, highlight=False)
