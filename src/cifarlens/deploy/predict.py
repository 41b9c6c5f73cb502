"""``cifarlens predict``: classify image files with a run, a .safetensors or an exported .onnx model.

Files are read in batches (``images.load_image``), so memory stays bounded for any number of
files. A file that cannot be read yields one error line and the others are still classified;
the caller exits non-zero at the end when any file failed.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from cifarlens.data.image_files import DEFAULT_MAX_PIXELS, ImageFileError, collect_images, load_image
from cifarlens.deploy.runtime import Classifier


@dataclass
class Prediction:
    """The top-k classes of one file, or why it could not be read."""

    file: str
    top: list[tuple[str, float]] | None = None  # (class, probability), best first
    error: str | None = None

    def to_json(self) -> str:
        if self.error is not None:
            return json.dumps({"file": self.file, "error": self.error})
        top = [{"class": c, "probability": round(p, 6)} for c, p in self.top or []]
        return json.dumps(
            {"file": self.file, "class": top[0]["class"], "probability": top[0]["probability"], "top_k": top}
        )


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of (N, C) logits."""
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def top_k(classifier: Classifier, images: np.ndarray, k: int, batch_size: int = 256) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes of each uint8 image (N, 3, 32, 32)."""
    probs = softmax(classifier.logits(images, batch_size))
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[(classifier.classes[j], float(row[j])) for j in idx] for row, idx in zip(probs, order)]


def predict_files(
    classifier: Classifier,
    inputs: list[str | Path],
    *,
    k: int = 3,
    batch_size: int = 64,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Iterator[Prediction]:
    """Predictions for every image file under ``inputs``, in order; bad paths and files come as errors."""
    found = collect_images(inputs)
    for message in found.errors:
        path, _, reason = message.partition(": ")
        yield Prediction(path, error=reason)
    for start in range(0, len(found.files), batch_size):
        good: list[tuple[str, np.ndarray]] = []
        results: dict[str, Prediction] = {}
        for path in found.files[start : start + batch_size]:
            try:
                good.append((str(path), load_image(path, max_pixels=max_pixels, name=str(path))))
            except ImageFileError as err:
                results[str(path)] = Prediction(str(path), error=str(err).removeprefix(f"{path}: "))
        if good:
            tops = top_k(classifier, np.stack([img for _, img in good]), k, batch_size)
            results.update({name: Prediction(name, top=top) for (name, _), top in zip(good, tops)})
        for path in found.files[start : start + batch_size]:
            yield results[str(path)]
