"""``Explorer``: what ``cifarlens explore`` shows, as plain functions over one or two runs.

Each page of the browser app asks one method here and gets JSON-ready dicts (numbers, lists, PNG images as
data URIs), so the web layer (``cifarlens.explore.app``) only routes. What is slow to compute is computed
once through the explain library and kept in the run: the split's predictions and the channels' images under
``RUN/explore/`` (``RunDir.explore_file``), the 2-D maps where ``cifarlens explain projection`` writes them.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from cifarlens.device import resolve_device
from cifarlens.errors import ConfigError
from cifarlens.evaluation.calibration import calibration_report
from cifarlens.evaluation.metrics import classification_report
from cifarlens.experiments.compare import run_labels
from cifarlens.explain.attribution import attribute_maps, check_methods, usable_methods
from cifarlens.explain.dataset_examples import top_images
from cifarlens.explain.projection import projection_run
from cifarlens.io import atomic_path, sha256_file
from cifarlens.models.layers import FeatureExtractor, list_layers, takes_hooks
from cifarlens.robustness import CORRUPTIONS, corrupt_one
from cifarlens.robustness.cifar10c import Cifar10C
from cifarlens.run import RunDir
from cifarlens.run.predictor import Predictor

THUMBNAIL_SCALE = 4  # thumbnails: each CIFAR pixel drawn as a 4x4 block (nearest neighbour, never blurred)
OVERLAY_SIDE = 256  # attribution overlays are drawn this many pixels wide
FEATURE_TILES = 32  # feature maps shown per layer, the strongest channels first
PROJECTION_METHODS = ("pca", "tsne", "umap")
FLIPPED_SHOWN = 8  # flipped images shown per robustness cell, each with two attributions
MISTAKES_SHOWN = 40  # most confident mistakes on the calibration page
DEFAULT_METHODS = ("saliency", "integrated-gradients", "gradcam", "layercam")  # ticked on the Image page


class NotFound(ConfigError):
    """A run, image, class or layer that is not there: the app answers 404."""


def png_bytes(image: np.ndarray) -> bytes:
    """uint8 (H, W, 3) or (H, W) -> PNG file bytes."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="PNG")
    return buf.getvalue()


def data_uri(image: np.ndarray) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes(image)).decode("ascii")


def upscale(image: np.ndarray, scale: int) -> np.ndarray:
    """Nearest-neighbour enlargement of (H, W, ...) by an integer ``scale``: every pixel stays a sharp square."""
    return image.repeat(scale, axis=0).repeat(scale, axis=1)


def colour_map(values: np.ndarray, name: str) -> np.ndarray:
    """float (H, W) in [0, 1] -> uint8 (H, W, 3) through a matplotlib colour map."""
    from matplotlib import colormaps

    return (colormaps[name](np.clip(values, 0, 1))[..., :3] * 255).round().astype(np.uint8)


