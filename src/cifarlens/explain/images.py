"""Images for the explain commands: from the run's data or from files, normalised as the model expects."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cifarlens.data.augment import normalize
from cifarlens.errors import CifarlensError
from cifarlens.run import ModelSpec


class ImageFileError(CifarlensError):
    """A file given as an image is missing or is not an image."""


def model_input(images: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """uint8 (N, 3, H, W) -> float (N, 3, S, S) normalised with the spec's mean/std, resized to its image_size."""
    x = normalize(images, spec.mean, spec.std)
    if x.shape[-1] != spec.image_size or x.shape[-2] != spec.image_size:
        x = F.interpolate(x, size=(spec.image_size, spec.image_size), mode="bilinear", align_corners=False)
    return x


def denormalize(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Inverse of ``normalize``: float (N, 3, H, W) normalised -> float in [0, 1] (clipped)."""
    m = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


def load_image_files(paths: list[str | Path], size: int) -> torch.Tensor:
    """Image files -> uint8 (N, 3, size, size): Pillow, converted to RGB, resized (bicubic)."""
    from PIL import Image, UnidentifiedImageError

    out = []
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise ImageFileError(f"image file {path} not found; pass a path to a PNG/JPEG file or use --index N")
        try:
            with Image.open(path) as img:
                rgb = img.convert("RGB").resize((size, size), Image.Resampling.BICUBIC)
        except (UnidentifiedImageError, OSError, ValueError) as err:
            raise ImageFileError(f"{path} is not an image Pillow can read ({err.__class__.__name__}); pass a PNG or JPEG file") from None
        out.append(torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1))
    return torch.stack(out)


def parse_indices(text: str, n: int) -> list[int]:
    """'3' / '0,5,9' / '0-15' -> indices, each checked against a split of ``n`` images."""
    indices: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = part.split("-", 1)
                indices.extend(range(int(lo), int(hi) + 1))
            elif part:
                indices.append(int(part))
    except ValueError:
        raise CifarlensError(f"cannot read indices {text!r}; write e.g. 3, 0,5,9 or 0-15") from None
    if not indices:
        raise CifarlensError(f"no indices in {text!r}; write e.g. 3, 0,5,9 or 0-15")
    bad = [i for i in indices if not 0 <= i < n]
    if bad:
        raise CifarlensError(f"index {bad[0]} is out of range: the split has {n} images (0-{n - 1})")
    return indices
