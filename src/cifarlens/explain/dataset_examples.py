"""Dataset examples beside optimisation: for each channel of a layer, the k images of a split that excite it
most, next to the image optimised to excite it (Olah et al. 2017, "Feature Visualization", Distill).

``top_activations(model, spec, images, layer, channels, k=...)`` scans images in batches and keeps a running
top k per channel, so memory holds (channels, k + batch) scores and maps however large the split is.
``top_images(run, ...)`` adds each channel's activation-maximisation image (``ActivationMaximiser``, the
settings of ``explain activation-max``) and returns a ``TopImagesResult``; its ``write(folder)`` draws the
figure and writes the numbers.

An image's score for a channel is the channel's spatial MAX activation: a unit that fires strongly
somewhere in the image, as a detector of a local pattern would, rather than weakly everywhere.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlens.errors import CifarlensError
from cifarlens.explain.activation_max import ActivationMaximiser, MaximisedImages, colour_correlation_sqrt
from cifarlens.explain.images import parse_indices
from cifarlens.explain.plots import plot_top_images
from cifarlens.explain.run_model import load_run_model
from cifarlens.models.layers import FeatureExtractor, LayerError, list_layers
from cifarlens.run import ModelSpec, RunDir, write_json


@dataclass
class TopActivations:
    """The k strongest images per channel, best first (ties: the lower index first).

    indices: int64 (C, k) positions in the scanned images; scores: (C, k) spatial max activations;
    maps: (C, k, h, w) the channel's activation map of each of those images, at the layer's resolution.
    """

    indices: torch.Tensor
    scores: torch.Tensor
    maps: torch.Tensor

    def cpu(self) -> "TopActivations":
        return TopActivations(self.indices.cpu(), self.scores.cpu(), self.maps.cpu())


def spatial_channels(model: nn.Module, layer: str, image_size: int = 32) -> int:
    """Channels of ``layer``'s (C, H, W) output; a layer without one is a ``LayerError`` naming those that have one."""
    shapes = {info.name: info.shape for info in list_layers(model, image_size)}
    if len(shapes.get(layer, ())) == 3:
        return shapes[layer][0]
    problem = f"unknown layer {layer!r}"
    if layer in shapes:
        problem = f"layer {layer!r} outputs {shapes[layer]}, not (C, H, W) maps"
    spatial = [name for name, shape in shapes.items() if len(shape) == 3]
    raise LayerError(f"{problem}; pick a layer with spatial maps: {', '.join(spatial)}")


def choose_channels(text: str, layer: str, count: int) -> list[int]:
    """'3' / '0,5,9' / '0-7' -> channel numbers (repeats dropped), each checked against the layer's ``count``."""
    chosen = list(dict.fromkeys(parse_indices(text, sys.maxsize)))  # range checked below, in words about channels
    outside = [c for c in chosen if c >= count]
    if outside:
        raise CifarlensError(
            f"channel {outside[0]} is out of range: {layer} has {count} channels (0-{count - 1}); "
            "pick --channels within them"
        )
    return chosen


def channel_maps(extractor: FeatureExtractor, layer: str, x: torch.Tensor, channels: torch.Tensor) -> torch.Tensor:
    """Normalised x (B, 3, S, S) -> the chosen channels' activation maps (C, B, h, w), float32."""
    out = extractor(x)[layer]
    if out.ndim != 4:
        raise LayerError(f"layer {layer!r} outputs {tuple(out.shape[1:])}, not (C, H, W) maps; pick a conv layer")
    return out.index_select(1, channels).transpose(0, 1).float()


def keep_best(kept: TopActivations | None, batch: TopActivations, k: int) -> TopActivations:
    """The k highest scores per channel among the kept candidates and a batch's (indices (C, n), maps (C, n, h, w))."""
    if kept is not None:
        batch = TopActivations(
            *(
                torch.cat(pair, 1)
                for pair in zip((kept.indices, kept.scores, kept.maps), (batch.indices, batch.scores, batch.maps))
            )
        )
    # The kept candidates come before the batch and have lower indices, so a stable sort keeps ties in index order.
    order = torch.sort(batch.scores, dim=1, descending=True, stable=True).indices[:, :k]
    rows = torch.arange(len(order), device=order.device)[:, None]
    return TopActivations(batch.indices.gather(1, order), batch.scores.gather(1, order), batch.maps[rows, order])


