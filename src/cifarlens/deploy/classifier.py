"""``Classifier``: what every inference backend is (torch, ONNX Runtime, OpenVINO, TFLite, SavedModel): uint8 images
in, logits out; and the JSON ``cifarlens export`` writes beside a model. Its own module, so that backends in other
modules (``tf_runtime``, ``openvino_runtime``) need not import ``runtime``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from cifarlens.errors import RunDirError

ONNX_FORMAT = "cifarlens-onnx"  # the "format" of the JSON cifarlens export writes next to an .onnx graph


def read_export_json(model: Path, sidecar: Path, fmt: str, *, missing: str, made_by: str) -> dict[str, Any]:
    """The JSON ``cifarlens export`` wrote next to ``model`` (classes, input contract), checked to be of ``fmt``.
    ``missing``: the message when the model itself is not there; ``made_by``: the command that writes ``fmt``."""
    if not model.exists():
        raise RunDirError(missing)
    if not sidecar.is_file():
        raise RunDirError(
            f"{model} has no {sidecar.name} next to it (classes and input contract); "
            "use a model exported by cifarlens export, or copy the JSON along with it"
        )
    try:
        info = json.loads(sidecar.read_text())
    except (OSError, ValueError) as err:
        raise RunDirError(f"{sidecar} is not valid JSON ({err}); export the model again") from None
    if not isinstance(info, dict) or info.get("format") != fmt or "classes" not in info:
        raise RunDirError(f"{sidecar} was not written by {made_by}; export the model again")
    return info


def sidecar_path(onnx_path: str | Path) -> Path:
    """The preprocessing JSON written next to an exported graph: ``model.onnx`` -> ``model.json``."""
    return Path(onnx_path).with_suffix(".json")


def read_sidecar(onnx_path: Path) -> dict[str, Any]:
    """The JSON beside an exported ONNX graph (classes, input contract, quantization), checked."""
    missing = f"ONNX file {onnx_path} not found; create it with cifarlens export RUN"
    sidecar = sidecar_path(onnx_path)
    return read_export_json(onnx_path, sidecar, ONNX_FORMAT, missing=missing, made_by="cifarlens export")


class Classifier:
    """uint8 RGB images (N, 3, 32, 32) -> float32 logits (N, C); ``classes`` names the columns."""

    classes: tuple[str, ...]
    backend: str
    source: str
    info: dict[str, Any]
    fixed_batch: int | None = None  # an ONNX graph exported without a dynamic batch takes only this many
    runs_on: str = "cpu"  # what actually executes it: a torch device, onnxruntime's execution provider, ...

    def run(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def logits(self, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
        """Logits for any number of images, ``batch_size`` at a time (padded for a fixed-batch graph)."""
        if images.dtype != np.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected uint8 images (N, 3, H, W), got {images.dtype} {images.shape}")
        step = self.fixed_batch or batch_size
        out = []
        for start in range(0, len(images), step):
            chunk = images[start : start + step]
            n = len(chunk)
            if self.fixed_batch and n < step:
                chunk = np.concatenate([chunk, np.zeros((step - n, *chunk.shape[1:]), np.uint8)])
            out.append(self.run(np.ascontiguousarray(chunk))[:n])
        if not out:
            return np.zeros((0, len(self.classes)), np.float32)
        return np.concatenate(out).astype(np.float32, copy=False)
