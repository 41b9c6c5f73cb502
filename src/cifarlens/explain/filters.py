"""Conv filters and feature maps as image grids, with the numbers that summarise them."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from cifarlens.explain.images import choose_images
from cifarlens.explain.plots import plot_tiles
from cifarlens.explain.run_model import load_run_model
from cifarlens.models.layers import FeatureExtractor, LayerError, list_layers
from cifarlens.run import RunDir, write_json
from cifarlens.run.predictor import Predictor


def conv_layers(model: nn.Module) -> dict[str, nn.Conv2d]:
    """Every Conv2d (airnet's whitening layer included) by module name, in definition order."""
    return {name: m for name, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def pick_conv(model: nn.Module, name: str | None) -> tuple[str, nn.Conv2d]:
    """The conv called ``name`` (default: the first one); an unknown name lists the conv layers."""
    convs = conv_layers(model)
    if not convs:
        raise LayerError(f"{type(model).__name__} has no Conv2d layer to show filters of")
    if name is None:
        return next(iter(convs.items()))
    if name not in convs:
        raise LayerError(f"{name!r} is not a conv layer of this model; conv layers: {', '.join(convs)}")
    return name, convs[name]


def filter_tiles(weight: torch.Tensor, *, max_out: int = 64, max_in: int = 16) -> tuple[np.ndarray, list[str]]:
    """Tiles of conv weights (O, I, k, k): RGB (O, k, k, 3) when I == 3, else per-channel (O*I', k, k) grayscale.

    Each filter is scaled symmetrically so that 0 is mid-grey (0.5) and its largest |weight| reaches 0 or 1.
    """
    w = weight.detach().float().cpu()[:max_out]
    scale = w.abs().flatten(1).amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
    w = (w / scale / 2 + 0.5).numpy()
    if w.shape[1] == 3:
        return w.transpose(0, 2, 3, 1), [f"{o}" for o in range(len(w))]
    w = w[:, :max_in]
    tiles = w.reshape(-1, *w.shape[2:])
    labels = [f"{o}<-{i}" for o in range(w.shape[0]) for i in range(w.shape[1])]
    return tiles, labels


def filter_stats(weight: torch.Tensor) -> dict:
    """Per-filter L2 norms, the share of near-dead filters and the effective rank of the filter bank.

    Effective rank is the participation ratio (sum s)^2 / sum s^2 of the singular values of the
    (O, I*k*k) filter matrix: 1 when all filters are alike, up to min(O, I*k*k) when they are diverse.
    """
    w = weight.detach().float().cpu().flatten(1)
    norms = w.norm(dim=1)
    s = torch.linalg.svdvals(w)
    return {
        "filters": int(w.shape[0]),
        "filter_size": list(weight.shape[1:]),
        "norms": [round(float(n), 6) for n in norms],
        "dead_fraction": float((norms < 1e-3 * norms.max().clamp_min(1e-12)).float().mean()),
        "effective_rank": float(s.sum() ** 2 / (s**2).sum().clamp_min(1e-12)),
        "max_rank": int(min(w.shape)),
    }


def feature_map_stats(maps: torch.Tensor) -> dict:
    """Numbers for one image's maps (C, H, W): per-channel mean, share of positive units, dead channels."""
    flat = maps.detach().float().flatten(1)
    return {
        "channels": int(flat.shape[0]),
        "size": list(maps.shape[1:]),
        "channel_means": [round(float(v), 6) for v in flat.mean(1)],
        "active_fraction": float((flat > 0).float().mean()),
        "dead_channels": int((flat.amax(1) <= 0).sum()),
    }


@dataclass
class FiltersResult:
    """What ``filters_run`` found for one conv layer: its statistics and its kernels as tiles."""

    model_name: str
    layer: str
    stats: dict  # filter_stats
    tiles: np.ndarray  # RGB (O, k, k, 3) for a first layer, else grayscale (O*I, k, k); in [0, 1]
    tile_labels: list[str]
    columns: int  # 0 for RGB tiles (a square grid), else one row per filter

    @property
    def title(self) -> str:
        s = self.stats
        return (
            f"{self.model_name} {self.layer}: {s['filters']} filters {'x'.join(map(str, s['filter_size']))}, "
            f"effective rank {s['effective_rank']:.1f} of {s['max_rank']}, dead {s['dead_fraction']:.0%}"
        )

    def write(self, folder: str | Path) -> list[Path]:
        """``<layer>.png`` (the kernels) and ``<layer>.json`` (the statistics) into ``folder``."""

        folder, stem = Path(folder), RunDir.file_stem(self.layer)
        paths = [folder / f"{stem}.png", folder / f"{stem}.json"]
        plot_tiles(
            self.tiles,
            paths[0],
            labels=self.tile_labels,
            title=self.title,
            columns=self.columns,
            cmap="gray",
            tile_inches=0.5 if self.columns else 0.7,
        )
        write_json(paths[1], {"layer": self.layer, **self.stats})
        return paths


def filters_run(
    run: str | Path, *, layer: str | None = None, max_filters: int = 64, device: str = "cpu"
) -> FiltersResult:
    """The kernels (O, I, k, k) of conv ``layer`` (default: the first) of the run's model: their norms and effective
    rank, and up to ``max_filters`` of them as tiles (at most 16 for a layer that does not see RGB, each shown per
    input channel, up to 16 channels)."""

    model, spec, _ = load_run_model(run, device)
    name, conv = pick_conv(model, layer)
    in_channels = conv.weight.shape[1]
    rgb = in_channels == 3
    tiles, labels = filter_tiles(conv.weight, max_out=max_filters if rgb else min(max_filters, 16))
    return FiltersResult(spec.name, name, filter_stats(conv.weight), tiles, labels, 0 if rgb else min(in_channels, 16))


@dataclass
class FeatureMapsResult:
    """What ``feature_maps_run`` saw for one image: the model's prediction and per layer its maps and statistics."""

    tag: str  # the image's name: its file name, or split and index (test3)
    label: str | None  # None for an image file
    predicted: str
    probability: float
    maps: dict[str, torch.Tensor]  # layer -> (C, H, W) on the CPU
    stats: dict[str, dict]  # layer -> feature_map_stats
    channels: int  # channels drawn per layer, the highest mean first

    def title(self, layer: str) -> str:
        s = self.stats[layer]
        return (
            f"{self.tag} {layer}: {s['channels']} channels {s['size'][0]}x{s['size'][1]}, "
            f"{s['active_fraction']:.0%} of units > 0, {s['dead_channels']} dead channels"
        )

    def write(self, folder: str | Path) -> list[Path]:
        """``<tag>_<layer>.png`` per layer (the strongest channels) and ``<tag>.json`` (the numbers) into ``folder``."""

        folder = Path(folder)
        paths = []
        for layer, maps in self.maps.items():
            order = maps.flatten(1).mean(1).argsort(descending=True)[: self.channels]
            path = folder / f"{self.tag}_{RunDir.file_stem(layer)}.png"
            plot_tiles(
                maps[order].numpy(),
                path,
                labels=[f"ch{int(c)}" for c in order],
                title=self.title(layer),
                tile_inches=0.8,
            )
            paths.append(path)
        paths.append(folder / f"{self.tag}.json")
        write_json(
            paths[-1],
            {
                "image": self.tag,
                "label": self.label,
                "predicted": self.predicted,
                "probability": self.probability,
                "layers": self.stats,
            },
        )
        return paths


def feature_maps_run(
    run: str | Path,
    *,
    image: str | Path | None = None,
    index: str | None = None,
    layers: list[str] | None = None,
    channels: int = 32,
    split: str = "test",
    data_dir: str | None = None,
    device: str = "cpu",
) -> FeatureMapsResult:
    """Activations (C, H, W) of ``layers`` (default: the spatial probe stages) for one image, an image file or
    the ``index`` of the run's ``split``, computed on ``device``."""

    model, spec, dev = load_run_model(run, device)
    imgs, labels, tags = choose_images(run, [image] if image else None, index, split, data_dir)
    imgs = imgs[:1]
    if not layers:
        shapes = {i.name: i.shape for i in list_layers(model, spec.image_size)}
        layers = [n for n in spec.capabilities(model).probe_stages if len(shapes[n]) == 3]
    with torch.no_grad():
        outputs = FeatureExtractor(model, layers)(spec.inputs(imgs.to(dev)))
    maps = {name: _spatial(outputs[name], name)[0].cpu() for name in layers}
    probs = Predictor(model, spec, device=dev).probabilities(imgs)[0]
    pred = int(probs.argmax())
    label = spec.classes[labels[0]] if labels else None
    stats = {name: feature_map_stats(m) for name, m in maps.items()}
    return FeatureMapsResult(tags[0], label, spec.classes[pred], float(probs[pred]), maps, stats, channels)


def _spatial(output: torch.Tensor, name: str) -> torch.Tensor:
    if output.ndim != 4:
        raise LayerError(f"layer {name!r} outputs shape {tuple(output.shape)}, not (C, H, W) maps; pick a conv layer")
    return output
