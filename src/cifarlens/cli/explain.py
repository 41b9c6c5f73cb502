"""``cifarlens explain ...``: what a trained run learned, each picture with its numbers.

Every command reads a run directory and writes into ``RUN/explain/<command>/``: PNGs and,
next to each, a JSON or CSV of the numbers behind it. Heavy libraries load inside the commands.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.markup import escape
from rich.table import Table

from cifarlens.console import console, user_errors
from cifarlens.errors import CifarlensError

app = typer.Typer(
    help="Show what a trained run learned: layers, features, projections, probes, filters, CAMs.",
    no_args_is_help=True,
    context_settings={"help_option_names": ["-h", "--help"]},
)

RunArg = Annotated[Path, typer.Argument(help="run directory written by cifarlens train")]
DataDirOpt = Annotated[Optional[str], typer.Option(help="folder holding cifar-10-batches-py (default: the run's)")]
DeviceOpt = Annotated[str, typer.Option(help="auto, cpu, cuda or mps")]
SplitOpt = Annotated[str, typer.Option(help="train, val or test")]
LimitOpt = Annotated[int, typer.Option(help="first N images of the split (0: all)")]
# activation maximisation (explain activation-max and top-images)
StepsOpt = Annotated[int, typer.Option(help="optimisation steps of each activation-maximisation image")]
LrOpt = Annotated[float, typer.Option(help="Adam learning rate on the Fourier parameters")]
MaxSeedOpt = Annotated[int, typer.Option(help="seed of the initial image and the transforms")]


def _out(run: Path, command: str) -> Path:
    from cifarlens.run import RunDir

    return RunDir(run).explain_dir(command)


def _wrote(*paths: Path) -> None:
    console.print(escape("wrote " + ", ".join(str(p) for p in paths)))


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CifarlensError(
            f"no layer names in {text!r}; pass a comma-separated list (see cifarlens explain layers RUN)"
        )
    return names


@app.command("layers")
@user_errors
def layers_command(run: RunArg, device: DeviceOpt = "auto") -> None:
    """List the layers features can be taken from, with output shapes, probe stages and the default CAM layer."""
    from cifarlens.explain.layers import layers_run

    result = layers_run(run, device=device)
    table = Table(title=f"{result.model_name}: layers (stage = used by explain probe)", title_justify="left")
    for col in ("layer", "module", "output shape", "stage"):
        table.add_column(col)
    for row in result.rows:
        table.add_row(
            escape(row["name"]), row["module"] or "(op)", "x".join(map(str, row["shape"])), "*" if row["stage"] else ""
        )
    console.print(table)
    height, width = result.cam_map_size
    console.print(escape(f"default CAM target layer: {result.cam_layer} ({height}x{width})"))
    _wrote(*result.write(_out(run, "layers")))


@app.command("features")
@user_errors
def features_command(
    run: RunArg,
    layers: Annotated[str, typer.Option(help="comma-separated layer names (see explain layers)")],
    split: SplitOpt = "test",
    limit: LimitOpt = 0,
    pool: Annotated[str, typer.Option(help="global pooling of (C, H, W) maps: avg or max")] = "avg",
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 500,
    tensorboard: Annotated[
        Optional[Path],
        typer.Option(
            help="also write a TensorBoard Embedding Projector log here "
            "(features, label/prediction/correct, image sprite)"
        ),
    ] = None,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Extract pooled activations of layers for a split into RUN/explain/features/<split>.safetensors."""
    from cifarlens.explain.features import features_run

    result = features_run(
        run,
        layers=_names(layers),
        split=split,
        limit=limit,
        pool=pool,
        batch_size=batch_size,
        data_dir=data_dir,
        device=device,
        show_progress=True,
        with_predictions=tensorboard is not None,
    )
    info = result.info()
    widths = ", ".join(f"{name} {shape[1]}-d" for name, shape in info["layers"].items())
    console.print(
        f"{info['images']} images, {len(info['layers'])} layers in {info['seconds']:.1f}s "
        f"({info['images_per_s']:.0f} img/s): {widths}"
    )
    _wrote(*result.write(_out(run, "features")))
    if tensorboard is not None:
        console.print(
            escape(f"projector log in {result.write_projector(tensorboard)}: tensorboard --logdir {tensorboard}")
        )


