"""Optimizers and per-step learning-rate schedules built from a ``TrainConfig``."""

from __future__ import annotations

import math

import torch
from torch import nn

from cifarlens.errors import ConfigError
from cifarlens.models import Capabilities
from cifarlens.training.config import TrainConfig
from cifarlens.training.muon import Muon
from cifarlens.training.transfer import head_parameter_ids


def param_groups(model: nn.Module, cfg: TrainConfig, caps: Capabilities) -> list[dict]:
    """Trainable parameters split into filters (conv, ndim 4), linear weights (ndim 2) and
    biases/norm shifts (ndim <= 1), each with its learning rate; weight decay skips the biases.
    Frozen parameters (``requires_grad=False``) are left out.

    With ``cfg.backbone_lr``, the parameters outside the head (``Capabilities.head``) form the same
    three groups again at that learning rate. The parameters a model declares to stop early
    (``Capabilities.stop_early``: airnet's whitening bias) get a group of their own, trained for the
    first ``cfg.whiten_bias_epochs`` epochs, when that is set.
    """
    stop_early = _stop_early(model, caps) if cfg.whiten_bias_epochs else []
    head_ids = head_parameter_ids(model, caps) if cfg.backbone_lr else None
    kinds = ("filters", "linear", "biases")
    split: dict[tuple[bool, str], list[nn.Parameter]] = {(b, k): [] for b in (False, True) for k in kinds}
    for param in model.parameters():
        if not param.requires_grad or any(param is p for p in stop_early):
            continue
        kind = "filters" if param.ndim > 2 else "linear" if param.ndim == 2 else "biases"
        split[head_ids is not None and id(param) not in head_ids, kind].append(param)
    bias_lr = cfg.bias_lr or cfg.lr
    muon = cfg.optimizer == "muon"
    groups = [
        {"params": split[False, "filters"], "lr": cfg.lr, "weight_decay": cfg.weight_decay, "muon": muon},
        {"params": split[False, "linear"], "lr": cfg.head_lr or cfg.lr, "weight_decay": cfg.weight_decay},
        {"params": split[False, "biases"], "lr": bias_lr, "weight_decay": 0.0},
        {"params": split[True, "filters"], "lr": cfg.backbone_lr, "weight_decay": cfg.weight_decay, "muon": muon},
        {"params": split[True, "linear"], "lr": cfg.backbone_lr, "weight_decay": cfg.weight_decay},
        {"params": split[True, "biases"], "lr": cfg.backbone_lr, "weight_decay": 0.0},
    ]
    if stop_early:
        groups.append({"params": stop_early, "lr": bias_lr, "weight_decay": 0.0, "stop_epoch": cfg.whiten_bias_epochs})
    groups = [g for g in groups if g["params"]]
    if not groups:
        raise ConfigError("every parameter is frozen, so there is nothing to train; loosen --freeze")
    return groups


def _stop_early(model: nn.Module, caps: Capabilities) -> list[nn.Parameter]:
    params = [model.get_parameter(name) for name in caps.stop_early]
    return [p for p in params if p.requires_grad]


def build_optimizer(model: nn.Module, cfg: TrainConfig, caps: Capabilities) -> torch.optim.Optimizer:
    """SGD (momentum, optional Nesterov), Adam, AdamW, or Muon on filters with SGD on the rest."""
    groups = param_groups(model, cfg, caps)
    nesterov = cfg.nesterov and cfg.momentum > 0
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=nesterov)
    if cfg.optimizer == "muon":
        for group in groups:
            group["momentum"] = cfg.muon_momentum if group.get("muon") else cfg.momentum
        return Muon(groups, lr=cfg.lr, nesterov=nesterov)
    for group in groups:
        group.pop("muon", None)
    betas = (cfg.momentum, 0.999)
    if cfg.optimizer == "adam":
        return torch.optim.Adam(groups, lr=cfg.lr, betas=betas)
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=betas)


def lr_factor(step: int, total_steps: int, steps_per_epoch: int, cfg: TrainConfig) -> float:
    """Multiplier of the peak learning rate at optimizer step ``step`` (0-based) of ``total_steps``."""
    warmup_steps = round(cfg.warmup * steps_per_epoch)
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if cfg.schedule == "constant":
        return 1.0
    if cfg.schedule == "step":
        epoch = step // steps_per_epoch
        return cfg.step_gamma ** (epoch // cfg.step_epochs) if cfg.step_epochs else 1.0
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    if cfg.schedule == "cosine":
        return 0.5 * (1 + math.cos(math.pi * progress))
    if cfg.schedule == "linear" or warmup_steps:
        return 1 - progress
    # onecycle without a warm-up: linear rise over the first 25%, then linear decay to 0.
    peak = 0.25
    step_frac = step / max(1, total_steps)
    return max(step_frac / peak, 1e-3) if step_frac < peak else (1 - step_frac) / (1 - peak)


def freeze_finished_groups(optimizer: torch.optim.Optimizer) -> None:
    """Stop gradients into the parameters of ``stop_epoch`` groups once their learning rate reached 0.

    Their updates are zero from then on anyway; without gradients, backward also skips the pass into
    their inputs: for airnet's whitening bias, the first conv's input gradient (its share of a step:
    BENCHMARKS.md, "Faster CPU steps").
    """
    for group in optimizer.param_groups:
        if "stop_epoch" in group and group["lr"] == 0:
            for param in group["params"]:
                param.requires_grad_(False)


def build_scheduler(
    optimizer: torch.optim.Optimizer, cfg: TrainConfig, steps_per_epoch: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """A ``LambdaLR`` stepped once per optimizer step over ``cfg.epochs`` epochs.

    Groups with a ``stop_epoch`` decay linearly to 0 by then, whatever ``cfg.schedule`` says.
    """
    total = cfg.epochs * steps_per_epoch

    def main(step: int) -> float:
        return lr_factor(step, total, steps_per_epoch, cfg)

    def stopping(stop_steps: int):
        return lambda step: max(0.0, 1 - step / stop_steps)

    lambdas = [
        stopping(max(1, round(g["stop_epoch"] * steps_per_epoch))) if "stop_epoch" in g else main
        for g in optimizer.param_groups
    ]
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
