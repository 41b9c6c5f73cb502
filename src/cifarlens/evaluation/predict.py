"""Logits for a whole split, in batches, with optional test-time augmentation (TTA).

Images stay uint8 on the CPU; only one batch at a time is normalised to float and
moved to the device, so memory stays bounded whatever the split size.

TTA (``tta=True``) averages the logits of each image and of its horizontal mirror
(``tta_logits``). CIFAR-10 classes are mirror-symmetric, so this usually adds a few
tenths of a percent of accuracy for twice the compute. To add more views (e.g. the
one-pixel translations of the airbench recipe), extend ``TTA_VIEWS``.
"""

from __future__ import annotations

import contextlib
from typing import Callable

import torch
from torch import nn

from cifarlens.data.augment import model_input
from cifarlens.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def _hflip(x: torch.Tensor) -> torch.Tensor:
    return x.flip(3)


# Views whose logits TTA averages; each maps a normalised (B, 3, H, W) batch to one of the same shape.
TTA_VIEWS: tuple[Callable[[torch.Tensor], torch.Tensor], ...] = (_identity, _hflip)


def tta_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean of the model's float32 logits over ``TTA_VIEWS`` (the image and its mirror). x: (B, 3, H, W)."""
    total = None
    for view in TTA_VIEWS:
        out = model(view(x)).float()
        total = out if total is None else total + out
    return total / len(TTA_VIEWS)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    if precision not in PRECISIONS:
        raise ConfigError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16" and device.type in ("cpu", "cuda"):
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    if precision == "fp16" and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.float16)
    raise ConfigError(f"precision {precision} is not supported on {device.type}; use fp32")


def predict_logits(
    model: nn.Module,
    images: torch.Tensor,
    *,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    precision: str = "fp32",
    tta: bool = False,
    image_size: int | None = None,
) -> torch.Tensor:
    """Logits of ``model`` for uint8 ``images`` (N, 3, H, W): float32 (N, C) on the CPU.

    ``image_size`` resizes each batch as the model was trained (``ModelSpec.image_size``; None: as given).

    Puts the model in eval mode (callers that keep training must call ``model.train()``
    again) and moves it to ``device``. ``precision`` "bf16" autocasts on cpu/cuda, "fp16"
    on cuda only. ``tta`` averages over the image and its mirror (see ``tta_logits``).
    """
    if images.dtype != torch.uint8 or images.ndim != 4:
        raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
    if batch_size < 1:
        raise ConfigError(f"batch size must be at least 1, got {batch_size}")
    device = torch.device(device)
    amp = _autocast(device, precision)
    model.to(device).eval()
    outputs = []
    with torch.inference_mode(), amp:
        for start in range(0, len(images), batch_size):
            x = model_input(images[start : start + batch_size].to(device, non_blocking=True), mean, std, image_size)
            x = x.contiguous(memory_format=torch.channels_last)  # the fast layout for convs on CPU and GPU
            logits = tta_logits(model, x) if tta else model(x).float()
            outputs.append(logits.cpu())
    if not outputs:
        with torch.inference_mode(), amp:  # empty input: ask the model for its number of classes
            blank = torch.zeros(1, *images.shape[1:], dtype=torch.uint8, device=device)
            c = model(model_input(blank, mean, std, image_size)).shape[1]
        return torch.empty(0, c, dtype=torch.float32)
    return torch.cat(outputs)
