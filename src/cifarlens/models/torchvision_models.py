"""torchvision architectures adapted to 32x32 inputs; layer names stay torchvision's."""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision import models as tvm

from cifarlens.errors import ConfigError
from cifarlens.models.registry import register_model

POOLINGS = ("avg", "max")


@register_model
def resnet18(num_classes: int = 10) -> nn.Module:
    """torchvision ResNet-18 with the CIFAR stem: 3x3 stride-1 conv1 and no max-pool (He et al. 2016)."""
    model = tvm.resnet18(weights=None, num_classes=num_classes)
    model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    model.maxpool = nn.Identity()
    return model


class MobileNetV2(nn.Module):
    """torchvision MobileNetV2 ``features`` + global ``pool`` (avg or max) + ``classifier``.

    torchvision's own forward hard-codes average pooling; this wrapper makes it a choice.
    """

    def __init__(self, base: tvm.MobileNetV2, pooling: str):
        super().__init__()
        self.features = base.features
        self.pool = nn.AdaptiveAvgPool2d(1) if pooling == "avg" else nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = base.classifier

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, H, W) -> logits (N, num_classes)."""
        return self.classifier(self.flatten(self.pool(self.features(x))))


@register_model
def mobilenet_v2(
    num_classes: int = 10, cifar_stem: bool = True, pooling: str = "avg", width_mult: float = 1.0, dropout: float = 0.2
) -> nn.Module:
    """torchvision MobileNetV2 (Sandler et al. 2018); CIFAR stem and avg or max global pooling."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r} for mobilenet_v2; choose one of: {', '.join(POOLINGS)}")
    base = tvm.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    if cifar_stem:
        # Stride 1 in the stem and in the first stride-2 block keeps a 32x32 input at 4x4
        # before pooling instead of 1x1 (the common CIFAR adaptation).
        base.features[0][0].stride = (1, 1)
        base.features[2].conv[1][0].stride = (1, 1)
    return MobileNetV2(base, pooling)


@register_model
def vgg16(num_classes: int = 10, batch_norm: bool = True, dropout: float = 0.5) -> nn.Module:
    """torchvision VGG16 (Simonyan & Zisserman 2015), optional BatchNorm, 512-512-classes CIFAR head."""
    model = (tvm.vgg16_bn if batch_norm else tvm.vgg16)(weights=None)
    model.avgpool = nn.AdaptiveAvgPool2d(1)  # 32x32 inputs leave 1x1 after the five max-pools
    model.classifier = nn.Sequential(
        OrderedDict(
            fc1=nn.Linear(512, 512),
            relu1=nn.ReLU(),
            drop1=nn.Dropout(dropout),
            fc2=nn.Linear(512, num_classes),
        )
    )
    return model