def overlay(image: np.ndarray, heat: np.ndarray, side: int = OVERLAY_SIDE) -> np.ndarray:
    """uint8 image (h, w, 3) under a heat map (H, W) scaled to [0, 1]: ``side`` pixels wide, the image enlarged
    by nearest neighbour (pixel-sharp) and the map bilinearly (it is a continuous field), blended half and half."""
    scale = max(1, side // image.shape[0])
    big = upscale(image, scale).astype(np.float32)
    peak = max(float(heat.max()), 1e-12)
    field = F.interpolate(
        torch.from_numpy(heat / peak)[None, None].float(), size=big.shape[:2], mode="bilinear", align_corners=False
    )[0, 0].numpy()
    return (0.5 * big + 0.5 * colour_map(field, "jet")).round().astype(np.uint8)


def feature_tiles(
    maps: torch.Tensor, *, count: int = FEATURE_TILES, tile: int = 48, columns: int = 8
) -> tuple[np.ndarray, list[int]]:
    """(C, h, w) activations -> (one uint8 image, the channels in it) of the ``count`` channels with the highest
    mean, each scaled by its own maximum (viridis) and enlarged to ``tile`` pixels by nearest neighbour, ``columns``
    per row."""
    order = maps.flatten(1).mean(1).argsort(descending=True)[:count]
    chosen = maps[order].clamp_min(0)
    chosen = chosen / chosen.flatten(1).amax(1).clamp_min(1e-12)[:, None, None]
    scale = max(1, tile // maps.shape[-1])
    tiles = [upscale(colour_map(m.numpy(), "viridis"), scale) for m in chosen]
    rows = []
    for start in range(0, len(tiles), columns):
        row = tiles[start : start + columns]
        row += [np.full_like(tiles[0], 255)] * (columns - len(row))
        rows.append(np.concatenate([np.pad(t, ((2, 2), (2, 2), (0, 0)), constant_values=255) for t in row], axis=1))
    return np.concatenate(rows, axis=0), order.tolist()


class Explorer:
    """One or two trained runs and a split of their data, ready to answer the explorer's pages.

    ``runs``: run directories (two to compare); ``split``: test, val or train (the runs must share its images);
    ``device``: where the models run. Models load on first use; calls into a model hold a lock, so the web
    server's threads never run one module at once.
    """

    def __init__(
        self, runs: list[str | Path], *, split: str = "test", data_dir: str | None = None, device: str = "cpu"
    ):

        if not 1 <= len(runs) <= 2:
            raise ConfigError(f"explore shows one run, or two to compare; got {len(runs)}")
        self.runs = [RunDir(r).require_weights() for r in runs]
        self.split = split
        chosen = self.runs[0].load_data(data_dir).split(split)
        self.images, self.labels = chosen.images, chosen.labels  # uint8 (N, 3, H, W), int64 (N,)
        self.classes = tuple(self.runs[0].read_spec().classes)
        for other in self.runs[1:]:
            theirs = other.load_data(data_dir).split(split)
            if len(theirs) != len(chosen) or not torch.equal(theirs.labels, chosen.labels):
                raise ConfigError(
                    f"the two runs' {split} splits hold different images (another --val-size or "
                    "seed); compare them on --split test"
                )
            if tuple(other.read_spec().classes) != self.classes:
                raise ConfigError(f"{self.runs[0]} and {other} predict different classes; compare runs of one dataset")
        self.device = resolve_device(device)
        self._models: dict[int, tuple] = {}
        self._probabilities: dict[int, np.ndarray] = {}
        self._layers: dict[int, dict[str, Any]] = {}  # list_layers runs the model: once per run
        self._extractors: dict[tuple[int, str], Any] = {}
        self._lock = threading.RLock()

    # -- runs and models ------------------------------------------------------------------------------------
    def run(self, r: int) -> RunDir:
        if not 0 <= r < len(self.runs):
            raise NotFound(f"no run {r}: this explorer shows runs 0-{len(self.runs) - 1}")
        return self.runs[r]

    def model(self, r: int):
        """(model in eval mode on the explorer's device, its ModelSpec) of run ``r``, loaded once."""
        run = self.run(r)
        with self._lock:
            if r not in self._models:
                self._models[r] = run.load_model(self.device)
            return self._models[r]

    def run_label(self, r: int) -> str:
        """The run's short unique name (its folder name, more of the path where two names are the same)."""

        self.run(r)  # an unknown r: NotFound
        return run_labels([run.path for run in self.runs])[r]

    def info(self) -> dict[str, Any]:
        """What every page needs: the runs, the split, the classes, the layers and the attribution methods."""

        model, spec = self.model(0)
        methods = usable_methods(model, spec.capabilities(model))
        defaults = [m for m in DEFAULT_METHODS if m in methods] or methods[:2]
        return {
            "runs": [self.run_label(r) for r in range(len(self.runs))],
            "split": self.split,
            "images": len(self.labels),
            "classes": list(self.classes),
            "layers": self.layers(0),
            "methods": methods,  # an ONNX graph gives no gradients: only the gradient-free ones
            "default_methods": defaults,
            "projection_methods": list(PROJECTION_METHODS),
        }

    def layers(self, r: int) -> dict[str, Any]:
        """The probe stages (features for the map), the spatial ones (feature maps, channels) and the CAM layer."""

        if r in self._layers:
            return self._layers[r]
        model, spec = self.model(r)
        caps = spec.capabilities(model)
        if not takes_hooks(model):  # TorchScript or an ONNX graph: no layer to read (no map, feature maps, channels)
            self._layers[r] = {"probe": [], "spatial": [], "shapes": {}, "feature_maps": None, "cam_layer": None}
            return self._layers[r]
        shapes = {info.name: list(info.shape) for info in list_layers(model, spec.image_size)}
        stages = list(caps.probe_stages)
        spatial = [s for s in stages if len(shapes.get(s, ())) == 3]
        fine = [s for s in spatial if min(shapes[s][1:]) >= 7]  # maps a person can read, as the CAM layer's
        self._layers[r] = {
            "probe": stages,
            "spatial": spatial,
            "shapes": {s: shapes.get(s) for s in stages},
            "feature_maps": (fine or spatial or [None])[-1],
            "cam_layer": caps.cam_layer,
        }
        return self._layers[r]

    # -- predictions --------------------------------------------------------------------------------------------
    def probabilities(self, r: int) -> np.ndarray:
        """Softmax (N, classes) of run ``r`` on the split (no TTA), cached in ``RUN/explore/``."""
        with self._lock:
            if r not in self._probabilities:
                self._probabilities[r] = self._cached_probabilities(r)
            return self._probabilities[r]

    def _cached_probabilities(self, r: int) -> np.ndarray:
        from safetensors.numpy import load_file, save_file

        run = self.run(r)
        path = run.explore_predictions_file(self.split)
        stamp = {
            "weights_sha256": sha256_file(run.weights_file),
            "images": str(len(self.labels)),
            "labels_sha256": hashlib.sha256(self.labels.numpy().tobytes()).hexdigest(),
        }
        if path.is_file() and _metadata(path) == stamp:
            return load_file(str(path))["probabilities"]
        model, spec = self.model(r)
        probs = Predictor(model, spec, device=self.device).probabilities(self.images).float().numpy()
        with atomic_path(path) as tmp:
            save_file({"probabilities": np.ascontiguousarray(probs)}, str(tmp), metadata=stamp)
        return probs

    def predicted(self, r: int) -> np.ndarray:
        return self.probabilities(r).argmax(1)

    def describe(self, indices: list[int] | np.ndarray, r: int = 0) -> list[dict[str, Any]]:
        """Per image: index, true class, run ``r``'s prediction and its probability (and the other run's)."""
        rows = []
        for i in map(int, indices):
            row = {"index": i, "label": self.classes[int(self.labels[i])]}
            for s in range(len(self.runs)):
                probs = self.probabilities(s)[i]
                key = "" if s == r else "_other"
                row[f"predicted{key}"] = self.classes[int(probs.argmax())]
                row[f"confidence{key}"] = round(float(probs.max()), 4)
            rows.append(row)
        return rows

    # -- pages: overview, confusion, disagreements -----------------------------------------------------------------
    def overview(self, r: int) -> dict[str, Any]:
        """Config, headline accuracy (TTA when scored, the plain one beside), per-class scores, curves, provenance."""

        run = self.run(r)
        headline = run.headline()
        per_class = run.read_per_class(headline["key"]) if headline else []
        source = f"per_class_{headline['key']}.csv" if per_class else f"computed by explore on the {self.split} split"
        if not per_class:
            logits = torch.from_numpy(np.log(np.clip(self.probabilities(r), 1e-12, None)))
            per_class = classification_report(logits, self.labels, self.classes)["per_class"]
        return {
            "run": self.run_label(r),
            "path": str(run.path.resolve()),
            "config": run.config,
            "headline": headline,
            "per_class": per_class,
            "per_class_source": source,
            "metrics": run.metrics,
            "provenance": {k: run.provenance.get(k) for k in ("cifarlens", "git_sha", "processor", "cuda")},
            "explore_accuracy": float((self.predicted(r) == self.labels.numpy()).mean()),
        }

    def confusion(self, r: int) -> dict[str, Any]:
        """Counts (true class x predicted class) of run ``r`` on the split, no TTA."""
        k = len(self.classes)
        matrix = np.zeros((k, k), dtype=np.int64)
        np.add.at(matrix, (self.labels.numpy(), self.predicted(r)), 1)
        return {
            "classes": list(self.classes),
            "matrix": matrix.tolist(),
            "images": int(matrix.sum()),
            "accuracy": float(np.trace(matrix) / max(matrix.sum(), 1)),
        }

    def cell(self, r: int, true: int, predicted: int) -> dict[str, Any]:
        """The images of class ``true`` that run ``r`` predicts as ``predicted``, most confident first."""
        for name, value in (("true", true), ("predicted", predicted)):
            if not 0 <= value < len(self.classes):
                raise NotFound(f"no class {value} ({name}); classes are 0-{len(self.classes) - 1}")
        probs = self.probabilities(r)
        hits = np.flatnonzero((self.labels.numpy() == true) & (probs.argmax(1) == predicted))
        order = hits[np.argsort(-probs[hits, predicted], kind="stable")]
        return {
            "true": self.classes[true],
            "predicted": self.classes[predicted],
            "count": len(order),
            "images": self.describe(order, r),
        }

    def disagreements(self) -> dict[str, Any]:
        """With two runs: the images the first gets right and the second wrong, and the reverse, each list
        sorted by the right run's confidence."""
        if len(self.runs) < 2:
            raise NotFound("one run only: start explore with two runs to compare them")
        truth = self.labels.numpy()
        right = [self.predicted(r) == truth for r in (0, 1)]
        lists = {}
        for r, key in ((0, "only_first"), (1, "only_second")):
            hits = np.flatnonzero(right[r] & ~right[1 - r])
            confidence = self.probabilities(r)[hits].max(1)
            lists[key] = self.describe(hits[np.argsort(-confidence, kind="stable")], r)
        return {
            "runs": [self.run_label(0), self.run_label(1)],
            **lists,
            "both_right": int((right[0] & right[1]).sum()),
            "both_wrong": int((~right[0] & ~right[1]).sum()),
        }

    # -- images ------------------------------------------------------------------------------------------------
    def image(self, index: int) -> torch.Tensor:
        if not 0 <= index < len(self.labels):
            raise NotFound(f"no image {index}: the {self.split} split has images 0-{len(self.labels) - 1}")
        return self.images[index]

    def thumbnail(self, index: int, scale: int = THUMBNAIL_SCALE) -> bytes:
        """Image ``index`` of the split as a PNG, each pixel a ``scale`` x ``scale`` square."""
        return png_bytes(upscale(self.image(index).permute(1, 2, 0).numpy(), max(1, min(scale, 16))))

    def explain(
        self, r: int, image: torch.Tensor, *, methods: list[str], layer: str | None = None, index: int | None = None
    ) -> dict[str, Any]:
        """For one uint8 image (3, H, W): run ``r``'s top-5 classes, an attribution overlay per method for the
        predicted class (``attribute_maps``, the library behind ``explain attribute``) and the feature maps of
        ``layer`` (default: the deepest spatial probe stage of at least 7x7). ``methods`` may be empty: no
        attribution."""
        if methods:
            check_methods(methods)
        model, spec = self.model(r)
        layers = self.layers(r)
        layer = layer or layers["feature_maps"]
        with self._lock:
            predictor = Predictor(model, spec, device=self.device)
            probs = predictor.probabilities(image[None])[0]
            x = predictor.inputs(image[None])
            target = int(probs.argmax())
            t0 = time.perf_counter()
            found = (
                attribute_maps(
                    model,
                    x,
                    [target],
                    methods,
                    capabilities=spec.capabilities(model),
                    mean=spec.mean,
                    std=spec.std,
                    seed=0,
                )
                if methods
                else {}
            )
            seconds = time.perf_counter() - t0
            outputs = None
            if layer is not None:
                if (r, layer) not in self._extractors:  # building one traces the model: once per run and layer
                    self._extractors[r, layer] = FeatureExtractor(model, [layer])
                outputs = self._extractors[r, layer](x)[layer][0].detach().float().cpu()
        pixels = image.permute(1, 2, 0).numpy()
        top = probs.argsort(descending=True)[:5].tolist()
        result = {
            "index": index,
            "label": self.classes[int(self.labels[index])] if index is not None else None,
            "image": data_uri(upscale(pixels, OVERLAY_SIDE // pixels.shape[0])),
            "top5": [{"class": self.classes[c], "probability": float(probs[c])} for c in top],
            "explained": self.classes[target],
            "attribution_seconds": seconds,
            "attributions": [
                {"method": m, "image": data_uri(overlay(pixels, a.maps[0])), "ms": round(1000 * a.seconds_per_image, 1)}
                for m, a in found.items()
            ],
        }
        if outputs is None:
            result["feature_maps"] = {"layer": None, "shape": [], "channels": [], "image": None}
        elif outputs.ndim == 3:
            grid, channels = feature_tiles(outputs)
            result["feature_maps"] = {
                "layer": layer,
                "shape": list(outputs.shape),
                "channels": channels,
                "image": data_uri(grid),
            }
        else:
            result["feature_maps"] = {"layer": layer, "shape": list(outputs.shape), "channels": [], "image": None}
        return result

    # -- robustness and calibration ----------------------------------------------------------------------------
    def robustness(self, r: int, key: str | None = None) -> dict[str, Any]:
        """The corruption x severity accuracies of one ``cifarlens robustness`` result of run ``r`` (the latest,
        or ``key``), with how many images each cell flipped from right to wrong."""
        run = self.run(r)
        keys = run.robustness_keys()
        if not keys:
            return {"keys": [], "command": f"cifarlens robustness {run}"}
        key = key or keys[-1]
        if key not in keys:
            raise NotFound(f"no robustness result {key!r} in {run}; it has {', '.join(keys)}")
        numbers = run.read_robustness(key)
        names, severities = list(numbers["corruptions"]), numbers["severities"]
        cell = {(c["corruption"], c["severity"]): c for c in numbers["cells"]}
        return {
            "keys": keys,
            "key": key,
            "corruptions": names,
            "families": [CORRUPTIONS[n].family for n in names],
            "benchmark": [CORRUPTIONS[n].benchmark for n in names],
            "severities": severities,
            "accuracy": [[cell[n, s]["accuracy"] for s in severities] for n in names],
            "flipped": [[cell[n, s]["flipped"] for s in severities] for n in names],
            "ece": [[cell[n, s]["ece"] for s in severities] for n in names],
            "clean": numbers["clean"]["accuracy"],
            "clean_ece": numbers["clean"]["ece"],
            "mean_corruption_accuracy": numbers["mean_corruption_accuracy"],
            "benchmark_corruptions": numbers["benchmark_corruptions"],
            "ece_by_severity": numbers["ece_by_severity"],
            "split": numbers["split"],
            "n": numbers["n"],
            "source": numbers["source"],
            "seed": numbers["seed"],
            "backend": numbers["backend"],
        }

    def _scored_images(self, run: RunDir, numbers: dict[str, Any], saved: Any) -> torch.Tensor:
        """The images a robustness result scored, in its order (the split's images at its indices)."""
        split = run.load_data(numbers["data"]["folder"]).split(numbers["split"])
        return split.images[torch.from_numpy(saved["indices"])]

    def robustness_flipped(
        self, r: int, *, key: str, corruption: str, severity: int, method: str | None = None
    ) -> dict[str, Any]:
        """The images of one robustness cell that the corruption flipped from right to wrong: each clean beside
        corrupted (made again exactly, from its seed), with ``method``'s attribution for each prediction."""
        run = self.run(r)
        if key not in run.robustness_keys():
            raise NotFound(f"no robustness result {key!r} in {run}")
        numbers = run.read_robustness(key)
        saved = np.load(run.robustness_files(key)["predictions"])
        cells = list(saved["cells"])
        name = f"{corruption}/{severity}"
        if name not in cells:
            raise NotFound(f"{key} did not score {corruption} at severity {severity}")
        predicted, clean, labels = saved["predictions"][cells.index(name)], saved["clean"], saved["labels"]
        flipped = np.flatnonzero((clean == labels) & (predicted != labels))
        model, spec = self.model(r)
        usable = usable_methods(model, spec.capabilities(model))
        method = method or next(m for m in ("gradcam", "saliency", "occlusion") if m in usable)
        check_methods([method])
        images = self._scored_images(run, numbers, saved)
        shown = []
        for position in flipped[:FLIPPED_SHOWN].tolist():
            if numbers["source"] == "cifar10c":
                index = torch.tensor([int(saved["indices"][position])])
                corrupted = Cifar10C(numbers["cifar10c_dir"]).images(corruption, severity, index)[0]
            else:
                corrupted = corrupt_one(images, position, corruption, severity, seed=numbers["seed"])
            views = self._attributed(r, torch.stack([images[position], corrupted]), method)
            shown.append(
                {
                    "position": position,
                    "index": int(saved["indices"][position]),
                    "label": self.classes[int(labels[position])],
                    "clean": views[0],
                    "corrupted": views[1],
                }
            )
        return {
            "key": key,
            "corruption": corruption,
            "severity": severity,
            "method": method,
            "count": int(len(flipped)),
            "images": shown,
        }

    def _attributed(self, r: int, images: torch.Tensor, method: str) -> list[dict[str, Any]]:
        """Per uint8 image (N, 3, H, W): the image, its prediction and ``method``'s attribution overlay for it."""
        model, spec = self.model(r)
        with self._lock:
            predictor = Predictor(model, spec, device=self.device)
            probs = predictor.probabilities(images)
            targets = probs.argmax(1).tolist()
            maps = attribute_maps(
                model,
                predictor.inputs(images),
                targets,
                [method],
                capabilities=spec.capabilities(model),
                mean=spec.mean,
                std=spec.std,
                seed=0,
            )[method].maps
        views = []
        for i, image in enumerate(images):
            pixels = image.permute(1, 2, 0).numpy()
            views.append(
                {
                    "image": data_uri(upscale(pixels, 4)),
                    "predicted": self.classes[targets[i]],
                    "confidence": round(float(probs[i].max()), 4),
                    "attribution": data_uri(overlay(pixels, maps[i], side=128)),
                }
            )
        return views

    def calibration(self, r: int) -> dict[str, Any]:
        """Run ``r``'s calibration on the split (no TTA): ECE, MCE, NLL, Brier, the reliability bins and the
        risk-coverage curve, the same after the run's temperature when it was calibrated, and the most
        confident mistakes."""
        run = self.run(r)
        probs = torch.from_numpy(self.probabilities(r)).double()
        log_probs = probs.clamp_min(1e-12).log()  # softmax(log p) = p: the report's logits
        result = {"split": self.split, "n": len(self.labels), **calibration_report(log_probs, self.labels)}
        temperature = run.temperature
        if temperature != 1.0:
            result["temperature"] = temperature
            result["calibrated"] = calibration_report(log_probs / temperature, self.labels)  # softmax(z/T) up to shift
        predicted = probs.argmax(1)
        wrong = torch.nonzero(predicted != self.labels).flatten()
        order = wrong[probs[wrong].max(1).values.argsort(descending=True)][:MISTAKES_SHOWN]
        result["mistakes"] = self.describe(order.tolist(), r)
        result["mistakes_total"] = int(len(wrong))
        return result

    # -- the map ---------------------------------------------------------------------------------------------------
    def projection(self, r: int, *, layer: str | None = None, method: str = "pca") -> dict[str, Any]:
        """2-D map of the whole split's features at ``layer`` (default: the deepest probe stage) by ``method``,
        computed through ``explain projection`` once and read back from ``RUN/explain/projection/`` after."""

        if method not in PROJECTION_METHODS:
            raise ConfigError(f"unknown projection method {method!r}; use one of {', '.join(PROJECTION_METHODS)}")
        run = self.run(r)
        stages = self.layers(r)["probe"]
        layer = layer or stages[-1]
        if layer not in stages:
            raise NotFound(f"no probe stage {layer!r}; the map can show {', '.join(stages)}")
        files = run.projection_files(layer, method)
        numbers, points_file = files["numbers"], files["points"]
        saved = _read_json(numbers)
        if saved.get("split") == self.split and saved.get("images") == len(self.labels) and points_file.is_file():
            points, quality = np.load(points_file, allow_pickle=False), saved
        else:
            with self._lock:
                result = projection_run(run.path, layer=layer, method=method, split=self.split, device=str(self.device))
            result.write(run.explain_dir("projection"))
            points, quality = result.projection.points, {**result.quality, "backend": result.projection.backend}
        predicted = self.predicted(r)
        truth = self.labels.numpy()
        return {
            "layer": layer,
            "method": method,
            "x": np.round(points[:, 0], 4).tolist(),
            "y": np.round(points[:, 1], 4).tolist(),
            "label": truth.tolist(),
            "predicted": predicted.tolist(),
            "correct": (predicted == truth).tolist(),
            "classes": list(self.classes),
            "quality": {
                k: quality.get(k) for k in ("trustworthiness", "knn_accuracy_2d", "knn_accuracy_features", "backend")
            },
        }

    # -- channels ----------------------------------------------------------------------------------------------------
    def channels(self, r: int, *, layer: str | None = None, channels: str = "0-7", k: int = 8) -> dict[str, Any]:
        """Per channel of ``layer``: its activation-maximisation image and its ``k`` top images of the split
        (``explain top-images``), computed once and kept in ``RUN/explore/``."""
        from safetensors.numpy import load_file, save_file

        run = self.run(r)
        spatial = self.layers(r)["spatial"]
        layer = layer or spatial[-1]
        if layer not in spatial:
            raise NotFound(f"no spatial probe stage {layer!r}; channels can be shown for {', '.join(spatial)}")
        path = run.explore_channels_file(self.split, layer, channels, k)
        stamp = {"weights_sha256": sha256_file(run.weights_file), "images": str(len(self.labels))}
        if path.is_file() and _metadata(path) == stamp:
            saved = load_file(str(path))
        else:
            with self._lock:
                found = top_images(
                    run.path, layer=layer, channels=channels, k=k, split=self.split, device=str(self.device)
                )
            saved = {
                "channels": np.array([c.channel for c in found.channels], dtype=np.int64),
                "optimised": np.stack([(c.optimised * 255).round().astype(np.uint8) for c in found.channels]),
                "indices": np.array([c.indices for c in found.channels], dtype=np.int64),
                "scores": np.stack([c.scores.astype(np.float32) for c in found.channels]),
            }
            with atomic_path(path) as tmp:
                save_file(saved, str(tmp), metadata=stamp)
        scale = max(1, 96 // saved["optimised"].shape[1])
        return {
            "layer": layer,
            "k": k,
            "channels": [
                {
                    "channel": int(c),
                    "optimised": data_uri(upscale(img, scale)),
                    "top": [{**row, "score": round(float(s), 4)} for row, s in zip(self.describe(idx, r), scores)],
                }
                for c, img, idx, scores in zip(saved["channels"], saved["optimised"], saved["indices"], saved["scores"])
            ],
        }


def _metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="numpy") as f:
            return dict(f.metadata() or {})
    except Exception:  # a damaged cache file is recomputed, whatever safetensors raises
        return {}


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
