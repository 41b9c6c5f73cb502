"""Pooled activations of chosen layers for a whole split, in batches, with bounded memory.

Only the pooled (N, C) vectors are kept: one batch of full feature maps lives at a time,
so memory is ``batch_size`` x the largest map plus N x the pooled widths.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from rich.progress import Progress
from safetensors.numpy import save_file
from torch import nn

from cifarlens.errors import CifarlensError
from cifarlens.explain.run_model import load_run_model
from cifarlens.io import atomic_path
from cifarlens.models.layers import FeatureExtractor, pool_features
from cifarlens.run import ModelSpec, RunDir, write_json
from cifarlens.run.predictor import Predictor


@dataclass
class Features:
    """Pooled activations: ``layers[name]`` is float32 (N, C); ``labels`` int64 (N,); ``indices`` into the split."""

    layers: dict[str, np.ndarray]
    labels: np.ndarray
    indices: np.ndarray
    split: str = "test"
    pool: str = "avg"

    def save(self, path: str | Path) -> None:
        """Write one safetensors file: a tensor per layer plus ``__labels__`` and ``__indices__``."""
        tensors = {name: np.ascontiguousarray(x) for name, x in self.layers.items()}
        tensors |= {"__labels__": self.labels.astype(np.int64), "__indices__": self.indices.astype(np.int64)}
        meta = {
            "format": "cifarlens-features",
            "split": self.split,
            "pool": self.pool,
            "layers": json.dumps(list(self.layers)),
        }
        with atomic_path(path) as tmp:
            save_file(tensors, str(tmp), metadata=meta)


class ActivationPooler:
    """``pooler(images) -> {layer: (N, C) float32}`` for uint8 images (N, 3, H, W), in batches.

    Built once for a model, its spec and a list of layer names (unknown names list the valid ones).
    """

    def __init__(
        self,
        model: nn.Module,
        spec: ModelSpec,
        layers: list[str],
        *,
        pool: str = "avg",
        batch_size: int = 500,
        device: str | torch.device = "cpu",
    ):
        if pool not in ("avg", "max"):
            raise CifarlensError(f"unknown pooling {pool!r}; choose avg or max")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.spec, self.layers, self.pool, self.batch_size = spec, list(layers), pool, batch_size
        self.extractor = FeatureExtractor(self.model, self.layers)

    def __call__(self, images: torch.Tensor, progress: Progress | None = None) -> dict[str, np.ndarray]:
        chunks: dict[str, list[np.ndarray]] = {name: [] for name in self.layers}
        task = progress.add_task("extracting features", total=len(images)) if progress else None
        with torch.inference_mode():
            for start in range(0, len(images), self.batch_size):
                batch = images[start : start + self.batch_size].to(self.device)
                outputs = self.extractor(self.spec.inputs(batch))
                for name in self.layers:
                    chunks[name].append(pool_features(outputs[name], name, self.pool).float().cpu().numpy())
                if progress:
                    progress.advance(task, len(batch))
        return {
            name: np.concatenate(parts) if parts else np.zeros((0, 0), np.float32) for name, parts in chunks.items()
        }


def extract_features(
    model: nn.Module,
    spec: ModelSpec,
    images: torch.Tensor,
    labels: torch.Tensor,
    layers: list[str],
    *,
    split: str = "test",
    limit: int = 0,
    pool: str = "avg",
    batch_size: int = 500,
    device: str | torch.device = "cpu",
    show_progress: bool = False,
) -> Features:
    """Pooled features of the first ``limit`` images (0: all) of a split. images: uint8 (N, 3, H, W)."""
    if limit < 0:
        raise CifarlensError(f"--limit must not be negative, got {limit}")
    n = min(limit, len(images)) if limit else len(images)
    pooler = ActivationPooler(model, spec, layers, pool=pool, batch_size=batch_size, device=device)
    if show_progress:
        with Progress(transient=True) as progress:
            layers_out = pooler(images[:n], progress)
    else:
        layers_out = pooler(images[:n])
    return Features(layers_out, labels[:n].numpy().astype(np.int64), np.arange(n), split, pool)


@dataclass
class FeaturesResult:
    """What ``features_run`` extracted: the pooled ``features`` of a split and the seconds it took; with
    ``with_predictions``, also the images (uint8 (N, 3, H, W)) and the model's predicted classes (N,)."""

    features: Features
    seconds: float
    classes: tuple[str, ...] = ()
    images: torch.Tensor | None = None
    predictions: np.ndarray | None = None

    def write_projector(self, log_dir: str | Path) -> Path:
        """A TensorBoard Embedding Projector log in ``log_dir``, one embedding per layer: the features, metadata
        (label, prediction, correct) and a sprite of the images (``tensorboard --logdir log_dir`` shows it)."""
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise CifarlensError(
                "--tensorboard needs the tensorboard package: pip install 'cifarlens[tensorboard]'"
            ) from None
        labels = self.features.labels.tolist()
        rows = [[self.classes[y], self.classes[p], str(y == p)] for y, p in zip(labels, self.predictions.tolist())]
        with SummaryWriter(str(log_dir)) as writer:
            for name, x in self.features.layers.items():
                writer.add_embedding(
                    torch.as_tensor(x),
                    metadata=rows,
                    metadata_header=["label", "prediction", "correct"],
                    label_img=self.images.float() / 255,
                    tag=name,
                )
        return Path(log_dir)

    def info(self) -> dict:
        """Split, image count, pooling, speed and each layer's (N, C) shape."""
        n = len(self.features.labels)
        return {
            "split": self.features.split,
            "images": n,
            "pool": self.features.pool,
            "seconds": self.seconds,
            "images_per_s": n / max(self.seconds, 1e-9),
            "layers": {name: list(x.shape) for name, x in self.features.layers.items()},
        }

    def write(self, folder: str | Path) -> list[Path]:
        """``<split>.safetensors`` (see ``Features.save``) and ``<split>.json`` (``info``) into ``folder``."""
        folder = Path(folder)
        paths = [folder / f"{self.features.split}.safetensors", folder / f"{self.features.split}.json"]
        self.features.save(paths[0])
        write_json(paths[1], self.info())
        return paths


def features_run(
    run: str | Path,
    *,
    layers: list[str],
    split: str = "test",
    limit: int = 0,
    pool: str = "avg",
    batch_size: int = 500,
    data_dir: str | None = None,
    device: str = "cpu",
    show_progress: bool = False,
    with_predictions: bool = False,
) -> FeaturesResult:
    """Pooled activations (N, C) of ``layers`` for the first ``limit`` images (0: all) of the run's ``split``,
    extracted on ``device`` (see ``extract_features``); ``with_predictions`` keeps the images and the model's
    predictions too (for ``FeaturesResult.write_projector``)."""
    model, spec, dev = load_run_model(run, device)
    chosen = RunDir(run).load_data(data_dir).split(split)
    t0 = time.perf_counter()
    feats = extract_features(
        model,
        spec,
        chosen.images,
        chosen.labels,
        layers,
        split=split,
        limit=limit,
        pool=pool,
        batch_size=batch_size,
        device=dev,
        show_progress=show_progress,
    )
    result = FeaturesResult(feats, time.perf_counter() - t0, tuple(spec.classes))
    if with_predictions:
        result.images = chosen.images[: len(feats.labels)]
        result.predictions = Predictor(model, spec, device=dev).logits(result.images).argmax(1).cpu().numpy()
    return result
