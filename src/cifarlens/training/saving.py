"""Checkpoint writes in line (CPU) or on a background thread (GPU), so that a run of seconds does not wait on disk.

The background writer first copies the weights and the training state to host memory on the training thread,
at the moment the checkpoint stands for; the thread then writes that copy through ``RunDir.save_checkpoint``
(atomic files, ``latest.json`` last). One write at a time: the next one waits for the last, which also
surfaces its error (a full disk) at the next checkpoint or at the end.
"""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch
from torch import nn

from cifarlens.run import ModelSpec, RunDir


class CheckpointWriter:
    """``save`` writes a checkpoint of ``run``; ``background`` moves the file writes off the training thread."""

    def __init__(self, run: RunDir, background: bool):
        self.run = run
        self.pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checkpoint") if background else None
        self.pending: Future | None = None

    def save(self, epoch: int, model: nn.Module, spec: ModelSpec, state: dict[str, Any], step: int = 0) -> None:
        """The checkpoint ``step`` steps after finished epoch ``epoch``, as ``RunDir.save_checkpoint`` writes it."""
        if self.pool is None:
            self.run.save_checkpoint(epoch, model, spec, state, step=step)
            return
        self.wait()
        weights = _StateDict(to_host(model.state_dict()))
        self.pending = self.pool.submit(self.run.save_checkpoint, epoch, weights, spec, to_host(state), step=step)

    def wait(self) -> None:
        """Block until the write in flight is done; raise its error, if it failed."""
        pending, self.pending = self.pending, None
        if pending is not None:
            pending.result()

    def close(self) -> None:
        """Finish the write in flight (errors are left to ``wait``) and stop the thread."""
        if self.pool is not None:
            self.pool.shutdown(wait=True)


class _StateDict(nn.Module):
    """What ``save_weights`` reads from a model, frozen at the checkpoint's moment."""

    def __init__(self, state: dict[str, torch.Tensor]):
        super().__init__()
        self.frozen = state

    def state_dict(self, *args, **kwargs) -> dict[str, torch.Tensor]:  # type: ignore[override]
        return self.frozen


def to_host(value: Any) -> Any:
    """``value`` with every tensor in it (nested dicts, lists, tuples) copied to host memory."""
    if isinstance(value, torch.Tensor):
        return value.detach().to("cpu", copy=True)
    if isinstance(value, dict):
        return {k: to_host(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(to_host(v) for v in value)
    return value
