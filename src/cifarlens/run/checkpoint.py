"""Resumable checkpoints, written so that a kill at any moment leaves a usable one.

Each epoch writes ``epoch-NNNN.safetensors`` (weights) and ``epoch-NNNN.state.pt``
(optimizer, scheduler, RNG, scaler), each atomically, and only then points
``latest.json`` at them (also atomically). A recovery checkpoint inside an epoch, ``STEP`` steps
after epoch ``NNNN`` ended, is ``epoch-NNNN.step-SSSSSS.*`` and its state also holds the position
in the epoch. A reader follows ``latest.json``, so it never sees a weights file from one moment
paired with state from another; the names sort in the order they were written, which pruning uses.
"""

from __future__ import annotations

import errno
import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from cifarlens.errors import CheckpointWriteError, RunDirError
from cifarlens.io import atomic_path, atomic_write_text
from cifarlens.run.spec import ModelSpec, load_state_checked, save_weights

LATEST = "latest.json"
KEEP = 2


@dataclass
class Checkpoint:
    """What a resumed run needs: the epochs finished, the steps done into the next one, the saved states."""

    epoch: int
    model_state: dict[str, torch.Tensor]
    state: dict[str, Any]  # optimizer, scheduler, scaler and RNG states (and the epoch position), as saved
    step: int = 0  # 0: an epoch-end checkpoint

    def restore_model(self, model: nn.Module, folder: Path) -> None:
        """Load the checkpoint's weights into ``model``, checking every tensor."""
        load_state_checked(model, self.model_state, folder)


def has_checkpoint(folder: Path) -> bool:
    return (folder / LATEST).is_file()


def save_checkpoint(
    folder: Path, epoch: int, model: nn.Module, spec: ModelSpec, state: dict[str, Any], step: int = 0
) -> None:
    """Write the checkpoint ``step`` steps after finished epoch ``epoch`` (1-based; step 0: at its end) and
    prune older ones. A full disk is a ``CheckpointWriteError``; the previous checkpoint stays usable."""
    folder.mkdir(parents=True, exist_ok=True)
    stem = f"epoch-{epoch:04d}" + (f".step-{step:06d}" if step else "")
    try:
        save_weights(model, spec, folder / f"{stem}.safetensors", extra={"epoch": str(epoch), "step": str(step)})
        with atomic_path(folder / f"{stem}.state.pt") as tmp:
            torch.save(state | {"epoch": epoch, "step": step}, tmp)
        pointer = {"epoch": epoch, "step": step, "weights": f"{stem}.safetensors", "state": f"{stem}.state.pt"}
        atomic_write_text(folder / LATEST, json.dumps(pointer) + "\n")
    except (OSError, SafetensorError) as err:
        if not _disk_full(err):
            raise
        free = shutil.disk_usage(folder).free / 2**20
        raise CheckpointWriteError(
            f"no space left on the disk holding {folder} ({free:.0f} MiB free) while writing a checkpoint; "
            "the previous checkpoint is kept: free some space, then continue with "
            f"cifarlens train --resume {folder.parent}"
        ) from None
    for old in sorted(folder.glob("epoch-*.safetensors"))[:-KEEP]:
        old.unlink(missing_ok=True)
        (folder / old.name.replace(".safetensors", ".state.pt")).unlink(missing_ok=True)


def _disk_full(err: Exception) -> bool:
    # safetensors writes from Rust and reports the OS error only in its message
    return getattr(err, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(err)


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
        raise RunDirError(
            f"checkpoint in {folder} is unreadable ({type(err).__name__}: {err}); start the run again"
        ) from None
    step = int(latest.get("step", 0))
    if state.get("epoch") != latest["epoch"] or int(state.get("step", 0)) != step:
        raise RunDirError(f"checkpoint in {folder} is inconsistent (state of another moment); start the run again")
    return Checkpoint(epoch=int(latest["epoch"]), model_state=weights, state=state, step=step)
