"""Small from-scratch CIFAR-10 networks.

Every model maps a (N, 3, 32, 32) batch to (N, num_classes) logits and is an
``nn.Sequential`` of ``features`` (conv layers), ``flatten`` and ``classifier``
(linear layers), so layers have stable names such as ``features.conv1`` or
``features.block2.conv`` for feature extraction. ReLUs are not in-place, so an
extracted conv output is never overwritten by the activation after it.
"""

from __future__ import annotations

from collections import OrderedDict

from torch import nn

from cifarlens.errors import ConfigError
from cifarlens.models.registry import register_model


def _net(features: OrderedDict, classifier: OrderedDict) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            features=nn.Sequential(features),
            flatten=nn.Flatten(),
            classifier=nn.Sequential(classifier),
        )
    )


def _check_dropout(name: str, p: float) -> None:
    if not 0 <= p < 1:
        raise ConfigError(f"{name} must be in [0, 1), got {p}")


def _conv_bn_relu(c_in: int, c_out: int, stride: int = 1, batch_norm: bool = True) -> nn.Sequential:
    """3x3 'same' conv (no bias when BatchNorm follows), BatchNorm (or Identity), ReLU."""
    return nn.Sequential(
        OrderedDict(
            conv=nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=not batch_norm),
            bn=nn.BatchNorm2d(c_out) if batch_norm else nn.Identity(),
            relu=nn.ReLU(),
        )
    )


@register_model(
    classifier="classifier.fc3",
    cam_layer="features.relu2",
    probe_stages=(
        "features.relu1",
        "features.pool1",
        "features.relu2",
        "features.pool2",
        "flatten",
        "classifier.relu1",
        "classifier.relu2",
    ),
)
def tutorial(num_classes: int = 10) -> nn.Module:
    """LeNet-style net from the PyTorch 60-minute blitz CIFAR-10 tutorial (2 conv, 3 fc)."""
    features = OrderedDict(
        conv1=nn.Conv2d(3, 6, 5),  # -> 6x28x28
        relu1=nn.ReLU(),
        pool1=nn.MaxPool2d(2),  # -> 6x14x14
        conv2=nn.Conv2d(6, 16, 5),  # -> 16x10x10
        relu2=nn.ReLU(),
        pool2=nn.MaxPool2d(2),  # -> 16x5x5
    )
    classifier = OrderedDict(
        fc1=nn.Linear(16 * 5 * 5, 120),
        relu1=nn.ReLU(),
        fc2=nn.Linear(120, 84),
        relu2=nn.ReLU(),
        fc3=nn.Linear(84, num_classes),
    )
    return _net(features, classifier)


@register_model(
    classifier="classifier.fc3",
    cam_layer="features.block8",
    probe_stages=(
        "features.drop1",
        "features.drop3",
        "features.drop4",
        "features.pool",
        "flatten",
        "classifier.drop1",
        "classifier.drop2",
    ),
)
def seed_bn8(num_classes: int = 10, dropout: float = 0.3, conv_dropout: float = 0.1) -> nn.Module:
    """8 conv layers (32-512 channels) with BatchNorm and dropout, then 3 fc layers; the cifarlens baseline."""
    _check_dropout("dropout", dropout)
    _check_dropout("conv_dropout", conv_dropout)
    # (out channels, stride): block3's stride 2 takes 32x32 to 16x16; a max-pool after block6
    # runs the two widest convs at 8x8, which cuts the MACs from ~450M to ~175M per image.
    plan = [(32, 1), (32, 1), (64, 2), (64, 1), (128, 1), (128, 1), (256, 1), (512, 1)]
    features: OrderedDict = OrderedDict()
    c_in = 3
    for i, (c_out, stride) in enumerate(plan, start=1):
        features[f"block{i}"] = _conv_bn_relu(c_in, c_out, stride)
        if i % 2 == 0:
            features[f"drop{i // 2}"] = nn.Dropout(conv_dropout)
        if i == 6:
            features["maxpool"] = nn.MaxPool2d(2)  # 16x16 -> 8x8
        c_in = c_out
    features["pool"] = nn.AdaptiveAvgPool2d(2)  # -> 512x2x2
    classifier = OrderedDict(
        fc1=nn.Linear(512 * 2 * 2, 512),
        relu1=nn.ReLU(),
        drop1=nn.Dropout(dropout),
        fc2=nn.Linear(512, 256),
        relu2=nn.ReLU(),
        drop2=nn.Dropout(dropout),
        fc3=nn.Linear(256, num_classes),
    )
    return _net(features, classifier)


