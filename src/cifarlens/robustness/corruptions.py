"""The 19 CIFAR-10-C corruptions (Hendrycks & Dietterich, ICLR 2019) at the constants of its 32x32 generator.

Every corruption takes uint8 RGB images (N, 3, H, W) and returns uint8 images of the same shape, like the
published ``.npy`` files: the reference computes in floats on [0, 1] and truncates ``clip(x, 0, 1) * 255``
to uint8, and so do we. Constants, float precision and quirks (such as ``randint(-d, d)`` never drawing
``+d``) follow ``make_cifar_c.py`` of hendrycks/robustness; the random draws come from our own seeded
generators (``Draws``), so the same seed gives the same corrupted images.

Per-pixel and convolution corruptions run on batched tensors (and so on a GPU); those that libraries
implement exactly (Pillow's JPEG and BOX resize, scikit-image's HSV conversions, OpenCV's edge and distance
operations, SciPy's ``map_coordinates``) call them per image on the CPU. Each corruption is one entry in
``CORRUPTIONS``; ``register`` adds one.
"""

from __future__ import annotations

import io
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F

from cifarlens.errors import CifarlensError, ConfigError

SEVERITIES = (1, 2, 3, 4, 5)
CHUNK = 500  # images drawn from one generator; chunk k of a split always gets the same draws


@dataclass
class Draws:
    """The random numbers of one corruption of one chunk: a torch and a numpy generator from one seed."""

    torch: torch.Generator
    numpy: np.random.Generator

    @classmethod
    def seeded(cls, seed: int, device: torch.device | str = "cpu") -> Draws:
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)
        return cls(gen, np.random.default_rng(seed))

    def normal(self, like: torch.Tensor, mean: float = 0.0, std: float = 1.0) -> torch.Tensor:
        return torch.randn(like.shape, generator=self.torch, dtype=like.dtype, device=like.device) * std + mean

    def uniform(self, shape: tuple[int, ...], low: float, high: float, like: torch.Tensor) -> torch.Tensor:
        u = torch.rand(shape, generator=self.torch, dtype=like.dtype, device=like.device)
        return u * (high - low) + low


Fn = Callable[[torch.Tensor, object, Draws], torch.Tensor]


@dataclass(frozen=True)
class Corruption:
    """One corruption: ``apply(images, severity, draws)`` on uint8 (N, 3, H, W).

    ``family``: noise, blur, weather or digital. ``benchmark``: one of the 15 that CIFAR-10-C's mean
    corruption accuracy averages (the other 4 are its held-out extras). ``constants``: the reference's
    parameter for severities 1-5. ``note``: how it differs from the reference, if at all.
    """

    name: str
    family: str
    benchmark: bool
    constants: tuple
    fn: Fn
    note: str = ""

    def apply(self, images: torch.Tensor, severity: int, draws: Draws) -> torch.Tensor:
        check_severity(severity)
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {tuple(images.shape)}")
        if not len(images):
            return images.clone()
        out = self.fn(images, self.constants[severity - 1], draws)
        assert out.shape == images.shape and out.dtype == torch.uint8, (self.name, out.shape, out.dtype)
        return out


CORRUPTIONS: dict[str, Corruption] = {}


def register(name: str, family: str, benchmark: bool, constants: tuple, note: str = "") -> Callable[[Fn], Fn]:
    """Decorator: add ``fn(images uint8 (N,3,H,W), constant, draws) -> uint8`` as a corruption."""

    def add(fn: Fn) -> Fn:
        CORRUPTIONS[name] = Corruption(name, family, benchmark, tuple(constants), fn, note)
        return fn

    return add


def benchmark_names() -> list[str]:
    """The 15 corruptions CIFAR-10-C's mean corruption accuracy averages, in the paper's order."""
    return [c.name for c in CORRUPTIONS.values() if c.benchmark]


def check_severity(severity: int) -> int:
    if severity not in SEVERITIES:
        raise ConfigError(f"severity {severity} is outside 1-5; choose severities from 1, 2, 3, 4, 5")
    return severity


