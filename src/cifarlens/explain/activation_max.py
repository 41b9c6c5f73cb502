"""Activation maximisation: images that drive one channel (or one class logit) as high as possible.

The method of Lucid / lucent (Olah et al., "Feature Visualization", Distill 2017), written here
because torch-lucent 0.1.8 (2021) is unmaintained, imports kornia and IPython at import time
(it did not import in our environment without them), and its transforms (pad 12, jitter 8)
and colour matrix are tuned for ImageNet 224x224 inputs. What makes the images readable, as in lucent:

* Fourier parameterisation: the image is the inverse real FFT of a learnt spectrum whose
  amplitudes are scaled by 1/frequency, so the optimiser moves low frequencies first;
* decorrelated colour: the 3 optimised channels are mapped to RGB by the square root of the
  colour covariance (here measured on the run's training pixels instead of lucent's ImageNet
  constant), then squashed into [0, 1] with a sigmoid;
* robustness transforms before every step: pad, jitter, random scale, random rotation, jitter,
  scaled down from lucent's 224-pixel values to 32 pixels.

All channels (or classes) are optimised at once, one image each, in a single batch.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from cifarlens.errors import CifarlensError
from cifarlens.explain.images import denormalize, parse_indices
from cifarlens.explain.plots import plot_tiles
from cifarlens.explain.run_model import last_stage, load_run_model
from cifarlens.models.layers import FeatureExtractor
from cifarlens.run import ModelSpec, RunDir, write_json

LOGITS = "logits"  # pseudo-layer: the model's output


def colour_correlation_sqrt(images: torch.Tensor) -> torch.Tensor:
    """Square root (3, 3) of the RGB covariance of uint8 images (N, 3, H, W), scaled to unit largest column norm."""
    pixels = images.permute(0, 2, 3, 1).reshape(-1, 3).double() / 255
    cov = torch.cov(pixels.T)
    eigvals, eigvecs = torch.linalg.eigh(cov)
    sqrt = eigvecs @ torch.diag(eigvals.clamp_min(0).sqrt()) @ eigvecs.T
    return (sqrt / sqrt.norm(dim=0).max()).float()


class FourierImage(nn.Module):
    """``batch`` learnable images (B, 3, size, size) in [0, 1], parameterised by a decorrelated 1/f spectrum."""

    def __init__(
        self,
        batch: int,
        size: int,
        colour_sqrt: torch.Tensor,
        *,
        decay_power: float = 1.0,
        std: float = 0.01,
        generator: torch.Generator | None = None,
    ):
        super().__init__()
        fy = torch.fft.fftfreq(size)[:, None]
        fx = torch.fft.rfftfreq(size)[None, :]
        freqs = torch.sqrt(fx**2 + fy**2)
        self.register_buffer("scale", 1.0 / freqs.clamp_min(1.0 / size) ** decay_power)  # as lucent
        self.register_buffer("colour", colour_sqrt)
        shape = (batch, 3, *freqs.shape, 2)
        self.spectrum = nn.Parameter(torch.randn(shape, generator=generator) * std)
        self.size = size

    def forward(self) -> torch.Tensor:
        spectrum = torch.view_as_complex(self.spectrum) * self.scale
        image = torch.fft.irfft2(spectrum, s=(self.size, self.size), norm="ortho") / 4
        image = torch.einsum("bchw,dc->bdhw", image, self.colour)  # decorrelated -> RGB
        return torch.sigmoid(image)


def robustness_transforms(
    x: torch.Tensor,
    generator: torch.Generator,
    *,
    pad: int = 4,
    jitter: int = 2,
    scales: tuple[float, float] = (0.9, 1.1),
    degrees: float = 10.0,
) -> torch.Tensor:
    """lucent's standard transforms at CIFAR scale: pad, jitter, random scale and rotation, jitter, crop back.

    x: (B, 3, S, S) in [0, 1] -> same shape; parameters drawn per image from ``generator``.
    """
    b, _, s, _ = x.shape
    x = F.pad(x, (pad,) * 4, mode="constant", value=0.5)
    x = _jitter(x, jitter, generator)
    scale = torch.empty(b).uniform_(*scales, generator=generator)
    angle = torch.empty(b).uniform_(-degrees, degrees, generator=generator) * math.pi / 180
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack([torch.stack([cos, -sin, torch.zeros(b)], 1), torch.stack([sin, cos, torch.zeros(b)], 1)], 1)
    grid = F.affine_grid(theta.to(x), list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, padding_mode="border", align_corners=False)
    x = _jitter(x, max(1, jitter // 2), generator)
    off = (x.shape[-1] - s) // 2
    return x[..., off : off + s, off : off + s]


def _jitter(x: torch.Tensor, d: int, generator: torch.Generator) -> torch.Tensor:
    dy, dx = torch.randint(-d, d + 1, (2,), generator=generator).tolist()  # one shift per step, as in lucent
    return torch.roll(x, shifts=(dy, dx), dims=(2, 3))


@dataclass
class MaximisedImages:
    """Optimised images (B, 3, S, S) in [0, 1], the unit each one maximises, and its final activation."""

    images: torch.Tensor
    units: list[int]
    activations: np.ndarray
    losses: list[float]


class ActivationMaximiser:
    """``maximiser(units) -> MaximisedImages``: one image per channel of ``layer`` (or class, for ``layer="logits"``).

    The objective is the mean activation of the channel over its spatial positions (or the
    logit). ``steps`` Adam steps at ``lr`` on the Fourier parameters.
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        layer: str,
        *,
        colour_sqrt: torch.Tensor | None = None,
        steps: int = 256,
        lr: float = 0.05,
        seed: int = 0,
        transforms: bool = True,
    ):
        self.model, self.spec, self.layer = model.eval(), spec, layer
        self.device = next(model.parameters()).device
        self.extractor = None if layer == LOGITS else FeatureExtractor(model, [layer])
        self.colour = colour_sqrt if colour_sqrt is not None else torch.eye(3)
        self.steps, self.lr, self.seed, self.transforms = steps, lr, seed, transforms

    def unit_activations(self, images01: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) in [0, 1] -> (B, units): each unit's mean activation (or the logits), on the images' device."""
        mean = torch.tensor(self.spec.mean, device=images01.device).view(1, 3, 1, 1)
        std = torch.tensor(self.spec.std, device=images01.device).view(1, 3, 1, 1)
        x = (images01 - mean) / std
        if self.extractor is None:
            return self.model(x)
        out = self.extractor(x)[self.layer]
        if out.ndim == 4:
            return out.mean(dim=(2, 3))
        if out.ndim == 2:
            return out
        raise CifarlensError(f"layer {self.layer!r} outputs shape {tuple(out.shape)}; pick a conv or linear layer")

    def __call__(self, units: list[int]) -> MaximisedImages:
        gen = torch.Generator().manual_seed(self.seed)  # on the CPU: the same images on every device
        image = FourierImage(len(units), self.spec.image_size, self.colour, generator=gen).to(self.device)
        opt = torch.optim.Adam(image.parameters(), lr=self.lr)
        idx = torch.arange(len(units), device=self.device)
        target = torch.tensor(units, device=self.device)
        losses = []
        for _ in range(self.steps):
            x = image()
            if self.transforms:
                x = robustness_transforms(x, gen)
            loss = -self.unit_activations(x)[idx, target].mean()
            (image.spectrum.grad,) = torch.autograd.grad(loss, [image.spectrum])  # no grads into the model
            opt.step()
            losses.append(float(loss.detach()))
        with torch.no_grad():
            final = image()
            acts = self.unit_activations(final)[idx, target].cpu().numpy()
        return MaximisedImages(final.detach().cpu(), list(units), acts, losses)


@dataclass
class ActivationMaxResult:
    """What ``activation_max_run`` made: one image per unit, with its activation against the best real image's."""

    model_name: str
    layer: str  # a layer name, or LOGITS
    images: np.ndarray  # float (B, S, S, 3) in [0, 1]
    rows: list[dict]  # per unit: activation, best_real_activation, ratio_to_best_real (and probability for logits)
    tile_labels: list[str]
    median_ratio: float  # median over units of activation / best_real_activation
    real_images: int  # test images the activations are compared with
    steps: int
    lr: float
    seed: int
    seconds: float

    @property
    def title(self) -> str:
        return (
            f"{self.model_name} {self.layer}: {len(self.rows)} images, {self.steps} steps ({self.seconds:.0f}s); "
            f"median activation {self.median_ratio:.1f}x the strongest of {self.real_images} test images"
        )

    def write(self, folder: str | Path) -> list[Path]:
        """``<layer>.png`` (the images) and ``<layer>.json`` (settings and per-unit numbers) into ``folder``."""

        folder, stem = Path(folder), RunDir.file_stem(self.layer)
        paths = [folder / f"{stem}.png", folder / f"{stem}.json"]
        plot_tiles(self.images, paths[0], labels=self.tile_labels, title=self.title, tile_inches=1.1)
        write_json(
            paths[1],
            {
                "layer": self.layer,
                "steps": self.steps,
                "lr": self.lr,
                "seed": self.seed,
                "seconds": self.seconds,
                "median_ratio_to_best_real": self.median_ratio,
                "units": self.rows,
            },
        )
        return paths