def top_activations(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    layer: str,
    channels: list[int],
    *,
    k: int = 9,
    batch_size: int = 500,
) -> TopActivations:
    """The k images of uint8 ``images`` (N, 3, H, W) with the highest spatial max of each of ``channels`` of
    ``layer`` (a layer with (C, h, w) outputs), on the model's device; returned on the CPU."""
    if not 1 <= k <= len(images):
        raise CifarlensError(f"--k {k} must be between 1 and the {len(images)} images scanned; change --k or --limit")
    device = next(model.parameters()).device
    extractor = FeatureExtractor(model, [layer])
    chosen = torch.tensor(channels, device=device)
    kept = None
    with torch.no_grad():
        for start in range(0, len(images), batch_size):
            x = spec.inputs(images[start : start + batch_size].to(device))
            maps = channel_maps(extractor, layer, x, chosen)
            indices = torch.arange(start, start + maps.shape[1], device=device).expand(len(channels), -1)
            kept = keep_best(kept, TopActivations(indices, maps.amax(dim=(2, 3)), maps), k)
    return kept.cpu()


def overlays(found: TopActivations, size: tuple[int, int]) -> np.ndarray:
    """found.maps (C, k, h, w) -> (C, k, H, W) in [0, 1]: stretched bilinearly over the image, the positive part
    divided by the channel's best score, so the overlays of one channel compare with each other."""
    stretched = F.interpolate(found.maps, size=size, mode="bilinear", align_corners=False)
    best = found.scores[:, :1, None, None].clamp_min(1e-12)
    return (stretched.clamp_min(0) / best).clamp(max=1).numpy()


@dataclass
class ChannelExamples:
    """One channel: its k top images, best first, and its optimised image."""

    channel: int
    indices: list[int]  # positions in the split
    labels: list[int]
    scores: np.ndarray  # (k,) spatial max activations, descending
    overlays: np.ndarray  # (k, H, W) in [0, 1]
    images: np.ndarray  # uint8 (k, H, W, 3)
    optimised: np.ndarray  # float (S, S, 3) in [0, 1]
    optimised_activation: float  # what the optimisation raised: the channel's spatial mean
    optimised_score: float  # the optimised image's spatial max, the measure of ``scores``


@dataclass
class TopImagesResult:
    """What ``top_images`` found for a run's layer: one ``ChannelExamples`` per chosen channel."""

    model_name: str
    classes: tuple[str, ...]
    layer: str
    split: str
    images_scanned: int
    steps: int
    lr: float
    seed: int
    channels: list[ChannelExamples]

    @property
    def k(self) -> int:
        return len(self.channels[0].indices)

    def write(self, folder) -> list[Path]:
        """``<layer>.png`` (one row per channel) and ``<layer>.json`` into ``folder``; returns their paths."""

        name = RunDir.file_stem(self.layer)
        png, numbers = Path(folder) / f"{name}.png", Path(folder) / f"{name}.json"
        title = (
            f"{self.model_name} {self.layer}: per channel its optimised image, then the {self.k} of "
            f"{self.images_scanned} {self.split} images with the highest activation (spatial max), "
            "lit where the channel fires"
        )
        figure = plot_top_images(
            np.stack([c.optimised for c in self.channels]),
            np.stack([c.images for c in self.channels]),
            np.stack([c.overlays for c in self.channels]),
            png,
            optimised_titles=[f"ch{c.channel} optimised {c.optimised_score:.2f}" for c in self.channels],
            titles=[[f"{self.classes[y]} {s:.2f}" for y, s in zip(c.labels, c.scores)] for c in self.channels],
            title=title,
        )
        write_json(numbers, self.summary())
        return [figure, numbers]

    def summary(self) -> dict:
        """The numbers behind the figure, as written to ``<layer>.json``."""
        return {
            "model": self.model_name,
            "layer": self.layer,
            "k": self.k,
            "split": self.split,
            "images_scanned": self.images_scanned,
            "score": "spatial max of the channel's activation map",
            "steps": self.steps,
            "lr": self.lr,
            "seed": self.seed,
            "channels": [
                {
                    "channel": c.channel,
                    "optimised_activation": c.optimised_activation,
                    "optimised_score": c.optimised_score,
                    "top": [
                        {"index": i, "label": y, "class": self.classes[y], "score": float(s)}
                        for i, y, s in zip(c.indices, c.labels, c.scores)
                    ],
                }
                for c in self.channels
            ],
        }


