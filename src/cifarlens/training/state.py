"""What a training run holds between steps, split by who changes it.

``TrainState`` bundles four parts, each changed only through its own methods:

- ``Learner``: the model and what updates it (optimizer, schedule, loss scaler): ``step`` and ``restore``.
- ``Feed``: the training images and the order they come in, and where a resumed run picks up: ``batches``.
- ``Ledger``: the clocks and the metrics rows: ``add_training``, ``add_row``.
- ``Checkpoints``: when the state is saved, and a stop asked for by a signal: ``save``.

Adding, say, gradient clipping is a change to ``Learner.step`` alone.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from rich.console import Console
from torch import nn

from cifarlens.data import Augmenter, EpochImages, RunData, Split, iterate_batches
from cifarlens.device import autocast
from cifarlens.models import Capabilities
from cifarlens.run import Checkpoint, ModelSpec, RunDir
from cifarlens.training import distributed
from cifarlens.training.config import TrainConfig
from cifarlens.training.optim import freeze_finished_groups
from cifarlens.training.rng import rng_state, set_rng_state
from cifarlens.training.saving import CheckpointWriter
from cifarlens.training.stopping import StopRequest

PHASES = ("data_s", "forward_s", "backward_s", "step_s")


class Laps:
    """Wall-clock seconds split into the phases of a training step (``PHASES``), added up over an epoch."""

    def __init__(self, phases: dict[str, float] | None = None):
        self.phases = dict(phases) if phases is not None else dict.fromkeys(PHASES, 0.0)
        self.tick = time.perf_counter()

    def restart(self) -> None:
        """Count the next lap from now."""
        self.tick = time.perf_counter()

    def lap(self, name: str) -> None:
        """Add the seconds since the last lap to phase ``name``."""
        now = time.perf_counter()
        self.phases[name] += now - self.tick
        self.tick = now


@dataclass
class Learner:
    """The model and what updates it. ``model`` is what is saved, ``forward`` what trains (the model,
    wrapped by DDP and ``torch.compile`` when asked)."""

    model: nn.Module
    forward: nn.Module
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    spec: ModelSpec
    caps: Capabilities
    device: torch.device
    precision: str
    memory_format: torch.memory_format
    label_smoothing: float
    frozen: list[str] = field(default_factory=list)  # parameters --freeze froze
    ddp: bool = False  # DDP expects a gradient for every parameter it was built with: nothing is frozen mid-run

    def inputs(self, images: torch.Tensor, size: int) -> torch.Tensor:
        """uint8 images (B, 3, 32, 32) -> the normalised float batch (B, 3, size, size) the model takes."""
        x = self.spec.inputs(images.to(self.device, non_blocking=True), size)
        return x.contiguous(memory_format=self.memory_format)

    def step(self, x: torch.Tensor, y: torch.Tensor, laps: Laps) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch; returns its (loss, logits)."""
        if not self.ddp:
            freeze_finished_groups(self.optimizer)
        with autocast(self.device, self.precision):
            logits = self.forward(x)
        loss = F.cross_entropy(logits.float(), y, label_smoothing=self.label_smoothing)
        laps.lap("forward_s")
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        laps.lap("backward_s")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        return loss, logits

    def state_dict(self) -> dict[str, Any]:
        """What a checkpoint saves besides the weights: optimizer, schedule, scaler and the RNG streams."""
        return {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "rng": rng_state(),
        }

    def restore(self, ckpt: Checkpoint, checkpoint_dir) -> None:
        """Weights, optimizer, schedule, scaler and RNG streams as ``ckpt`` saved them."""
        ckpt.restore_model(self.model, checkpoint_dir)
        self.optimizer.load_state_dict(ckpt.state["optimizer"])
        self.scheduler.load_state_dict(ckpt.state["scheduler"])
        self.scaler.load_state_dict(ckpt.state["scaler"])
        set_rng_state(ckpt.state["rng"])


@dataclass
class Feed:
    """The training images, how they are augmented and batched, and where a resumed run picks up."""

    data: RunData
    train: Split  # the training split where it is batched: on a GPU, on the device
    augment: Augmenter
    epoch_images: EpochImages
    batch_size: int
    drop_last: bool
    steps_per_epoch: int
    seed: int
    ctx: distributed.Context
    start_epoch: int = 0
    partial: dict | None = None  # where a resumed run stopped inside epoch start_epoch (a recovery checkpoint)

    def generator(self, epoch: int) -> torch.Generator:
        """Epoch ``epoch``'s own generator of data order and augmentation, so a resumed run sees exactly the
        batches an uninterrupted one would."""
        return torch.Generator(self.train.images.device).manual_seed(self.seed * 1_000_003 + epoch)

    def take_partial(self, epoch: int) -> dict | None:
        """The recovery point inside ``epoch`` to continue from (once), or None."""
        partial = self.partial if epoch == self.start_epoch else None
        self.partial = None
        return partial

    def batches(self, epoch: int, gen: torch.Generator, first: int = 0, restored: torch.Tensor | None = None):
        """(images, labels) of epoch ``epoch`` from step ``first`` on, before augmentation. ``restored``: the
        state ``gen`` had after the steps done before a resume (their draws are restored, not replayed)."""
        split = Split(self.epoch_images(epoch, gen), self.train.labels)
        batches = iterate_batches(
            split, self.batch_size, shuffle=True, generator=gen, drop_last=self.drop_last, start=first
        )
        if restored is not None:
            gen.set_state(restored)
        return batches

    def augmented(self, images, labels, gen: torch.Generator, window: int | None):
        """The batch augmented, and this process's share of it."""
        return distributed.shard(self.augment(images, gen, window), labels, self.ctx)


