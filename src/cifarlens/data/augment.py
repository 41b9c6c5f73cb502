"""Augmentation and normalisation on whole uint8 batches, on whatever device the batch lives.

torchvision.transforms.v2 draws one random parameter set per call, so per-image crops
would need a Python loop over images; these functions draw per-image parameters for the
whole batch at once (the airbench approach), seeded by an explicit ``torch.Generator``.
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
import torchvision

from cifarlens.errors import ConfigError

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)
AUGMENTATIONS = ("crop", "flip", "altflip", "jpeg", "augmix", "cutout", "color")
# Augmentations drawn once per epoch for the whole training set (``EpochImages``), not per batch.
EPOCH_AUGMENTATIONS = ("altflip", "jpeg", "augmix")
JPEG_QUALITY = 75
# torchvision's AugMix draws one set of operations per call; called per image it costs ~2.5 ms (about two fast
# epochs' worth of time per epoch on 2 CPU cores), so images are mixed in groups that share one draw.
AUGMIX_GROUP = 8
# Default strengths of the color jitter: the cifar10-speedrun record's (0.14 of a channel std ~ 0.035 of the range).
COLOR_BRIGHTNESS, COLOR_CONTRAST = 0.035, 0.13


def normalize(
    images: torch.Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, H, W) with per-channel ``(x/255 - mean) / std``."""
    m = channel_values(tuple(mean), images.device, dtype)
    s = channel_values(tuple(std), images.device, dtype)
    return (images.to(dtype) / 255 - m) / s


