"""``cifarlens explain ...``: what a trained run learned, each picture with its numbers.

Every command reads a run directory and writes into ``RUN/explain/<command>/``: PNGs and,
next to each, a JSON or CSV of the numbers behind it. Heavy libraries load inside the commands.
"""

from __future__ import annotations

import csv
import io
import time
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


def _load(run: Path, device: str = "cpu"):
    from cifarlens.device import resolve_device
    from cifarlens.run import RunDir

    dev = resolve_device(device)
    model, spec = RunDir(run).load_model(dev)
    return model, spec, dev


def _split(run: Path, split: str, data_dir: str | None):
    from cifarlens.run import RunDir

    data = RunDir(run).load_data(data_dir)
    return data, data.split(split)


def _out(run: Path, command: str) -> Path:
    from cifarlens.run import RunDir

    return RunDir(run).explain_dir(command)


def _safe(name: str) -> str:
    return name.replace("/", "_")


def _csv(path: Path, rows: list[dict]) -> None:
    from cifarlens.io import atomic_write_text

    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(rows[0]), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(path, buf.getvalue())


def _wrote(*paths: Path) -> None:
    console.print(escape("wrote " + ", ".join(str(p) for p in paths)))


def _names(text: str) -> list[str]:
    names = [n.strip() for n in text.split(",") if n.strip()]
    if not names:
        raise CifarlensError(f"no layer names in {text!r}; pass a comma-separated list (see cifarlens explain layers RUN)")
    return names


@app.command("layers")
@user_errors
def layers_command(run: RunArg) -> None:
    """List the layers features can be taken from, with output shapes, probe stages and the default CAM layer."""
    from cifarlens.models.layers import list_layers
    from cifarlens.run import write_json

    model, spec, _ = _load(run)
    infos = list_layers(model, spec.image_size)
    caps = spec.capabilities(model)
    stages, target = set(caps.probe_stages), caps.cam_layer
    table = Table(title=f"{spec.name}: layers (stage = used by explain probe)", title_justify="left")
    for col in ("layer", "module", "output shape", "stage"):
        table.add_column(col)
    rows = []
    for info in infos:
        shape = "x".join(map(str, info.shape))
        table.add_row(escape(info.name), info.module_type or "(op)", shape, "*" if info.name in stages else "")
        rows.append({"name": info.name, "module": info.module_type, "shape": list(info.shape),
                     "poolable": info.poolable, "stage": info.name in stages})  # fmt: skip
    console.print(table)
    from cifarlens.models.layers import map_size

    height, width = map_size(model, target, spec.image_size)
    console.print(escape(f"default CAM target layer: {target} ({height}x{width})"))
    path = _out(run, "layers") / "layers.json"
    write_json(path, {"model": spec.name, "image_size": spec.image_size, "default_cam_target": target,
                      "default_cam_map_size": [height, width], "layers": rows})  # fmt: skip
    _wrote(path)


