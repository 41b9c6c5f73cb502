"""``airnet``: a wide, shallow conv net built for fast CIFAR-10 training.

Our implementation of the ideas in airbench (Keller Jordan, "94% on CIFAR-10 in 3.29
seconds", arXiv 2404.00498):

* a frozen first layer that whitens 2x2 patches, fitted to the training data before
  training (its registered ``init_from_data``): the net starts from decorrelated inputs;
* three blocks of conv-pool-BN-act-conv-BN-act, wide (64/256/256) and shallow; the activation
  is GELU as in airbench94, or SiLU as in the later cifar10-speedrun record;
* BatchNorm with a frozen unit scale and a fast-moving running average;
* identity (Dirac) initialisation of the first input-many filters of each conv, so
  each block starts close to passing its input through;
* global max pooling and a bias-free linear head whose logits are scaled down.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
from torch import nn

from cifarlens.errors import ConfigError
from cifarlens.models.registry import register_model


class Whitening(nn.Conv2d):
    """2x2 conv whose filters are the eigenvectors of the patch covariance, scaled to unit variance.

    Each eigenvector is used with both signs, so ``out_channels = 2 * 3 * 2 * 2 = 24``.
    The weights are fixed by ``fit``; only the bias trains.
    """

    def __init__(self, in_channels: int = 3, patch: int = 2, eps: float = 5e-4):
        super().__init__(in_channels, 2 * in_channels * patch * patch, patch, padding=0, bias=True)
        self.eps = eps
        self.weight.requires_grad_(False)

    @torch.no_grad()
    def fit(self, images: torch.Tensor) -> None:
        """Set the filters from normalised images (N, C, H, W), float."""
        c, k = self.in_channels, self.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N, C, H', W', k, k
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * k * k).double()
        patches = patches - patches.mean(0)
        cov = patches.T @ patches / len(patches)
        eigvals, eigvecs = torch.linalg.eigh(cov)
        filters = (eigvecs.T / torch.sqrt(eigvals + self.eps)[:, None]).reshape(-1, c, k, k)
        self.weight.copy_(torch.cat([filters, -filters]).to(self.weight.dtype))


def _bn(channels: int) -> nn.BatchNorm2d:
    # Frozen unit scale: with no learnable gain the conv before it is scale-invariant,
    # which lets a high learning rate stay stable. Momentum 0.4 tracks the fast-changing net.
    bn = nn.BatchNorm2d(channels, momentum=0.4, eps=1e-12)
    bn.weight.requires_grad_(False)
    return bn


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
    if c_out >= c_in:
        with torch.no_grad():
            nn.init.dirac_(conv.weight[:c_in])
    return conv


ACTIVATIONS = {"gelu": nn.GELU, "silu": nn.SiLU}


def _block(c_in: int, c_out: int, act: str) -> nn.Sequential:
    return nn.Sequential(
        OrderedDict(
            conv1=_conv(c_in, c_out),
            pool=nn.MaxPool2d(2),
            bn1=_bn(c_out),
            act1=ACTIVATIONS[act](),
            conv2=_conv(c_out, c_out),
            bn2=_bn(c_out),
            act2=ACTIVATIONS[act](),
        )
    )


class AirNet(nn.Module):
    """whiten -> 3 blocks -> global max pool -> linear; logits scaled by ``1 / logit_scale``."""

    def __init__(self, num_classes: int, widths: tuple[int, int, int], logit_scale: float, act: str = "gelu"):
        super().__init__()
        self.whiten = Whitening()
        self.act = ACTIVATIONS[act]()
        blocks, c_in = OrderedDict(), self.whiten.out_channels
        for i, width in enumerate(widths, start=1):
            blocks[f"block{i}"] = _block(c_in, width, act)
            c_in = width
        self.blocks = nn.Sequential(blocks)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(c_in, num_classes, bias=False)
        self.logit_scale = logit_scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: (N, 3, 32, 32) normalised -> logits (N, num_classes)."""
        x = self.blocks(self.act(self.whiten(x)))
        return self.fc(self.flatten(self.pool(x))) / self.logit_scale


@register_model(
    classifier="fc",
    cam_layer="blocks.block2",
    probe_stages=("act", "blocks.block1.act2", "blocks.block2.act2", "blocks.block3.act2", "flatten"),
    init_from_data=lambda model, images: model.whiten.fit(images),
    stop_early=("whiten.bias",),
)
def airnet(
    num_classes: int = 10, width: int = 64, wide: int = 256, logit_scale: float = 9.0, act: str = "gelu"
) -> nn.Module:
    """Whitened, wide-shallow 3-block conv net for fast training (ideas from airbench, our code).

    ``act``: the activation after the whitening layer and each BatchNorm, ``gelu`` or ``silu``.
    """
    if width < 1 or wide < 1:
        raise ConfigError(f"airnet widths must be positive, got width={width}, wide={wide}")
    if act not in ACTIVATIONS:
        raise ConfigError(f"airnet act must be one of {', '.join(ACTIVATIONS)}, got {act!r}")
    return AirNet(num_classes, (width, wide, wide), logit_scale, act)
