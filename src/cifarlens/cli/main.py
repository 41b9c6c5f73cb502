"""The ``cifarlens`` command line.

User mistakes (``CifarlensError``) print one line and exit 2; ``train`` options are
generated from ``TrainConfig`` so the dataclass is the one place they are declared.

How imports are arranged, everywhere: cifarlens modules import each other at the top; a third-party library
that is optional (an extra) or only one capability needs (Captum, grad-cam, onnxruntime, FastAPI, Optuna ...)
is imported inside the function that uses it; and each command imports the library call it runs inside its
body, so that a command loads only what it runs. ``TrainConfig`` brings in torch, so ``--help`` takes seconds.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Annotated, Callable, Literal, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cifarlens import __version__
from cifarlens.cli import deploy as _deploy
from cifarlens.cli import experiments as _experiments
from cifarlens.cli import explore as _explore
from cifarlens.cli import importing as _importing
from cifarlens.cli import robustness as _robustness
from cifarlens.cli.explain import app as explain_app
from cifarlens.console import console, err_console, user_errors, with_config_options
from cifarlens.errors import CifarlensError
from cifarlens.training.config import TrainConfig

app = typer.Typer(
    help="Train CIFAR-10 classifiers fast, then see what they learned.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.command()
@user_errors
@with_config_options(TrainConfig, dataclasses.asdict(TrainConfig()))
def train(
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags override it")] = None,
    resume: Annotated[Optional[Path], typer.Option("--resume", help="continue the killed run in this folder")] = None,
    options: dict | None = None,
) -> None:
    """Train a model and write a run directory (config, metrics, weights, evaluation, plots)."""
    from cifarlens.config import build_config, read_yaml
    from cifarlens.training import recipe_options
    from cifarlens.training import resume as resume_training
    from cifarlens.training import train as run_training
    from cifarlens.training.recipes import default_recipe, device_defaults, scaled_to_epochs
    from cifarlens.training.run_folder import default_out

    options = options or {}
    if resume is not None:
        if config:
            raise CifarlensError("--resume continues a run with its saved config; drop --config or start a new run")
        _run_interruptible(lambda: resume_training(resume, options, console=console), resume)
        return
    file_options = read_yaml(config) if config else {}
    recipe = default_recipe(
        {
            "recipe": options.get("recipe") or file_options.get("recipe"),
            "model": options.get("model") or file_options.get("model"),
        }
    )
    preset, scaled = scaled_to_epochs(recipe_options(str(recipe)), file_options, options)
    if len(scaled) > 1:
        changes = ", ".join(f"--{k.replace('_', '-')} {old:g} -> {new:g}" for k, (old, new) in scaled.items())
        console.print(f"recipe {recipe}: {changes} (set them to choose otherwise)", highlight=False)
    device = options.get("device") or file_options.get("device") or preset.get("device") or TrainConfig.device
    cfg = build_config(
        TrainConfig,
        preset | device_defaults(str(recipe), str(device)),
        file_options,
        options,
        sources=(f"recipe {recipe}", str(config), "options"),
    )
    if not cfg.out:
        cfg = dataclasses.replace(cfg, out=default_out(cfg.model))
    _run_interruptible(lambda: run_training(cfg, console=console), cfg.out)


def _run_interruptible(fn: Callable[[], Path], out: str | Path) -> None:
    """Train (``fn``), then evaluate and report the run (in the first process only of a torchrun job)."""
    from cifarlens.report import after_training
    from cifarlens.run import RunDir
    from cifarlens.training.distributed import is_main_process

    try:
        run = fn()
        if is_main_process():
            after_training(run, console=console)
    except KeyboardInterrupt:
        if RunDir(out).has_config():
            message = f"continue with cifarlens train --resume {out} (from its last checkpoint, or from the start)"
        else:
            message = f"the run had not started, so {out} holds nothing; start it again"
        err_console.print(f"[yellow]interrupted:[/] {message}", highlight=False)
        raise typer.Exit(130) from None


@app.command()
@user_errors
def evaluate(
    run: Annotated[Path, typer.Argument(help="run directory written by cifarlens train")],
    split: Annotated[str, typer.Option(help="test, or val (needs a run trained with --val-size)")] = "test",
    tta: Annotated[bool, typer.Option(help="average predictions over the image and its mirror")] = False,
    tta_translate: Annotated[
        bool, typer.Option(help="TTA also over one-pixel shifts of both (6 views, airbench's level 2); implies --tta")
    ] = False,
    data_dir: Annotated[
        Optional[str], typer.Option(help="folder holding cifar-10-batches-py (default: the run's)")
    ] = None,
    device: Annotated[str, typer.Option(help="auto, cpu, cuda or mps")] = "auto",
    preprocess: Annotated[
        str, typer.Option(help="MODEL.keras only: its input scaling, scale (x/255), tf, torch, caffe or raw (0-255)")
    ] = "scale",
    trust_code: Annotated[
        bool, typer.Option(help="MODEL.keras only: allow Lambda layers (code) in a file you trust")
    ] = False,
) -> None:
    """Score a trained run (or a Keras MODEL.keras file): accuracy, per-class table, confusion, curves, mistakes."""
    from cifarlens.device import resolve_device
    from cifarlens.evaluation import evaluate_run
    from cifarlens.run import RunDir

    if str(run).endswith(".keras"):
        from cifarlens.evaluation.keras_file import evaluate_keras_file

        evaluate_keras_file(
            run,
            preprocess=preprocess,
            trust_code=trust_code,
            data_dir=data_dir,
            device=str(resolve_device(device)),
            console=console,
        )
        return
    if split not in ("test", "val"):
        raise CifarlensError(f"unknown split {split!r}; choose test or val")
    RunDir(run).require_weights()
    evaluate_run(
        run,
        split=split,
        tta=tta,
        tta_translate=tta_translate,
        data_dir=data_dir,
        device=str(resolve_device(device)),
        console=console,
    )


@dataclasses.dataclass
class CalibrateConfig:
    """The options of ``cifarlens calibrate`` (each field's comment is its ``--help`` text)."""

    run: str = ""  # the run directory to calibrate
    split: Literal["val", "test"] = "val"  # fit on half of this split, judge on the other half (and on test)
    seed: int = 0  # seed of the split into halves
    device: str = "auto"  # auto, cpu, cuda or mps
    batch_size: int = 500  # images per forward pass
    data_dir: str = ""  # folder holding cifar-10-batches-py (default: the run's, then $CIFARLENS_DATA_DIR)


@app.command()
@user_errors
@with_config_options(CalibrateConfig, dataclasses.asdict(CalibrateConfig()), skip=("run",))
def calibrate(
    run: Annotated[str, typer.Argument(help="run directory to calibrate")],
    config: Annotated[Optional[Path], typer.Option("--config", help="YAML file of options; flags override it")] = None,
    options: dict | None = None,
) -> None:
    """Fit temperature scaling on half of the held-out split; predict, serve and export then apply it."""
    from cifarlens.config import build_config, read_yaml
    from cifarlens.device import resolve_device
    from cifarlens.evaluation.calibrate import calibrate_run

    file_options = read_yaml(config) if config else {}
    cfg = build_config(CalibrateConfig, file_options, (options or {}) | {"run": run}, sources=(str(config), "options"))
    calibrate_run(
        cfg.run,
        split=cfg.split,
        seed=cfg.seed,
        data_dir=cfg.data_dir or None,
        device=str(resolve_device(cfg.device)),
        batch_size=cfg.batch_size,
        console=console,
    )


@app.command("models")
@user_errors
def list_models_command() -> None:
    """List the registered models with their parameter counts."""
    from cifarlens.models import count_parameters, create_model, list_models, model_description, model_kwargs

    table = Table(title="cifarlens models")
    table.add_column("name", style="bold")
    table.add_column("params", justify="right")
    table.add_column("arguments")
    table.add_column("description")
    for name in list_models():
        params = count_parameters(create_model(name))
        args = ", ".join(f"{k}={v!r}" for k, v in model_kwargs(name).items())
        table.add_row(name, f"{params:,}", args, model_description(name))
    console.print(table)
    families = Table(title="models from elsewhere", title_justify="left")
    families.add_column("name or source", style="bold")
    families.add_column("what it is")
    for source, what in (
        ("timm:NAME", "a timm architecture (pip install 'cifarlens[timm]'), e.g. --model timm:resnet18"),
        ("keras:APPLICATION, keras:FILE.keras", "a keras.applications model or a user's .keras file"),
        ("cifarlens import FILE.py:FACTORY", "a model class from your own code, with --weights and --trust-code"),
        ("cifarlens import MODEL.pt / .pt2 / .onnx", "a TorchScript file, a torch.export program or an ONNX graph"),
        ("cifarlens import NAME --weights W", "any name above, with weights from another training script"),
    ):
        families.add_row(escape(source), escape(what))
    console.print(families)


@app.command()
@user_errors
def summary(
    model: Annotated[str, typer.Argument(help="registered model name (see cifarlens models)")],
    model_args: Annotated[
        Optional[str], typer.Option(help="model keyword arguments as YAML, e.g. '{dropout: 0.2}'")
    ] = None,
) -> None:
    """Layer-by-layer output shapes, parameters and MACs for a 3x32x32 input."""
    from cifarlens.config import coerce
    from cifarlens.models import create_model
    from cifarlens.models.summary import summary_table

    kwargs = coerce("model_args", model_args or "", dict)
    console.print(summary_table(create_model(model, **kwargs)))


@app.command()
def recipes() -> None:
    """List the training recipes and the options each one sets."""
    from cifarlens.training import RECIPES

    table = Table(title="cifarlens recipes (cifarlens train --recipe NAME)")
    table.add_column("recipe", style="bold")
    table.add_column("options")
    for name, opts in RECIPES.items():
        table.add_row(name, ", ".join(f"{k}={v}" for k, v in opts.items()))
    console.print(table)


@app.command("show-data")
@user_errors
def show_data(
    out: Annotated[Path, typer.Option(help="PNG file to write")] = Path("cifar10_samples.png"),
    per_class: Annotated[int, typer.Option(help="images shown per class")] = 10,
    split: Annotated[str, typer.Option(help="train or test")] = "train",
    seed: Annotated[int, typer.Option(help="seed for picking the images")] = 0,
    data_dir: Annotated[Optional[str], typer.Option(help="folder holding cifar-10-batches-py")] = None,
    download: Annotated[bool, typer.Option(help="download CIFAR-10 when missing")] = True,
) -> None:
    """Write a grid of sample images, one row per class, and print the class balance."""
    from cifarlens.data import load_cifar10
    from cifarlens.evaluation.plots import image_grid

    if split not in ("train", "test"):
        raise CifarlensError(f"unknown split {split!r}; choose train or test")
    if per_class < 1:
        raise CifarlensError(f"--per-class must be at least 1, got {per_class}")
    data = load_cifar10(data_dir, download=download)
    chosen = getattr(data, split)
    image_grid(chosen.images, chosen.labels, data.classes, out, per_class=per_class, seed=seed)
    counts = chosen.labels.bincount(minlength=len(data.classes)).tolist()
    console.print(f"{split}: {len(chosen)} images; " + ", ".join(f"{c} {n}" for c, n in zip(data.classes, counts)))
    console.print(f"wrote {out}")


app.command()(_experiments.sweep)
app.command()(_experiments.compare)
app.command()(_experiments.report)
app.command()(_deploy.export)
app.command()(_deploy.predict)
app.command()(_deploy.bench)
app.command()(_deploy.serve)
app.command()(_explore.explore)
app.command("import")(_importing.import_model)
app.command()(_robustness.robustness)
app.add_typer(explain_app, name="explain")


def _version(value: bool) -> None:
    if value:
        console.print(f"cifarlens {__version__}")
        raise typer.Exit()


# Commands that run a trained model keep freed memory for their next batch (see keep_freed_memory; what
# it saves `evaluate`: BENCHMARKS.md, "Faster CPU steps: keeping freed memory"). train decides by its
# --keep-freed-memory; bench keeps glibc's default, which its published figures were measured with.
KEEP_FREED_MEMORY = {"evaluate", "explain", "export", "predict", "serve"}


@app.callback()
def main(
    ctx: typer.Context,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="print the version")
    ] = False,
) -> None:
    """Train CIFAR-10 classifiers fast, then see what they learned."""
    if ctx.invoked_subcommand in KEEP_FREED_MEMORY:
        from cifarlens.device import keep_freed_memory

        keep_freed_memory()
