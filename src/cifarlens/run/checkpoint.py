"""Resumable checkpoints, written so that a kill at any moment leaves a usable one.

Each epoch writes ``epoch-NNNN.safetensors`` (weights) and ``epoch-NNNN.state.pt``
(optimizer, scheduler, RNG, scaler), each atomically, and only then points
``latest.json`` at them (also atomically). A reader follows ``latest.json``, so it
never sees a weights file from one epoch paired with state from another.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file
from torch import nn

from cifarlens.errors import RunDirError
from cifarlens.io import atomic_path, atomic_write_text
from cifarlens.run.spec import ModelSpec, load_state_checked, save_weights

LATEST = "latest.json"
KEEP = 2


@dataclass
class Checkpoint:
    """What a resumed run needs: the epoch just finished and the saved states."""

    epoch: int
    model_state: dict[str, torch.Tensor]
    state: dict[str, Any]  # optimizer, scheduler, scaler and RNG states, as the trainer saved them

    def restore_model(self, model: nn.Module, folder: Path) -> None:
        """Load the checkpoint's weights into ``model``, checking every tensor."""
        load_state_checked(model, self.model_state, folder)


def has_checkpoint(folder: Path) -> bool:
    return (folder / LATEST).is_file()


def save_checkpoint(folder: Path, epoch: int, model: nn.Module, spec: ModelSpec, state: dict[str, Any]) -> None:
    """Write the checkpoint of finished epoch ``epoch`` (1-based) and prune older ones."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}"
    save_weights(model, spec, folder / f"{stem}.safetensors", extra={"epoch": str(epoch)})
    with atomic_path(folder / f"{stem}.state.pt") as tmp:
        torch.save(state | {"epoch": epoch}, tmp)
    atomic_write_text(
        folder / LATEST,
        json.dumps({"epoch": epoch, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}) + "\n",
    )
    for old in sorted(folder.glob("epoch-*.safetensors"))[:-KEEP]:
        old.unlink(missing_ok=True)
        (folder / old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)


def load_checkpoint(folder: Path) -> Checkpoint:
    """Read the checkpoint ``latest.json`` points at; tensors only (``weights_only=True``)."""
    pointer = folder / LATEST
    if not pointer.is_file():
        raise RunDirError(f"no checkpoint in {folder}; the run never finished an epoch, start it again")
    try:
        latest = json.loads(pointer.read_text())
        weights = load_file(str(folder / latest["weights"]))
        state = torch.load(folder / latest["state"], map_location="cpu", weights_only=True)
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        raise RunDirError(f"checkpoint in {folder} is unreadable ({type(err).__name__}: {err}); start the run again") from None
    if state.get("epoch") != latest["epoch"]:
        raise RunDirError(f"checkpoint in {folder} is inconsistent (state of another epoch); start the run again")
    return Checkpoint(epoch=int(latest["epoch"]), model_state=weights, state=state)