def top_images(
    run,
    *,
    layer: str | None = None,
    channels: str = "0-7",
    k: int = 9,
    split: str = "test",
    limit: int = 0,
    steps: int = 256,
    lr: float = 0.05,
    seed: int = 0,
    batch_size: int = 500,
    data_dir: str | None = None,
    device: str = "auto",
) -> TopImagesResult:
    """For each of ``channels`` of ``layer`` (default: the deepest spatial probe stage) of a run's model, the
    ``k`` images of ``split`` (its first ``limit``; 0: all) with the highest spatial max activation, and the
    channel's activation-maximisation image (``steps`` Adam steps at ``lr`` from ``seed``, colours
    decorrelated with 2,000 training images, as ``explain activation-max``)."""

    model, spec, _ = load_run_model(run, device)
    layer = layer or deepest_spatial_stage(model, spec)
    chosen = choose_channels(channels, layer, spatial_channels(model, layer, spec.image_size))
    data = RunDir(run).load_data(data_dir)
    scanned = data.split(split)
    images = scanned.images[: limit or None]
    found = top_activations(model, spec, images, layer, chosen, k=k, batch_size=batch_size)
    optimised, optimised_scores = optimise_channels(
        model, spec, layer, chosen, data.train.images[:2000], steps=steps, lr=lr, seed=seed
    )
    maps = overlays(found, tuple(images.shape[-2:]))
    examples = []
    for row, channel in enumerate(chosen):
        indices = found.indices[row].tolist()
        examples.append(
            ChannelExamples(
                channel,
                indices,
                scanned.labels[indices].tolist(),
                found.scores[row].numpy(),
                maps[row],
                images[indices].permute(0, 2, 3, 1).numpy(),
                optimised.images[row].permute(1, 2, 0).numpy(),
                float(optimised.activations[row]),
                float(optimised_scores[row]),
            )
        )
    return TopImagesResult(spec.name, spec.classes, layer, split, len(images), steps, lr, seed, examples)


def optimise_channels(
    model: nn.Module,
    spec: ModelSpec,
    layer: str,
    channels: list[int],
    colour_images: torch.Tensor,
    *,
    steps: int,
    lr: float,
    seed: int,
) -> tuple[MaximisedImages, torch.Tensor]:
    """Each channel's activation-maximisation image, colours decorrelated with uint8 ``colour_images``
    (N, 3, H, W), on the model's device, and its spatial max activation (C,) on the image as saved (8-bit):
    the measure of the dataset examples' scores."""
    maximiser = ActivationMaximiser(
        model, spec, layer, colour_sqrt=colour_correlation_sqrt(colour_images), steps=steps, lr=lr, seed=seed
    )
    optimised = maximiser(channels)
    device = next(model.parameters()).device
    as_saved = spec.inputs((optimised.images * 255).round().to(torch.uint8).to(device))
    with torch.no_grad():  # (C, C, h, w): every chosen channel on every optimised image; channel i's is image i
        every = channel_maps(maximiser.extractor, layer, as_saved, torch.tensor(channels, device=device))
    diagonal = torch.arange(len(channels), device=device)
    return optimised, every[diagonal, diagonal].amax(dim=(1, 2)).cpu()


def deepest_spatial_stage(model: nn.Module, spec: ModelSpec) -> str:
    """The last of the model's probe stages whose output is (C, H, W) maps."""
    shapes = {info.name: info.shape for info in list_layers(model, spec.image_size)}
    stages = [s for s in spec.capabilities(model).probe_stages if len(shapes.get(s, ())) == 3]
    if not stages:
        raise LayerError(
            f"{spec.name} has no probe stage with spatial maps; pass --layer (see cifarlens explain layers RUN)"
        )
    return stages[-1]
