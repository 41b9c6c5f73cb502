"""The classical transfer baseline: logistic regression on frozen penultimate features.

``cifarlens train --features-from RUN_OR_MODEL`` takes the model of a run directory, or a
model with pretrained weights (``resnet18``, ``timm:<name>`` ...), reads the input of its
classifier (the Linear its ``Capabilities`` declare: the pooled penultimate features) for every
image, fits scikit-learn's ``LogisticRegression`` on the training split and writes a normal run
directory whose model is the backbone with that Linear set to the fitted classifier, so
``evaluate`` rebuilds it as usual.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import numpy as np
import torch
from rich.console import Console
from torch import nn

from cifarlens.data import RunData, prepare_data
from cifarlens.device import configure_cpu, resolve_device
from cifarlens.errors import ConfigError
from cifarlens.models import create_model, model_capabilities, model_kwargs
from cifarlens.models.pretrained import is_timm
from cifarlens.models.registry import get_submodule
from cifarlens.run import ModelSpec, Predictor, RunDir
from cifarlens.training.config import TrainConfig
from cifarlens.training.run_folder import new_run_dir, start_run_dir, write_train_summary
from cifarlens.training.transfer import model_arguments


def classifier(model: nn.Module, spec: ModelSpec) -> nn.Linear:
    """The model's classifier, as its capabilities declare."""
    return get_submodule(model, spec.capabilities(model).classifier)


@torch.inference_mode()
def penultimate_features(
    model: nn.Module, images: torch.Tensor, spec: ModelSpec, device: torch.device, batch_size: int = 250
) -> torch.Tensor:
    """uint8 images (N, 3, 32, 32) -> float32 (N, D): the input of the classifier, in eval mode.

    A forward pre-hook reads it, which works for any model (torchvision's FX feature
    extractor cannot trace every timm or custom forward).
    """
    head = classifier(model, spec)
    captured: list[torch.Tensor] = []
    handle = head.register_forward_pre_hook(lambda _module, args: captured.append(args[0].float().flatten(1).cpu()))
    try:
        Predictor(model, spec, device=device, batch_size=batch_size).logits(images)
    finally:
        handle.remove()
    return torch.cat(captured) if captured else torch.empty(0, head.in_features)


def fit_linear_head(
    train_x: torch.Tensor, train_y: torch.Tensor, num_classes: int, max_iter: int = 1000
) -> tuple[torch.Tensor, torch.Tensor]:
    """Standardise, fit multinomial ``LogisticRegression`` (C=1, lbfgs); return (weight (K, D), bias (K,))
    of the equivalent Linear layer on the raw features (the scaling is folded into it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    x = train_x.numpy().astype(np.float64)
    scaler = StandardScaler().fit(x)
    clf = LogisticRegression(max_iter=max_iter).fit(scaler.transform(x), train_y.numpy())
    coef = np.zeros((num_classes, x.shape[1]))
    intercept = np.full(num_classes, -1e4)  # classes absent from the training split are never predicted
    coef[clf.classes_] = clf.coef_ if len(clf.classes_) > 2 else np.vstack([-clf.coef_, clf.coef_]) / 2
    intercept[clf.classes_] = clf.intercept_ if len(clf.classes_) > 2 else np.array([-1, 1]) * clf.intercept_ / 2
    weight = coef / scaler.scale_
    bias = intercept - weight @ scaler.mean_
    return torch.tensor(weight, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


def probe_source(cfg: TrainConfig, classes: tuple[str, ...], device) -> tuple[nn.Module, ModelSpec]:
    """The frozen feature model named by ``cfg.features_from`` and the spec the probe run stores."""
    source = cfg.features_from
    if Path(source).is_dir():
        model, src = RunDir(source).load_model(device)
        spec = dataclasses.replace(src, num_classes=len(classes), classes=tuple(classes))
        if src.num_classes != len(classes):  # same architecture as spec.build(): a head for these classes
            _replace_classifier(model, spec, len(classes))
        return model, spec
    try:
        has_weights = is_timm(source) or "pretrained" in model_kwargs(source)
    except ConfigError:
        has_weights = False
    if not has_weights:
        raise ConfigError(
            f"--features-from {source!r} is neither a run directory nor a model with pretrained weights; "
            "pass a run folder or e.g. resnet18 / timm:<name>"
        )
    backbone_cfg = dataclasses.replace(cfg, model=source, pretrained=True)
    stored, build = model_arguments(backbone_cfg)
    torch.manual_seed(cfg.seed)
    model = create_model(source, num_classes=len(classes), **build)
    mean, std = model_capabilities(source, model, cfg.image_size).normalization(pretrained=True)
    spec = ModelSpec(source, stored, len(classes), tuple(classes), mean, std, cfg.image_size)
    return model.to(device), spec


def _replace_classifier(model: nn.Module, spec: ModelSpec, num_classes: int) -> None:
    name = spec.capabilities(model).classifier
    target = get_submodule(model, name)
    parent, _, attr = name.rpartition(".")
    setattr(model.get_submodule(parent), attr, nn.Linear(target.in_features, num_classes, bias=target.bias is not None))


def linear_probe(cfg: TrainConfig, *, console: Console, data: RunData | None = None) -> Path:
    """Fit and write the linear-probe run ``cfg`` describes; return the run directory."""
    started = time.perf_counter()
    if cfg.distributed:
        raise ConfigError("--features-from runs in one process; drop --distributed")
    run = new_run_dir(cfg)
    device = resolve_device(cfg.device)
    configure_cpu(device, cfg.threads, cfg.keep_freed_memory)
    if data is None:
        data = prepare_data(
            cfg.data_dir or None, download=cfg.download, subset=cfg.subset, val_size=cfg.val_size, seed=cfg.seed
        )
    model, spec = probe_source(cfg, data.classes, device)
    head = classifier(model, spec)
    if head.bias is None:
        raise ConfigError(f"the last Linear of {spec.name} has no bias, so it cannot hold a logistic regression")
    cfg = dataclasses.replace(cfg, model=spec.name, model_args=spec.kwargs, image_size=spec.image_size)
    start_run_dir(run, cfg, data, {"device": str(device), "precision": "fp32"})
    console.print(
        f"linear probe on [bold]{spec.name}[/] features ({cfg.features_from}) at {spec.image_size}px, "
        f"{len(data.train)} train images -> {run}"
    )
    train_x = penultimate_features(model, data.train.images, spec, device)
    weight, bias = fit_linear_head(train_x, data.train.labels, len(data.classes))
    with torch.no_grad():
        head.weight.copy_(weight.to(head.weight.device))
        head.bias.copy_(bias.to(head.bias.device))
    row = {"epoch": 1, **_scores(train_x, data.train.labels, weight, bias, "train")}
    for name in ("val", "test"):
        split = getattr(data, name)
        if split is not None:
            row |= _scores(penultimate_features(model, split.images, spec, device), split.labels, weight, bias, name)
    row["seconds"] = row["elapsed"] = row["train_clock"] = time.perf_counter() - started
    run.write_metrics([row])
    run.save_model(model, spec)
    write_train_summary(run, [row], cfg, device, "fp32")
    console.print(
        f"probe: train acc {row['train_acc']:.2%}" + (f", test acc {row['test_acc']:.2%}" if "test_acc" in row else "")
    )
    return run.path


def _scores(x: torch.Tensor, y: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor, name: str) -> dict[str, float]:
    logits = x @ weight.T + bias
    return {
        f"{name}_loss": torch.nn.functional.cross_entropy(logits, y).item(),
        f"{name}_acc": (logits.argmax(1) == y).float().mean().item(),
    }
