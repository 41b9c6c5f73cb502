"""``Predictor``: logits for a whole split, in batches, with optional test-time augmentation (TTA).

Images stay uint8 on the CPU; only one batch at a time is normalised to float and
moved to the device, so memory stays bounded whatever the split size.

TTA (``tta=True``) averages the logits of each image and of its horizontal mirror
(``tta_logits``). CIFAR-10 classes are mirror-symmetric, so this usually adds a few
tenths of a percent of accuracy for twice the compute. ``tta_translate=True`` adds
airbench's level-2 views: the mirror pair again at one-pixel shifts up-left and
down-right, weighted so the unshifted pair keeps half the weight (6 views, 3x the compute).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from cifarlens.device import autocast
from cifarlens.errors import ConfigError
from cifarlens.run.spec import ModelSpec


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
    shifted = [
        mirror_logits(model, padded[..., dy : dy + h, dy : dy + w].contiguous(memory_format=torch.channels_last))
        for dy in (0, 2)
    ]
    return logits / 2 + (shifted[0] + shifted[1]) / 4


class Predictor:
    """Float32 logits of a model for uint8 images: the one inference path of cifarlens.

    The trainer's per-epoch scoring, ``evaluate``, ``explain`` and the export's PyTorch backend all
    score through it, so preprocessing, precision and TTA mean the same everywhere.

    ``spec`` says how to feed the model (``mean``, ``std``, ``image_size``: each batch is resized to it).
    ``precision`` is a resolved one (``fp32``, ``bf16`` on cpu/cuda, ``fp16`` on cuda). ``tta`` averages
    over the image and its mirror, ``tta_translate`` also over one-pixel shifts of both (implies ``tta``;
    see ``tta_logits``). ``compile`` runs the forward through ``torch.compile``.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        *,
        device: str | torch.device = "cpu",
        precision: str = "fp32",
        tta: bool = False,
        tta_translate: bool = False,
        batch_size: int = 500,
        compile: bool = False,
    ):
        if batch_size < 1:
            raise ConfigError(f"batch size must be at least 1, got {batch_size}")
        self.device = torch.device(device)
        autocast(self.device, precision)  # an unsupported precision fails here, before any work
        self.model, self.spec, self.precision = model, spec, precision
        self.tta_translate = tta_translate
        self.tta = tta or tta_translate
        self.batch_size = batch_size
        self.forward = torch.compile(model) if compile else model

    def inputs(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 (B, 3, H, W) -> the normalised, resized, channels-last float batch the model takes."""
        x = self.spec.inputs(images.to(self.device, non_blocking=True))
        return x.contiguous(memory_format=torch.channels_last)  # the fast layout for convs on CPU and GPU

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (N, 3, H, W) -> float32 logits (N, C) on the CPU, ``batch_size`` at a time.

        Puts the model in eval mode (a caller that keeps training calls ``model.train()`` again).
        """
        if images.dtype != torch.uint8 or images.ndim != 4:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        self.model.to(self.device).eval()
        if not len(images):  # ask the model for its number of classes
            images = torch.zeros(1, *images.shape[1:], dtype=torch.uint8)
            return self._batch_logits(images)[:0]
        return torch.cat(
            [self._batch_logits(images[i : i + self.batch_size]) for i in range(0, len(images), self.batch_size)]
        )

    def probabilities(self, images: torch.Tensor) -> torch.Tensor:
        """Softmax of ``logits``: float32 (N, C)."""
        return self.logits(images).softmax(1)

    def _batch_logits(self, images: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode(), autocast(self.device, self.precision):
            x = self.inputs(images)
            logits = tta_logits(self.forward, x, self.tta_translate) if self.tta else self.forward(x).float()
        return logits.cpu()
