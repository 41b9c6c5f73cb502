"""Fit a sweep into a time budget: time a few training steps of each trial's model, then pick the data size.

The plan keeps every trial's options and shrinks, for all trials alike so they stay comparable,
first the training subset (down to 500 images) and the validation split, then the epochs
(by one common factor, at least 1 epoch each). Timings are measured on this machine, so the
same budget gives a bigger plan on a faster one.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console

from cifarlens.training.config import TrainConfig

TRAIN_IMAGES = 50_000
SUBSETS = (45_000, 40_000, 30_000, 20_000, 15_000, 10_000, 8_000, 6_000, 5_000, 4_000, 3_000, 2_000, 1_500, 1_000, 500)
MIN_VAL = 500
EVAL_COST = 1 / 3  # a forward pass costs about a third of forward + backward + step
_MEASURED: dict[str, float] = {}  # seconds per training image by model, args, batch size and device, per process


def seconds_per_image(cfg: TrainConfig, steps: int = 2) -> float:
    """Measured seconds of one training step per image for ``cfg``'s model and batch size (random data, CPU or device)."""
    from cifarlens.models import create_model
    from cifarlens.training.device import resolve_device

    device = resolve_device(cfg.device)
    batch = min(cfg.batch_size, 256)  # per-image cost barely changes above this; keeps the probe cheap
    with torch.random.fork_rng(devices=[]):
        model = create_model(cfg.model, **cfg.model_args).to(device).train()
        optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
        x = torch.randn(batch, 3, 32, 32, device=device)
        y = torch.randint(0, 10, (batch,), device=device)
        elapsed = 0.0
        for step in range(steps + 1):
            t0 = time.perf_counter()
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
            if device.type == "cuda":
                torch.cuda.synchronize()
            if step:  # the first step pays for allocation and kernel selection
                elapsed += time.perf_counter() - t0
    return elapsed / (steps * batch)


def estimate_seconds(
    configs: list[TrainConfig], costs: list[float], subset: int, val: int, scale: float, finalists: int
) -> float:
    """Estimated seconds of all trials (training, per-epoch validation) plus the finalists' test scoring."""
    total = 0.0
    for cfg, cost in zip(configs, costs):
        epochs = max(1, round(cfg.epochs * scale))
        total += epochs * (subset + val * EVAL_COST) * cost
    return total + finalists * min(subset, 10_000) * EVAL_COST * max(costs)


def plan_budget(sweep, console: Console | None = None) -> dict:
    """Subset, validation size and epoch scale that fit ``sweep.budget`` seconds (see the module doc)."""
    from cifarlens.experiments.sweep import grid_points, trial_config

    points = grid_points(sweep.params) if sweep.method == "grid" else [{}] * sweep.trials
    configs = [trial_config(sweep, p, Path(sweep.out)) for p in points]
    keys = [f"{c.model} {sorted(c.model_args.items())} {c.batch_size} {c.device}" for c in configs]
    for key, cfg in zip(keys, configs):
        if key not in _MEASURED:
            _MEASURED[key] = seconds_per_image(cfg)
    costs = [_MEASURED[key] for key in keys]
    largest = min(configs[0].subset or TRAIN_IMAGES - sweep.val_size, TRAIN_IMAGES - sweep.val_size)
    candidates = [s for s in SUBSETS if s < largest] + [largest]
    plan = None
    for subset in sorted(candidates, reverse=True):
        val = min(sweep.val_size, max(MIN_VAL, subset // 5))
        seconds = estimate_seconds(configs, costs, subset, val, 1.0, sweep.finalists)
        if seconds <= sweep.budget or subset == min(candidates):
            plan = {"subset": subset, "val_size": val, "epoch_scale": 1.0, "estimated_s": seconds}
            break
    if plan["estimated_s"] > sweep.budget:
        plan["epoch_scale"] = sweep.budget / plan["estimated_s"]
        plan["estimated_s"] = estimate_seconds(
            configs, costs, plan["subset"], plan["val_size"], plan["epoch_scale"], sweep.finalists
        )
    plan["seconds_per_image"] = {key: _MEASURED[key] for key in keys}
    if console is not None:
        if plan["estimated_s"] > sweep.budget * 1.1:
            console.print(
                f"[yellow]warning:[/] even 1 epoch on {plan['subset']} images per trial needs about "
                f"{plan['estimated_s']:.0f}s here; the sweep will overrun its {sweep.budget:.0f}s budget"
            )
        console.print(
            f"budget {sweep.budget:.0f}s for {len(configs)} trials: subset {plan['subset']}, val {plan['val_size']}, "
            f"epochs x{plan['epoch_scale']:.2f} (estimated {plan['estimated_s']:.0f}s)"
        )
    return plan
