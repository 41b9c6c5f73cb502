"""Fit a sweep into a time budget: time real training steps of each trial's config, then pick the data size.

Each distinct trial config (its recipe, model, precision, optimizer, augmentation, image sizes) is set up
by the trainer itself and trains a few real batches through ``train_one_epoch`` at each image size its
epochs use, so the estimate is of the training the trials will run. The plan keeps every trial's options
and shrinks, for all trials alike so they stay comparable, first the training subset (down to 500
images) and the validation split, then the epochs (by one common factor, at least 1 epoch each).
Timings are measured on this machine, so the same budget gives a bigger plan on a faster one.
"""

from __future__ import annotations

import dataclasses
import json
import tempfile
from pathlib import Path

import torch
from rich.console import Console

from cifarlens.config import to_dict
from cifarlens.data import RunData, prepare_data
from cifarlens.training.config import TrainConfig
from cifarlens.training.trainer import setup, train_one_epoch

TRAIN_IMAGES = 50_000
SUBSETS = (45_000, 40_000, 30_000, 20_000, 15_000, 10_000, 8_000, 6_000, 5_000, 4_000, 3_000, 2_000, 1_500, 1_000, 500)
MIN_VAL = 500
TIMED_BATCHES = 2  # batches per timed epoch
EVAL_COST = 1 / 3  # a forward pass costs about a third of forward + backward + step
# Options that do not change the cost of a training step: trials differing only in these share one timing.
_COST_FREE = (
    "out",
    "seed",
    "subset",
    "val_size",
    "lr",
    "bias_lr",
    "head_lr",
    "backbone_lr",
    "momentum",
    "muon_momentum",
    "weight_decay",
    "warmup",
    "label_smoothing",
    "schedule",
    "step_epochs",
    "step_gamma",
    "evaluate",
    "report",
    "eval_test_every_epoch",
    "tensorboard",
    "recipe",
    "data_dir",
)
_MEASURED: dict[str, list[float]] = {}  # cost key -> seconds per training image of each epoch, per process


def epoch_costs(cfg: TrainConfig, data: RunData) -> list[float]:
    """Seconds per training image of each of ``cfg``'s epochs, from ``train_one_epoch`` timed on
    ``TIMED_BATCHES`` real batches of ``data`` at every image size the epochs use (after a warm-up epoch
    that pays for allocation, kernel choice and compilation). The global RNG is left as it was."""

    first_epoch = {}
    for epoch in range(cfg.epochs):
        first_epoch.setdefault(cfg.epoch_image_size(epoch), epoch)
    with tempfile.TemporaryDirectory() as tmp, torch.random.fork_rng(devices=[]):
        probe = dataclasses.replace(cfg, out=str(Path(tmp) / "timing"), tensorboard=False, distributed=False)
        state = setup(probe, data=data, console=Console(quiet=True))
        train_one_epoch(state, first_epoch[max(first_epoch)])
        per_size = {size: 1 / train_one_epoch(state, epoch).images_per_s for size, epoch in first_epoch.items()}
    return [per_size[cfg.epoch_image_size(epoch)] for epoch in range(cfg.epochs)]


def _cost_key(cfg: TrainConfig) -> str:
    options = {k: v for k, v in to_dict(cfg).items() if k not in _COST_FREE}
    return json.dumps(options, sort_keys=True, default=str)


def _timing_data(cfg: TrainConfig) -> RunData:
    """A stratified subset of the real training data, ``TIMED_BATCHES`` batches of ``cfg`` long."""
    n = min(TIMED_BATCHES * cfg.batch_size, TRAIN_IMAGES)
    return prepare_data(cfg.data_dir or None, download=cfg.download, subset=max(n, 20), seed=cfg.seed)


def estimate_seconds(
    configs: list[TrainConfig], costs: list[list[float]], subset: int, val: int, scale: float, finalists: int
) -> float:
    """Estimated seconds of all trials (training, per-epoch validation) plus the finalists' test scoring.

    ``costs[i]``: seconds per training image of each epoch of ``configs[i]`` (``epoch_costs``); scaled
    epoch counts use their mean, and evaluation the full-size (last) epoch's.
    """
    total = 0.0
    for cfg, cost in zip(configs, costs):
        epochs = max(1, round(cfg.epochs * scale))
        total += epochs * (subset * sum(cost) / len(cost) + val * EVAL_COST * cost[-1])
    return total + finalists * min(subset, 10_000) * EVAL_COST * max(c[-1] for c in costs)


def plan_budget(
    configs: list[TrainConfig], *, budget: float, val_size: int, finalists: int, console: Console | None = None
) -> dict:
    """Subset, validation size and epoch scale that fit the trials ``configs`` into ``budget`` seconds,
    ``val_size`` validation images at most and ``finalists`` test scorings (see the module doc)."""
    keys = [_cost_key(c) for c in configs]
    for key, cfg in zip(keys, configs):
        if key not in _MEASURED:
            _MEASURED[key] = epoch_costs(cfg, _timing_data(cfg))
    costs = [_MEASURED[key] for key in keys]
    largest = min(configs[0].subset or TRAIN_IMAGES - val_size, TRAIN_IMAGES - val_size)
    candidates = [s for s in SUBSETS if s < largest] + [largest]
    plan = None
    for subset in sorted(candidates, reverse=True):
        val = min(val_size, max(MIN_VAL, subset // 5))
        seconds = estimate_seconds(configs, costs, subset, val, 1.0, finalists)
        if seconds <= budget or subset == min(candidates):
            plan = {"subset": subset, "val_size": val, "epoch_scale": 1.0, "estimated_s": seconds}
            break
    if plan["estimated_s"] > budget:
        plan["epoch_scale"] = budget / plan["estimated_s"]
        plan["estimated_s"] = estimate_seconds(
            configs, costs, plan["subset"], plan["val_size"], plan["epoch_scale"], finalists
        )
    plan["seconds_per_image"] = {f"trial {i}": sum(c) / len(c) for i, c in enumerate(costs)}
    if console is not None:
        if plan["estimated_s"] > budget * 1.1:
            console.print(
                f"[yellow]warning:[/] even 1 epoch on {plan['subset']} images per trial needs about "
                f"{plan['estimated_s']:.0f}s here; the sweep will overrun its {budget:.0f}s budget"
            )
        console.print(
            f"budget {budget:.0f}s for {len(configs)} trials: subset {plan['subset']}, val {plan['val_size']}, "
            f"epochs x{plan['epoch_scale']:.2f} (estimated {plan['estimated_s']:.0f}s)"
        )
    return plan