@register_model(
    classifier="classifier.fc2",
    cam_layer="features.relu3",
    probe_stages=(
        "features.relu1",
        "features.relu2",
        "features.relu3",
        "features.pool3",
        "flatten",
        "classifier.drop1",
    ),
)
def vgg_small(num_classes: int = 10, dropout: float = 0.5) -> nn.Module:
    """Three Conv(3x3)-ReLU-MaxPool stacks (64, 128, 256 channels) and a 512-unit fc layer, VGG style."""
    _check_dropout("dropout", dropout)
    features: OrderedDict = OrderedDict()
    c_in = 3
    for i, c_out in enumerate([64, 128, 256], start=1):
        features[f"conv{i}"] = nn.Conv2d(c_in, c_out, 3, padding=1)
        features[f"relu{i}"] = nn.ReLU()
        features[f"pool{i}"] = nn.MaxPool2d(2)  # 32 -> 16 -> 8 -> 4
        c_in = c_out
    classifier = OrderedDict(
        fc1=nn.Linear(256 * 4 * 4, 512),
        relu1=nn.ReLU(),
        drop1=nn.Dropout(dropout),
        fc2=nn.Linear(512, num_classes),
    )
    return _net(features, classifier)


@register_model(
    classifier="classifier.fc2",
    cam_layer="features.block3.conv2",
    probe_stages=(
        "features.block1.conv2.relu",
        "features.block2.conv2.relu",
        "features.block3.conv2.relu",
        "features.block3.drop",
        "flatten",
        "classifier.drop1",
    ),
)
def conv_blocks(
    num_classes: int = 10, blocks: int = 3, width: int = 32, dropout: bool = True, batch_norm: bool = True
) -> nn.Module:
    """Keras-tutorial CNN: blocks of two Conv-BN-ReLU, max-pool and rising dropout, then dense(128).

    ``dropout`` and ``batch_norm`` switch those layers off (the seed reports' ablations).
    """
    if not 1 <= blocks <= 5:
        raise ConfigError(f"blocks must be between 1 and 5 (each halves the 32x32 input), got {blocks}")
    if width < 1:
        raise ConfigError(f"width must be a positive number of channels, got {width}")
    features: OrderedDict = OrderedDict()
    c_in = 3
    for i in range(blocks):
        c_out = width * 2**i
        features[f"block{i + 1}"] = nn.Sequential(
            OrderedDict(
                conv1=_conv_bn_relu(c_in, c_out, batch_norm=batch_norm),
                conv2=_conv_bn_relu(c_out, c_out, batch_norm=batch_norm),
                pool=nn.MaxPool2d(2),
                drop=nn.Dropout(min(0.2 + 0.1 * i, 0.5) if dropout else 0.0),  # 0.2, 0.3, 0.4, ...
            )
        )
        c_in = c_out
    side = 32 // 2**blocks
    # The Keras original ends in Dense(softmax); here fc2 gives logits and the loss applies the softmax.
    classifier = OrderedDict(
        fc1=nn.Linear(c_in * side * side, 128),
        relu1=nn.ReLU(),
        drop1=nn.Dropout(0.5 if dropout else 0.0),
        fc2=nn.Linear(128, num_classes),
    )
    return _net(features, classifier)
