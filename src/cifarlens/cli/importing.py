"""CLI command ``import``: a model trained elsewhere into a run directory."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cifarlens.console import console, err_console, user_errors, with_config_options
from cifarlens.importing.config import ImportConfig


@user_errors
@with_config_options(ImportConfig, dataclasses.asdict(ImportConfig()), skip=("source",))
def import_model(
    source: Annotated[
        str,
        typer.Argument(
            help="file.py:factory or package.module:factory (with --weights), a TorchScript file, a torch.export "
            ".pt2 program, or timm:NAME / a model name with --weights"
        ),
    ],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags override it")] = None,
    options: dict | None = None,
) -> None:
    """Import a model trained elsewhere as a run directory that evaluate, explain, explore, export and serve read."""
    from cifarlens.config import build_config, read_yaml
    from cifarlens.importing.importer import ImportCheckFailed, import_model

    file_options = read_yaml(config) if config else {}
    cfg = build_config(
        ImportConfig, file_options, (options or {}) | {"source": source}, sources=(str(config), "options")
    )
    try:
        result = import_model(cfg)
    except ImportCheckFailed as err:
        table = Table(title="input conventions on the first test images", title_justify="left")
        for column in ("convention", "accuracy", "flags"):
            table.add_column(column, justify="right" if column == "accuracy" else "left")
        for trial in err.diagnosis.trials:
            table.add_row(trial.name, f"{trial.accuracy:.1%}", escape(trial.flags))
        err_console.print(table)
        raise
    caps = result.capabilities
    console.print(escape(f"imported {result.what} as {result.spec.name}"), highlight=False)
    found = {
        "classifier": caps.classifier or "none (no nn.Linear)",
        "CAM layer": caps.cam_layer or "none (TorchScript and ONNX graphs take no forward hooks)",
        "probe stages": ", ".join(caps.probe_stages) or "none",
        "input": f"{result.spec.image_size}x{result.spec.image_size}, mean {list(result.spec.mean)}, "
        f"std {list(result.spec.std)}" + (", BGR" if result.spec.kwargs.get("bgr") else ""),
        "output": result.output + (" (turned into log-probabilities)" if result.output == "probabilities" else ""),
        "classes": ", ".join(result.spec.classes),
    }
    for name, value in found.items():
        console.print(f"  {name}: {escape(str(value))}", highlight=False)
    if result.accuracy is not None:
        console.print(f"test accuracy [bold green]{result.accuracy:.2%}[/] on {result.n} images", highlight=False)
    if result.spec.name == "imported:python":
        console.print(
            "its code was copied into the run: commands that read it need CIFARLENS_TRUST_CODE=1", highlight=False
        )
    console.print(escape(f"wrote {result.run}"), highlight=False)