@dataclass
class Ledger:
    """The run's clocks and its metrics.csv rows (and TensorBoard, when asked)."""

    flops_per_image: dict[int, float]  # image side -> training FLOPs per image
    rows: list[dict] = field(default_factory=list)  # metrics.csv rows so far
    elapsed: float = 0.0  # seconds of finished epochs, evaluations included
    train_clock: float = 0.0  # seconds since the run started, without the per-epoch evaluations
    train_s: float = 0.0  # seconds of training steps only (CUDA events on a GPU), over all epochs
    compile_s: float = 0.0  # seconds spent compiling the training step ahead (GPU with --compile), off the clocks
    writer: Any = None  # TensorBoard SummaryWriter

    def continue_from(self, rows: list[dict], train_s: float) -> None:
        """A resumed run: the rows and training seconds of the epochs its checkpoint holds."""
        self.rows, self.train_s = rows, train_s

    def start_clocks(self, started: float) -> None:
        """Carry the clocks over from the last row; the time since ``started`` (perf_counter) counts as
        training, compiling ahead does not."""
        last = self.rows[-1] if self.rows else {}
        self.elapsed = float(last.get("elapsed", 0.0))
        self.train_clock = float(last.get("train_clock", 0.0)) + time.perf_counter() - started - self.compile_s

    def add_training(self, seconds: float) -> None:
        self.train_clock += seconds
        self.train_s += seconds

    def add_row(self, row: dict[str, Any]) -> None:
        """Append an epoch's row (with its ``seconds``), stamped with the elapsed seconds so far."""
        self.elapsed += row["seconds"]
        row["elapsed"] = self.elapsed
        self.rows.append(row)
        if self.writer is not None:
            for key, value in row.items():
                if key != "epoch" and value != "":
                    self.writer.add_scalar(key, value, row["epoch"])

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


@dataclass
class Checkpoints:
    """When the run's state is saved, and whether a signal asked it to stop."""

    saver: CheckpointWriter
    every: float  # --checkpoint-every seconds (0: only at epoch ends)
    gpu: bool
    stop: StopRequest = field(default_factory=StopRequest)
    last_save: float = field(default_factory=time.perf_counter)  # perf_counter of the last checkpoint

    def epoch_due(self, epoch: int, epochs: int) -> bool:
        """Whether finished epoch ``epoch`` (1-based) is checkpointed: every one on the CPU, where an epoch
        takes minutes; on a GPU, where it takes a fraction of a second, the last one, one where a stop was
        asked for, and one ``--checkpoint-every`` seconds after the last checkpoint (0: every one)."""
        if not self.gpu or not self.every or epoch == epochs or self.stop:
            return True
        return time.perf_counter() - self.last_save >= self.every

    def recovery_due(self) -> bool:
        """Whether a step should be followed by a recovery checkpoint: a stop was asked for, or
        ``--checkpoint-every`` seconds have passed since the last checkpoint."""
        return bool(self.stop or (self.every and time.perf_counter() - self.last_save >= self.every))

    def save(self, epoch: int, model: nn.Module, spec: ModelSpec, state: dict[str, Any], step: int = 0) -> None:
        """Checkpoint ``model`` and ``state`` after ``epoch`` (``step`` steps into the next one)."""
        self.saver.save(epoch, model, spec, state, step=step)
        self.restart()

    def restart(self) -> None:
        """Count ``--checkpoint-every`` from now (the loop starts; another process saved)."""
        self.last_save = time.perf_counter()


@dataclass
class TrainState:
    """Everything a run holds between epochs: its options and folder, and the four parts above."""

    cfg: TrainConfig
    run: RunDir
    ctx: distributed.Context
    console: Console
    learner: Learner
    feed: Feed
    ledger: Ledger
    checkpoints: Checkpoints

    @property
    def device(self) -> torch.device:
        return self.learner.device

    def training_state(self) -> dict[str, Any]:
        """What a checkpoint saves besides the weights."""
        return self.learner.state_dict() | {"train_s": self.ledger.train_s}

    def close(self) -> None:
        """Wait for the last checkpoint write and stop the writer thread."""
        self.checkpoints.saver.close()
