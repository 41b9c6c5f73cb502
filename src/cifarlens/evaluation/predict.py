"""Logits for a whole split, in batches, with optional test-time augmentation (TTA).

Images stay uint8 on the CPU; only one batch at a time is normalised to float and
moved to the device, so memory stays bounded whatever the split size.

TTA (``tta=True``) averages the logits of each image and of its horizontal mirror
(``tta_logits``). CIFAR-10 classes are mirror-symmetric, so this usually adds a few
tenths of a percent of accuracy for twice the compute. ``tta_translate=True`` adds
airbench's level-2 views: the mirror pair again at one-pixel shifts up-left and
down-right, weighted so the unshifted pair keeps half the weight (6 views, 3x the compute).
"""

from __future__ import annotations

import contextlib
import torch
import torch.nn.functional as F
from torch import nn

from cifarlens.data.augment import model_input
from cifarlens.errors import ConfigError

PRECISIONS = ("fp32", "bf16", "fp16")


def mirror_logits(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Mean float32 logits of the batch and its left-right mirror. x: (B, 3, H, W) -> (B, C)."""
    return (model(x).float() + model(x.flip(3)).float()) / 2


def tta_logits(model: nn.Module, x: torch.Tensor, translate: bool = False) -> torch.Tensor:
    """TTA logits (B, C) of a normalised batch x (B, 3, H, W): the mirror pair, and with
    ``translate`` also the mirror pairs shifted one pixel up-left and down-right (reflect
    padding), half the weight on the unshifted pair (airbench's TTA level 2)."""
    logits = mirror_logits(model, x)
    if not translate:
        return logits
    h, w = x.shape[-2:]
    padded = F.pad(x, (1, 1, 1, 1), mode="reflect")
    shifted = [mirror_logits(model, padded[..., dy : dy + h, dy : dy + w].contiguous(memory_format=torch.channels_last))
               for dy in (0, 2)]  # fmt: skip
    return logits / 2 + (shifted[0] + shifted[1]) / 4


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
    tta_translate: bool = False,
    image_size: int | None = None,
) -> torch.Tensor:
    """Logits of ``model`` for uint8 ``images`` (N, 3, H, W): float32 (N, C) on the CPU.

    ``image_size`` resizes each batch as the model was trained (``ModelSpec.image_size``; None: as given).

    Puts the model in eval mode (callers that keep training must call ``model.train()``
    again) and moves it to ``device``. ``precision`` "bf16" autocasts on cpu/cuda, "fp16"
    on cuda only. ``tta`` averages over the image and its mirror, ``tta_translate`` also over
    one-pixel shifts of both (implies ``tta``; see ``tta_logits``).
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
            logits = tta_logits(model, x, tta_translate) if tta or tta_translate else model(x).float()
            outputs.append(logits.cpu())
    if not outputs:
        with torch.inference_mode(), amp:  # empty input: ask the model for its number of classes
            blank = torch.zeros(1, *images.shape[1:], dtype=torch.uint8, device=device)
            c = model(model_input(blank, mean, std, image_size)).shape[1]
        return torch.empty(0, c, dtype=torch.float32)
    return torch.cat(outputs)
