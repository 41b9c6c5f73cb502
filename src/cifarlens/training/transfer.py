"""Transfer learning pieces of the trainer: model arguments, input normalisation, head, freezing.

The *head* of a model is its top-level child that holds the last ``nn.Linear`` (``fc`` of a
ResNet, ``classifier`` of MobileNetV2/VGG/EfficientNet/ConvNeXt and of the small nets,
``head`` of most timm models); everything else is the *backbone*.
"""

from __future__ import annotations

from torch import nn

from cifarlens.data.augment import CIFAR10_MEAN, CIFAR10_STD
from cifarlens.errors import ConfigError
from cifarlens.models import model_kwargs
from cifarlens.models.pretrained import IMAGENET_MEAN, IMAGENET_STD, is_timm, timm_normalization
from cifarlens.training.config import TrainConfig

FREEZE_MODES = ("none", "backbone", "until:LAYER")


def model_arguments(cfg: TrainConfig) -> tuple[dict, dict]:
    """(kwargs stored in the run's ModelSpec, kwargs to build the model for training).

    Pretrained models keep their ImageNet stem unless ``model_args`` say ``cifar_stem``; the stored
    kwargs say so explicitly and never include ``pretrained``, so the run rebuilds without hub weights.
    """
    stored = dict(cfg.model_args)
    if cfg.pretrained and "cifar_stem" in model_kwargs(cfg.model):
        stored.setdefault("cifar_stem", False)
    return stored, stored | ({"pretrained": True} if cfg.pretrained else {})


def input_normalization(cfg: TrainConfig, model: nn.Module) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Mean and std the model's inputs are normalised with: the pretraining's for pretrained models, else CIFAR-10's."""
    if not cfg.pretrained:
        return CIFAR10_MEAN, CIFAR10_STD
    if is_timm(cfg.model):
        return timm_normalization(model)
    return IMAGENET_MEAN, IMAGENET_STD


def parse_freeze(spec: str) -> tuple[str, str | None]:
    """``"none"`` -> ("none", None), ``"backbone"`` -> ("backbone", None), ``"until:layer2"`` -> ("until", "layer2")."""
    if spec in ("none", "backbone"):
        return spec, None
    if spec.startswith("until:") and spec[len("until:") :].strip():
        return "until", spec[len("until:") :].strip()
    raise ConfigError(
        f"invalid --freeze {spec!r}; use none, backbone or until:LAYER (a module name, e.g. until:layer2)"
    )


def head_name(model: nn.Module) -> str:
    """Name of the top-level child that holds the model's last ``nn.Linear``."""
    last = None
    for name, child in model.named_children():
        if isinstance(child, nn.Linear) or any(isinstance(m, nn.Linear) for m in child.modules()):
            last = name
    if last is None:
        raise ConfigError(
            f"{type(model).__name__} has no Linear layer, so it has no head to keep trainable; use --freeze none"
        )
    return last


def freeze(model: nn.Module, spec: str) -> list[str]:
    """Set ``requires_grad=False`` on the parameters ``spec`` freezes; return their names.

    ``until:LAYER`` freezes every parameter registered before the end of module LAYER
    (a ``named_modules`` name such as ``layer2`` or ``features.7``).
    """
    mode, layer = parse_freeze(spec)
    names = [name for name, _ in model.named_parameters()]
    if mode == "none":
        frozen: list[str] = []
    elif mode == "backbone":
        head = head_name(model)
        frozen = [n for n in names if n.split(".")[0] != head]
    else:
        modules = dict(model.named_modules())
        if not layer or layer not in modules:
            top = [name for name, _ in model.named_children()]
            raise ConfigError(
                f"--freeze until:{layer}: no module {layer!r} in {type(model).__name__}; top-level modules: "
                f"{', '.join(top)} (dotted names like {top[0]}.0 reach inside)"
            )
        inside = [i for i, n in enumerate(names) if n.startswith(layer + ".")]
        if inside:
            frozen = names[: inside[-1] + 1]
        else:  # a module without parameters (a pooling layer): freeze the modules before it
            order = {name: i for i, name in enumerate(modules)}
            frozen = [n for n in names if order[n.rpartition(".")[0]] < order[layer]]
    frozen_set = set(frozen)
    for name, param in model.named_parameters():
        if name in frozen_set:
            param.requires_grad_(False)
    return frozen


def train_mode(model: nn.Module) -> nn.Module:
    """``model.train()``, except BatchNorm layers whose parameters are all frozen stay in eval mode
    (their running statistics are part of what was frozen)."""
    model.train()
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if params and not any(p.requires_grad for p in params):
                module.eval()
    return model


def head_parameter_ids(model: nn.Module) -> set[int]:
    """``id`` of every parameter of the head module (see ``head_name``)."""
    return {id(p) for p in getattr(model, head_name(model)).parameters()}
