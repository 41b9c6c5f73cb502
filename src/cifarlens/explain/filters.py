"""Conv filters and feature maps as image grids, with the numbers that summarise them."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from cifarlens.models.layers import LayerError


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
