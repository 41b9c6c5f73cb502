"""torchvision architectures adapted to 32x32 inputs; layer names stay torchvision's.

Models with a ``pretrained`` argument load torchvision's ImageNet weights (``cifarlens.models.pretrained``)
into torchvision's own layout and then swap in a ``num_classes`` head, so a run rebuilt with
``pretrained=False`` has exactly the same tensors. ``cifar_stem`` models keep the ImageNet stem
when pretrained (``cifarlens train --pretrained`` sets ``cifar_stem: false`` unless told otherwise).
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn
from torchvision import models as tvm

from cifarlens.errors import ConfigError
from cifarlens.models.pretrained import load_pretrained
from cifarlens.models.registry import register_model

POOLINGS = ("avg", "max")


def _resnet(builder, weights, num_classes: int, cifar_stem: bool, pretrained: bool) -> nn.Module:
    if pretrained and cifar_stem:
        raise ConfigError(
            "the CIFAR stem (3x3 conv1) has no ImageNet weights; use model args '{cifar_stem: false}' with pretrained"
        )
    if pretrained:
        model = load_pretrained(builder(weights=None), weights)
        model.fc = nn.Linear(model.fc.in_features, num_classes)
    else:
        model = builder(weights=None, num_classes=num_classes)
    if cifar_stem:
        model.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        model.maxpool = nn.Identity()
    return model


@register_model(
    classifier="fc",
    cam_layer="layer3",
    probe_stages=("layer1.1.relu_1", "layer2.1.relu_1", "layer3.1.relu_1", "layer4.1.relu_1", "flatten"),
    gap_features="layer4",
)
def resnet18(num_classes: int = 10, cifar_stem: bool = True, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-18; CIFAR stem: 3x3 stride-1 conv1 and no max-pool (He et al. 2016); ImageNet weights."""
    return _resnet(tvm.resnet18, tvm.ResNet18_Weights.DEFAULT, num_classes, cifar_stem, pretrained)


@register_model(
    classifier="fc",
    cam_layer="layer3",
    probe_stages=("layer1.2.relu_2", "layer2.3.relu_2", "layer3.5.relu_2", "layer4.2.relu_2", "flatten"),
    gap_features="layer4",
)
def resnet50(num_classes: int = 10, cifar_stem: bool = True, pretrained: bool = False) -> nn.Module:
    """torchvision ResNet-50 (bottleneck blocks); CIFAR stem option; ImageNet weights (V2 recipe)."""
    return _resnet(tvm.resnet50, tvm.ResNet50_Weights.DEFAULT, num_classes, cifar_stem, pretrained)


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


@register_model(
    classifier="classifier.1",
    cam_layer="features.13",
    probe_stages=("features.3.add", "features.6.add", "features.13.add", "features.17.conv.3", "classifier.0"),
    gap_features="features",
)
def mobilenet_v2(
    num_classes: int = 10,
    cifar_stem: bool = True,
    pooling: str = "avg",
    width_mult: float = 1.0,
    dropout: float = 0.2,
    pretrained: bool = False,
) -> nn.Module:
    """torchvision MobileNetV2 (Sandler et al. 2018); CIFAR stem and avg or max global pooling; ImageNet weights."""
    if pooling not in POOLINGS:
        raise ConfigError(f"unknown pooling {pooling!r} for mobilenet_v2; choose one of: {', '.join(POOLINGS)}")
    if pretrained and width_mult != 1.0:
        raise ConfigError(f"mobilenet_v2 has ImageNet weights for width_mult 1.0 only, got {width_mult}")
    if pretrained:
        base = load_pretrained(tvm.mobilenet_v2(weights=None, dropout=dropout), tvm.MobileNet_V2_Weights.DEFAULT)
        base.classifier[-1] = nn.Linear(base.classifier[-1].in_features, num_classes)
    else:
        base = tvm.mobilenet_v2(weights=None, num_classes=num_classes, width_mult=width_mult, dropout=dropout)
    if cifar_stem:
        # Stride 1 in the stem and in the first stride-2 block keeps a 32x32 input at 4x4
        # before pooling instead of 1x1 (the common CIFAR adaptation).
        base.features[0][0].stride = (1, 1)
        base.features[2].conv[1][0].stride = (1, 1)
    return MobileNetV2(base, pooling)


@register_model(
    classifier="classifier.fc2",
    cam_layer="features.22",
    probe_stages=(
        "features.5",
        "features.12",
        "features.22",
        "features.32",
        "features.42",
        "flatten",
        "classifier.drop1",
    ),
)
def vgg16(num_classes: int = 10, batch_norm: bool = True, dropout: float = 0.5, pretrained: bool = False) -> nn.Module:
    """torchvision VGG16 (Simonyan & Zisserman 2015), optional BatchNorm, 512-512-classes head; ImageNet weights."""
    model = (tvm.vgg16_bn if batch_norm else tvm.vgg16)(weights=None)
    if pretrained:
        load_pretrained(model, tvm.VGG16_BN_Weights.DEFAULT if batch_norm else tvm.VGG16_Weights.DEFAULT)
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


@register_model(
    classifier="classifier.1",
    cam_layer="features.2",
    probe_stages=("features.1.0.block.1", "features.2.1.add", "features.3.1.add", "features.5.2.add", "classifier.0"),
    gap_features="features",
)
def efficientnet_b0(num_classes: int = 10, dropout: float = 0.2, pretrained: bool = False) -> nn.Module:
    """torchvision EfficientNet-B0 (Tan & Le 2019), ImageNet layout; ImageNet weights. Best at --image-size 96+."""
    model = tvm.efficientnet_b0(weights=None, dropout=dropout)
    if pretrained:
        load_pretrained(model, tvm.EfficientNet_B0_Weights.DEFAULT)
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return model


@register_model(
    classifier="classifier.2",
    cam_layer="features.1",
    probe_stages=("features.1.2.add", "features.3.2.add", "features.5.8.add", "features.7.2.add", "classifier.1"),
)
def convnext_tiny(num_classes: int = 10, pretrained: bool = False) -> nn.Module:
    """torchvision ConvNeXt-Tiny (Liu et al. 2022), ImageNet layout; ImageNet weights. Best at --image-size 96+."""
    model = tvm.convnext_tiny(weights=None)
    if pretrained:
        load_pretrained(model, tvm.ConvNeXt_Tiny_Weights.DEFAULT)
    model.classifier[-1] = nn.Linear(model.classifier[-1].in_features, num_classes)
    return model