@app.command("features")
@user_errors
def features_command(
    run: RunArg,
    layers: Annotated[str, typer.Option(help="comma-separated layer names (see explain layers)")],
    split: SplitOpt = "test",
    limit: LimitOpt = 0,
    pool: Annotated[str, typer.Option(help="global pooling of (C, H, W) maps: avg or max")] = "avg",
    batch_size: Annotated[int, typer.Option(help="images per forward pass")] = 500,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Extract pooled activations of layers for a split into RUN/explain/features/<split>.safetensors."""
    from cifarlens.explain.features import extract_features
    from cifarlens.run import write_json

    model, spec, dev = _load(run, device)
    _, chosen = _split(run, split, data_dir)
    t0 = time.perf_counter()
    feats = extract_features(model, spec, chosen.images, chosen.labels, _names(layers), split=split, limit=limit,
                             pool=pool, batch_size=batch_size, device=dev, show_progress=True)  # fmt: skip
    seconds = time.perf_counter() - t0
    out = _out(run, "features")
    path = out / f"{split}.safetensors"
    feats.save(path)
    n = len(feats.labels)
    info = {"split": split, "images": n, "pool": pool, "seconds": seconds, "images_per_s": n / max(seconds, 1e-9),
            "layers": {name: list(x.shape) for name, x in feats.layers.items()}}  # fmt: skip
    write_json(out / f"{split}.json", info)
    console.print(f"{n} images, {len(feats.layers)} layers in {seconds:.1f}s ({info['images_per_s']:.0f} img/s): "
                  + ", ".join(f"{k} {v[1]}-d" for k, v in info["layers"].items()))  # fmt: skip
    _wrote(path, out / f"{split}.json")


def _default_layer(model, spec) -> str:
    return spec.capabilities(model).probe_stages[-1]


@app.command("projection")
@user_errors
def projection_command(
    run: RunArg,
    layer: Annotated[Optional[str], typer.Option(help="layer to project (default: the input of the last linear layer)")] = None,
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
    import numpy as np

    from cifarlens.explain.features import extract_features
    from cifarlens.explain.plots import plot_projection
    from cifarlens.explain.projection import Projector, map_quality
    from cifarlens.run import write_json

    model, spec, dev = _load(run, device)
    _, chosen = _split(run, split, data_dir)
    projector = Projector(method, seed=seed)
    layer = layer or _default_layer(model, spec)
    feats = extract_features(model, spec, chosen.images, chosen.labels, [layer], split=split, limit=limit,
                             device=dev, show_progress=True)  # fmt: skip
    x, labels = feats.layers[layer], feats.labels
    proj = projector(x)
    quality = map_quality(x, proj.points, labels, sample=sample, seed=seed)
    out = _out(run, "projection")
    stem = f"{_safe(layer)}_{method}"
    title = (f"{spec.name} {layer}, {method} ({proj.backend}), {len(x)} {split} images: trustworthiness "
             f"{quality['trustworthiness']:.3f} (on {quality['trustworthiness_points']}), "
             f"{quality['knn_k']}-NN acc. in map {quality['knn_accuracy_2d']:.1%} "
             f"vs features {quality['knn_accuracy_features']:.1%}")  # fmt: skip
    thumbs = chosen.images[: len(x)].numpy() if thumbnails else None
    plot_projection(proj.points, labels, spec.classes, out / f"{stem}.png", title=title, thumbnails=thumbs,
                    n_thumbnails=thumbnails, seed=seed)  # fmt: skip
    np.save(out / f"{stem}_points.npy", proj.points)
    write_json(out / f"{stem}.json", {"layer": layer, "method": method, "backend": proj.backend, "split": split,
                                      "images": int(len(x)), "seconds": proj.seconds, **proj.settings, **quality})  # fmt: skip
    console.print(title)
    _wrote(out / f"{stem}.png", out / f"{stem}.json", out / f"{stem}_points.npy")


@app.command("probe")
@user_errors
def probe_command(
    run: RunArg,
    layers: Annotated[Optional[str], typer.Option(help="comma-separated layers (default: every stage, see explain layers)")] = None,
    train_limit: Annotated[int, typer.Option(help="training images the probes are fitted on (0: all)")] = 5000,
    test_limit: Annotated[int, typer.Option(help="test images the probes are scored on (0: all)")] = 0,
    k: Annotated[int, typer.Option(help="neighbours of the kNN probe")] = 10,
    c: Annotated[float, typer.Option("--C", help="inverse L2 strength of the logistic regression")] = 1.0,
    seed: Annotated[int, typer.Option(help="seed of the training subsample")] = 0,
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
) -> None:
    """Linear-probe and kNN accuracy of every stage: how class-specific the features become with depth."""
    import torch

    from cifarlens.data import stratified_indices
    from cifarlens.explain.features import extract_features
    from cifarlens.explain.plots import plot_probe
    from cifarlens.explain.probe import fit_knn_probe, fit_linear_probe
    from cifarlens.run import write_json

    model, spec, dev = _load(run, device)
    data = _split(run, "test", data_dir)[0]
    names = _names(layers) if layers else list(spec.capabilities(model).probe_stages)
    train = data.train
    if train_limit and train_limit < len(train):
        train = train.take(stratified_indices(train.labels, train_limit, seed))
    test = data.test
    train_f = extract_features(model, spec, train.images, train.labels, names, split="train", device=dev, show_progress=True)
    test_f = extract_features(model, spec, test.images, test.labels, names, limit=test_limit, device=dev, show_progress=True)
    rows = []
    with console.status("fitting probes"):
        for name in names:
            t0 = time.perf_counter()
            linear = fit_linear_probe(train_f.layers[name], train_f.labels, test_f.layers[name], test_f.labels, C=c, seed=seed)
            knn = fit_knn_probe(train_f.layers[name], train_f.labels, test_f.layers[name], test_f.labels, k=k)
            rows.append({"layer": name, "dims": int(train_f.layers[name].shape[1]), "linear_accuracy": linear.accuracy,
                         "linear_train_accuracy": linear.train_accuracy, "knn_accuracy": knn.accuracy,
                         "seconds": time.perf_counter() - t0})  # fmt: skip
    chance = float(torch.bincount(test.labels[: len(test_f.labels)]).max()) / len(test_f.labels)
    out = _out(run, "probe")
    table = Table(title=f"{spec.name}: probes fitted on {len(train_f.labels)} train, scored on {len(test_f.labels)} test images",
                  title_justify="left")  # fmt: skip
    for col in ("layer", "dims", "linear probe", "kNN"):
        table.add_column(col, justify="left" if col == "layer" else "right")
    for r in rows:
        table.add_row(escape(r["layer"]), str(r["dims"]), f"{r['linear_accuracy']:.2%}", f"{r['knn_accuracy']:.2%}")
    console.print(table)
    _csv(out / "probe.csv", rows)
    write_json(out / "probe.json", {"train_images": int(len(train_f.labels)), "test_images": int(len(test_f.labels)),
                                    "chance": chance, "k": k, "C": c, "stages": rows})  # fmt: skip
    plot_probe(rows, out / "probe.png", chance=chance,
               title=f"{spec.name}: test accuracy of probes on frozen features, by depth")  # fmt: skip
    _wrote(out / "probe.csv", out / "probe.json", out / "probe.png")


@app.command("filters")
@user_errors
def filters_command(
    run: RunArg,
    layer: Annotated[Optional[str], typer.Option(help="conv layer (default: the first; RGB when it sees the image)")] = None,
    max_filters: Annotated[int, typer.Option(help="filters shown")] = 64,
) -> None:
    """Conv kernels as a grid (first layer in RGB, deeper layers per input channel), with norms and effective rank."""
    from cifarlens.explain.filters import filter_stats, filter_tiles, pick_conv
    from cifarlens.explain.plots import plot_tiles
    from cifarlens.run import write_json

    model, spec, _ = _load(run)
    name, conv = pick_conv(model, layer)
    stats = filter_stats(conv.weight)
    rgb = conv.weight.shape[1] == 3
    tiles, labels = filter_tiles(conv.weight, max_out=max_filters if rgb else min(max_filters, 16))
    out = _out(run, "filters")
    title = (f"{spec.name} {name}: {stats['filters']} filters {'x'.join(map(str, stats['filter_size']))}, "
             f"effective rank {stats['effective_rank']:.1f} of {stats['max_rank']}, dead {stats['dead_fraction']:.0%}")  # fmt: skip
    columns = 0 if rgb else min(conv.weight.shape[1], 16)
    plot_tiles(tiles, out / f"{_safe(name)}.png", labels=labels, title=title, columns=columns, cmap="gray",
               tile_inches=0.7 if rgb else 0.5)  # fmt: skip
    write_json(out / f"{_safe(name)}.json", {"layer": name, **stats})
    console.print(title)
    _wrote(out / f"{_safe(name)}.png", out / f"{_safe(name)}.json")


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
) -> None:
    """Activations of chosen layers for one image as grids, with per-channel means and sparsity."""
    import torch

    from cifarlens.explain.filters import feature_map_stats
    from cifarlens.explain.images import choose_images, model_input
    from cifarlens.evaluation.predict import Predictor
    from cifarlens.explain.plots import plot_tiles
    from cifarlens.models.layers import FeatureExtractor, LayerError, list_layers
    from cifarlens.run import write_json

    model, spec, _ = _load(run)
    imgs, labels, tags = choose_images(run, [image] if image else None, index, split, data_dir)
    imgs, tag = imgs[:1], tags[0]
    infos = {i.name: i for i in list_layers(model, spec.image_size)}
    stages = spec.capabilities(model).probe_stages
    names = _names(layers) if layers else [n for n in stages if len(infos[n].shape) == 3]
    with torch.no_grad():
        outputs = FeatureExtractor(model, names)(model_input(imgs, spec))
    probs = Predictor(model, spec).probabilities(imgs)[0]
    out = _out(run, "feature-maps")
    pred = int(probs.argmax())
    summary = {"image": tag, "label": spec.classes[labels[0]] if labels else None,
               "predicted": spec.classes[pred], "probability": float(probs[pred]), "layers": {}}  # fmt: skip
    paths = []
    for name in names:
        maps = outputs[name]
        if maps.ndim != 4:
            raise LayerError(f"layer {name!r} outputs shape {tuple(maps.shape)}, not (C, H, W) maps; pick a conv layer")
        stats = feature_map_stats(maps[0])
        order = maps[0].flatten(1).mean(1).argsort(descending=True)[:channels]
        tiles = maps[0][order].numpy()
        title = (f"{tag} {name}: {stats['channels']} channels {stats['size'][0]}x{stats['size'][1]}, "
                 f"{stats['active_fraction']:.0%} of units > 0, {stats['dead_channels']} dead channels")  # fmt: skip
        path = out / f"{tag}_{_safe(name)}.png"
        plot_tiles(tiles, path, labels=[f"ch{int(c)}" for c in order], title=title, tile_inches=0.8)
        summary["layers"][name] = stats
        paths.append(path)
        console.print(title)
    write_json(out / f"{tag}.json", summary)
    _wrote(*paths, out / f"{tag}.json")


@app.command("activation-max")
@user_errors
def activation_max_command(
    run: RunArg,
    layer: Annotated[Optional[str], typer.Option(help="layer whose channels are maximised")] = None,
    channels: Annotated[str, typer.Option(help="channels, e.g. 0-15 or 0,3,7")] = "0-15",
    classes: Annotated[Optional[str], typer.Option(help="maximise class logits instead: 'all' or e.g. 0,3")] = None,
    steps: Annotated[int, typer.Option(help="optimisation steps")] = 256,
    lr: Annotated[float, typer.Option(help="Adam learning rate on the Fourier parameters")] = 0.05,
    seed: Annotated[int, typer.Option(help="seed of the initial image and the transforms")] = 0,
    data_dir: DataDirOpt = None,
) -> None:
    """Images that maximise channels of a layer (or class logits): Fourier, decorrelated, transform-robust (as lucent)."""
    import numpy as np
    import torch

    from cifarlens.explain.activation_max import LOGITS, ActivationMaximiser, colour_correlation_sqrt
    from cifarlens.explain.images import denormalize, model_input, parse_indices
    from cifarlens.explain.plots import plot_tiles
    from cifarlens.run import write_json

    model, spec, _ = _load(run)
    if classes is not None and layer is not None:
        raise CifarlensError("give --layer (channels) or --classes (logits), not both")
    data = _split(run, "test", data_dir)[0]
    if classes is not None:
        name = LOGITS
        units = list(range(spec.num_classes)) if classes == "all" else parse_indices(classes, spec.num_classes)
    else:
        name = layer or _default_layer(model, spec)
    maximiser = ActivationMaximiser(model, spec, name, colour_sqrt=colour_correlation_sqrt(data.train.images[:2000]),
                                    steps=steps, lr=lr, seed=seed)  # fmt: skip
    real = data.test.images[:500]
    with torch.no_grad():  # real images resized to the model's input size, in [0, 1] like the optimised ones
        real_acts = maximiser.unit_activations(denormalize(model_input(real, spec), spec))
    if classes is None:
        units = parse_indices(channels, real_acts.shape[1])
    t0 = time.perf_counter()
    with console.status(f"optimising {len(units)} images for {steps} steps"):
        result = maximiser(units)
    seconds = time.perf_counter() - t0
    best_real = real_acts[:, units].amax(0).numpy()
    ratio = result.activations / np.where(np.abs(best_real) > 1e-9, best_real, np.nan)
    rows = [{"unit": u, "activation": float(a), "best_real_activation": float(b), "ratio_to_best_real": float(r)}
            for u, a, b, r in zip(units, result.activations, best_real, ratio)]  # fmt: skip
    if name == LOGITS:
        with torch.no_grad():
            probs = maximiser.unit_activations(result.images).softmax(1)
        for i, (row, u) in enumerate(zip(rows, units)):
            row["probability"] = float(probs[i, u])
        labels = [f"{spec.classes[u]} p={r['probability']:.2f}" for u, r in zip(units, rows)]
    else:
        labels = [f"ch{u} x{r['ratio_to_best_real']:.1f}" for u, r in zip(units, rows)]
    out = _out(run, "activation-max")
    median = float(np.nanmedian(ratio))
    title = (f"{spec.name} {name}: {len(units)} images, {steps} steps ({seconds:.0f}s); median activation "
             f"{median:.1f}x the strongest of {len(real)} test images")  # fmt: skip
    path = out / f"{_safe(name)}.png"
    plot_tiles(result.images.permute(0, 2, 3, 1).numpy(), path, labels=labels, title=title, tile_inches=1.1)
    write_json(out / f"{_safe(name)}.json", {"layer": name, "steps": steps, "lr": lr, "seed": seed, "seconds": seconds,
                                            "median_ratio_to_best_real": median, "units": rows})  # fmt: skip
    console.print(title)
    _wrote(path, out / f"{_safe(name)}.json")


def _methods(text: str) -> list[str]:
    from cifarlens.explain.cam import METHODS

    methods = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in methods if m not in METHODS]
    if unknown or not methods:
        raise CifarlensError(f"unknown CAM method {unknown[0] if unknown else text!r}; choose from: {', '.join(METHODS)}")
    return methods


@app.command("cam")
@user_errors
def cam_command(
    run: RunArg,
    images: Annotated[Optional[list[Path]], typer.Argument(help="image files (PNG/JPEG); or use --index")] = None,
    index: Annotated[Optional[str], typer.Option(help="indices of images in --split, e.g. 0-7 or 3,5")] = None,
    method: Annotated[str, typer.Option(help="gradcam, gradcam++, scorecam, eigencam, layercam, cam; or a comma list")] = "gradcam",
    target_layer: Annotated[Optional[str], typer.Option(help="module the CAM looks at (default: see explain layers)")] = None,
    target_class: Annotated[Optional[str], typer.Option("--class", help="class name or number to explain (default: the predicted class)")] = None,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
) -> None:
    """Heat maps of the evidence for a class over images, with the probability drop when their hot pixels are removed."""
    import numpy as np
    import torch

    from cifarlens.explain.cam import CamExplainer
    from cifarlens.explain.faithfulness import DeletionInsertion
    from cifarlens.explain.images import choose_images, denormalize, model_input
    from cifarlens.explain.plots import plot_cams

    from cifarlens.evaluation.predict import Predictor

    model, spec, _ = _load(run)
    methods = _methods(method)
    imgs, labels, tags = choose_images(run, images, index, split, data_dir)
    x = model_input(imgs, spec)
    probs = Predictor(model, spec).probabilities(imgs)
    caps = spec.capabilities(model)
    if target_class is None:
        targets = probs.argmax(1).tolist()
    else:
        targets = [_class_index(target_class, spec.classes)] * len(x)
    metric = DeletionInsertion(model, steps=10)
    heatmaps, rows = {}, []
    for m in methods:
        explainer = CamExplainer(model, m, capabilities=caps, target_layer=target_layer, image_size=spec.image_size)
        maps = explainer(x, targets)
        heatmaps[m] = maps
        for i in range(len(x)):
            curves = metric(x[i : i + 1], maps[i : i + 1], [targets[i]])
            peak = np.unravel_index(int(maps[i].argmax()), maps[i].shape)
            rows.append({"image": tags[i], "method": m, "target_layer": explainer.target_layer,
                         "map_size": "x".join(map(str, explainer.map_size)),
                         "label": spec.classes[labels[i]] if labels else "", "explained_class": spec.classes[targets[i]],
                         "probability": float(probs[i, targets[i]]), "peak_row": int(peak[0]), "peak_col": int(peak[1]),
                         **curves.auc(), "seconds_per_image": explainer.time_per_image})  # fmt: skip
    out = _out(run, "cam")
    stem = "_".join(m.replace("+", "p") for m in methods)
    captions = [f"{t}: {spec.classes[c]} {float(probs[i, c]):.0%}" for i, (t, c) in enumerate(zip(tags, targets))]
    by_method = {m: np.mean([r["deletion_auc"] for r in rows if r["method"] == m]) for m in methods}
    layers = sorted({f"{r['target_layer']} ({r['map_size']} maps)" for r in rows})
    title = (f"{spec.name} at {', '.join(layers)}, deletion AUC (lower: more faithful): "
             + ", ".join(f"{m} {v:.3f}" for m, v in by_method.items()))  # fmt: skip
    plot_cams(denormalize(x, spec).permute(0, 2, 3, 1).numpy(), heatmaps, out / f"{stem}.png", captions=captions, title=title)
    _csv(out / f"{stem}.csv", rows)
    console.print(title)
    _wrote(out / f"{stem}.png", out / f"{stem}.csv")


def _class_index(text: str, classes: tuple[str, ...]) -> int:
    if text in classes:
        return classes.index(text)
    if text.isdigit() and int(text) < len(classes):
        return int(text)
    raise CifarlensError(f"unknown class {text!r}; give a name or number: {', '.join(classes)}")


@app.command("attribute")
@user_errors
def attribute_command(
    run: RunArg,
    images: Annotated[Optional[list[Path]], typer.Argument(help="image files (PNG/JPEG); or use --index")] = None,
    index: Annotated[Optional[str], typer.Option(help="images of --split by index: 0-7 or 0,3,9")] = None,
    method: Annotated[str, typer.Option(help="comma-separated attribution methods (see the README's table): "
                                        "saliency, integrated-gradients, occlusion, gradcam, ...")] = "saliency,integrated-gradients,smoothgrad,occlusion,gradcam,guided-gradcam",
    target: Annotated[str, typer.Option(help="class explained: pred (predicted), true (the label), or a class name/number")] = "pred",
    baseline: Annotated[str, typer.Option(help="reference image of integrated-gradients, gradient-shap, deeplift, "
                                          "occlusion, feature-ablation, kernel-shap, lime: black, blur or mean (the training mean)")] = "black",
    target_layer: Annotated[Optional[str], typer.Option(help="module the CAM methods look at (default: see explain layers)")] = None,
    split: SplitOpt = "test",
    data_dir: DataDirOpt = None,
    device: DeviceOpt = "auto",
    seed: Annotated[int, typer.Option(help="seed of the sampling methods (smoothgrad, gradient-shap, kernel-shap, lime)")] = 0,
) -> None:
    """Pixel-resolution attribution maps of Captum and grad-cam methods, each scored by deletion and insertion."""
    import numpy as np

    from cifarlens.explain.attribution import attribute, check_methods

    methods = check_methods([m.strip() for m in method.split(",") if m.strip()])
    with console.status(f"computing {len(methods)} attribution methods"):
        result = attribute(run, methods=methods, images=images, index=index, target=target, baseline=baseline,
                           target_layer=target_layer, split=split, data_dir=data_dir, device=device, seed=seed)  # fmt: skip
    table = Table(title=f"{result.model_name}: attribution on {len(result.tags)} images (mean over them)",
                  title_justify="left")  # fmt: skip
    for col in ("method", "library", "deletion AUC (low)", "insertion AUC (high)", "ms / image"):
        table.add_column(col, justify="left" if col in ("method", "library") else "right")
    for name in methods:
        rows = [r for r in result.rows if r["method"] == name]
        table.add_row(name, rows[0]["library"], f"{np.mean([r['deletion_auc'] for r in rows]):.3f}",
                      f"{np.mean([r['insertion_auc'] for r in rows]):.3f}", f"{rows[0]['ms_per_image']:.1f}")  # fmt: skip
    console.print(table)
    _wrote(*result.write(_out(run, "attribute")))


@app.command("compare-cam")
@user_errors
def compare_cam_command(
    run: RunArg,
    methods: Annotated[str, typer.Option(help="comma-separated CAM methods")] = "gradcam,gradcam++,layercam,eigencam,scorecam",
    n: Annotated[int, typer.Option(help="test images scored (the first N)")] = 100,
    steps: Annotated[int, typer.Option(help="points on each deletion/insertion curve")] = 16,
    target_layer: Annotated[Optional[str], typer.Option(help="module every method looks at (default: see explain layers)")] = None,
    seed: Annotated[int, typer.Option(help="seed of the random-map reference (random channel weights)")] = 0,
    data_dir: DataDirOpt = None,
) -> None:
    """Faithfulness of CAM methods: deletion/insertion curves and AUCs on N test images, against a random map, with time per image."""
    import numpy as np
    import torch

    from cifarlens.explain.cam import RANDOM, CamExplainer
    from cifarlens.explain.faithfulness import DeletionInsertion
    from cifarlens.explain.images import model_input
    from cifarlens.explain.plots import plot_curves
    from cifarlens.run import write_json

    model, spec, _ = _load(run)
    chosen = _methods(methods)
    if n < 1:
        raise CifarlensError(f"--n must be at least 1, got {n}")
    from cifarlens.evaluation.predict import Predictor

    test = _split(run, "test", data_dir)[1]
    x = model_input(test.images[:n], spec)
    targets = Predictor(model, spec).logits(test.images[:n]).argmax(1).tolist()  # the predicted class, as explain cam
    caps = spec.capabilities(model)
    metric = DeletionInsertion(model, steps=steps)
    rows, curves, maps_by, seconds, layers = [], {}, {}, {}, {}
    with console.status(f"computing {len(chosen)} CAM methods on {len(x)} images"):
        for m in [*chosen, RANDOM]:
            explainer = CamExplainer(model, m, capabilities=caps, target_layer=target_layer,
                                     image_size=spec.image_size, seed=seed)  # fmt: skip
            maps_by[m] = explainer(x, targets)
            seconds[m] = explainer.time_per_image
            layers[m] = f"{explainer.target_layer} ({explainer.map_size[0]}x{explainer.map_size[1]})"
    with console.status("deletion and insertion curves"):
        for m, maps in maps_by.items():
            result = metric(x, maps, targets)
            curves[m] = {"deletion": result.deletion, "insertion": result.insertion}
            rows.append({"method": m, "target_layer": layers[m], **result.auc(), "seconds_per_image": seconds[m]})
    rows.sort(key=lambda r: r["insertion_auc"] - r["deletion_auc"], reverse=True)
    out = _out(run, "compare-cam")
    where = ", ".join(sorted(set(layers.values())))
    table = Table(title=f"{spec.name}: CAM faithfulness on {len(x)} test images at {where} (best first)",
                  title_justify="left")  # fmt: skip
    for col in ("method", "deletion AUC (low)", "insertion AUC (high)", "ins - del", "s / image"):
        table.add_column(col, justify="left" if col == "method" else "right")
    for r in rows:
        table.add_row(r["method"], f"{r['deletion_auc']:.3f}", f"{r['insertion_auc']:.3f}",
                      f"{r['insertion_auc'] - r['deletion_auc']:+.3f}", f"{r['seconds_per_image'] * 1000:.1f} ms")  # fmt: skip
    console.print(table)
    fractions = np.linspace(0, 1, steps + 1)
    plot_curves(fractions, curves, out / "curves.png",
                title=f"{spec.name}: deletion and insertion on {len(x)} test images, maps at {where}")  # fmt: skip
    _csv(out / "compare.csv", rows)
    write_json(out / "compare.json", {"images": len(x), "steps": steps, "methods": rows,
                                      "curves": {m: {k: v.tolist() for k, v in c.items()} for m, c in curves.items()},
                                      "fractions": fractions.tolist()})  # fmt: skip
    console.print(f"most faithful: {rows[0]['method']} (insertion AUC - deletion AUC {rows[0]['insertion_auc'] - rows[0]['deletion_auc']:+.3f})")
    _wrote(out / "curves.png", out / "compare.csv", out / "compare.json")
