"""CLI command ``robustness``: accuracy and calibration under the CIFAR-10-C corruptions."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer

from cifarlens.console import console, user_errors, with_config_options
from cifarlens.robustness.config import RobustnessConfig


@user_errors
@with_config_options(RobustnessConfig, dataclasses.asdict(RobustnessConfig()), skip=("run",))
def robustness(
    run: Annotated[str, typer.Argument(help="run directory to score")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags override it")] = None,
    options: dict | None = None,
) -> None:
    """Score a run under the 19 CIFAR-10-C corruptions at 5 severities: accuracy, ECE, mCE against a baseline."""
    from cifarlens.config import build_config, read_yaml
    from cifarlens.robustness.score import robustness_run

    file_options = read_yaml(config) if config else {}
    cfg = build_config(RobustnessConfig, file_options, (options or {}) | {"run": run}, sources=(str(config), "options"))
    robustness_run(cfg, console=console)