def parse_corruptions(text: str) -> list[str]:
    """``all`` (the 19), ``benchmark`` (the 15) or comma-separated names, checked."""
    text = text.strip()
    if text == "all":  # the benchmark's 15 first, then the extras
        return benchmark_names() + [c.name for c in CORRUPTIONS.values() if not c.benchmark]
    if text == "benchmark":
        return benchmark_names()
    names = [n.strip() for n in text.split(",") if n.strip()]
    unknown = [n for n in names if n not in CORRUPTIONS]
    if unknown or not names:
        raise ConfigError(
            f"unknown corruption {', '.join(unknown) or repr(text)}; choose all, benchmark or names from "
            + ", ".join(CORRUPTIONS)
        )
    return list(dict.fromkeys(names))


def parse_severities(text: str) -> list[int]:
    """``1-5``, ``3`` or ``1,3,5``, checked to lie in 1-5."""
    try:
        if "-" in text:
            low, high = (int(p) for p in text.split("-", 1))
            values = list(range(low, high + 1))
        else:
            values = [int(p) for p in text.split(",") if p.strip()]
    except ValueError:
        raise ConfigError(f"severities {text!r} are not a range like 1-5 or a list like 1,3,5") from None
    bad = [v for v in values if v not in SEVERITIES]
    if bad or not values:
        raise ConfigError(f"severity {bad[0] if bad else text!r} is outside 1-5; choose severities from 1, 2, 3, 4, 5")
    return sorted(set(values))


def corrupt(
    images: torch.Tensor,
    name: str,
    severity: int,
    seed: int = 0,
    device: str | torch.device = "cpu",
    start: int = 0,
) -> torch.Tensor:
    """``images`` (uint8 (N, 3, H, W)) under corruption ``name`` at ``severity``, on ``device``, back on the CPU.

    Image ``i`` gets the draws of chunk ``(start + i) // CHUNK`` seeded from (seed, corruption, severity, chunk):
    the same seed gives the same images whatever other corruptions are run. ``start`` (a multiple of ``CHUNK``)
    says where ``images`` begin in the array first corrupted, so one chunk of it can be made again alone.
    """
    if name not in CORRUPTIONS:
        parse_corruptions(name)  # the one-line error listing the valid names
    if start % CHUNK:
        raise ValueError(f"start {start} is not a multiple of {CHUNK}")
    corruption = CORRUPTIONS[name]
    check_severity(severity)
    index = list(CORRUPTIONS).index(name)
    out = []
    for first in range(0, len(images), CHUNK):
        chunk = (start + first) // CHUNK
        chunk_seed = int(np.random.SeedSequence([seed, index, severity, chunk]).generate_state(1)[0])
        draws = Draws.seeded(chunk_seed, device)
        out.append(corruption.apply(images[first : first + CHUNK].to(device), severity, draws).cpu())
    return torch.cat(out) if out else images.clone()


def corrupt_one(images: torch.Tensor, position: int, name: str, severity: int, seed: int = 0) -> torch.Tensor:
    """Image ``position`` of ``images`` (uint8 (N, 3, H, W)) exactly as ``corrupt(images, ...)`` made it, making
    only its chunk. Returns uint8 (3, H, W)."""
    first = position - position % CHUNK
    return corrupt(images[first : first + CHUNK], name, severity, seed=seed, start=first)[position - first]


# ----------------------------------------------------------------------------------------------------------------
# Conversions, as the reference does them