def activation_max_run(
    run: str | Path,
    *,
    layer: str | None = None,
    channels: str = "0-15",
    classes: str | None = None,
    steps: int = 256,
    lr: float = 0.05,
    seed: int = 0,
    data_dir: str | None = None,
    device: str = "cpu",
) -> ActivationMaxResult:
    """Images that maximise ``channels`` of ``layer`` (default: the deepest probe stage), e.g. "0-15" or "0,3", or
    with ``classes`` ("all" or e.g. "0,3") the class logits instead, optimised on ``device``. Each activation is
    compared with the strongest one among the run's first 500 test images."""

    model, spec, dev = load_run_model(run, device)
    if classes is not None and layer is not None:
        raise CifarlensError("give --layer (channels) or --classes (logits), not both")
    data = RunDir(run).load_data(data_dir)
    name = LOGITS if classes is not None else layer or last_stage(model, spec)
    maximiser = ActivationMaximiser(
        model, spec, name, colour_sqrt=colour_correlation_sqrt(data.train.images[:2000]), steps=steps, lr=lr, seed=seed
    )
    real = data.test.images[:500]
    with torch.no_grad():  # real images resized to the model's input size, in [0, 1] like the optimised ones
        real_acts = maximiser.unit_activations(denormalize(spec.inputs(real.to(dev)), spec)).cpu()
    if classes is None:
        units = parse_indices(channels, real_acts.shape[1])
    else:
        units = list(range(spec.num_classes)) if classes == "all" else parse_indices(classes, spec.num_classes)
    t0 = time.perf_counter()
    result = maximiser(units)
    seconds = time.perf_counter() - t0
    best_real = real_acts[:, units].amax(0).numpy()
    ratio = result.activations / np.where(np.abs(best_real) > 1e-9, best_real, np.nan)
    rows = [
        {"unit": u, "activation": float(a), "best_real_activation": float(b), "ratio_to_best_real": float(r)}
        for u, a, b, r in zip(units, result.activations, best_real, ratio)
    ]
    if name == LOGITS:
        with torch.no_grad():
            probs = maximiser.unit_activations(result.images.to(dev)).softmax(1).cpu()
        for i, (row, u) in enumerate(zip(rows, units)):
            row["probability"] = float(probs[i, u])
        labels = [f"{spec.classes[u]} p={r['probability']:.2f}" for u, r in zip(units, rows)]
    else:
        labels = [f"ch{u} x{r['ratio_to_best_real']:.1f}" for u, r in zip(units, rows)]
    images = result.images.permute(0, 2, 3, 1).numpy()
    median = float(np.nanmedian(ratio))
    return ActivationMaxResult(spec.name, name, images, rows, labels, median, len(real), steps, lr, seed, seconds)
