"""Images for the explain commands: from the run's data or from files, normalised as the model expects."""

from __future__ import annotations

from pathlib import Path

import torch

from cifarlens.data.image_files import ImageFileError, load_image  # noqa: F401  (ImageFileError: re-exported)
from cifarlens.errors import CifarlensError
from cifarlens.run import ModelSpec, RunDir


def denormalize(x: torch.Tensor, spec: ModelSpec) -> torch.Tensor:
    """Inverse of ``normalize``: float (N, 3, H, W) normalised -> float in [0, 1] (clipped)."""
    m = torch.tensor(spec.mean, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(spec.std, device=x.device).view(1, -1, 1, 1)
    return (x * s + m).clamp(0, 1)


def load_image_files(paths: list[str | Path]) -> torch.Tensor:
    """Image files -> uint8 (N, 3, 32, 32), read exactly as ``cifarlens predict`` reads them
    (``cifarlens.data.image_files``); ``ModelSpec.inputs`` then resizes to the model's image_size."""
    return torch.stack([torch.from_numpy(load_image(path)) for path in paths])


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


def choose_images(run, images: list[Path] | None, index: str | None, split: str, data_dir: str | None):
    """(uint8 images (N, 3, 32, 32), their labels (None for files), their names), from files or from the
    ``index`` spec (``0-7``, ``0,3,9``) of the run's ``split``."""
    if images and index:
        raise CifarlensError("give image files or --index, not both")
    if images:
        names = [p.name for p in images]
        if len(set(names)) < len(names):  # e.g. samples/cat/0990.jpg and samples/dog/0990.jpg
            names = [f"{p.parent.name}_{p.name}" for p in images]
        return load_image_files(images), None, names
    chosen = RunDir(run).load_data(data_dir).split(split)
    idx = parse_indices(index or "0", len(chosen))
    return chosen.images[idx], chosen.labels[idx].tolist(), [f"{split}{i}" for i in idx]