def unit(images: torch.Tensor, dtype: torch.dtype = torch.float64) -> torch.Tensor:
    """uint8 -> floats on [0, 1] (the reference's ``np.array(x) / 255.``)."""
    return images.to(dtype) / 255.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[0, 1] floats -> uint8 by truncation, as ``np.uint8(np.clip(x, 0, 1) * 255)`` in the reference."""
    return (x.clamp(0, 1) * 255).to(torch.uint8)


def channels_last(images: torch.Tensor) -> np.ndarray:
    """uint8 (N, 3, H, W) tensor -> numpy (N, H, W, 3) for the per-image library calls."""
    return images.permute(0, 2, 3, 1).cpu().numpy()


def from_channels_last(array: np.ndarray, like: torch.Tensor) -> torch.Tensor:
    """numpy (N, H, W, 3) -> (N, 3, H, W) tensor on ``like``'s device."""
    return torch.from_numpy(np.ascontiguousarray(array)).permute(0, 3, 1, 2).to(like.device)


def float_to_uint8(array: np.ndarray) -> np.ndarray:
    """numpy floats on [0, 1] -> uint8 by truncation (the reference's final ``np.uint8``)."""
    return (np.clip(array, 0, 1) * 255).astype(np.uint8)


# Written by hand: scikit-image's ``gaussian`` (SciPy's ``gaussian_filter``) runs on the CPU one array at a
# time; this is the same separable kernel (radius int(4 sigma + 0.5), edges repeated as mode="nearest") as a
# batched convolution. tests check it against scikit-image.
def gaussian_kernel(sigma: float, truncate: float = 4.0) -> torch.Tensor:
    radius = int(truncate * float(sigma) + 0.5)
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    weights = torch.exp(-0.5 * x**2 / float(sigma) ** 2)
    return weights / weights.sum()