def channel_values(values: tuple[float, ...], device: torch.device, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``values`` as a (1, C, 1, 1) tensor on ``device``. On a GPU it is made once and shared (read-only): built
    from a Python list it is a copy from the host that waits for the device, once per batch otherwise. Never
    cached while torch.compile, torch.export or the ONNX exporter traces: a traced tensor must not outlive it."""
    if torch.device(device).type != "cuda" or torch.compiler.is_compiling() or torch.jit.is_tracing():
        return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)
    return _cached_channel_values(values, torch.device(device), dtype)


@functools.lru_cache(maxsize=64)
def _cached_channel_values(values: tuple[float, ...], device: torch.device, dtype: torch.dtype) -> torch.Tensor:
    with torch.inference_mode(False):  # so that input gradients through ``normalize`` (explain) can use it later
        return torch.tensor(values, device=device, dtype=dtype).view(1, -1, 1, 1)


def model_input(
    images: torch.Tensor,
    mean: tuple[float, ...] = CIFAR10_MEAN,
    std: tuple[float, ...] = CIFAR10_STD,
    image_size: int | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> what a model is fed: normalised float (N, 3, S, S), S = ``image_size`` (None: H).

    The one place train, evaluate and every reader of a run resize: bilinear, antialiased when
    shrinking. Normalising first gives the same result (per-channel affine maps commute with it).
    """
    x = normalize(images, mean, std, dtype)
    if image_size and tuple(x.shape[-2:]) != (image_size, image_size):
        shrink = image_size < max(x.shape[-2:])
        x = F.interpolate(x, size=(image_size, image_size), mode="bilinear", align_corners=False, antialias=shrink)
    return x


def random_crop(
    images: torch.Tensor, padding: int, generator: torch.Generator, size: int | None = None
) -> torch.Tensor:
    """Pad each side by ``padding`` (reflect) and crop a ``size`` x ``size`` window (None: H x W) at a
    random offset per image.

    images: (N, C, H, W). Returns (N, C, size, size) (default: the same shape) and the same dtype.
    """
    n, c, h, w = images.shape
    padding = max(padding, 0)
    out_h, out_w = (size, size) if size is not None and size < min(h, w) else (h, w)
    if padding == 0 and (out_h, out_w) == (h, w):
        return images
    padded = images
    if padding > 0:
        padded = F.pad(images.float() if images.dtype == torch.uint8 else images, (padding,) * 4, mode="reflect")
        padded = padded.to(images.dtype)
    dy = torch.randint(0, h + 2 * padding - out_h + 1, (n,), generator=generator, device=generator.device).to(
        images.device
    )
    dx = torch.randint(0, w + 2 * padding - out_w + 1, (n,), generator=generator, device=generator.device).to(
        images.device
    )
    rows = (dy[:, None] + torch.arange(out_h, device=images.device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(out_w, device=images.device))[:, None, None, :]
    batch = torch.arange(n, device=images.device)[:, None, None, None]
    chans = torch.arange(c, device=images.device)[None, :, None, None]
    return padded[batch, chans, rows, cols]


def random_flip(images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror each image left-right with probability 1/2. images: (N, C, H, W)."""
    flip = (torch.rand(len(images), generator=generator, device=generator.device) < 0.5).to(images.device)
    return torch.where(flip[:, None, None, None], images.flip(3), images)


def cutout(images: torch.Tensor, size: int, generator: torch.Generator) -> torch.Tensor:
    """Zero a ``size`` x ``size`` square at a random centre per image (DeVries & Taylor 2017)."""
    if size <= 0:
        return images
    n, _, h, w = images.shape
    cy = torch.randint(0, h, (n,), generator=generator, device=generator.device).to(images.device)
    cx = torch.randint(0, w, (n,), generator=generator, device=generator.device).to(images.device)
    ys = torch.arange(h, device=images.device)[None, :]
    xs = torch.arange(w, device=images.device)[None, :]
    half = size // 2
    in_rows = ((ys >= (cy - half)[:, None]) & (ys < (cy - half + size)[:, None]))[:, :, None]
    in_cols = ((xs >= (cx - half)[:, None]) & (xs < (cx - half + size)[:, None]))[:, None, :]
    mask = (in_rows & in_cols)[:, None]
    return images.masked_fill(mask, 0)


def color_jitter(images: torch.Tensor, brightness: float, contrast: float, generator: torch.Generator) -> torch.Tensor:
    """Per image, scale the contrast by a factor drawn from [1 - contrast, 1 + contrast] (around the
    CIFAR-10 channel means) and shift the brightness by up to +-``brightness`` of the full range.

    images: (N, C, H, W) uint8 -> (N, C, H, W) uint8, rounded and clipped to 0..255.
    """
    n = len(images)
    draw = functools.partial(torch.rand, n, generator=generator, device=generator.device)
    scale = (1 + contrast * (2 * draw() - 1)).to(images.device).view(-1, 1, 1, 1)
    shift = (255 * brightness * (2 * draw() - 1)).to(images.device).view(-1, 1, 1, 1)
    mean = 255 * channel_values(CIFAR10_MEAN, images.device)
    jittered = (images.float() - mean) * scale + mean + shift
    return jittered.round_().clamp_(0, 255).to(torch.uint8)


def augmix_half(images: torch.Tensor, generator: torch.Generator, group: int = AUGMIX_GROUP) -> torch.Tensor:
    """About half of the images (chosen per image) replaced by torchvision's AugMix of them (Hendrycks et al. 2020:
    severity 3, width 3, random depth, Dirichlet/Beta mixing), ``group`` chosen images per draw of operations.

    images: (N, 3, H, W) uint8 -> (N, 3, H, W) uint8. Seeded by ``generator`` (AugMix draws from torch's global
    generator, which is forked for it, so the caller's random state is untouched).
    """
    from torchvision.transforms import v2

    chosen = (torch.rand(len(images), generator=generator, device=generator.device) < 0.5).nonzero().flatten()
    seed = int(torch.randint(0, 2**62, (1,), generator=generator, device=generator.device))
    out = images.clone()
    mix = v2.AugMix()
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for start in range(0, len(chosen), group):
            rows = chosen[start : start + group].to(images.device)
            out[rows] = mix(images[rows])
    return out


def jpeg_copies(images: torch.Tensor, quality: int = JPEG_QUALITY) -> torch.Tensor:
    """Each image JPEG-encoded at ``quality`` (libjpeg's default 4:2:0 chroma) and decoded again.

    images: (N, 3, H, W) uint8 -> (N, 3, H, W) uint8. torchvision encodes the whole list in C++.
    """
    if len(images) == 0:
        return images.clone()
    encoded = torchvision.io.encode_jpeg(list(images.cpu()), quality=quality)
    return torch.stack(torchvision.io.decode_jpeg(encoded)).to(images.device)


class EpochImages:
    """The training images an epoch starts from, before per-batch augmentation.

    * ``altflip`` (airbench's alternating flip): a fixed random half of the images is
      mirrored in even epochs and the other half in odd epochs, so every image is seen
      both ways every two epochs instead of by chance.
    * ``jpeg``: each image is swapped for its JPEG copy (quality 75, 4:2:0) with
      probability 1/2, redrawn every epoch. It teaches the net JPEG artefacts, which
      matters when test images went through JPEG (the shared test set did).
    * ``augmix``: each image is swapped for an AugMix of it with probability 1/2, redrawn
      every epoch (``augmix_half``), for robustness to corruptions.

    Whole-set tensor ops (~0.1 s per epoch for 50,000 images); without either name the
    images are returned as they are.
    """

    def __init__(self, images: torch.Tensor, spec: str, seed: int):
        names = parse_augment(spec)
        self.images = images
        self.flip_half = None
        if "altflip" in names:
            gen = torch.Generator().manual_seed(seed)
            self.flip_half = (torch.rand(len(images), generator=gen) < 0.5).to(images.device)
        self.jpeg = jpeg_copies(images) if "jpeg" in names else None
        self.augmix = "augmix" in names

    def __call__(self, epoch: int, generator: torch.Generator) -> torch.Tensor:
        """(N, 3, H, W) uint8 images for ``epoch`` (0-based); ``generator`` draws the JPEG and AugMix choices."""
        images = self.images
        if self.jpeg is not None:
            use_jpeg = (torch.rand(len(images), generator=generator, device=generator.device) < 0.5).to(images.device)
            images = torch.where(use_jpeg[:, None, None, None], self.jpeg, images)
        if self.augmix:
            images = augmix_half(images, generator)
        if self.flip_half is not None:
            flip = self.flip_half if epoch % 2 == 0 else ~self.flip_half
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images


def parse_augment(spec: str) -> tuple[str, ...]:
    """``"crop,flip"`` -> ("crop", "flip"); ``"none"`` or ``""`` -> (). Unknown names are errors."""
    names = tuple(s.strip() for s in spec.split(",") if s.strip() and s.strip() != "none")
    unknown = [s for s in names if s not in AUGMENTATIONS]
    if unknown:
        raise ConfigError(f"unknown augmentation {', '.join(unknown)}; choose from {', '.join(AUGMENTATIONS)} or none")
    if "flip" in names and "altflip" in names:
        raise ConfigError("augment has both flip and altflip; keep one (altflip: alternating mirror per epoch)")
    return names


class Augmenter:
    """Applies the augmentations named in ``spec`` to a uint8 batch, in a fixed order."""

    def __init__(
        self,
        spec: str = "crop,flip",
        crop_padding: int = 4,
        cutout_size: int = 8,
        color_brightness: float = COLOR_BRIGHTNESS,
        color_contrast: float = COLOR_CONTRAST,
    ):
        self.names = parse_augment(spec)
        self.crop_padding = crop_padding
        self.cutout_size = cutout_size
        self.color_brightness = color_brightness
        self.color_contrast = color_contrast

    def __call__(self, images: torch.Tensor, generator: torch.Generator, size: int | None = None) -> torch.Tensor:
        """images: (N, 3, H, W) uint8 -> augmented (N, 3, H, W) uint8, or (N, 3, size, size) random
        windows at native scale when ``size`` is given (with ``crop``, taken from the padded images)."""
        if "crop" in self.names or size is not None:
            images = random_crop(images, self.crop_padding if "crop" in self.names else 0, generator, size)
        if "flip" in self.names:
            images = random_flip(images, generator)
        if "cutout" in self.names:
            images = cutout(images, self.cutout_size, generator)
        if "color" in self.names:
            images = color_jitter(images, self.color_brightness, self.color_contrast, generator)
        return images
