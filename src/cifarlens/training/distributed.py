"""Data-parallel training over the processes ``torchrun`` starts (DistributedDataParallel).

Every rank builds the same seeded epoch order and augments the same global batch; each then
takes its slice (``rank::world``) of it, so ``--batch-size`` stays the global batch and the
step count, schedule and data stream match a single-process run. Gradients are averaged by
DDP; only rank 0 evaluates and writes the run directory.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from cifarlens.errors import ConfigError

TORCHRUN_HINT = "torchrun --nproc_per_node N -m cifarlens.cli train --distributed ..."


@dataclass(frozen=True)
class Context:
    """This process's place in the job; ``Context()`` is a plain single-process run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this process writes files and prints."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1 or dist.is_initialized()


def is_main_process() -> bool:
    """Whether this is rank 0 of a torchrun job, or a process outside one (readable after ``teardown``)."""
    return int(os.environ.get("RANK", "0")) == 0


def setup(enabled: bool, device: torch.device) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes (nccl on CUDA, gloo elsewhere); one device per process."""
    if not enabled:
        return Context(), device
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise ConfigError(f"--distributed needs the processes torchrun starts; run {TORCHRUN_HINT}")
    ctx = Context(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]), int(os.environ.get("LOCAL_RANK", "0")))
    if device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return ctx, device


def shard(images: torch.Tensor, labels: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
    """This rank's slice of a global batch: every ``world``-th image from ``rank`` on."""
    if ctx.world == 1:
        return images, labels
    return images[ctx.rank :: ctx.world], labels[ctx.rank :: ctx.world]


def sum_across(values: list[torch.Tensor | float | int], ctx: Context, device: torch.device) -> list[float]:
    """Each value summed over all ranks (float64 all-reduce)."""
    t = torch.tensor([float(v) for v in values], dtype=torch.float64, device=device)
    if ctx.active:
        dist.all_reduce(t)
    return t.tolist()


def broadcast(value: Any, ctx: Context) -> Any:
    """Rank 0's ``value`` on every rank (any picklable object)."""
    if not ctx.active:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(ctx: Context) -> None:
    if ctx.active:
        dist.barrier()


def wrap(model: torch.nn.Module, ctx: Context, device: torch.device) -> torch.nn.Module:
    """``model`` in DistributedDataParallel when the job has several processes."""
    if not ctx.active:
        return model
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def teardown(ctx: Context) -> None:
    if ctx.active and dist.is_initialized():
        dist.destroy_process_group()