def gaussian_blur_batch(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """x: float (N, C, H, W) blurred per channel as scikit-image's ``gaussian(x, sigma, channel_axis=-1)``."""
    kernel = gaussian_kernel(sigma).to(x)
    r = len(kernel) // 2
    n, c, h, w = x.shape
    flat = x.reshape(n * c, 1, h, w)
    flat = F.conv2d(F.pad(flat, (r, r, 0, 0), mode="replicate"), kernel.view(1, 1, 1, -1))
    flat = F.conv2d(F.pad(flat, (0, 0, r, r), mode="replicate"), kernel.view(1, 1, -1, 1))
    return flat.reshape(n, c, h, w)


def clipped_zoom(x: torch.Tensor, zoom: float) -> torch.Tensor:
    """x: float (N, C, H, H): the centre ``ceil(H / zoom)`` square zoomed back to H (the reference's clipped_zoom).

    SciPy's ``zoom(order=1)`` maps output pixel o to input o * (n - 1) / (m - 1): bilinear with aligned corners.
    """
    h = x.shape[-1]
    crop = int(math.ceil(h / zoom))
    top = (h - crop) // 2
    size = int(round(crop * zoom))
    zoomed = F.interpolate(
        x[..., top : top + crop, top : top + crop], size=(size, size), mode="bilinear", align_corners=True
    )
    trim = (size - h) // 2
    return zoomed[..., trim : trim + h, trim : trim + h]


# Written by hand: the reference blurs with ImageMagick's MotionBlurImage (through Wand), a system library we
# cannot require. This is its kernel: 2*ceil(radius)+1 taps weighted exp(-i^2 / 2 sigma^2), tap i sampling
# the pixel at (ceil(i sin(a) - 0.5), ceil(i cos(a) - 0.5)) rows and columns ahead, edges repeated, rounded to
# 16 bits and truncated to 8 as ImageMagick's Q16 build writes the PNG. It equals ImageMagick 6.9 pixel for
# pixel; tests compare the two when Wand is installed.
def motion_blur_batch(images: torch.Tensor, radius: float, sigma: float, angles: torch.Tensor) -> torch.Tensor:
    """images: uint8 (N, C, H, W); angles: (N,) degrees -> uint8 (N, C, H, W)."""
    n, _, h, w = images.shape
    width = int(2 * math.ceil(radius) + 1)
    taps = torch.arange(width, dtype=torch.float64)
    weights = torch.exp(-(taps**2) / (2 * sigma**2))
    weights = weights / weights.sum()
    rad = torch.deg2rad(angles.double().cpu())
    dy = torch.ceil(taps[None] * torch.sin(rad)[:, None] - 0.5).long().to(images.device)  # (N, width)
    dx = torch.ceil(taps[None] * torch.cos(rad)[:, None] - 0.5).long().to(images.device)
    x = images.double()
    rows = torch.arange(h, device=images.device)
    cols = torch.arange(w, device=images.device)
    batch = torch.arange(n, device=images.device)[:, None, None]
    out = torch.zeros_like(x)
    for i in range(width):
        r = (rows[None] + dy[:, i, None]).clamp(0, h - 1)[:, :, None]  # (N, H, 1)
        c = (cols[None] + dx[:, i, None]).clamp(0, w - 1)[:, None, :]  # (N, 1, W)
        out += float(weights[i]) * x.permute(0, 2, 3, 1)[batch, r, c].permute(0, 3, 1, 2)
    q16 = torch.round(out * 257).clamp(0, 65535)
    return torch.div(q16, 257, rounding_mode="floor").to(torch.uint8)


# ----------------------------------------------------------------------------------------------------------------
# Noise


@register("gaussian_noise", "noise", True, (0.04, 0.06, 0.08, 0.09, 0.10))
def gaussian_noise(images, c, draws):
    x = unit(images)
    return to_uint8(x + draws.normal(x, std=c))


@register("shot_noise", "noise", True, (500, 250, 100, 75, 50))
def shot_noise(images, c, draws):
    x = unit(images)
    return to_uint8(torch.poisson(x * c, generator=draws.torch) / c)


@register("impulse_noise", "noise", True, (0.01, 0.02, 0.03, 0.05, 0.07))
def impulse_noise(images, c, draws):
    # scikit-image's random_noise(mode="s&p", amount=c): each value flips with probability c, half to 1, half to 0.
    x = unit(images)
    flipped = torch.rand(x.shape, generator=draws.torch, dtype=x.dtype, device=x.device) < c
    salt = torch.rand(x.shape, generator=draws.torch, dtype=x.dtype, device=x.device) < 0.5
    x = torch.where(flipped & salt, torch.ones_like(x), x)
    return to_uint8(torch.where(flipped & ~salt, torch.zeros_like(x), x))


@register("speckle_noise", "noise", False, (0.06, 0.1, 0.12, 0.16, 0.2))
def speckle_noise(images, c, draws):
    x = unit(images)
    return to_uint8(x + x * draws.normal(x, std=c))


# ----------------------------------------------------------------------------------------------------------------
# Blur


@register("defocus_blur", "blur", True, ((0.3, 0.4), (0.4, 0.5), (0.5, 0.6), (1, 0.2), (1.5, 0.1)))
def defocus_blur(images, c, draws):
    kernel = torch.from_numpy(disk_kernel(*c)).to(torch.float64)
    support = int(kernel.nonzero().sub(kernel.shape[0] // 2).abs().max())  # zero taps add nothing: 5x5, not 17x17
    centre = kernel.shape[0] // 2
    kernel = kernel[centre - support : centre + support + 1, centre - support : centre + support + 1]
    x = unit(images)
    r = support
    n, ch, h, w = x.shape
    flat = F.pad(x.reshape(n * ch, 1, h, w), (r, r, r, r), mode="reflect")  # OpenCV's BORDER_REFLECT_101
    out = F.conv2d(flat, kernel.to(x.device)[None, None]).reshape(n, ch, h, w)  # filter2D correlates, as conv2d
    return to_uint8(out)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """The reference's antialiased disk: a 17x17 indicator of x^2 + y^2 <= r^2, normalised, Gaussian-blurred."""
    import cv2

    span = np.arange(-8, 8 + 1) if radius <= 8 else np.arange(-radius, radius + 1)
    ksize = (3, 3) if radius <= 8 else (5, 5)
    xx, yy = np.meshgrid(span, span)
    disk = np.array((xx**2 + yy**2) <= radius**2, dtype=np.float32)
    disk /= disk.sum()
    return cv2.GaussianBlur(disk, ksize=ksize, sigmaX=alias_blur)


@register("glass_blur", "blur", True, ((0.05, 1, 1), (0.25, 1, 1), (0.4, 1, 1), (0.25, 1, 2), (0.4, 1, 2)))
def glass_blur(images, c, draws):
    sigma, delta, iterations = c
    x = (gaussian_blur_batch(unit(images), sigma) * 255).to(torch.uint8)
    n, _, h, w = x.shape
    batch = torch.arange(n, device=x.device)
    # Written by hand: the reference sweeps the pixels one after another in Python (bottom-right to top-left,
    # offsets from randint(-delta, delta), so never +delta); here the same sweep runs for the whole batch at once.
    # Its "swap" `x[h, w], x[h', w'] = x[h', w'], x[h, w]` assigns numpy views, so it copies the neighbour into
    # (h, w) and leaves the neighbour as it was; CIFAR-10-C was made that way, and so is this.
    positions = [(i, j) for i in range(h - delta, delta, -1) for j in range(w - delta, delta, -1)]
    offsets = torch.randint(-delta, delta, (iterations, len(positions), 2, n), generator=draws.torch, device=x.device)
    for it in range(iterations):
        for k, (i, j) in enumerate(positions):
            dx, dy = offsets[it, k]
            x[batch, :, i, j] = x[batch, :, i + dy, j + dx]
    return to_uint8(gaussian_blur_batch(unit(x), sigma))


@register(
    "motion_blur",
    "blur",
    True,
    ((6, 1), (6, 1.5), (6, 2), (8, 2), (9, 2.5)),
    note="ImageMagick's motion-blur kernel written in PyTorch (ImageMagick itself is not required)",
)
def motion_blur(images, c, draws):
    radius, sigma = c
    angles = draws.uniform((len(images),), -45, 45, images.double())
    return motion_blur_batch(images, radius, sigma, angles)


@register("zoom_blur", "blur", True, tuple(tuple(np.arange(1, top, 0.01)) for top in (1.06, 1.11, 1.16, 1.21, 1.26)))
def zoom_blur(images, c, draws):
    x = unit(images, torch.float32)
    out = torch.zeros_like(x)
    for factor in c:
        out += clipped_zoom(x, float(factor))
    return to_uint8((x + out) / (len(c) + 1))


@register("gaussian_blur", "blur", False, (0.4, 0.6, 0.7, 0.8, 1))
def gaussian_blur(images, c, draws):
    return to_uint8(gaussian_blur_batch(unit(images), c))


# ----------------------------------------------------------------------------------------------------------------
# Weather


@register(
    "snow",
    "weather",
    True,
    (
        (0.1, 0.2, 1, 0.6, 8, 3, 0.95),
        (0.1, 0.2, 1, 0.5, 10, 4, 0.9),
        (0.15, 0.3, 1.75, 0.55, 10, 4, 0.9),
        (0.25, 0.3, 2.25, 0.6, 12, 6, 0.85),
        (0.3, 0.3, 1.25, 0.65, 14, 12, 0.8),
    ),
    note="its flakes are streaked with the motion-blur kernel of motion_blur",
)
def snow(images, c, draws):
    mean, std, zoom, threshold, radius, sigma, keep = c
    x = unit(images, torch.float32)
    n, _, h, w = x.shape
    layer = draws.normal(torch.zeros(n, 1, h, w, dtype=torch.float64, device=x.device), mean, std)
    layer = clipped_zoom(layer, zoom)
    layer = torch.where(layer < threshold, torch.zeros_like(layer), layer)
    angles = draws.uniform((n,), -135, -45, layer)
    flakes = motion_blur_batch(to_uint8(layer), radius, sigma, angles).to(torch.float32) / 255
    gray = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2])[:, None]  # OpenCV's RGB2GRAY
    x = keep * x + (1 - keep) * torch.maximum(x, gray * 1.5 + 0.5)
    return to_uint8(x + flakes + flakes.flip(-1, -2))


FROST_FILES = ("frost1.png", "frost2.png", "frost3.png", "frost4.jpg", "frost5.jpg", "frost6.jpg")
FROST_URL = "https://raw.githubusercontent.com/hendrycks/robustness/master/ImageNet-C/create_c/"


def frost_folder() -> Path:
    """Where frost looks for the reference's frost textures: ``$CIFARLENS_FROST_DIR``, else the torch hub cache."""
    return Path(os.environ.get("CIFARLENS_FROST_DIR") or Path(torch.hub.get_dir()) / "cifar10c-frost")


def frost_textures() -> list[np.ndarray]:
    """The five frost textures the reference draws from (BGR, resized by 0.2 as it does).

    Looked up in ``frost_folder()``, then in an installed ``imagecorruptions`` package (which ships the same
    files), else downloaded from hendrycks/robustness into ``frost_folder()``.
    """
    import cv2

    folder = frost_folder()
    if not all((folder / f).is_file() for f in FROST_FILES[:5]):
        folder = _imagecorruptions_frost() or _download_frost(folder)
    textures = []
    for name in FROST_FILES[:5]:  # the reference's randint(5) never picks the sixth
        texture = cv2.imread(str(folder / name))
        if texture is None:
            raise CifarlensError(f"frost texture {folder / name} is not a readable image; delete it to download again")
        textures.append(cv2.resize(texture, (0, 0), fx=0.2, fy=0.2))
    return textures


def _imagecorruptions_frost() -> Path | None:
    import importlib.util

    spec = importlib.util.find_spec("imagecorruptions")  # found, not imported: it breaks on current scikit-image
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(list(spec.submodule_search_locations)[0]) / "frost"
    return folder if all((folder / f).is_file() for f in FROST_FILES[:5]) else None


def _download_frost(folder: Path) -> Path:
    from cifarlens.models.pretrained import offline

    where = f"put {', '.join(FROST_FILES[:5])} from {FROST_URL} into {folder} (or set CIFARLENS_FROST_DIR)"
    if offline():
        raise CifarlensError(f"frost needs the reference's frost textures and downloads are off; {where}")
    folder.mkdir(parents=True, exist_ok=True)
    for name in FROST_FILES[:5]:
        if (folder / name).is_file():
            continue
        try:
            torch.hub.download_url_to_file(FROST_URL + name, str(folder / name), progress=False)
        except OSError as err:
            raise CifarlensError(f"could not download frost texture {name}: {err}; {where}") from None
    return folder


@register("frost", "weather", True, ((1, 0.2), (1, 0.3), (0.9, 0.4), (0.85, 0.4), (0.75, 0.45)))
def frost(images, c, draws):
    textures = frost_textures()
    n, _, h, w = images.shape
    rng = draws.numpy
    crops = []
    for _ in range(n):
        texture = textures[rng.integers(5)]
        top, left = rng.integers(0, texture.shape[0] - h), rng.integers(0, texture.shape[1] - w)
        crops.append(texture[top : top + h, left : left + w][..., ::-1])  # BGR -> RGB
    frost_layer = from_channels_last(np.stack(crops).astype(np.float64), images)
    return (c[0] * images.double() + c[1] * frost_layer).clamp(0, 255).to(torch.uint8)


@register("fog", "weather", True, ((0.2, 3), (0.5, 3), (0.75, 2.5), (1, 2), (1.5, 1.75)))
def fog(images, c, draws):
    strength, decay = c
    x = unit(images)
    peak = x.amax(dim=(1, 2, 3), keepdim=True)
    fractal = plasma_fractal(len(x), x.shape[-1], decay, draws, x)
    x = x + strength * fractal[:, None]
    return to_uint8(x * peak / (peak + strength))


# Written by hand: the diamond-square height map of the reference (no library draws it), for a batch at once.
def plasma_fractal(n: int, size: int, decay: float, draws: Draws, like: torch.Tensor) -> torch.Tensor:
    """(n, size, size) height maps on [0, 1]; ``size`` a power of two."""
    grid = torch.zeros(n, size, size, dtype=like.dtype, device=like.device)
    step, wibble = size, 100.0

    def wibbled_mean(total: torch.Tensor) -> torch.Tensor:
        return total / 4 + wibble * draws.uniform(tuple(total.shape), -wibble, wibble, like)

    while step >= 2:
        half = step // 2
        corners = grid[:, 0::step, 0::step]
        squares = corners + corners.roll(-1, dims=1)
        squares = squares + squares.roll(-1, dims=2)
        grid[:, half::step, half::step] = wibbled_mean(squares)
        down_right = grid[:, half::step, half::step]
        up_left = grid[:, 0::step, 0::step]
        left_total = down_right + down_right.roll(1, dims=1) + up_left + up_left.roll(-1, dims=2)
        grid[:, 0::step, half::step] = wibbled_mean(left_total)
        top_total = down_right + down_right.roll(1, dims=2) + up_left + up_left.roll(-1, dims=1)
        grid[:, half::step, 0::step] = wibbled_mean(top_total)
        step //= 2
        wibble /= decay
    grid = grid - grid.amin(dim=(1, 2), keepdim=True)
    return grid / grid.amax(dim=(1, 2), keepdim=True)


@register("brightness", "weather", True, (0.05, 0.1, 0.15, 0.2, 0.3))
def brightness(images, c, draws):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(channels_last(images) / 255.0)
    hsv[..., 2] = np.clip(hsv[..., 2] + c, 0, 1)
    return from_channels_last(float_to_uint8(hsv2rgb(hsv)), images)


@register(
    "spatter",
    "weather",
    False,
    (
        (0.62, 0.1, 0.7, 0.7, 0.5, 0),
        (0.65, 0.1, 0.8, 0.7, 0.5, 0),
        (0.65, 0.3, 1, 0.69, 0.5, 0),
        (0.65, 0.1, 0.7, 0.69, 0.6, 1),
        (0.65, 0.1, 0.5, 0.68, 0.6, 1),
    ),
)
def spatter(images, c, draws):
    array = channels_last(images)
    layers = draws.numpy.normal(c[0], c[1], size=array.shape[:3])
    out = np.stack([_spatter_one(image.astype(np.float32) / 255.0, layer, c) for image, layer in zip(array, layers)])
    return from_channels_last(float_to_uint8(out), images)


def _spatter_one(x: np.ndarray, layer: np.ndarray, c: tuple) -> np.ndarray:
    import cv2
    from skimage.filters import gaussian

    _, _, sigma, threshold, scale, mud = c
    liquid = gaussian(layer, sigma=sigma)
    liquid[liquid < threshold] = 0
    if mud == 0:  # water drops, pale turquoise
        liquid = (liquid * 255).astype(np.uint8)
        dist = 255 - cv2.Canny(liquid, 50, 150)
        dist = cv2.distanceTransform(dist, cv2.DIST_L2, 5)
        _, dist = cv2.threshold(dist, 20, 20, cv2.THRESH_TRUNC)
        dist = cv2.equalizeHist(cv2.blur(dist, (3, 3)).astype(np.uint8))
        ker = np.array([[-2, -1, 0], [-1, 1, 1], [0, 1, 2]], dtype=np.float32)
        dist = cv2.blur(cv2.filter2D(dist, cv2.CV_8U, ker), (3, 3)).astype(np.float32)
        drops = liquid * dist
        if drops.max() <= 0:  # no drop in this image (the reference would divide by zero)
            return x
        drops = drops / drops.max() * scale
        color = np.array([175, 238, 238], dtype=np.float32) / 255.0
        return np.clip(x + drops[..., None] * color, 0, 1)
    mask = gaussian(np.where(liquid > threshold, 1, 0).astype(np.float32), sigma=scale)
    mask[mask < 0.8] = 0
    color = np.array([63, 42, 20], dtype=np.float32) / 255.0  # mud brown
    return np.clip(x * (1 - mask[..., None]) + color * mask[..., None], 0, 1)


# ----------------------------------------------------------------------------------------------------------------
# Digital


@register("contrast", "digital", True, (0.75, 0.5, 0.4, 0.3, 0.15))
def contrast(images, c, draws):
    x = unit(images)
    means = x.mean(dim=(2, 3), keepdim=True)
    return to_uint8((x - means) * c + means)


@register(
    "elastic_transform",
    "digital",
    True,
    tuple(
        (32 * a, 32 * b, 32 * d)
        for a, b, d in ((0, 0, 0.08), (0.05, 0.2, 0.07), (0.08, 0.06, 0.06), (0.1, 0.04, 0.05), (0.1, 0.03, 0.03))
    ),
)
def elastic_transform(images, c, draws):
    array = channels_last(images)
    out = np.stack([_elastic_one(image.astype(np.float32) / 255.0, c, draws.numpy) for image in array])
    return from_channels_last(float_to_uint8(out), images)


def _elastic_one(image: np.ndarray, c: tuple, rng: np.random.Generator) -> np.ndarray:
    import cv2
    from scipy.ndimage import map_coordinates
    from skimage.filters import gaussian

    alpha, sigma, shift = c
    shape = image.shape
    centre = np.float32(shape[:2]) // 2
    square = min(shape[:2]) // 3
    source = np.float32([centre + square, [centre[0] + square, centre[1] - square], centre - square])
    target = source + rng.uniform(-shift, shift, size=source.shape).astype(np.float32)
    image = cv2.warpAffine(
        image, cv2.getAffineTransform(source, target), shape[:2][::-1], borderMode=cv2.BORDER_REFLECT_101
    )
    dx = (gaussian(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    dy = (gaussian(rng.uniform(-1, 1, size=shape[:2]), sigma, mode="reflect", truncate=3) * alpha).astype(np.float32)
    x, y, z = np.meshgrid(np.arange(shape[1]), np.arange(shape[0]), np.arange(shape[2]))
    indices = (
        np.reshape(y + dy[..., None], (-1, 1)),
        np.reshape(x + dx[..., None], (-1, 1)),
        np.reshape(z, (-1, 1)),
    )
    return np.clip(map_coordinates(image, indices, order=1, mode="reflect").reshape(shape), 0, 1)


@register("pixelate", "digital", True, (0.95, 0.9, 0.85, 0.75, 0.65))
def pixelate(images, c, draws):
    from PIL import Image

    array = channels_last(images)
    h, w = array.shape[1:3]
    small = (int(w * c), int(h * c))
    out = [np.asarray(Image.fromarray(a).resize(small, Image.BOX).resize((w, h), Image.BOX)) for a in array]
    return from_channels_last(np.stack(out), images)


@register("jpeg_compression", "digital", True, (80, 65, 58, 50, 40))
def jpeg_compression(images, c, draws):
    from PIL import Image

    def compressed(array: np.ndarray) -> np.ndarray:
        buffer = io.BytesIO()
        Image.fromarray(array).save(buffer, "JPEG", quality=c)
        return np.asarray(Image.open(buffer).convert("RGB"))

    return from_channels_last(np.stack([compressed(a) for a in channels_last(images)]), images)


@register("saturate", "digital", False, ((0.3, 0), (0.1, 0), (1.5, 0), (2, 0.1), (2.5, 0.2)))
def saturate(images, c, draws):
    from skimage.color import hsv2rgb, rgb2hsv

    hsv = rgb2hsv(channels_last(images) / 255.0)
    hsv[..., 1] = np.clip(hsv[..., 1] * c[0] + c[1], 0, 1)
    return from_channels_last(float_to_uint8(hsv2rgb(hsv)), images)