@app.command("projection")
@user_errors
def projection_command(
    run: RunArg,
    layer: Annotated[
        Optional[str], typer.Option(help="layer to project (default: the input of the last linear layer)")
    ] = None,
    method: Annotated[str, typer.Option(help="pca, tsne (openTSNE, FFT) or umap")] = "tsne",
    split: SplitOpt = "test",
    limit: LimitOpt = 0,
    seed: Annotated[int, typer.Option(help="seed of the projection and the trustworthiness subsample")] = 0,
    thumbnails: Annotated[int, typer.Option(help="draw this many image thumbnails on the map")] = 0,
    sample: Annotated[int, typer.Option(help="points the trustworthiness is computed on (O(n^2) memory)")] = 2000,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """2-D map of a layer's features coloured by class, with trustworthiness and kNN accuracy in the map."""
    from cifarlens.explain.projection import projection_run

    result = projection_run(
        run,
        layer=layer,
        method=method,
        split=split,
        limit=limit,
        seed=seed,
        thumbnails=thumbnails,
        sample=sample,
        data_dir=data_dir,
        device=device,
        show_progress=True,
    )
    paths = result.write(_out(run, "projection"))
    console.print(result.title)
    _wrote(*paths)


@app.command("probe")
@user_errors
def probe_command(
    run: RunArg,
    layers: Annotated[
        Optional[str], typer.Option(help="comma-separated layers (default: every stage, see explain layers)")
    ] = None,
    train_limit: Annotated[int, typer.Option(help="training images the probes are fitted on (0: all)")] = 5000,
    test_limit: Annotated[int, typer.Option(help="test images the probes are scored on (0: all)")] = 0,
    k: Annotated[int, typer.Option(help="neighbours of the kNN probe")] = 10,
    c: Annotated[float, typer.Option("--C", help="inverse L2 strength of the logistic regression")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the training subsample")] = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Linear-probe and kNN accuracy of every stage: how class-specific the features become with depth."""
    from cifarlens.explain.probe import probe_run

    result = probe_run(
        run,
        layers=_names(layers) if layers else None,
        train_limit=train_limit,
        test_limit=test_limit,
        k=k,
        C=c,
        seed=seed,
        data_dir=data_dir,
        device=device,
        show_progress=True,
    )
    table = Table(
        title=f"{result.model_name}: probes fitted on {result.train_images} train, scored on "
        f"{result.test_images} test images",
        title_justify="left",
    )
    for col in ("layer", "dims", "linear probe", "kNN"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in result.rows:
        table.add_row(escape(r["layer"]), str(r["dims"]), f"{r['linear_accuracy']:.2%}", f"{r['knn_accuracy']:.2%}")
    console.print(table)
    _wrote(*result.write(_out(run, "probe")))


@app.command("filters")
@user_errors
def filters_command(
    run: RunArg,
    layer: Annotated[
        Optional[str], typer.Option(help="conv layer (default: the first; RGB when it sees the image)")
    ] = None,
    max_filters: Annotated[int, typer.Option(help="filters shown")] = 64,
    device: DeviceOpt = "auto",
) -> None:
    """Conv kernels as a grid (first layer in RGB, deeper layers per input channel), with norms and effective rank."""
    from cifarlens.explain.filters import filters_run

    result = filters_run(run, layer=layer, max_filters=max_filters, device=device)
    paths = result.write(_out(run, "filters"))
    console.print(result.title)
    _wrote(*paths)


@app.command("feature-maps")
@user_errors
def feature_maps_command(
    run: RunArg,
    image: Annotated[Optional[Path], typer.Argument(help="an image file (PNG/JPEG); or use --index")] = None,
    index: Annotated[Optional[str], typer.Option(help="index of an image in --split")] = None,
    layers: Annotated[Optional[str], typer.Option(help="comma-separated layers (default: the spatial stages)")] = None,
    channels: Annotated[int, typer.Option(help="channels shown per layer, strongest first")] = 32,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Activations of chosen layers for one image as grids, with per-channel means and sparsity."""
    from cifarlens.explain.filters import feature_maps_run

    result = feature_maps_run(
        run,
        image=image,
        index=index,
        layers=_names(layers) if layers else None,
        channels=channels,
        split=split,
        data_dir=data_dir,
        device=device,
    )
    paths = result.write(_out(run, "feature-maps"))
    for layer in result.maps:
        console.print(result.title(layer))
    _wrote(*paths)


@app.command("activation-max")
@user_errors
def activation_max_command(
    run: RunArg,
    layer: Annotated[Optional[str], typer.Option(help="layer whose channels are maximised")] = None,
    channels: Annotated[str, typer.Option(help="channels, e.g. 0-15 or 0,3,7")] = "0-15",
    classes: Annotated[Optional[str], typer.Option(help="maximise class logits instead: 'all' or e.g. 0,3")] = None,
    steps: StepsOpt = 256,
    lr: LrOpt = 0.05,
    seed: MaxSeedOpt = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Images that maximise channels of a layer (or class logits): Fourier, decorrelated, transform-robust (lucent)."""
    from cifarlens.explain.activation_max import activation_max_run

    with console.status(f"optimising images for {steps} steps"):
        result = activation_max_run(
            run,
            layer=layer,
            channels=channels,
            classes=classes,
            steps=steps,
            lr=lr,
            seed=seed,
            data_dir=data_dir,
            device=device,
        )
    paths = result.write(_out(run, "activation-max"))
    console.print(result.title)
    _wrote(*paths)


def _methods(text: str) -> list[str]:
    from cifarlens.explain.cam import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CifarlensError(
            f"unknown CAM method {unknown[0] if unknown else text!r}; choose from: {', '.join(METHODS)}"
        )
    return methods


@app.command("cam")
@user_errors
def cam_command(
    run: RunArg,
    images: Annotated[Optional[list[Path]], typer.Argument(help="image files (PNG/JPEG); or use --index")] = None,
    index: Annotated[Optional[str], typer.Option(help="indices of images in --split, e.g. 0-7 or 3,5")] = None,
    method: Annotated[
        str, typer.Option(help="gradcam, gradcam++, scorecam, eigencam, layercam, cam; or a comma list")
    ] = "gradcam",
    target_layer: Annotated[
        Optional[str], typer.Option(help="module the CAM looks at (default: see explain layers)")
    ] = None,
    target_class: Annotated[
        Optional[str], typer.Option("--class", help="class name or number to explain (default: the predicted class)")
    ] = None,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Heat maps of the evidence for a class, with the probability drop when their hottest pixels are removed."""
    from cifarlens.explain.cam import cam_run

    methods = _methods(method)
    with console.status(f"computing {len(methods)} CAM methods"):
        result = cam_run(
            run,
            methods=methods,
            images=images,
            index=index,
            target_layer=target_layer,
            target_class=target_class,
            split=split,
            data_dir=data_dir,
            device=device,
        )
    paths = result.write(_out(run, "cam"))
    console.print(result.title)
    _wrote(*paths)


@app.command("attribute")
@user_errors
def attribute_command(
    run: RunArg,
    images: Annotated[Optional[list[Path]], typer.Argument(help="image files (PNG/JPEG); or use --index")] = None,
    index: Annotated[Optional[str], typer.Option(help="images of --split by index: 0-7 or 0,3,9")] = None,
    method: Annotated[
        str,
        typer.Option(
            help="comma-separated attribution methods (see the README's table): "
            "saliency, integrated-gradients, occlusion, gradcam, ..."
        ),
    ] = "saliency,integrated-gradients,smoothgrad,occlusion,gradcam,guided-gradcam",
    target: Annotated[
        str, typer.Option(help="class explained: pred (predicted), true (the label), or a class name/number")
    ] = "pred",
    baseline: Annotated[
        str,
        typer.Option(
            help="reference image of integrated-gradients, gradient-shap, deeplift, "
            "occlusion, feature-ablation, kernel-shap, lime: black, blur or mean (the training mean)"
        ),
    ] = "black",
    target_layer: Annotated[
        Optional[str], typer.Option(help="module the CAM methods look at (default: see explain layers)")
    ] = None,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: Annotated[
        int, typer.Option(help="seed of the sampling methods (smoothgrad, gradient-shap, kernel-shap, lime)")
    ] = 0,
) -> None:
    """Pixel-resolution attribution maps of Captum and grad-cam methods, each scored by deletion and insertion."""
    import numpy as np

    from cifarlens.explain.attribution import attribute, check_methods

    methods = check_methods([m.strip() for m in method.split(",") if m.strip()])
    with console.status(f"computing {len(methods)} attribution methods"):
        result = attribute(
            run,
            methods=methods,
            images=images,
            index=index,
            target=target,
            baseline=baseline,
            target_layer=target_layer,
            split=split,
            data_dir=data_dir,
            device=device,
            seed=seed,
        )
    table = Table(
        title=f"{result.model_name}: attribution on {len(result.tags)} images (mean over them)", title_justify="left"
    )
    for col in ("method", "library", "deletion AUC (low)", "insertion AUC (high)", "ms / image"):
        table.add_column(col, justify="left" if col in ("method", "library") else "right")
    for name in methods:
        rows = [r for r in result.rows if r["method"] == name]
        table.add_row(
            name,
            rows[0]["library"],
            f"{np.mean([r['deletion_auc'] for r in rows]):.3f}",
            f"{np.mean([r['insertion_auc'] for r in rows]):.3f}",
            f"{rows[0]['ms_per_image']:.1f}",
        )
    console.print(table)
    for note in result.notes:
        console.print(escape(f"note: {note}"))
    _wrote(*result.write(_out(run, "attribute")))


def _rank_and_print(run: Path, folder: str, methods: str, n: int, split: str, data_dir, device: str, settings) -> None:
    from cifarlens.explain.ranking import rank, rank_cells
    from cifarlens.run import RunDir

    with console.status("ranking attribution methods") as status:
        progress = lambda done, total: status.update(f"ranking attribution methods: {done} of {total} images")  # noqa: E731
        result = rank(
            run,
            methods=methods,
            n=n,
            split=split,
            data_dir=data_dir,
            device=device,
            settings=settings,
            partial_to=RunDir(run).explain_dir(folder, make=False),
            on_batch=progress,
        )
    table = Table(title=result.title() + " (best first)", title_justify="left")
    columns = ("#", "method", "del AUC", "ins AUC", "ROAD MoRF", "ROAD LeRF", "rand. corr head", "all", "ms/img")
    for col in (*columns, "verdict"):
        table.add_column(col, justify="left" if col in ("method", "verdict") else "right", no_wrap=col == "method")
    for r in result.rows:
        cells = rank_cells(r)
        del cells[2]  # the library: the method's name says it
        table.add_row(*map(escape, cells))
    console.print(table)
    for note in result.notes:
        console.print(escape(f"note: {note}"))
    _wrote(*result.write(_out(run, folder)))


RankMethodsOpt = Annotated[
    str,
    typer.Option(
        help="all, cams (the CAM methods) or a comma-separated list of attribution methods (see explain attribute)"
    ),
]
RankNOpt = Annotated[int, typer.Option(help="seeded test images every method is scored on")]
TargetLayerOpt = Annotated[
    Optional[str],
    typer.Option(help="module the CAM methods and the random reference look at (default: see explain layers)"),
]


@app.command("rank")
@user_errors
def rank_command(
    run: RunArg,
    methods: RankMethodsOpt = "all",
    n: RankNOpt = 500,
    split: SplitOpt = "test",
    steps: Annotated[int, typer.Option(help="points on each deletion/insertion curve")] = 16,
    sanity_n: Annotated[int, typer.Option(help="images of the N the randomisation check runs on (0: all)")] = 100,
    sanity_threshold: Annotated[
        float, typer.Option(help="randomisation correlation at or above which a method fails the sanity check")
    ] = 0.5,
    baseline: Annotated[
        str, typer.Option(help="reference image of the baseline methods: black, blur or mean")
    ] = "black",
    target_layer: TargetLayerOpt = None,
    batch_size: Annotated[int, typer.Option(help="images per attribution call (bounds memory)")] = 32,
    seed: Annotated[
        int, typer.Option(help="seed of the images, the sampling methods, ROAD's noise and the random weights")
    ] = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Rank attribution methods on N seeded images: deletion/insertion, ROAD, randomisation sanity, cost, verdicts."""
    from cifarlens.explain.ranking import RankSettings

    settings = RankSettings(
        steps=steps,
        sanity_n=sanity_n,
        sanity_threshold=sanity_threshold,
        baseline=baseline,
        target_layer=target_layer,
        batch_size=batch_size,
        seed=seed,
    )
    _rank_and_print(run, "rank", methods, n, split, data_dir, device, settings)


@app.command("compare-cam")
@user_errors
def compare_cam_command(
    run: RunArg,
    methods: Annotated[str, typer.Option(help="cams (every CAM method) or a comma-separated list of them")] = "cams",
    n: RankNOpt = 100,
    steps: Annotated[int, typer.Option(help="points on each deletion/insertion curve")] = 16,
    target_layer: TargetLayerOpt = None,
    seed: Annotated[int, typer.Option(help="seed of the images, the random reference and the random weights")] = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """explain rank restricted to CAM methods (written to RUN/explain/compare-cam/)."""
    from cifarlens.explain.ranking import RankSettings

    if methods != "cams":
        methods = ",".join(_methods(methods))
    settings = RankSettings(steps=steps, target_layer=target_layer, seed=seed)
    _rank_and_print(run, "compare-cam", methods, n, "test", data_dir, device, settings)


@app.command("top-images")
@user_errors
def top_images_command(
    run: RunArg,
    layer: Annotated[Optional[str], typer.Option(help="layer with (C, H, W) maps (default: deepest stage)")] = None,
    channels: Annotated[str, typer.Option(help="channels, e.g. 0-7 or 0,3,7")] = "0-7",
    k: Annotated[int, typer.Option(help="top images shown per channel")] = 9,
    split: SplitOpt = "test",
    limit: LimitOpt = 0,
    steps: StepsOpt = 256,
    lr: LrOpt = 0.05,
    seed: MaxSeedOpt = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Per channel, the k images that excite it most (activation overlaid) beside its activation-maximisation image."""
    from cifarlens.explain.dataset_examples import top_images

    with console.status(f"scanning the {split} split and optimising images for {steps} steps"):
        result = top_images(
            run,
            layer=layer,
            channels=channels,
            k=k,
            split=split,
            limit=limit,
            steps=steps,
            lr=lr,
            seed=seed,
            data_dir=data_dir,
            device=device,
        )
    for c in result.channels:
        console.print(
            escape(
                f"{result.layer} ch{c.channel}: best {c.scores[0]:.3f} ({split} image {c.indices[0]}, "
                f"{result.classes[c.labels[0]]}), optimised {c.optimised_score:.3f}"
            )
        )
    _wrote(*result.write(_out(run, "top-images")))
