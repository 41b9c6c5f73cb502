"""What rebuilds a model: its ``ModelSpec``, and safetensors weights that carry it in their header."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, safe_open, save_file
from torch import nn

from cifarlens import __version__
from cifarlens.data.augment import model_input
from cifarlens.errors import RunDirError
from cifarlens.io import atomic_path
from cifarlens.models import Capabilities, create_model, model_capabilities
from cifarlens.models.imported import create_imported_model, is_imported


@dataclass
class ModelSpec:
    """What is needed to rebuild a model and feed it: stored in the weights file header."""

    name: str
    kwargs: dict[str, Any]
    num_classes: int
    classes: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    image_size: int = 32  # side the model is fed at: CIFAR images are resized to it (pretrained backbones)
    # what tools need to know, found once when a model trained elsewhere was imported (None: the registry's)
    declared: dict[str, Any] | None = None

    def inputs(self, images: torch.Tensor, size: int | None = None) -> torch.Tensor:
        """uint8 (N, 3, H, W) -> the normalised float batch (N, 3, S, S) the model takes, S = ``size`` or the
        spec's ``image_size``: the one input pipeline of training and every reader of a run."""
        return model_input(images, self.mean, self.std, size or self.image_size)

    def to_metadata(self) -> dict[str, str]:

        return {
            "format": "cifarlens",
            "cifarlens_version": __version__,
            "model": self.name,
            "model_args": json.dumps(self.kwargs),
            "num_classes": str(self.num_classes),
            "classes": json.dumps(list(self.classes)),
            "mean": json.dumps(list(self.mean)),
            "std": json.dumps(list(self.std)),
            "image_size": str(self.image_size),
        } | ({"capabilities": json.dumps(self.declared)} if self.declared else {})

    @classmethod
    def from_metadata(cls, meta: dict[str, str], path: Path) -> "ModelSpec":
        try:
            return cls(
                name=meta["model"],
                kwargs=json.loads(meta["model_args"]),
                num_classes=int(meta["num_classes"]),
                classes=tuple(json.loads(meta["classes"])),
                mean=tuple(json.loads(meta["mean"])),
                std=tuple(json.loads(meta["std"])),
                image_size=int(meta.get("image_size", 32)),
                declared=json.loads(meta["capabilities"]) if "capabilities" in meta else None,
            )
        except (KeyError, ValueError, TypeError):
            raise RunDirError(
                f"{path} has no cifarlens header (model name, args, classes); it was not written by cifarlens train"
            ) from None

    def build(self, home: str | Path | None = None) -> nn.Module:
        """The model with fresh weights; an imported model is rebuilt from the files in its run folder ``home``."""
        if is_imported(self.name):
            return create_imported_model(self.name, None if home is None else Path(home), **self.kwargs)
        return create_model(self.name, num_classes=self.num_classes, **self.kwargs)

    def capabilities(self, model: nn.Module) -> Capabilities:
        """The model's ``Capabilities``: found at import, declared by its registered function, or guessed from
        ``model`` for ``timm:`` models."""
        if self.declared is not None:
            return Capabilities.from_dict(self.declared)
        return model_capabilities(self.name, model, self.image_size)


def save_weights(model: nn.Module, spec: ModelSpec, path: str | Path, extra: dict[str, str] | None = None) -> None:
    """Write the model's state dict as safetensors with ``spec`` in the header, atomically."""
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    meta = spec.to_metadata() | (extra or {})
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata=meta)


def read_spec(path: str | Path) -> tuple[ModelSpec, dict[str, str]]:
    """The model spec and the full header metadata of a cifarlens safetensors file."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
    except (SafetensorError, OSError) as err:
        raise RunDirError(f"{path} is not a readable safetensors file ({err}); re-run training") from None
    return ModelSpec.from_metadata(meta, path), meta


def load_weights(path: str | Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the model named in the header of ``path`` and load its weights (eval mode)."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"weights file {path} not found; train a model first (cifarlens train)")
    spec, _ = read_spec(path)
    model = spec.build(home=path.parent)
    state = load_file(str(path))
    load_state_checked(model, state, path)
    return model.to(device).eval(), spec


def load_state_checked(model: nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    """Load ``state`` into ``model``; a mismatch names the first offending tensor."""
    expected = model.state_dict()
    for key, tensor in expected.items():
        if key not in state:
            raise RunDirError(f"{path} lacks tensor {key!r} expected by the model; the file does not match it")
        if state[key].shape != tensor.shape:
            raise RunDirError(
                f"{path}: tensor {key!r} has shape {tuple(state[key].shape)}, "
                f"the model expects {tuple(tensor.shape)}; the file does not match the architecture"
            )
    extra = sorted(set(state) - set(expected))
    if extra:
        raise RunDirError(f"{path} has tensor {extra[0]!r} that the model does not have; the file does not match it")
    model.load_state_dict(state)
